# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Seed copy between two repositories: verified, idempotent, resumable, metadata last."""

from __future__ import annotations

import os

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import seed
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage.local import LocalAtomicWriter
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import IntegrityError
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import (
    BLOCK, VM, RepoBuilder, assert_points_restorable,
)


@pytest.fixture
def source(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'near'), disks=2)
    for number in range(3):
        builder.add_point(full=number == 0)
    return builder


def tree(root):
    found = []
    for folder, _dirs, files in os.walk(root):
        found.extend(os.path.relpath(os.path.join(folder, name), root) for name in files)
    return sorted(found)


def test_copy_is_verified_idempotent_and_readable(source, tmp_path):
    far = tmp_path / 'far'
    far.mkdir()
    planned = seed.seed_copy(source.repo.root, str(far), check_mode=True)
    assert planned['changed'] and planned['copied_files'] == 6 and planned['copied_points'] == 3
    assert tree(str(far)) == []
    done = seed.seed_copy(source.repo.root, str(far), vms=[VM])
    assert done['changed'] and done['copied_files'] == 6 and done['bytes_copied'] > 0
    assert tree(str(far)) == [name for name in tree(source.repo.root) if not name.endswith('.lock')]
    again = seed.seed_copy(source.repo.root, str(far))
    assert again['changed'] is False and again['skipped_files'] == 6
    copy = RepoBuilder.__new__(RepoBuilder)
    copy.__dict__.update(source.__dict__, repo=open_repository(str(far)))
    assert_points_restorable(copy, sorted(source.truth))


