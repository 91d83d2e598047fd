# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""layout.py: uuid and timestamp validation, timestamp round trips, job ids, and the paths of the XO layout."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import (
    VHD_RELATIVE_PATTERN, RepositoryError, disk_folder, format_timestamp, is_hidden_name, is_merge_state_name, is_uuid, job_id_for,
    lock_folder, metadata_file, parse_timestamp, relative_to_vm_folder, validate_timestamp, validate_uuid, vhd_file, vhd_relative_path,
    vm_folder,
)
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._repo.repo_testlib import JOB, T1, T2, VDI_A, VDI_B, VM

UTC = datetime.timezone.utc


# -- uuids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('value', [
    '../etc', VM.upper(), VM + '/x', ' ' + VM, VM[:-1], '', None, 12, 'x' * 36, VM.replace('-', '/'),
])
def test_uuid_validation_rejects_anything_not_canonical(value):
    with pytest.raises(RepositoryError, match='canonical lower-case uuid'):
        validate_uuid(value)


def test_uuid_validation_returns_the_value_and_names_what_it_checked():
    assert validate_uuid(VM) == VM
    assert validate_uuid(VDI_A, 'VDI uuid') == VDI_A
    with pytest.raises(RepositoryError, match=r"^job id 'nightly' is not a canonical lower-case uuid$") as caught:
        validate_uuid('nightly', 'job id')
    assert caught.value.error_code == 'repository_error' and isinstance(caught.value, DeltaBackupError)


@pytest.mark.parametrize('value, expected', [
    (VM, True), (JOB, True), (VM.upper(), False), (VM + '.lock', False), ('.queue', False), ('', False), (None, False), (7, False),
])
def test_is_uuid_tells_our_folder_names_from_others(value, expected):
    assert is_uuid(value) is expected


# -- timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize('value, problem', [
    ('20260101T010000', 'is not of the form YYYYMMDDTHHMMSSZ'),
    ('2026-01-01T01:00:00Z', 'is not of the form YYYYMMDDTHHMMSSZ'),
    ('../x', 'is not of the form YYYYMMDDTHHMMSSZ'),
    (None, 'is not of the form YYYYMMDDTHHMMSSZ'),
    (20260101, 'is not of the form YYYYMMDDTHHMMSSZ'),
    (T1 + '\n', 'timestamp .* is not'),  # refused (by strptime: the pattern's $ lets a final newline through)
    ('20261301T010000Z', 'is not a valid UTC time'),
    ('20260101T250000Z', 'is not a valid UTC time'),
    ('20270229T000000Z', 'is not a valid UTC time'),
])
def test_timestamp_validation(value, problem):
    with pytest.raises(RepositoryError, match=problem):
        validate_timestamp(value)


def test_timestamp_validation_accepts_real_times():
    assert validate_timestamp(T1) == T1
    assert validate_timestamp('20280229T235959Z') == '20280229T235959Z'  # a leap day


def test_parse_timestamp_gives_an_aware_utc_datetime():
    moment = parse_timestamp(T2)
    assert moment == datetime.datetime(2026, 1, 2, 1, 0, 0, tzinfo=UTC)
    assert moment.utcoffset() == datetime.timedelta(0)
    with pytest.raises(RepositoryError, match="timestamp '2026' is not a valid UTC time"):
        parse_timestamp('2026')


@pytest.mark.parametrize('text', [T1, T2, '19700101T000000Z', '20280229T235959Z', '20991231T235959Z'])
def test_parse_and_format_round_trip(text):
    moment = parse_timestamp(text)
    assert format_timestamp(moment) == text
    assert format_timestamp(moment.timestamp()) == text
    assert format_timestamp(int(moment.timestamp())) == text
    assert parse_timestamp(format_timestamp(moment)) == moment


def test_format_timestamp_is_utc():
    assert format_timestamp(0) == '19700101T000000Z'
    now = format_timestamp()
    assert validate_timestamp(now) == now and len(now) == 16
    assert format_timestamp(datetime.datetime(2026, 3, 15, 3, 15, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))) == '20260315T021500Z'
    with pytest.raises(RepositoryError, match='naive datetime'):
        format_timestamp(datetime.datetime(2026, 3, 15))


def test_format_timestamp_drops_fractions_of_a_second():
    assert format_timestamp(1767229200.999) == T1
    assert format_timestamp(datetime.datetime(2026, 1, 1, 1, 0, 0, 999999, tzinfo=UTC)) == T1


def test_format_timestamp_of_now_is_now():
    before = datetime.datetime.now(UTC).replace(microsecond=0)
    now = parse_timestamp(format_timestamp())
    after = datetime.datetime.now(UTC)
    assert before <= now <= after


# -- job ids ---------------------------------------------------------------------------------------


def test_job_id_is_stable_and_distinct():
    assert job_id_for('nightly') == job_id_for(' nightly ') == JOB
    assert job_id_for('weekly') != JOB
    validate_uuid(JOB)
    with pytest.raises(RepositoryError, match='a job name is required'):
        job_id_for('  ')


def test_job_id_is_the_same_forever():
    # XO keys chains by job id: these values may never change (the namespace is fixed for good).
    assert job_id_for('nightly') == '6e644870-8d71-53c9-983b-b67ebabd5193'
    assert job_id_for('weekly') == '3b458745-d093-5274-9ff0-b5b8659dc113'


