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
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo import integrity
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.foreign_merge import resolve_foreign_merges
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import FLAG_FOREIGN_MERGE, BlockSums, sidecar_name
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.merge import merge_chain
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import (
    BLOCK, VM, RepoBuilder, assert_points_restorable, chain_sha,
)

HARNESS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'xo_merge')


@pytest.fixture(scope='session')
def xo_merge(tmp_path_factory):
    """The path of the harness script, installed with ``npm ci`` from the committed lock file."""
    build = tmp_path_factory.mktemp('xo_merge_build')
    for name in ('package.json', 'package-lock.json', 'merge.mjs'):
        shutil.copy(os.path.join(HARNESS, name), build / name)
    shutil.copytree(os.path.join(HARNESS, 'unavailable'), build / 'unavailable')
    installed = subprocess.run(['npm', 'ci', '--no-audit', '--no-fund'], cwd=build, capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, 'npm ci of the XO merge harness failed:\n%s\n%s' % (installed.stdout, installed.stderr)
    return str(build / 'merge.mjs')


def xo_merge_oldest_point(builder: RepoBuilder, script: str) -> tuple[str, str]:
    """What XO's retention does when the oldest point goes: merge the full into the next delta; returns (gone, merged) names."""
    repo = builder.repo
    oldest, following = repo.list_backups(VM)[:2]
    disk = oldest.disks[0]
    folder = os.path.dirname(disk.storage_path)
    local = repo.local_path(folder)
    parent, child = os.path.basename(disk.storage_path), os.path.basename(following.disks[0].storage_path)
    merged = subprocess.run(['node', script, local, parent, child], capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout.strip().splitlines()[-1])['finalVhdSize'] > 0
    # the JSON changes XO makes: the removed point's JSON goes, the next one says its file is no longer a delta
    os.unlink(repo.local_path(oldest.metadata_storage_path))
    metadata = dict(following.metadata)
    metadata['isVhdDifferencing'] = {ref: False for ref in metadata['isVhdDifferencing']}
    metadata['size'] = os.path.getsize(repo.local_path(following.disks[0].storage_path))
    with open(repo.local_path(following.metadata_storage_path), 'w') as handle:
        json.dump(metadata, handle)
    repo.forget_listing(VM)
    return parent, child


@pytest.fixture
def merged_by_xo(tmp_path, xo_merge):
    builder = RepoBuilder(str(tmp_path / 'repo'), size=12 * BLOCK)
    for number in range(3):
        builder.add_point(full=number == 0, changed_blocks=3)
    gone, merged = xo_merge_oldest_point(builder, xo_merge)
    del builder.truth[sorted(builder.truth)[0]]
    return builder, gone, merged


def test_xo_merge_leaves_our_sidecars_and_the_merged_file_at_the_childs_name(merged_by_xo):
    builder, gone, merged = merged_by_xo
    folder = builder.repo.local_path(os.path.dirname(builder.repo.list_backups(VM)[0].disks[0].storage_path))
    names = sorted(os.listdir(folder))
    # XO renamed the full to the delta's name; the full's sidecar stays behind, the child's too
    assert gone not in names and merged in names
    assert sidecar_name(gone) in names and sidecar_name(merged) in names
    with VhdFile.open(os.path.join(folder, merged)) as vhd:
        sums = BlockSums.load(builder.repo.storage, sidecar_name(builder.repo.list_backups(VM)[0].disks[0].storage_path))
        assert vhd.is_dynamic and vhd.unique_id == sums.unique_id  # the child's unique id on a file that is no longer a delta


def test_verify_reports_a_foreign_merge_and_no_damage(merged_by_xo):
    builder, gone, merged = merged_by_xo
    result = describe_repository(builder.repo, verify=True)
    assert result['problems'] == [] and result['damaged_blocks'] == []
    [report] = result['foreign_merges']
    assert report['ok'] is True and report['merged_from'] == [gone, merged] and report['file'].endswith(merged)
    assert report['blocks_checked'] > 0 and report['unknown_blocks'] == []
    # verify is read-only: nothing was recorded
    point = builder.repo.list_backups(VM)[0]
    assert BlockSums.load_for(builder.repo.storage, point.disks[0].storage_path).flags & FLAG_FOREIGN_MERGE == 0


def test_readers_refuse_an_unresolved_foreign_merge_then_accept_it_once_resolved(merged_by_xo):
    builder, gone, merged = merged_by_xo
    repo = builder.repo
    points = repo.list_backups(VM)
    chain = repo.vhd_chain(points[-1], points[-1].disks[0])
    with pytest.raises(integrity.IntegrityError, match='merged by another tool'):
        integrity.check_chain_integrity(repo, VM, chain, points, 'restore', read_blocks=True)
    with repo.lock(VM, 'backup_merge'):
        resolved = resolve_foreign_merges(repo, VM)
    assert [merge.ok for merge in resolved] == [True]
    folder = repo.local_path(os.path.dirname(points[0].disks[0].storage_path))
    assert sidecar_name(gone) not in os.listdir(folder), 'the stale sidecar of the file XO merged away is removed'
    assert BlockSums.load_for(repo.storage, points[0].disks[0].storage_path).flags & FLAG_FOREIGN_MERGE
    assert_points_restorable(builder, sorted(builder.truth))
    after = describe_repository(repo, verify=True)
    assert after['problems'] == [] and after['foreign_merges'] == []


def test_a_flipped_bit_in_the_merged_file_is_damage_naming_the_block(merged_by_xo):
    builder, gone, merged = merged_by_xo
    repo = builder.repo
    point = repo.list_backups(VM)[0]
    path = repo.local_path(point.disks[0].storage_path)
    with VhdFile.open(path) as vhd:
        index = max(i for i in range(vhd.block_count) if vhd.bat[i] != 0xFFFFFFFF)
        offset = vhd.bat[index] * 512 + vhd.bitmap_size + 1234
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x10]))
    result = describe_repository(repo, verify=True, )
    [merge] = result['foreign_merges']
    assert merge['ok'] is False
    blocks = [(block['file'], block['block']) for block in result['damaged_blocks']]
    assert blocks == [(merge['file'], index)]
    assert result['damaged_blocks'][0]['virtual_offset'] == index * BLOCK
    # every point reading it: the merged point itself and the newer delta unless it holds that block
    assert point.timestamp in result['damaged_blocks'][0]['points']
    with repo.lock(VM, 'backup_merge'):
        [unresolved] = resolve_foreign_merges(repo, VM)
    assert not unresolved.ok and BlockSums.load_for(repo.storage, point.disks[0].storage_path).flags & FLAG_FOREIGN_MERGE == 0


def test_our_merge_works_after_a_resolved_xo_merge(merged_by_xo):
    builder, gone, merged = merged_by_xo
    repo = builder.repo
    with repo.lock(VM, 'backup_merge'):
        resolve_foreign_merges(repo, VM)
    points = repo.list_backups(VM)
    newest = points[-1]
    expected = chain_sha(repo, newest, newest.disks[0])
    chain = repo.vhd_chain(newest, newest.disks[0])
    assert len(chain) == 2
    integrity.check_chain_integrity(repo, VM, chain, points, 'merge', read_blocks=True)  # what our merge checks first
    result = merge_chain(chain[1], [chain[0]], storage=repo.storage)
    with VhdFile.open_in(repo.storage, result) as vhd:
        assert vhd.is_dynamic
    assert chain_sha(repo, newest, newest.disks[0]) == expected == builder.expected_disk(newest.timestamp, 0)
