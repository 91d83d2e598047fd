# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""metadata.py: the schema check of each field, XO's integer booleans, our own section, and build / write / read round trips."""

from __future__ import annotations

import copy
import json

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, vhd_relative_path
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import (
    COLLECTION_VERSION, OWN_FIELD, MetadataError, build_metadata, is_full_mode_backup, load_metadata_json, metadata_bytes,
    parse_metadata_json, read_metadata, validate_metadata,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._repo.repo_testlib import JOB, SCHEDULE, T1, VDI_A, VDI_B, VM

REF_A, REF_B = 'OpaqueRef:snap-vdi-0', 'OpaqueRef:snap-vdi-1'
REL_A, REL_B = vhd_relative_path(JOB, VDI_A, T1), vhd_relative_path(JOB, VDI_B, T1)
SHA_A, SHA_B = 'a' * 64, 'b' * 64


def sample(**changes) -> dict:
    metadata = build_metadata(JOB, SCHEDULE, 1767229200000, {'uuid': VM, 'name_label': 'web'}, {'uuid': 'snap'}, {'OpaqueRef:vbd': {}},
                              {'OpaqueRef:vif': {}}, {REF_A: {'uuid': VDI_A}, REF_B: {'uuid': VDI_B}}, {REF_A: REL_A, REF_B: REL_B},
                              {REF_A: False, REF_B: 1}, size=1234, block_checksums={REL_A: SHA_A, REL_B: SHA_B},
                              virtual_sizes={REF_A: 10 * 1024 ** 3, REF_B: 0})
    metadata.update(changes)
    return metadata


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(str(tmp_path))


# -- build -----------------------------------------------------------------------------------------


def test_build_writes_xo_2_0_0_delta_with_our_section():
    metadata = sample()
    assert metadata['version'] == '2.0.0' and metadata['mode'] == 'delta'
    assert metadata['jobId'] == JOB and metadata['scheduleId'] == SCHEDULE and metadata['timestamp'] == 1767229200000
    assert metadata['vhds'] == {REF_A: REL_A, REF_B: REL_B}
    assert metadata['isVhdDifferencing'] == {REF_A: False, REF_B: True}
    assert metadata['isVhdDifferencing'][REF_B] is True
    assert metadata['size'] == 1234
    assert metadata[OWN_FIELD] == {'collection_version': COLLECTION_VERSION, 'block_checksums': {REL_A: SHA_A, REL_B: SHA_B},
                                   'virtual_sizes': {REF_A: 10 * 1024 ** 3, REF_B: 0}}


def test_build_copies_its_mappings_and_adds_extra_fields():
    vhds, sha = {REF_A: REL_A}, {REL_A: SHA_A}
    metadata = build_metadata(JOB, SCHEDULE, 1.5e12, {}, {}, {}, {}, {}, vhds, {REF_A: False}, size=7.0, block_checksums=sha, virtual_sizes={},
                              collection_version='9.9.9', extra={'xoMetadata': 'kept'})
    vhds[REF_B] = REL_B
    sha[REL_B] = SHA_B
    assert metadata['vhds'] == {REF_A: REL_A} and metadata[OWN_FIELD]['block_checksums'] == {REL_A: SHA_A}
    assert metadata['timestamp'] == 1500000000000 and isinstance(metadata['timestamp'], int) and metadata['size'] == 7
    assert metadata[OWN_FIELD]['collection_version'] == '9.9.9' and metadata['xoMetadata'] == 'kept'


@pytest.mark.parametrize('job_id, schedule_id, problem', [
    ('nightly', SCHEDULE, "job id 'nightly' is not a canonical"),
    (JOB, 'daily', "schedule id 'daily' is not a canonical"),
])
def test_build_validates_the_ids(job_id, schedule_id, problem):
    with pytest.raises(RepositoryError, match=problem):
        build_metadata(job_id, schedule_id, 0, {}, {}, {}, {}, {}, {}, {}, size=0, block_checksums={}, virtual_sizes={})


def test_build_refuses_what_it_would_not_read_back():
    with pytest.raises(MetadataError, match=r"<new backup metadata> is invalid: vhds\['r'\] = '../x.vhd' is not a vdis/"):
        build_metadata(JOB, SCHEDULE, 0, {}, {}, {}, {}, {}, {'r': '../x.vhd'}, {}, size=0, block_checksums={}, virtual_sizes={})
    with pytest.raises(MetadataError, match='virtual_sizes must map VDI refs to sizes in bytes'):
        build_metadata(JOB, SCHEDULE, 0, {}, {}, {}, {}, {}, {}, {}, size=0, block_checksums={}, virtual_sizes={REF_A: -1})


# -- validation, field by field --------------------------------------------------------------------


@pytest.mark.parametrize('mutate, problem', [
    (lambda m: [], 'the top level must be an object, got list'),
    (lambda m: None, 'the top level must be an object, got NoneType'),
    (lambda m: dict(m, version=2), "field 'version' must be a version string, got int"),
    (lambda m: dict(m, version='1.0.0'), "unsupported metadata version '1.0.0'"),
    (lambda m: dict(m, mode='full'), "mode is 'full', only 'delta' backups are handled"),
    (lambda m: {k: v for k, v in m.items() if k != 'mode'}, "mode is None"),
    (lambda m: dict(m, jobId=None), "field 'jobId' must be a uuid string, got NoneType"),
    (lambda m: {k: v for k, v in m.items() if k != 'jobId'}, "field 'jobId' must be a uuid string, got nothing"),
    (lambda m: dict(m, timestamp='yesterday'), "field 'timestamp' must be an integer .ms since the epoch., got str"),
    (lambda m: dict(m, timestamp=True), "field 'timestamp' must be an integer .ms since the epoch., got bool"),
    (lambda m: dict(m, timestamp=1.5), "field 'timestamp' must be an integer .ms since the epoch., got float"),
    (lambda m: dict(m, vm=[]), "field 'vm' must be an object, got list"),
    (lambda m: dict(m, vmSnapshot='x'), "field 'vmSnapshot' must be an object, got str"),
    (lambda m: dict(m, vbds=None), "field 'vbds' must be an object, got NoneType"),
    (lambda m: {k: v for k, v in m.items() if k != 'vifs'}, "field 'vifs' must be an object, got nothing"),
    (lambda m: dict(m, vdis=1), "field 'vdis' must be an object, got int"),
    (lambda m: dict(m, vhds=[]), "field 'vhds' must be an object, got list"),
    (lambda m: dict(m, vhds={'r': '../../../etc/passwd'}), r"vhds\['r'\] = '../../../etc/passwd' is not a vdis/"),
    (lambda m: dict(m, vhds={'r': 7}), r"vhds\['r'\] = 7 is not a vdis/"),
    (lambda m: dict(m, vhds={'r': 'vdis/%s/%s/%s.vhd' % (JOB, '-' * 36, T1)}), 'holds an invalid uuid'),
    (lambda m: dict(m, vhds={'r': 'vdis/%s/%s/%s.vhd' % (JOB.upper(), VDI_A, T1)}), 'is not a vdis/'),
    (lambda m: dict(m, isVhdDifferencing=[]), "field 'isVhdDifferencing' must be an object, got list"),
    (lambda m: dict(m, isVhdDifferencing={'r': 'yes'}), r"isVhdDifferencing\['r'\] must be a boolean, got 'yes'"),
    (lambda m: dict(m, isVhdDifferencing={'r': 2}), r"isVhdDifferencing\['r'\] must be a boolean, got 2"),
    (lambda m: dict(m, size='big'), "field 'size' must be an integer number of bytes, got str"),
    (lambda m: dict(m, size=False), "field 'size' must be an integer number of bytes, got bool"),
    (lambda m: dict(m, xapi_delta_backup=[]), 'field .xapi_delta_backup. must be an object with sha256, block_checksums and virtual_sizes objects'),
    (lambda m: dict(m, xapi_delta_backup={'sha256': []}), 'field .xapi_delta_backup. must be an object with sha256'),
    (lambda m: dict(m, xapi_delta_backup={'virtual_sizes': 'x'}), 'field .xapi_delta_backup. must be an object with sha256'),
])
def test_each_field_is_checked(mutate, problem):
    with pytest.raises(MetadataError, match=problem) as caught:
        validate_metadata(mutate(sample()), '/repo/x.json')
    assert caught.value.path == '/repo/x.json' and caught.value.error_code == 'invalid_metadata'
    assert str(caught.value).startswith('backup metadata /repo/x.json is invalid: ')


@pytest.mark.parametrize('sizes', [{REF_A: -1}, {REF_A: '10'}, {REF_A: True}, {REF_A: 1.0}, {REF_A: None}])
def test_virtual_sizes_must_be_byte_counts(sizes):
    with pytest.raises(MetadataError, match='xapi_delta_backup.virtual_sizes must map VDI refs to sizes in bytes, got'):
        validate_metadata(sample(xapi_delta_backup={'sha256': {}, 'virtual_sizes': sizes}), 'x.json')


def test_virtual_sizes_problem_names_only_the_bad_entries():
    with pytest.raises(MetadataError, match="got {'%s': -5}$" % REF_B):
        validate_metadata(sample(xapi_delta_backup={'virtual_sizes': {REF_A: 1, REF_B: -5}}), 'x.json')


def test_virtual_sizes_of_zero_and_missing_are_fine():
    assert validate_metadata(sample(xapi_delta_backup={'sha256': {}, 'virtual_sizes': {REF_A: 0}}), 'x')[OWN_FIELD]['virtual_sizes'] == {REF_A: 0}
    assert validate_metadata(sample(xapi_delta_backup={}), 'x')[OWN_FIELD] == {}


def test_optional_fields_may_be_absent():
    metadata = sample()
    for key in ('size', 'isVhdDifferencing', OWN_FIELD, 'scheduleId'):
        del metadata[key]
    checked = validate_metadata(metadata, 'x.json')
    assert checked['isVhdDifferencing'] == {}
    assert OWN_FIELD not in checked and 'size' not in checked


def test_other_2_x_versions_and_alias_paths_are_read():
    metadata = sample(version='2.1.0', vhds={REF_A: REL_A[:-len('.vhd')] + '.alias.vhd'})
    assert validate_metadata(metadata, 'x')['version'] == '2.1.0'


def test_integer_booleans_are_repaired():
    checked = validate_metadata(sample(isVhdDifferencing={REF_A: 0, REF_B: 1, 'r': True}), 'x')
    assert checked['isVhdDifferencing'] == {REF_A: False, REF_B: True, 'r': True}
    assert all(flag is True or flag is False for flag in checked['isVhdDifferencing'].values())  # real booleans, not 0 and 1


def test_validation_leaves_a_valid_metadata_as_it_was():
    metadata = sample()
    before = copy.deepcopy(metadata)
    assert validate_metadata(metadata, 'x') is metadata
    assert metadata == before


def test_full_mode_backups_are_recognised():
    assert is_full_mode_backup({'mode': 'full', 'xva': './x.xva'}) is True
    assert is_full_mode_backup(sample()) is False
    assert is_full_mode_backup([]) is False and is_full_mode_backup(None) is False


# -- JSON, files and round trips -------------------------------------------------------------------


def test_metadata_bytes_is_stable_sorted_json():
    metadata = sample()
    raw = metadata_bytes(metadata)
    assert json.loads(raw) == metadata
    assert raw == metadata_bytes(dict(reversed(list(metadata.items()))))
    assert raw.startswith(b'{\n "isVhdDifferencing": {')


def test_build_write_read_round_trip(storage):
    metadata = sample()
    storage.write_bytes_atomically('x.json', metadata_bytes(metadata))
    read = read_metadata(storage, 'x.json')
    assert read == metadata and read is not metadata
    assert metadata_bytes(read) == metadata_bytes(metadata)


def test_round_trip_repairs_integer_booleans(storage, tmp_path):
    metadata = sample()
    metadata['isVhdDifferencing'] = {REF_A: 0, REF_B: 1}
    (tmp_path / 'xo.json').write_text(json.dumps(metadata))
    assert read_metadata(storage, 'xo.json')['isVhdDifferencing'] == {REF_A: False, REF_B: True}


@pytest.mark.parametrize('raw, problem', [
    (b'{"trunc', 'not valid JSON'),
    (b'\xff\xfe{}', 'not valid JSON'),
    (b'', 'not valid JSON'),
])
def test_unreadable_json_names_the_file(storage, tmp_path, raw, problem):
    (tmp_path / 'bad.json').write_bytes(raw)
    shown = storage.describe('bad.json')
    with pytest.raises(MetadataError, match=problem) as caught:
        read_metadata(storage, 'bad.json')
    assert caught.value.path == shown
    with pytest.raises(MetadataError, match='backup metadata %s is invalid: not valid JSON' % shown):
        parse_metadata_json(raw, shown)


def test_missing_file_names_it(storage):
    with pytest.raises(MetadataError, match='backup metadata %s is invalid: cannot read it: ' % storage.describe('gone.json')):
        load_metadata_json(storage, 'gone.json')


def test_load_does_not_check_fields(storage, tmp_path):
    (tmp_path / 'full.json').write_text(json.dumps({'version': '2.0.0', 'mode': 'full'}))
    assert load_metadata_json(storage, 'full.json') == {'version': '2.0.0', 'mode': 'full'}
    with pytest.raises(MetadataError, match="mode is 'full'"):
        read_metadata(storage, 'full.json')


def test_a_vhds_path_with_a_final_newline_is_refused():
    relative = 'vdis/%s/%s/20260101T010000Z.vhd\n' % ('0b7c5d3e-3a51-4a3c-9a55-6e1f8c0a1b2c', '0b7c5d3e-3a51-4a3c-9a55-6e1f8c0a1b2c')
    metadata = {'version': '2.0.0', 'mode': 'delta', 'jobId': '0b7c5d3e-3a51-4a3c-9a55-6e1f8c0a1b2c', 'timestamp': 1, 'vm': {}, 'vmSnapshot': {},
                'vbds': {}, 'vifs': {}, 'vdis': {}, 'vhds': {'r': relative}}
    with pytest.raises(MetadataError, match='is not a vdis/'):
        validate_metadata(metadata, 'x.json')
