# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""integrity.py: block checksum files checked against their VHDs (check_chain_integrity), and the whole-file
sha256 of repositories written before them (legacy), on real VHDs."""

from __future__ import annotations

import hashlib
import os
import re

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import (
    HASH_CHUNK, IntegrityError, check_chain_integrity, checksum_mismatch, checksum_problems, recorded_checksums, sha256_file, sha256_files,
    verify_chain,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, vhd_file, vhd_relative_path
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupPoint, open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import DISK_DIFFERENCING, ParentLink, VhdFile, VhdStream
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


def add_legacy_backup(repo, timestamp: str, disks: dict) -> dict:
    """One run as collections wrote it before block checksums: a sha256 per VHD in the metadata, no block checksum file."""
    metadata = add_backup(repo, timestamp, disks, write_json=False)
    sha = {}
    for relative in metadata['vhds'].values():
        path = os.path.join(repo.vm_dir(VM), relative)
        os.remove(path + '.blocksums')
        sha[relative] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
    metadata['xapi_delta_backup'] = {'collection_version': '1.0.0', 'sha256': sha, 'virtual_sizes': {}}
    repo.write_metadata(VM, timestamp, metadata)
    return metadata


def test_recorded_checksums_of_real_points(repo):
    written_1 = add_legacy_backup(repo, T1, {VDI_A: FULL})
    written_2 = add_legacy_backup(repo, T2, {VDI_A: DELTA})
    checksums = recorded_checksums(repo.list_backups(VM))
    assert checksums == {REL_1: written_1['xapi_delta_backup']['sha256'][REL_1], REL_2: written_2['xapi_delta_backup']['sha256'][REL_2]}
    assert checksums[REL_1] == hashlib.sha256(open(repo.vhd_path(VM, JOB, VDI_A, T1), 'rb').read()).hexdigest()


# -- chain verification of legacy files (whole-file sha256) -----------------------------------------------


@pytest.fixture
def chain_repo(repo):
    add_legacy_backup(repo, T1, {VDI_A: FULL})
    add_legacy_backup(repo, T2, {VDI_A: DELTA})
    add_legacy_backup(repo, T3, {VDI_A: DELTA})
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


def test_check_chain_integrity_hashes_legacy_files_whole(chain_repo):
    chain = chain_of(chain_repo, T3)
    checked = check_chain_integrity(chain_repo, VM, chain, chain_repo.list_backups(VM), 'T3')
    assert checked.verified == checked.legacy == [REL_3, REL_2, REL_1] and checked.unverified == [] and checked.sums == {}
    damaged = chain_repo.vhd_path(VM, JOB, VDI_A, T2)
    flip_byte(damaged, open(damaged, 'rb').read().rindex(bytes([20260102 % 251 + 1]) * 4096) + 100)
    with pytest.raises(IntegrityError, match=re.escape(damaged) + ': sha256 .* differs'):
        check_chain_integrity(chain_repo, VM, chain, chain_repo.list_backups(VM), 'T3')


# -- block checksums: check_chain_integrity ------------------------------------------------------------


@pytest.fixture
def sums_repo(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T3, {VDI_A: DELTA})
    return repo


def check(repo, read_blocks=()):
    return check_chain_integrity(repo, VM, chain_of(repo, T3), repo.list_backups(VM), 'disk A', read_blocks=read_blocks)


def data_offset_of_block_0(path: str) -> int:
    with VhdFile.open(path) as vhd:
        return vhd.block_offset(0) + vhd.bitmap_size


def rewrite_structure(path: str, change) -> None:
    """Change the parsed footer and header of a file with ``change(footer, header)`` and write both back, well formed."""
    with VhdFile.open(path) as vhd:
        footer, header, footer_offset, header_offset = vhd.footer, vhd.header, vhd.footer_offset, vhd.footer.data_offset
    change(footer, header)
    with open(path, 'r+b') as handle:
        handle.seek(footer_offset)
        handle.write(footer.pack())
        handle.seek(header_offset)
        handle.write(header.pack())


def test_a_sound_chain_is_verified_by_its_block_checksum_files(sums_repo):
    chain = chain_of(sums_repo, T3)
    for read_blocks in ((), True, [chain[1]]):
        checked = check(sums_repo, read_blocks)
        assert checked.verified == [REL_3, REL_2, REL_1] and checked.unverified == [] and checked.legacy == []
        assert sorted(checked.sums) == sorted(chain) and all(sums.unique_id == VhdFile.open_in(sums_repo.storage, path).unique_id
                                                             for path, sums in checked.sums.items())


def test_a_missing_block_checksum_file_of_a_recorded_file_is_damage(sums_repo):
    victim = sums_repo.vhd_path(VM, JOB, VDI_A, T2)
    os.remove(victim + '.blocksums')
    with pytest.raises(IntegrityError, match=re.escape('%s: its block checksum file %s.blocksums is missing' % (victim, T2 + '.vhd'))) as caught:
        check(sums_repo)
    assert caught.value.files == [victim]


def test_a_file_nothing_recorded_and_without_block_checksums_is_unverified(sums_repo):
    # as a file Xen Orchestra wrote: no block checksum file, and no metadata of ours listing it
    os.remove(sums_repo.vhd_path(VM, JOB, VDI_A, T2) + '.blocksums')
    checked = check_chain_integrity(sums_repo, VM, chain_of(sums_repo, T3), [], 'disk A')
    assert checked.unverified == [REL_2] and checked.verified == [REL_3, REL_1]
    assert sorted(checked.sums) == sorted([vhd_file(VM, JOB, VDI_A, T3), vhd_file(VM, JOB, VDI_A, T1)])


def test_a_damaged_block_checksum_file_header_is_named(sums_repo):
    victim = sums_repo.vhd_path(VM, JOB, VDI_A, T1)
    flip_byte(victim + '.blocksums', 60)
    with pytest.raises(IntegrityError, match=re.escape(victim + '.blocksums') + r': block checksums\.header .*header checksum mismatch'):
        check(sums_repo)


def test_a_replaced_file_is_told_apart_from_its_block_checksums(sums_repo):
    # The newest file rewritten by another writer: a sound VHD, same parent, other unique id.
    victim = sums_repo.vhd_path(VM, JOB, VDI_A, T3)
    with VhdFile.open(victim) as vhd:
        parent = ParentLink(vhd.header.parent_unique_id, vhd.header.parent_timestamp, vhd.header.parent_name)
        size, old_id = vhd.size, vhd.unique_id
    other = b''.join(VhdStream(size, [0], lambda index: (None, b'\x07' * 4096), disk_type=DISK_DIFFERENCING, parent=parent))
    with open(victim, 'wb') as handle:
        handle.write(other)
    with pytest.raises(IntegrityError, match=re.escape('the block checksums are of %s (the file was replaced)' % old_id.hex())) as caught:
        check(sums_repo)
    assert caught.value.files == [victim]


@pytest.mark.parametrize('structure, change', [
    ('footer', lambda footer, header: setattr(footer, 'timestamp', footer.timestamp + 1)),
    ('dynamic header', lambda footer, header: setattr(header, 'parent_timestamp', header.parent_timestamp + 1)),
])
def test_a_changed_footer_or_header_is_named(sums_repo, structure, change):
    victim = sums_repo.vhd_path(VM, JOB, VDI_A, T3)
    rewrite_structure(victim, change)
    with pytest.raises(IntegrityError, match=re.escape('%s: its %s differs from the one recorded' % (victim, structure))):
        check(sums_repo)


def test_a_changed_bat_is_named(sums_repo):
    # Block 0 dropped from the BAT: the file is still a sound VHD (reading zeros there), its BAT is not the one recorded.
    victim = sums_repo.vhd_path(VM, JOB, VDI_A, T2)
    with VhdFile.open(victim) as vhd:
        where = vhd.header.table_offset
    with open(victim, 'r+b') as handle:
        handle.seek(where)
        handle.write(b'\xff\xff\xff\xff')
    with pytest.raises(IntegrityError) as caught:
        check(sums_repo)
    assert caught.value.problems == ['%s: its BAT differs from the one recorded with its block checksums (changed or damaged)' % victim]


def test_a_damaged_block_is_found_only_where_blocks_are_read(sums_repo):
    victim = sums_repo.vhd_path(VM, JOB, VDI_A, T2)
    flip_byte(victim, data_offset_of_block_0(victim) + 123)
    chain = chain_of(sums_repo, T3)
    # structures only: the cheap check before a restore streams (which then checks each block it reads)
    assert check(sums_repo).verified == [REL_3, REL_2, REL_1]
    assert check(sums_repo, [chain[0], chain[2]]).verified == [REL_3, REL_2, REL_1]
    for read_blocks in (True, [chain[1]]):
        with pytest.raises(IntegrityError, match=re.escape(victim + ': block 0 (virtual offset 0): does not match its recorded checksum')):
            check(sums_repo, read_blocks)
