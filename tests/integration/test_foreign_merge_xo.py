# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A merge made by Xen Orchestra's own code (vhd-lib ``mergeVhdChain``, run by Node.js from ``tests/xo_merge``) on our chains.

The harness is installed with ``npm ci`` once per session into a build folder; if that fails the
tests fail (CI installs it).  A repository of a full and two deltas (with block checksums) is
merged as XO's retention does when the oldest point goes: the full and the first delta become one
file at the delta's name, the JSON of the removed point goes, the next JSON gets ``size`` and
``isVhdDifferencing`` updated.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.catalog import describe_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.restore import prepare_restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.retention import apply_retention
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo import integrity
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.foreign_merge import resolve_foreign_merges
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import FLAG_FOREIGN_MERGE, BlockSums, sidecar_name
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.merge import merge_chain
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import (
    BLOCK, JOB, VM, RepoBuilder, assert_points_restorable, chain_sha,
)

HARNESS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'xo_merge')


@pytest.fixture(scope='session')
def xo_merge(tmp_path_factory):
    """The path of the harness script, installed with ``npm ci`` from the committed lock file."""
    build = tmp_path_factory.mktemp('xo_merge_build')
    for name in ('package.json', 'package-lock.json', 'merge.mjs'):
        shutil.copy(os.path.join(HARNESS, name), build / name)
    shutil.copytree(os.path.join(HARNESS, 'unavailable'), build / 'unavailable')
    installed = subprocess.run(['npm', 'ci', '--no-audit', '--no-fund'], cwd=build, capture_output=True, text=True, timeout=900, check=False)
    assert installed.returncode == 0, 'npm ci of the XO merge harness failed:\n%s\n%s' % (installed.stdout, installed.stderr)
    return str(build / 'merge.mjs')


def xo_merge_points(builder: RepoBuilder, script: str, merged: list) -> list:
    """What XO's retention does when the points ``merged[:-1]`` (consecutive indices) go: merge their files into the next one's.

    Returns the names merged, oldest first (the last is the name the merged file keeps).
    """
    repo = builder.repo
    points = repo.list_backups(VM)
    chain = [points[number] for number in merged]
    folder = os.path.dirname(chain[0].disks[0].storage_path)
    names = [os.path.basename(point.disks[0].storage_path) for point in chain]
    done = subprocess.run(['node', script, repo.local_path(folder)] + names, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])['finalVhdSize'] > 0
    # the JSON changes XO makes: the removed points' JSONs go; the kept one gets its size and every VDI marked
    # not differencing, whatever the merged file is (backup-archive VmIncrementalBackupArchive.updateMetadata)
    for point in chain[:-1]:
        os.unlink(repo.local_path(point.metadata_storage_path))
        del builder.truth[point.timestamp]
    target = chain[-1]
    metadata = dict(target.metadata)
    metadata['isVhdDifferencing'] = {ref: False for ref in metadata['vdis']}
    metadata['size'] = os.path.getsize(repo.local_path(target.disks[0].storage_path))
    with open(repo.local_path(target.metadata_storage_path), 'w') as handle:
        json.dump(metadata, handle)
    repo.forget_listing(VM)
    return names


SCENARIOS = {'full+delta': [0, 1], 'full+2-deltas': [0, 1, 2], 'middle-deltas': [1, 2]}


@pytest.fixture(params=sorted(SCENARIOS))
def merged_by_xo(request, tmp_path, xo_merge):
    builder = RepoBuilder(str(tmp_path / 'repo'), size=12 * BLOCK)
    for number in range(4):
        builder.add_point(full=number == 0, changed_blocks=3)
    names = xo_merge_points(builder, xo_merge, SCENARIOS[request.param])
    return builder, names


def merged_point(builder: RepoBuilder, names: list):
    """The point whose file XO's merge left (at the newest merged name)."""
    return next(point for point in builder.repo.list_backups(VM) if point.disks[0].storage_path.endswith('/' + names[-1]))


def test_xo_merge_leaves_our_sidecars_and_the_merged_file_at_the_childs_name(merged_by_xo):
    builder, names = merged_by_xo
    point = merged_point(builder, names)
    folder = builder.repo.local_path(os.path.dirname(point.disks[0].storage_path))
    present = sorted(os.listdir(folder))
    # XO renamed the oldest file to the newest merged name and removed the others; every sidecar stays behind
    assert [name for name in names if name in present] == [names[-1]]
    assert all(sidecar_name(name) in present for name in names)
    sums = BlockSums.load_for(builder.repo.storage, point.disks[0].storage_path)
    with VhdFile.open(os.path.join(folder, names[-1])) as vhd:
        assert vhd.unique_id == sums.unique_id  # the newest child's unique id ...
        assert vhd.disk_type != sums.disk_type or vhd.header.parent_unique_id != sums.parent_unique_id  # ... on another file


