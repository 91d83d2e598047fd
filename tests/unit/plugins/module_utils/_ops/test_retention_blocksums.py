# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Retention with block checksums: O(changed) checks, sidecars kept true through kills, legacy repositories migrated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import HASH_NAME
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import retention
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo import integrity, migrate
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage.local import LocalFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile, merge
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import sidecar_name
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import (
    BLOCK, JOB, VM, RepoBuilder, assert_points_restorable,
)

CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
KILL_SCRIPT = r'''
import sys
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import retention
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
retention.apply_retention(open_repository(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
'''


def _history(root, legacy=False, points=4, size=12 * BLOCK, full_blocks=3):
    builder = RepoBuilder(root, disks=1, size=size, legacy=legacy)
    for number in range(points):
        builder.add_point(full=number == 0, changed_blocks=full_blocks if number == 0 else 3)
    return builder


def _flip(path, offset):
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def _own(point):
    return point.metadata['xapi_delta_backup']


def test_merge_reads_none_of_the_fulls_blocks(tmp_path, monkeypatch):
    """The check before the merge, the merge and the metadata update read the deltas, never the full's data."""
    builder = _history(str(tmp_path / 'repo'), size=48 * BLOCK, full_blocks=48)
    stamps = sorted(builder.truth)
    full = builder.repo.get_backup(VM, stamps[0]).disks[0].storage_path
    delta_bytes = sum(os.path.getsize(d.path) for s in stamps[1:3] for d in builder.repo.get_backup(VM, s).disks)
    read = {}
    real = LocalFile.pread

    def counting(self, length, offset):
        data = real(self, length, offset)
        read[self.path] = read.get(self.path, 0) + len(data)
        return data

    monkeypatch.setattr(LocalFile, 'pread', counting)
    report = retention.apply_retention(builder.repo, VM, JOB, 2)
    monkeypatch.undo()
    assert report['merged'] and report['bytes_merged'] > 0
    # The full holds 48 blocks (96 MiB): only its footer, header and BAT are read (a few KiB), whereas a
    # whole-file checksum (the design before block checksums) reads all of it.
    assert os.path.getsize(builder.repo.get_backup(VM, stamps[2]).disks[0].path) > 40 * BLOCK
    assert read.get(full, 0) <= 64 * 1024, read.get(full)
    assert sum(read.values()) <= 2 * delta_bytes + 1024 * 1024, (sum(read.values()), delta_bytes)
    assert_points_restorable(builder, stamps[2:])


def test_a_flipped_bit_in_the_fulls_bat_refuses_the_merge(tmp_path):
    builder = _history(str(tmp_path / 'repo'))
    stamps = sorted(builder.truth)
    full = builder.repo.get_backup(VM, stamps[0]).disks[0].path
    with VhdFile(full) as vhd:
        bat_offset = vhd.header.table_offset
    _flip(full, bat_offset + 4 * 11 + 3)  # one BAT entry: a structure the merge rewrites, never to be trusted blindly
    before = sorted(os.listdir(os.path.dirname(full)))
    with pytest.raises(integrity.IntegrityError) as caught:
        retention.apply_retention(builder.repo, VM, JOB, 2)
    assert full in str(caught.value)
    assert len(builder.repo.list_backups(VM)) == 4 and sorted(os.listdir(os.path.dirname(full))) == before