def test_interrupted_copy_resumes_and_hides_incomplete_points(source, tmp_path, monkeypatch):
    far = tmp_path / 'far'
    far.mkdir()
    real = seed._copy_vhd
    calls = []

    def dying(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(seed, '_copy_vhd', dying)
    with pytest.raises(KeyboardInterrupt):
        seed.seed_copy(source.repo.root, str(far))
    monkeypatch.undo()
    assert open_repository(str(far)).list_backups(VM) == []
    resumed = seed.seed_copy(source.repo.root, str(far))
    assert resumed['skipped_files'] == 3 and resumed['copied_files'] == 3


def test_damaged_source_is_refused_naming_the_file(source, tmp_path):
    point = source.repo.list_backups(VM)[0]
    victim = point.disks[1].path
    with open(victim, 'r+b') as handle:
        handle.seek(4096)
        handle.write(b'\x00\x01\x02')
    far = tmp_path / 'far'
    far.mkdir()
    with pytest.raises(IntegrityError) as caught:
        seed.seed_copy(source.repo.root, str(far))
    assert victim in str(caught.value)
    assert open_repository(str(far)).list_backups(VM) == []


def test_a_different_history_at_the_destination_is_never_overwritten(source, tmp_path):
    far = tmp_path / 'far'
    far.mkdir()
    seed.seed_copy(source.repo.root, str(far))
    # Same VM, disks and timestamps, other content: each file has other block checksums than the one at the destination.
    other = RepoBuilder(str(tmp_path / 'other'), disks=2)
    for number in range(3):
        other.add_point(full=number == 0, changed_blocks=5)
    assert other.live == source.live
    before = {name: (far / name).read_bytes() for name in tree(str(far))}
    with pytest.raises(seed.SeedConflictError, match='different content .*block checksums or sha256'):
        seed.seed_copy(other.repo.root, str(far))
    assert {name: (far / name).read_bytes() for name in tree(str(far))} == before


def first_block(path: str) -> tuple:
    """(index, offset of its data) of the first block stored in a VHD file."""
    with VhdFile.open(path) as vhd:
        index = min(vhd.allocated_blocks(), key=vhd.block_offset)
        return index, vhd.block_offset(index) + vhd.bitmap_size


def test_the_copy_carries_the_block_checksums_and_says_how_each_file_was_checked(source, tmp_path):
    far = tmp_path / 'far'
    far.mkdir()
    done = seed.seed_copy(source.repo.root, str(far))
    [report] = done['vms']
    assert sorted(report['checksums']['block_checksums']) == sorted(report['copied_files']) and len(report['copied_files']) == 6
    assert report['checksums']['sha256'] == [] and report['checksums']['unverified'] == []
    for relative in report['copied_files']:
        sidecar = os.path.join('xo-vm-backups', VM, relative + '.blocksums')
        assert (far / sidecar).read_bytes() == open(os.path.join(source.repo.root, sidecar), 'rb').read()


def test_a_damaged_block_of_the_source_is_named_and_nothing_of_that_file_is_published(source, tmp_path):
    point = source.repo.list_backups(VM)[0]
    victim = point.disks[1].path
    index, offset = first_block(victim)
    with open(victim, 'r+b') as handle:
        handle.seek(offset + 1000)
        byte = handle.read(1)
        handle.seek(offset + 1000)
        handle.write(bytes([byte[0] ^ 0x04]))
    far = tmp_path / 'far'
    far.mkdir()
    with pytest.raises(IntegrityError, match=r'block %d \(virtual offset %d\): does not match its recorded checksum' % (index, index * BLOCK)) as caught:
        seed.seed_copy(source.repo.root, str(far))
    assert victim in str(caught.value)
    relative = os.path.relpath(victim, os.path.join(source.repo.root, 'xo-vm-backups', VM))
    assert not [name for name in tree(str(far)) if relative in name]  # neither the VHD nor its block checksums
    assert open_repository(str(far)).list_backups(VM) == []


def test_a_destination_that_changes_the_data_is_caught_by_reading_back(source, tmp_path, monkeypatch):
    real = LocalAtomicWriter.write

    def changing(self, data):
        data = bytearray(data)
        if len(data) > 8192:
            data[8000] ^= 0x01  # the storage, not the copy, changes a byte of what it is given
        return real(self, data)

    monkeypatch.setattr(LocalAtomicWriter, 'write', changing)
    far = tmp_path / 'far'
    far.mkdir()
    with pytest.raises(IntegrityError, match=r'copy verification failed .*: block \d+ \(virtual offset \d+\): does not match'):
        seed.seed_copy(source.repo.root, str(far))
    monkeypatch.undo()
    assert not [name for name in tree(str(far)) if name.endswith('.vhd') or name.endswith('.blocksums')]


def test_a_rerun_compares_block_checksum_files_without_hashing_whole_files(source, tmp_path, monkeypatch):
    far = tmp_path / 'far'
    far.mkdir()
    seed.seed_copy(source.repo.root, str(far))

    def refused(*args):
        raise AssertionError('a file with block checksums was hashed whole: %r' % (args,))

    monkeypatch.setattr(seed, 'sha256_file', refused)
    again = seed.seed_copy(source.repo.root, str(far))
    assert again['changed'] is False and again['skipped_files'] == 6


def test_a_legacy_history_is_copied_by_its_sha256_without_block_checksums(tmp_path):
    legacy = RepoBuilder(str(tmp_path / 'old'), disks=1, legacy=True)
    for number in range(2):
        legacy.add_point(full=number == 0)
    far = tmp_path / 'far'
    far.mkdir()
    done = seed.seed_copy(legacy.repo.root, str(far))
    [report] = done['vms']
    assert sorted(report['checksums']['sha256']) == sorted(report['copied_files']) and len(report['copied_files']) == 2
    assert tree(str(far)) == [name for name in tree(legacy.repo.root) if not name.endswith('.lock')]
    assert not [name for name in tree(str(far)) if name.endswith('.blocksums')]
    # a damaged legacy file is named with both digests, as before block checksums
    victim = legacy.repo.list_backups(VM)[0].disks[0].path
    _index, offset = first_block(victim)
    with open(victim, 'r+b') as handle:
        handle.seek(offset)
        handle.write(b'\x55\xaa')
    again = tmp_path / 'again'
    again.mkdir()
    with pytest.raises(IntegrityError, match='sha256 .* differs from the .* recorded'):
        seed.seed_copy(legacy.repo.root, str(again))


def test_a_missing_block_checksum_file_is_damage(source, tmp_path):
    victim = source.repo.list_backups(VM)[1].disks[0].path
    os.remove(victim + '.blocksums')
    far = tmp_path / 'far'
    far.mkdir()
    with pytest.raises(IntegrityError, match='block checksum file .* is missing'):
        seed.seed_copy(source.repo.root, str(far))


def test_refuses_a_non_repository_destination(source, tmp_path):
    junk = tmp_path / 'junk'
    junk.mkdir()
    (junk / 'file').write_text('x')
    with pytest.raises(seed.RepositoryError, match='not a backup repository'):
        seed.seed_copy(source.repo.root, str(junk))


@pytest.mark.parametrize('check_mode', [True, False])
def test_refuses_a_missing_destination_in_check_mode_too(source, tmp_path, check_mode):
    missing = tmp_path / 'not-mounted'
    with pytest.raises(seed.RepositoryError, match='%s is not a backup repository: it does not exist' % missing):
        seed.seed_copy(source.repo.root, str(missing), check_mode=check_mode)
    assert not missing.exists()


def test_a_damaged_block_stops_the_copy_where_it_is_read(tmp_path, monkeypatch):
    big = RepoBuilder(str(tmp_path / 'big'), disks=1)
    big.add_point(full=True, changed_blocks=16)
    victim = big.repo.list_backups(VM)[0].disks[0].path
    index, offset = first_block(victim)
    with open(victim, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x80]))
    written = []
    real = LocalAtomicWriter.write

    def counting(self, data):
        written.append(len(data))
        return real(self, data)

    monkeypatch.setattr(LocalAtomicWriter, 'write', counting)
    far = tmp_path / 'far'
    far.mkdir()
    with pytest.raises(IntegrityError, match=r'block %d \(virtual offset %d\): does not match' % (index, index * BLOCK)):
        seed.seed_copy(big.repo.root, str(far))
    # the first block is in the first chunk copied: the copy stopped there, long before the end of the file
    assert 0 < sum(written) <= seed.COPY_CHUNK < os.path.getsize(victim) // 4
    assert not [name for name in tree(str(far)) if name.endswith('.vhd') or name.endswith('.blocksums')]