@pytest.mark.parametrize('name', ['', '\t\n', None, 12])
def test_job_id_needs_a_name(name):
    with pytest.raises(RepositoryError, match='a job name is required to derive the job id'):
        job_id_for(name)


def test_job_id_is_case_sensitive_and_a_version_5_uuid():
    assert job_id_for('Nightly') != job_id_for('nightly')
    assert job_id_for('nightly')[14] == '5'


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('name, hidden', [
    ('.123-abcd.%s.json' % T1, True), (VM + '.lock', True), ('.queue', True), (VM, False), (T1 + '.json', False), ('cache.json.gz', False),
])
def test_hidden_names(name, hidden):
    assert is_hidden_name(name) is hidden


@pytest.mark.parametrize('name, state', [
    ('.%s.vhd.merge.json' % T1, True), ('%s.vhd.merge.json' % T1, False), ('.%s.vhd.merge.json.tmp' % T1, False), ('.x.json', False),
])
def test_merge_state_names(name, state):
    assert is_merge_state_name(name) is state


# -- paths -----------------------------------------------------------------------------------------


def test_paths_of_the_xo_layout():
    assert vm_folder(VM) == 'xo-vm-backups/' + VM
    assert metadata_file(VM, T1) == 'xo-vm-backups/%s/%s.json' % (VM, T1)
    assert disk_folder(VM, JOB, VDI_A) == 'xo-vm-backups/%s/vdis/%s/%s' % (VM, JOB, VDI_A)
    assert vhd_relative_path(JOB, VDI_A, T1) == 'vdis/%s/%s/%s.vhd' % (JOB, VDI_A, T1)
    assert vhd_file(VM, JOB, VDI_A, T1) == 'xo-vm-backups/%s/vdis/%s/%s/%s.vhd' % (VM, JOB, VDI_A, T1)
    assert lock_folder(VM) == 'xo-vm-backups/%s.lock' % VM


def test_relative_vhd_paths_match_the_metadata_pattern():
    relative = vhd_relative_path(JOB, VDI_B, T2)
    assert VHD_RELATIVE_PATTERN.match(relative).groups() == (JOB, VDI_B, T2, None)
    assert VHD_RELATIVE_PATTERN.match(relative[:-len('.vhd')] + '.alias.vhd').groups() == (JOB, VDI_B, T2, '.alias')


@pytest.mark.parametrize('build, problem', [
    (lambda: vhd_relative_path('nightly', VDI_A, T1), "job id 'nightly' is not"),
    (lambda: vhd_relative_path(JOB, '../' + VDI_A[3:], T1), 'VDI uuid .* is not'),
    (lambda: vhd_relative_path(JOB, VDI_A, '../../x'), 'is not of the form'),
    (lambda: vm_folder('my vm'), "VM uuid 'my vm' is not"),
    (lambda: metadata_file(VM, 'latest'), "timestamp 'latest' is not of the form"),
    (lambda: disk_folder(VM, JOB, VDI_B.upper()), 'VDI uuid .* is not'),
    (lambda: vhd_file('..', JOB, VDI_A, T1), "VM uuid '..' is not"),
    (lambda: lock_folder(VM + '/..'), 'VM uuid .* is not'),
])
def test_paths_refuse_unvalidated_parts(build, problem):
    with pytest.raises(RepositoryError, match=problem):
        build()


def test_relative_to_vm_folder_round_trip():
    assert relative_to_vm_folder(VM, vhd_file(VM, JOB, VDI_A, T1)) == vhd_relative_path(JOB, VDI_A, T1)
    assert relative_to_vm_folder(VM, metadata_file(VM, T2)) == T2 + '.json'


OTHER_VM = 'ffffffff-0000-4000-8000-000000000000'


@pytest.mark.parametrize('path', [
    vhd_file(OTHER_VM, JOB, VDI_A, T1),          # another VM's disk
    lock_folder(VM) + '/owner.json',             # shares the VM folder's name as a prefix, but not the folder
    vm_folder(VM),                               # the folder itself is not in it
    vhd_relative_path(JOB, VDI_A, T1),           # already relative
    '/' + vhd_file(VM, JOB, VDI_A, T1),          # absolute
])
def test_relative_to_vm_folder_refuses_foreign_paths(path):
    with pytest.raises(RepositoryError, match='is not in the folder of VM %s' % VM):
        relative_to_vm_folder(VM, path)


def test_relative_to_vm_folder_validates_the_vm():
    with pytest.raises(RepositoryError, match="VM uuid 'xo' is not a canonical"):
        relative_to_vm_folder('xo', 'xo-vm-backups/xo/x.json')


def test_a_uuid_with_a_final_newline_is_refused():
    # '$' also matches before a final newline: the patterns end in '\Z' so no path is ever built from such a value.
    assert is_uuid(VM + '\n') is False
    with pytest.raises(RepositoryError, match='canonical lower-case uuid'):
        validate_uuid(VM + '\n')
    with pytest.raises(RepositoryError, match='canonical lower-case uuid'):
        vm_folder(VM + '\n')
    assert not VHD_RELATIVE_PATTERN.match('vdis/%s/%s/%s.vhd\n' % (JOB, VDI_A, T1))