def test_a_flipped_bit_in_any_delta_block_refuses_the_merge_naming_the_block(tmp_path):
    builder = _history(str(tmp_path / 'repo'))
    stamps = sorted(builder.truth)
    delta = builder.repo.get_backup(VM, stamps[2]).disks[0].path
    with VhdFile(delta) as vhd:
        blocks = [index for index in range(vhd.block_count) if vhd.block_offset(index) is not None]
        victim = blocks[-1]
        _flip(delta, vhd.block_offset(victim) + vhd.bitmap_size + BLOCK // 2)
    with pytest.raises(integrity.IntegrityError) as caught:
        retention.apply_retention(builder.repo, VM, JOB, 1)
    assert '%s: block %d (virtual offset %d)' % (delta, victim, victim * BLOCK) in str(caught.value)
    assert len(builder.repo.list_backups(VM)) == 4


def _kill_then_finish(builder, keep, kill_after):
    completed = subprocess.run([sys.executable, '-c', KILL_SCRIPT, builder.repo.root, VM, JOB, str(keep)],
                               env=dict(CHILD_ENV, **{merge.KILL_ENV: str(kill_after)}), capture_output=True, check=False)
    return completed


def _count_merge_operations(builder, keep, monkeypatch):
    counts = []
    real = merge._Io.tick

    def tick(self, what):
        counts.append(what)
        return real(self, what)

    monkeypatch.setattr(merge._Io, 'tick', tick)
    retention.apply_retention(builder.repo, VM, JOB, keep)
    monkeypatch.undo()
    return len(counts)


@pytest.mark.parametrize('legacy', [False, True], ids=['block-checksums', 'migration'])
def test_retention_killed_at_every_merge_operation_then_finished(tmp_path, monkeypatch, legacy):
    """A kill at every operation of the merges (engine writes, fsyncs, renames, sidecar saves), then the next run:
    every kept point verifies block by block and reads byte for byte."""
    total = _count_merge_operations(_history(str(tmp_path / 'probe'), legacy=legacy), 1, monkeypatch)
    assert total > 20
    for kill_after in range(1, total + 1):
        builder = _history(str(tmp_path / ('kill%d' % kill_after)), legacy=legacy)
        stamps = sorted(builder.truth)
        completed = _kill_then_finish(builder, 1, kill_after)
        if kill_after < total:
            assert completed.returncode == -signal.SIGKILL, (kill_after, completed.stderr[-2000:])
        report = retention.apply_retention(builder.repo, VM, JOB, 1)
        assert report['kept_points'] == stamps[-1:]
        assert not retention.unfinished_merges(builder.repo, VM)
        assert_points_restorable(builder, stamps[-1:])
        point = builder.repo.get_backup(VM, stamps[-1])
        relative = point.disks[0].relative_path
        assert _own(point)['block_checksums'] == {relative: HASH_NAME} and not _own(point).get(HASH_NAME), kill_after
        folder = os.path.dirname(point.disks[0].path)
        assert sorted(os.listdir(folder)) == sorted([os.path.basename(relative), os.path.basename(sidecar_name(relative))]), kill_after


def test_a_legacy_repository_is_migrated_by_its_first_merge(tmp_path):
    builder = _history(str(tmp_path / 'repo'), legacy=True, points=5)
    stamps = sorted(builder.truth)
    chain_files = [builder.repo.get_backup(VM, s).disks[0].relative_path for s in stamps[:4]]
    assert not any(os.path.exists(sidecar_name(builder.repo.get_backup(VM, s).disks[0].path)) for s in stamps)
    report = retention.apply_retention(builder.repo, VM, JOB, 2)
    # The chain of the oldest kept point (full + 3 deltas) was read once and given sidecars; the newest point
    # was not touched by the merge and keeps its legacy checksum.
    assert sorted(report['migrated']) == sorted(chain_files)
    assert report['changed'] is True
    newest = builder.repo.get_backup(VM, stamps[4])
    assert not os.path.exists(sidecar_name(newest.disks[0].path))
    assert _own(newest)['sha256']
    kept = builder.repo.get_backup(VM, stamps[3])
    assert list(_own(kept)['block_checksums']) == [kept.disks[0].relative_path] and not _own(kept)['sha256']
    assert_points_restorable(builder, stamps[3:])
    again = retention.apply_retention(builder.repo, VM, JOB, 1)
    assert again['migrated'] == [newest.disks[0].relative_path]
    assert_points_restorable(builder, stamps[4:])


def test_a_legacy_file_not_matching_its_sha256_refuses_the_migration(tmp_path):
    builder = _history(str(tmp_path / 'repo'), legacy=True)
    stamps = sorted(builder.truth)
    victim = builder.repo.get_backup(VM, stamps[1]).disks[0].path
    _flip(victim, os.path.getsize(victim) - 512 - 1000)  # inside the last block's data
    with pytest.raises(integrity.IntegrityError) as caught:
        retention.apply_retention(builder.repo, VM, JOB, 1)
    assert victim in str(caught.value) and 'sha256' in str(caught.value)
    assert not os.path.exists(sidecar_name(victim))
    assert len(builder.repo.list_backups(VM)) == 4
    assert _own(builder.repo.get_backup(VM, stamps[1]))['sha256']


def test_a_migration_killed_between_sidecar_and_metadata_is_completed(tmp_path, monkeypatch):
    builder = _history(str(tmp_path / 'repo'), legacy=True)
    stamps = sorted(builder.truth)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(migrate, '_move_entry', crash)
    with pytest.raises(KeyboardInterrupt):
        retention.apply_retention(builder.repo, VM, JOB, 1)
    monkeypatch.undo()
    # The chain is migrated newest first: the newest file got its sidecar, its metadata entry did not move.
    newest = builder.repo.get_backup(VM, stamps[-1]).disks[0]
    assert os.path.exists(sidecar_name(newest.path)) and newest.relative_path in _own(builder.repo.get_backup(VM, stamps[-1]))['sha256']
    report = retention.apply_retention(builder.repo, VM, JOB, 1)
    assert newest.relative_path not in report['migrated']  # its sidecar was there: only the metadata entry moved
    assert len(report['migrated']) == 3
    assert_points_restorable(builder, stamps[-1:])


def test_cleanup_keeps_the_sidecar_of_an_unfinished_merge_and_removes_a_stray_one(tmp_path):
    builder = _history(str(tmp_path / 'repo'))
    stamps = sorted(builder.truth)
    # Operations 1-3 save the result's sidecar (temporary write, rename, folder fsync), 4-5 the state naming it.
    completed = _kill_then_finish(builder, 1, 5)
    assert completed.returncode == -signal.SIGKILL
    [state] = retention.unfinished_merges(builder.repo, VM)
    folder = os.path.dirname(builder.repo.storage.describe(state))
    full_name = os.path.basename(builder.repo.get_backup(VM, stamps[-1]).disks[0].path)  # metadata of older points went first
    hidden = [name for name in os.listdir(folder) if name.endswith('.merge.blocksums')]
    assert len(hidden) == 1
    stray = os.path.join(folder, '.20250101T010000Z.vhd.merge.blocksums')  # no state names it: a crash before the state was saved
    with open(stray, 'wb') as handle:
        handle.write(b'left by a crash')
    removed = builder.repo.cleanup_incomplete(VM)
    assert stray in removed['temporary_files'] and not os.path.exists(stray)
    assert os.path.exists(os.path.join(folder, hidden[0])), 'the unfinished merge still needs it'
    assert full_name in os.listdir(folder)
    retention.apply_retention(builder.repo, VM, JOB, 1)
    assert not [name for name in os.listdir(folder) if name.startswith('.')]
    assert_points_restorable(builder, stamps[-1:])


def test_a_file_merged_by_another_tool_is_reconciled_without_being_called_damaged(tmp_path):
    """Xen Orchestra merges in place too, but leaves the delta's sidecar: the flag and size are fixed, the entry kept."""
    builder = _history(str(tmp_path / 'repo'), points=2)
    stamps = sorted(builder.truth)
    full, delta = (builder.repo.get_backup(VM, s).disks[0] for s in stamps)
    with open(sidecar_name(delta.path), 'rb') as handle:
        delta_sidecar = handle.read()
    merge.merge_chain(full.path, [delta.path])
    with open(sidecar_name(delta.path), 'wb') as handle:  # as another tool leaves it: the delta's
        handle.write(delta_sidecar)
    builder.repo.remove_metadata(VM, stamps[0])
    point = builder.repo.get_backup(VM, stamps[1])
    assert retention.reconcile_merged_points(builder.repo, [point]) == [delta.relative_path]
    point = builder.repo.get_backup(VM, stamps[1])
    assert point.metadata['isVhdDifferencing'] == {point.disks[0].vdi_ref: False}
    assert _own(point)['block_checksums'] == {delta.relative_path: HASH_NAME}
    with open(sidecar_name(delta.path), 'rb') as handle:
        assert handle.read() == delta_sidecar  # left for the integrity check to judge block by block


def test_check_mode_on_a_legacy_repository_checks_and_writes_nothing(tmp_path):
    builder = _history(str(tmp_path / 'repo'), legacy=True)
    before = sorted((folder, sorted(files)) for folder, _dirs, files in os.walk(builder.repo.root))
    report = retention.apply_retention(builder.repo, VM, JOB, 1, check_mode=True)
    assert report['changed'] is True and report['migrated'] == [] and len(report['merged']) == 1
    assert sorted((folder, sorted(files)) for folder, _dirs, files in os.walk(builder.repo.root)) == before
    victim = builder.repo.get_backup(VM, sorted(builder.truth)[0]).disks[0].path
    _flip(victim, os.path.getsize(victim) - 512 - 1000)
    with pytest.raises(integrity.IntegrityError, match='sha256'):
        retention.apply_retention(builder.repo, VM, JOB, 1, check_mode=True)