def test_verify_reports_a_foreign_merge_and_no_damage(merged_by_xo):
    builder, names = merged_by_xo
    result = describe_repository(builder.repo, verify=True)
    assert result['problems'] == [] and result['damaged_blocks'] == []
    [report] = result['foreign_merges']
    assert report['ok'] is True and report['merged_from'] == names and report['file'].endswith('/' + names[-1])
    assert report['blocks_checked'] > 0 and report['unknown_blocks'] == []
    # verify is read-only: nothing was recorded
    point = merged_point(builder, names)
    assert BlockSums.load_for(builder.repo.storage, point.disks[0].storage_path).flags & FLAG_FOREIGN_MERGE == 0


def test_readers_refuse_an_unresolved_foreign_merge_then_accept_it_once_resolved(merged_by_xo):
    builder, names = merged_by_xo
    repo = builder.repo
    points = repo.list_backups(VM)
    chain = repo.vhd_chain(points[-1], points[-1].disks[0])
    with pytest.raises(integrity.IntegrityError, match='merged by another tool'):
        integrity.check_chain_integrity(repo, VM, chain, points, 'restore', read_blocks=True)
    with repo.lock(VM, 'backup_merge'):
        resolved = resolve_foreign_merges(repo, VM)
    assert [merge.ok for merge in resolved] == [True]
    folder = repo.local_path(os.path.dirname(points[0].disks[0].storage_path))
    assert not [name for name in names[:-1] if sidecar_name(name) in os.listdir(folder)], 'the stale sidecars are removed'
    assert BlockSums.load_for(repo.storage, merged_point(builder, names).disks[0].storage_path).flags & FLAG_FOREIGN_MERGE
    assert_points_restorable(builder, sorted(builder.truth))
    after = describe_repository(repo, verify=True)
    assert after['problems'] == [] and after['foreign_merges'] == []


@pytest.mark.parametrize('source', ['child', 'parent'])
def test_a_flipped_bit_in_the_merged_file_is_damage_naming_the_block(merged_by_xo, source):
    builder, names = merged_by_xo
    repo = builder.repo
    point = merged_point(builder, names)
    path = repo.local_path(point.disks[0].storage_path)
    written_by_the_merge = merged_from_children(builder, names)  # before resolving replaces and removes those sidecars
    with VhdFile.open(path) as vhd:
        present = [i for i in range(vhd.block_count) if vhd.bat[i] != 0xFFFFFFFF]
        # the last block a merged child held, or the last the old parent alone held
        index = max(i for i in present if (i in written_by_the_merge) == (source == 'child'))
        offset = vhd.bat[index] * 512 + vhd.bitmap_size + 1234
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x10]))
    result = describe_repository(repo, verify=True)
    [merge] = result['foreign_merges']
    assert merge['ok'] is False
    blocks = [(block['file'], block['block']) for block in result['damaged_blocks']]
    assert blocks == [(merge['file'], index)]
    assert result['damaged_blocks'][0]['virtual_offset'] == index * BLOCK
    # exactly the points whose disks no longer read as written (read without any checksum)
    wrong = sorted(other.timestamp for other in repo.list_backups(VM)
                   if chain_sha(repo, other, other.disks[0]) != builder.expected_disk(other.timestamp, 0))
    assert point.timestamp in wrong and result['damaged_blocks'][0]['points'] == wrong
    with repo.lock(VM, 'backup_merge'):
        [resolved] = resolve_foreign_merges(repo, VM)
    recorded = BlockSums.load_for(repo.storage, point.disks[0].storage_path)
    if source == 'child':
        # a block the merge wrote is read when resolving: not recorded
        assert not resolved.ok and recorded.flags & FLAG_FOREIGN_MERGE == 0
    else:
        # the old parent's own block is not read when resolving (what changed only): recorded with the digest it had,
        # so the damage stays damage, named, for verify and for every reader
        assert resolved.ok and recorded.flags & FLAG_FOREIGN_MERGE
        again = describe_repository(repo, verify=True)
        assert [(block['file'], block['block'], block['points']) for block in again['damaged_blocks']] == [(merge['file'], index, wrong)]
    chain = repo.vhd_chain(point, point.disks[0])
    with pytest.raises(integrity.IntegrityError, match=r'block %d \(virtual offset %d\)|merged by another tool' % (index, index * BLOCK)):
        integrity.check_chain_integrity(repo, VM, chain, repo.list_backups(VM), 'restore', read_blocks=True)


