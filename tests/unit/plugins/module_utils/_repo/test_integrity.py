# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""integrity.py: sha256 of stored files, which recorded checksum counts, and chain verification on real VHDs."""

from __future__ import annotations

import hashlib
import os
import re

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import (
    HASH_CHUNK, IntegrityError, checksum_mismatch, checksum_problems, recorded_checksums, sha256_file, sha256_files, verify_chain,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, vhd_file, vhd_relative_path
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupPoint, open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._repo.repo_testlib import (
    DELTA, FULL, JOB, T1, T2, T3, VDI_A, VM, add_backup,
)

REL_1, REL_2, REL_3 = (vhd_relative_path(JOB, VDI_A, timestamp) for timestamp in (T1, T2, T3))


@pytest.fixture
def repo(tmp_path):
    return open_repository(str(tmp_path), create=True)


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(str(tmp_path))


def point(timestamp: str, vhds: dict, sha256=None) -> BackupPoint:
    metadata = {'vhds': vhds}
    if sha256 is not None:
        metadata['xapi_delta_backup'] = {'sha256': sha256}
    return BackupPoint(VM, timestamp, 'xo-vm-backups/%s/%s.json' % (VM, timestamp), '/r/%s.json' % timestamp, metadata)


def chain_of(repo, timestamp):
    found = repo.get_backup(VM, timestamp)
    return repo.vhd_chain(found, found.disks[0])


def flip_byte(path: str, offset: int) -> None:
    with open(path, 'r+b') as target:
        target.seek(offset)
        value = target.read(1)
        target.seek(offset)
        target.write(bytes([value[0] ^ 0xFF]))


# -- hashing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('size', [0, 1, HASH_CHUNK - 1, HASH_CHUNK, 2 * HASH_CHUNK + 12345])
def test_sha256_file_is_hashlib_over_the_whole_file(storage, tmp_path, size):
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    (tmp_path / 'f').write_bytes(data)
    assert sha256_file(storage, 'f') == hashlib.sha256(data).hexdigest()


def test_sha256_file_of_a_missing_file_raises_an_os_error(storage):
    with pytest.raises(FileNotFoundError, match='No such file'):
        sha256_file(storage, 'missing')


def test_sha256_files_hashes_each_and_reports_unreadable_ones(storage, tmp_path):
    contents = {'a': b'alpha', 'b': os.urandom(HASH_CHUNK + 1), 'c': b''}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    digests = sha256_files(storage, ['a', 'gone', 'b', 'c'])
    assert list(digests) == ['a', 'gone', 'b', 'c']
    assert {name: digests[name] for name in contents} == {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    assert isinstance(digests['gone'], FileNotFoundError)
    assert sha256_files(storage, ['a']) == {'a': hashlib.sha256(b'alpha').hexdigest()}
    assert isinstance(sha256_files(storage, ['gone'])['gone'], OSError)
    assert sha256_files(storage, []) == {}


def test_checksum_mismatch_names_file_and_both_digests():
    assert checksum_mismatch('/r/x.vhd', 'aa', 'bb') == (
        '/r/x.vhd: sha256 aa differs from the bb recorded in the backup metadata (the file was changed or damaged)')


def test_integrity_error_lists_problems_and_files():
    error = IntegrityError('chain of disk A', ['/r/b.vhd: bad footer', '/r/a.vhd: sha256 x differs', '/r/b.vhd: bad parent'])
    assert str(error) == 'chain of disk A: /r/b.vhd: bad footer; /r/a.vhd: sha256 x differs; /r/b.vhd: bad parent'
    assert error.files == ['/r/a.vhd', '/r/b.vhd']
    assert error.problems == ['/r/b.vhd: bad footer', '/r/a.vhd: sha256 x differs', '/r/b.vhd: bad parent']
    assert error.error_code == 'integrity_check_failed' and isinstance(error, RepositoryError)


# -- recorded checksums ------------------------------------------------------------------------------


def test_recorded_checksums_gathers_every_point():
    points = [point(T1, {'r1': REL_1}, {REL_1: 'one'}), point(T2, {'r1': REL_2}, {REL_2: 'two'})]
    assert recorded_checksums(points) == {REL_1: 'one', REL_2: 'two'}


@pytest.mark.parametrize('order', ['owner first', 'owner last'])
def test_a_points_own_vhd_wins_over_what_another_point_carries(order):
    # T2 still carries the sha256 T1's VHD had before a merge rewrote it; T1 owns the file and was updated.
    owner = point(T1, {'r1': REL_1}, {REL_1: 'after merge'})
    carrier = point(T2, {'r1': REL_2}, {REL_2: 'two', REL_1: 'before merge'})
    points = [owner, carrier] if order == 'owner first' else [carrier, owner]
    assert recorded_checksums(points) == {REL_1: 'after merge', REL_2: 'two'}


def test_an_inherited_checksum_is_used_when_no_point_owns_the_file():
    # T1's JSON was pruned by retention: T2's entry for its parent is all there is.
    assert recorded_checksums([point(T2, {'r1': REL_2}, {REL_2: 'two', REL_1: 'one'})]) == {REL_1: 'one', REL_2: 'two'}


def test_recorded_checksums_skips_what_is_not_a_digest():
    points = [point(T1, {'r1': REL_1}, {REL_1: None, REL_2: 7}), point(T2, {'r1': REL_2}), point(T3, {'r1': REL_3}, {})]
    assert recorded_checksums(points) == {}
    assert recorded_checksums([]) == {}


def test_recorded_checksums_of_real_points(repo):
    written_1 = add_backup(repo, T1, {VDI_A: FULL})
    written_2 = add_backup(repo, T2, {VDI_A: DELTA})
    checksums = recorded_checksums(repo.list_backups(VM))
    assert checksums == {REL_1: written_1['xapi_delta_backup']['sha256'][REL_1], REL_2: written_2['xapi_delta_backup']['sha256'][REL_2]}
    assert checksums[REL_1] == hashlib.sha256(open(repo.vhd_path(VM, JOB, VDI_A, T1), 'rb').read()).hexdigest()


# -- chain verification ------------------------------------------------------------------------------


@pytest.fixture
def chain_repo(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T3, {VDI_A: DELTA})
    return repo


def test_a_sound_chain_is_verified(chain_repo):
    checksums = recorded_checksums(chain_repo.list_backups(VM))
    chain = chain_of(chain_repo, T3)
    assert chain == [vhd_file(VM, JOB, VDI_A, timestamp) for timestamp in (T3, T2, T1)]
    assert verify_chain(chain_repo, VM, chain, checksums, 'T3') == {'verified': [REL_3, REL_2, REL_1], 'unverified': []}


def test_a_file_without_recorded_checksum_is_reported_unverified(chain_repo):
    # Xen Orchestra writes no sha256: such files are checked for structure only.
    checksums = recorded_checksums(chain_repo.list_backups(VM))
    del checksums[REL_2]
    assert verify_chain(chain_repo, VM, chain_of(chain_repo, T3), checksums, 'T3') == {'verified': [REL_3, REL_1], 'unverified': [REL_2]}
    assert verify_chain(chain_repo, VM, chain_of(chain_repo, T3), {}, 'T3') == {'verified': [], 'unverified': [REL_3, REL_2, REL_1]}


def test_a_changed_file_is_named_with_both_digests(chain_repo):
    checksums = recorded_checksums(chain_repo.list_backups(VM))
    chain = chain_of(chain_repo, T3)
    damaged = chain_repo.vhd_path(VM, JOB, VDI_A, T2)
    content = open(damaged, 'rb').read()
    flip_byte(damaged, content.rindex(bytes([20260102 % 251 + 1]) * 4096) + 100)  # a byte of the data block: the structure stays sound
    actual = hashlib.sha256(open(damaged, 'rb').read()).hexdigest()
    with pytest.raises(IntegrityError, match=re.escape('disk A: ' + checksum_mismatch(damaged, actual, checksums[REL_2]))) as caught:
        verify_chain(chain_repo, VM, chain, checksums, 'disk A')
    assert caught.value.files == [damaged]
    assert len(caught.value.problems) == 1


def test_a_damaged_footer_is_a_structural_and_a_checksum_problem(chain_repo):
    checksums = recorded_checksums(chain_repo.list_backups(VM))
    chain = chain_of(chain_repo, T3)
    damaged = chain_repo.vhd_path(VM, JOB, VDI_A, T1)
    flip_byte(damaged, os.path.getsize(damaged) - 100)
    with pytest.raises(IntegrityError, match='differs from the %s recorded' % checksums[REL_1]) as caught:
        verify_chain(chain_repo, VM, chain, checksums, 'disk A')
    assert caught.value.files == [damaged]
    assert len(caught.value.problems) >= 2


def test_a_missing_file_is_named(chain_repo):
    checksums = recorded_checksums(chain_repo.list_backups(VM))
    chain = chain_of(chain_repo, T3)
    missing = chain_repo.vhd_path(VM, JOB, VDI_A, T1)
    os.unlink(missing)
    with pytest.raises(IntegrityError, match=re.escape('%s: cannot be read (No such file or directory)' % missing)) as caught:
        verify_chain(chain_repo, VM, chain, checksums, 'disk A')
    assert caught.value.files == [missing]


def test_every_bad_file_is_reported_at_once(chain_repo):
    checksums = recorded_checksums(chain_repo.list_backups(VM))
    chain = chain_of(chain_repo, T3)
    for timestamp in (T3, T1):
        path = chain_repo.vhd_path(VM, JOB, VDI_A, timestamp)
        flip_byte(path, os.path.getsize(path) - 100)
    with pytest.raises(IntegrityError, match='disk A: ') as caught:
        verify_chain(chain_repo, VM, chain, checksums, 'disk A')
    assert caught.value.files == sorted(chain_repo.vhd_path(VM, JOB, VDI_A, timestamp) for timestamp in (T1, T3))


def test_checksum_problems_sorts_files_into_three_lists(chain_repo):
    checksums = recorded_checksums(chain_repo.list_backups(VM))
    chain = chain_of(chain_repo, T3)
    wrong = dict(checksums, **{REL_3: '0' * 64})
    del wrong[REL_1]
    problems, verified, unverified = checksum_problems(chain_repo, VM, chain, wrong)
    assert problems == [checksum_mismatch(chain_repo.vhd_path(VM, JOB, VDI_A, T3), checksums[REL_3], '0' * 64)]
    assert verified == [REL_2] and unverified == [REL_1]


def test_checksum_problems_refuses_a_path_outside_the_vm_folder(chain_repo):
    with pytest.raises(RepositoryError, match='is not in the folder of VM %s' % VM):
        checksum_problems(chain_repo, VM, ['xo-vm-backups/other/x.vhd'], {})