def merged_from_children(builder: RepoBuilder, names: list) -> set:
    """Blocks of the merged file that a merged child held (from the children's own sidecars, still in the folder)."""
    folder = os.path.dirname(merged_point(builder, names).disks[0].storage_path)
    held = set()
    for name in names[1:]:
        sums = BlockSums.load(builder.repo.storage, sidecar_name(folder + '/' + name))
        held.update(index for index in range(sums.entries) if sums.digest(index) != bytes(32))
    return held


def test_our_merge_works_after_a_resolved_xo_merge(merged_by_xo):
    builder, names = merged_by_xo
    repo = builder.repo
    with repo.lock(VM, 'backup_merge'):
        resolve_foreign_merges(repo, VM)
    points = repo.list_backups(VM)
    newest = points[-1]
    expected = chain_sha(repo, newest, newest.disks[0])
    chain = repo.vhd_chain(newest, newest.disks[0])
    assert len(chain) >= 2
    integrity.check_chain_integrity(repo, VM, chain, points, 'merge', read_blocks=True)  # what our merge checks first
    result = merge_chain(chain[-1], list(reversed(chain[:-1])), storage=repo.storage)
    with VhdFile.open_in(repo.storage, result) as vhd:
        assert vhd.is_dynamic
    assert chain_sha(repo, newest, newest.disks[0]) == expected == builder.expected_disk(newest.timestamp, 0)


def test_backup_merge_records_the_xo_merge_then_merges_on(merged_by_xo):
    """What backup_merge runs: the XO merge is found, checked and recorded under the lock, then retention merges as usual."""
    builder, names = merged_by_xo
    repo = builder.repo
    before = [point.timestamp for point in repo.list_backups(VM)]
    report = apply_retention(repo, VM, JOB, keep=1)
    [foreign] = report['foreign_merges']
    assert foreign['ok'] and foreign['merged_from'] == names and foreign['file'].endswith('/' + names[-1])
    assert foreign['blocks_checked'] > 0 and foreign['problems'] == []
    assert report['kept_points'] == before[-1:] and report['removed_points'] == before[:-1]
    assert_points_restorable(builder, before[-1:])
    assert apply_retention(repo, VM, JOB, keep=1)['foreign_merges'] == []  # recorded once


def test_backup_merge_check_mode_reports_the_xo_merge_and_writes_nothing(merged_by_xo):
    builder, names = merged_by_xo
    repo = builder.repo
    folder = os.path.dirname(repo.local_path(repo.list_backups(VM)[0].disks[0].storage_path))
    listing = sorted(os.listdir(folder))
    report = apply_retention(repo, VM, JOB, keep=1, check_mode=True)
    assert [merge['merged_from'] for merge in report['foreign_merges']] == [names]
    assert sorted(os.listdir(folder)) == listing


def test_a_restore_records_a_sound_xo_merge_and_refuses_an_unsound_one_naming_the_block(merged_by_xo):
    """vm_restore holds the VM's lock: it records the XO merge as backup_merge would, and reads every point."""
    builder, names = merged_by_xo
    repo = builder.repo
    merged = os.path.join(os.path.dirname(repo.list_backups(VM)[0].disks[0].storage_path), names[-1])
    sums = BlockSums.load_for(repo.storage, merged)  # still the newest merged child's: what the XO merge wrote is checked against it
    written = next(index for index in range(sums.entries) if sums.digest(index) != bytes(32))
    with VhdFile.open_in(repo.storage, merged) as vhd:
        offset = vhd.bat[written] * 512 + vhd.bitmap_size + 4096
    damaged = repo.local_path(merged)
    with open(damaged, 'r+b') as handle:
        handle.seek(offset)
        original = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([original[0] ^ 1]))
    refusal = r'merged by another tool, and .*block %d \(virtual offset %d\)' % (written, written * BLOCK)
    with repo.lock(VM, 'vm_restore'), pytest.raises(integrity.IntegrityError, match=refusal):
        prepare_restore(repo, VM, None, 'latest', None, finish_merges=True)
    with open(damaged, 'r+b') as handle:
        handle.seek(offset)
        handle.write(original)
    for number in range(len(repo.list_backups(VM))):
        with repo.lock(VM, 'vm_restore'):
            checked = prepare_restore(repo, VM, None, number, None, finish_merges=True)
        assert checked.point.timestamp in builder.truth
    assert BlockSums.load_for(repo.storage, merged).flags & FLAG_FOREIGN_MERGE
    assert_points_restorable(builder, sorted(builder.truth))


def fresh_history(tmp_path) -> RepoBuilder:
    builder = RepoBuilder(str(tmp_path / 'repo'), size=12 * BLOCK)
    for number in range(3):
        builder.add_point(full=number == 0, changed_blocks=3)
    return builder


def test_without_the_merged_parents_sidecar_the_merge_is_damage_not_accepted(tmp_path, xo_merge):
    builder = fresh_history(tmp_path)
    full = builder.repo.list_backups(VM)[0].disks[0].storage_path
    builder.repo.storage.remove(sidecar_name(full))  # nothing left to check the merged file against
    names = xo_merge_points(builder, xo_merge, [0, 1])
    result = describe_repository(builder.repo, verify=True)
    assert result['foreign_merges'] == []
    merged = merged_point(builder, names).disks[0].path
    assert any(problem.startswith(merged + ': ') for problem in result['problems']), result['problems']
    with builder.repo.lock(VM, 'backup_merge'):
        assert resolve_foreign_merges(builder.repo, VM) == []


def test_a_block_of_unknown_checksum_stays_unknown_and_is_said(tmp_path, xo_merge):
    builder = fresh_history(tmp_path)
    delta = builder.repo.list_backups(VM)[1].disks[0].storage_path
    sums = BlockSums.load_for(builder.repo.storage, delta)
    with VhdFile.open_in(builder.repo.storage, delta) as vhd:
        index = next(i for i in range(vhd.block_count) if vhd.bat[i] != 0xFFFFFFFF)
    sums.set(index, b'\xff' * 32)  # UNKNOWN: e.g. a block whose checksum a kill left unknown
    sums.save(builder.repo.storage, sidecar_name(delta))
    xo_merge_points(builder, xo_merge, [0, 1])
    [report] = describe_repository(builder.repo, verify=True)['foreign_merges']
    assert report['ok'] is True and report['unknown_blocks'] == [index]
    with builder.repo.lock(VM, 'backup_merge'):
        [resolved] = resolve_foreign_merges(builder.repo, VM)
    assert resolved.sums.digest(index) == b'\xff' * 32


def test_an_unfinished_merge_is_not_taken_for_a_finished_foreign_one(merged_by_xo):
    builder, names = merged_by_xo
    point = merged_point(builder, names)
    folder = os.path.dirname(point.disks[0].storage_path)
    builder.repo.storage.write_bytes_atomically(folder + '/.' + names[0] + '.merge.json', b'{}')
    result = describe_repository(builder.repo, verify=True)
    assert result['foreign_merges'] == [] and result['problems']


def test_recording_stopped_between_its_steps_leaves_every_point_verified(tmp_path, xo_merge, monkeypatch):
    """Killed after the new sidecar and before the stale ones go: the merge is recorded; the next run removes the leftovers."""
    builder = fresh_history(tmp_path)
    names = xo_merge_points(builder, xo_merge, [0, 1])
    repo = builder.repo

    def killed(path):
        raise OSError('killed before removing %s' % path)
    with monkeypatch.context() as patch:
        patch.setattr(repo.storage, 'remove', killed)
        with repo.lock(VM, 'backup_merge'), pytest.raises(OSError, match='killed'):
            resolve_foreign_merges(repo, VM)
    folder = repo.local_path(os.path.dirname(merged_point(builder, names).disks[0].storage_path))
    assert sidecar_name(names[0]) in os.listdir(folder)  # the stale sidecar is still there
    result = describe_repository(repo, verify=True)
    assert result['problems'] == [] and result['foreign_merges'] == [] and result['damaged_blocks'] == []
    assert_points_restorable(builder, sorted(builder.truth))
    with repo.lock(VM, 'backup_merge'):
        assert resolve_foreign_merges(repo, VM) == []  # nothing left to record ...
    assert sidecar_name(names[0]) not in os.listdir(folder)  # ... and the leftover is gone
    assert_points_restorable(builder, sorted(builder.truth))
