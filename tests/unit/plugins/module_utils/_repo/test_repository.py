# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The store (store.py): opening a repository, writing points, listing, chains and clean-up, on real files in temporary folders.

Layout, metadata, atomic files, locks and integrity have test files of their own.
"""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import HASH_NAME
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import MetadataError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._repo.repo_testlib import (
    DELTA, FULL, JOB, T1, T2, T3, T4, VDI_A, VDI_B, VM, add_backup, real_vhd, tree,
)


@pytest.fixture
def repo(tmp_path):
    return open_repository(str(tmp_path), create=True)


# -- paths and opening ---------------------------------------------------------------------------


def test_paths_are_built_from_validated_parts_only(repo):
    assert repo.vhd_path(VM, JOB, VDI_A, T1) == os.path.join(repo.root, 'xo-vm-backups', VM, 'vdis', JOB, VDI_A, T1 + '.vhd')
    with pytest.raises(RepositoryError, match='VDI uuid .* is not a canonical lower-case uuid'):
        repo.vhd_path(VM, JOB, '../../' + VDI_A[6:], T1)
    with pytest.raises(RepositoryError, match="VM uuid 'my vm' is not a canonical lower-case uuid"):
        repo.metadata_path('my vm', T1)


def test_not_a_repository(tmp_path):
    with pytest.raises(RepositoryError, match='is not a backup repository: it has no xo-vm-backups folder'):
        open_repository(str(tmp_path))
    with pytest.raises(RepositoryError, match='is not a backup repository: it does not exist'):
        open_repository(str(tmp_path / 'missing'))
    (tmp_path / 'file').write_text('x')
    with pytest.raises(RepositoryError, match='not a directory'):
        open_repository(str(tmp_path / 'file'))


# -- permissions and writing ----------------------------------------------------------------------


def test_default_permissions_ignore_umask(repo):
    old = os.umask(0o022)
    try:
        add_backup(repo, T1, {VDI_A: FULL})
    finally:
        os.umask(old)
    vm_dir = repo.vm_dir(VM)
    for folder in (vm_dir, os.path.join(vm_dir, 'vdis'), repo.vdi_dir(VM, JOB, VDI_A)):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for path in (repo.metadata_path(VM, T1), repo.vhd_path(VM, JOB, VDI_A, T1)):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_configured_permissions(tmp_path):
    repo = open_repository(str(tmp_path), create=True, file_mode=0o640, dir_mode=0o750)
    add_backup(repo, T1, {VDI_A: FULL})
    assert stat.S_IMODE(os.stat(repo.vm_dir(VM)).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(repo.metadata_path(VM, T1)).st_mode) == 0o640


def test_metadata_refuses_missing_vhd(repo):
    metadata = add_backup(repo, T1, {VDI_A: FULL}, write_json=False)
    os.unlink(repo.vhd_path(VM, JOB, VDI_A, T1))
    with pytest.raises(RepositoryError, match='references is missing'):
        repo.write_metadata(VM, T1, metadata)


# -- listing -----------------------------------------------------------------------------------


def test_listing_vms_and_points(repo):
    add_backup(repo, T2, {VDI_A: FULL, VDI_B: FULL})
    add_backup(repo, T1, {VDI_A: FULL})
    other = 'ffffffff-0000-4000-8000-000000000000'
    add_backup(repo, T1, {VDI_A: FULL}, vm=other)
    os.mkdir(os.path.join(repo.backup_dir, 'not-a-uuid'))
    os.mkdir(os.path.join(repo.backup_dir, '.queue'))
    with repo.lock(VM, 'nightly'):
        assert repo.list_vms() == sorted([VM, other])
    points = repo.list_backups(VM)
    assert [p.timestamp for p in points] == [T1, T2]
    disks = points[1].disks
    assert [d.vdi_uuid for d in disks] == [VDI_A, VDI_B]
    assert disks[0].virtual_size == 10 * 1024 ** 3 and disks[0].job_id == JOB
    # written with block checksums: no whole-file sha256, the metadata lists the file under block_checksums and its checksum file is there
    assert disks[0].sha256 is None
    assert points[1].metadata['xapi_delta_backup']['block_checksums'] == {disk.path.split(repo.vm_dir(VM) + '/')[1]: HASH_NAME for disk in disks}
    assert all(os.path.isfile(disk.path + '.blocksums') for disk in disks)
    assert repo.get_backup(VM, T2).metadata['mode'] == 'delta'
    assert repo.list_backups('ffffffff-0000-4000-8000-00000000000a') == []


def test_half_written_backup_is_invisible(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA}, write_json=False)
    open(os.path.join(repo.vm_dir(VM), '.123-abcd.%s.json' % T3), 'w').write('{"trunc')
    assert [p.timestamp for p in repo.list_backups(VM)] == [T1]


def test_chain_newest_to_full(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T3, {VDI_A: FULL})
    add_backup(repo, T4, {VDI_A: DELTA})
    points = {p.timestamp: p for p in repo.list_backups(VM)}

    def names(point):
        return [os.path.basename(p) for p in repo.vhd_chain(point, point.disks[0])]
    assert names(points[T2]) == [T2 + '.vhd', T1 + '.vhd']
    assert names(points[T4]) == [T4 + '.vhd', T3 + '.vhd']
    assert names(points[T1]) == [T1 + '.vhd']


def test_chain_through_a_vhd_whose_json_was_pruned(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    os.unlink(repo.metadata_path(VM, T1))  # retention removes only the JSON
    point = repo.list_backups(VM)[0]
    assert [os.path.basename(p) for p in repo.vhd_chain(point, point.disks[0])] == [T2 + '.vhd', T1 + '.vhd']


def test_broken_chain_is_reported(repo):
    add_backup(repo, T2, {VDI_A: DELTA})
    point = repo.list_backups(VM)[0]
    with pytest.raises(RepositoryError, match='chain of .* is broken'):
        repo.vhd_chain(point, point.disks[0])
    with open(point.disks[0].path, 'wb') as garbage:
        garbage.write(b'not a vhd at all')
    with pytest.raises(RepositoryError, match='cannot read the chain of .*footer'):
        repo.vhd_chain(point, point.disks[0])


def test_chain_follows_parent_names_not_time_order(repo):
    # T3's delta names T2 as parent; a stray delta T2b (a run that died before its JSON) lies in
    # between by name. It is not part of T3's disk, and clean-up removes it.
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T3, {VDI_A: DELTA})
    stray = '20260102T120000Z'
    assert T2 < stray < T3
    with open(repo.vhd_path(VM, JOB, VDI_A, stray), 'wb') as vhd:
        vhd.write(real_vhd(DELTA, T2 + '.vhd', 99))
    point = [p for p in repo.list_backups(VM) if p.timestamp == T3][0]
    assert [os.path.basename(p) for p in repo.vhd_chain(point, point.disks[0])] == [T3 + '.vhd', T2 + '.vhd', T1 + '.vhd']
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == [repo.vhd_path(VM, JOB, VDI_A, stray)]


@pytest.mark.parametrize('parent_name, problem', [
    ('../../../../etc/passwd', 'not a backup file of its folder'),
    ('20250101T000000Z.vhd', 'not a backup file of its folder'),
    (T4 + '.vhd', 'which is not older'),
])
def test_chain_refuses_parents_outside_the_folder_or_newer(repo, parent_name, problem):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T4, {VDI_A: FULL})
    with open(repo.vhd_path(VM, JOB, VDI_A, T2), 'wb') as vhd:
        vhd.write(real_vhd(DELTA, parent_name, 7))
    point = [p for p in repo.list_backups(VM) if p.timestamp == T2][0]
    with pytest.raises(RepositoryError, match=problem):
        repo.vhd_chain(point, point.disks[0])


@pytest.mark.parametrize('mutate, problem', [
    (lambda m: 'not json {', 'not valid JSON'),
    (lambda m: [], 'top level must be an object'),
    (lambda m: dict(m, vhds=[]), "field 'vhds' must be an object, got list"),
    (lambda m: dict(m, timestamp='yesterday'), "field 'timestamp' must be an integer"),
    (lambda m: dict(m, timestamp=True), "field 'timestamp' must be an integer"),
    (lambda m: dict(m, mode='mirror'), "only 'delta' backups"),
    (lambda m: dict(m, version='1.0.0'), 'unsupported metadata version'),
    (lambda m: dict(m, vhds={'r': '../../../etc/passwd'}), 'is not a vdis/'),
    (lambda m: dict(m, isVhdDifferencing={'r': 'yes'}), 'must be a boolean'),
    (lambda m: {k: v for k, v in m.items() if k != 'jobId'}, "field 'jobId' must be a uuid string, got nothing"),
    (lambda m: dict(m, xapi_delta_backup={'sha256': []}), 'xapi_delta_backup'),
])
def test_bad_metadata_names_the_file(repo, mutate, problem):
    metadata = add_backup(repo, T1, {VDI_A: FULL})
    path = repo.metadata_path(VM, T1)
    os.chmod(path, 0o600)
    changed = mutate(metadata)
    with open(path, 'w') as target:
        target.write(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(MetadataError, match=re.escape(problem)) as caught:
        repo.list_backups(VM)
    assert path in str(caught.value) and problem in str(caught.value)


def test_xo_full_mode_backups_are_skipped(repo):
    add_backup(repo, T2, {VDI_A: FULL})
    with open(repo.metadata_path(VM, T1), 'w') as target:
        json.dump({'version': '2.0.0', 'mode': 'full', 'xva': './%s.xva' % T1, 'jobId': JOB, 'timestamp': 1}, target)
    assert [p.timestamp for p in repo.list_backups(VM)] == [T2]
    assert repo.cleanup_incomplete(VM) == {'temporary_files': [], 'unreferenced_vhds': []}


def test_integer_booleans_are_repaired(repo):
    metadata = add_backup(repo, T1, {VDI_A: FULL})
    metadata['isVhdDifferencing'] = {ref: 0 for ref in metadata['vhds']}
    with open(repo.metadata_path(VM, T1), 'w') as target:
        json.dump(metadata, target)
    assert repo.list_backups(VM)[0].disks[0].differencing is False


def test_reads_an_xo_written_json_without_our_fields(repo):
    metadata = add_backup(repo, T1, {VDI_A: FULL})
    del metadata['xapi_delta_backup']
    with open(repo.metadata_path(VM, T1), 'w') as target:
        json.dump(metadata, target)
    disk = repo.list_backups(VM)[0].disks[0]
    assert disk.sha256 is None and disk.virtual_size is None


# -- clean-up ------------------------------------------------------------------------------------


def test_cleanup_removes_half_written_run_but_keeps_referenced_chain(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    os.unlink(repo.metadata_path(VM, T1))  # pruned: T1.vhd is still the full of T2's chain
    add_backup(repo, T3, {VDI_A: DELTA, VDI_B: FULL}, write_json=False)  # died before its JSON
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    temp_vhd = os.path.join(vdi_dir, '.1767229200000-abcd.%s.vhd' % T4)
    temp_json = os.path.join(repo.vm_dir(VM), '.1767229200000-abcd.%s.json' % T4)
    for path in (temp_vhd, temp_json):
        open(path, 'wb').write(b'partial')
    before = tree(repo.root)

    preview = repo.cleanup_incomplete(VM, dry_run=True)
    assert tree(repo.root) == before
    report = repo.cleanup_incomplete(VM)
    assert report == preview
    assert sorted(report['temporary_files']) == sorted([temp_vhd, temp_json])
    assert sorted(report['unreferenced_vhds']) == sorted([os.path.join(vdi_dir, T3 + '.vhd'), repo.vhd_path(VM, JOB, VDI_B, T3)])
    remaining = [p for p in tree(repo.root) if p.endswith('.vhd')]
    assert remaining == sorted('xo-vm-backups/%s/vdis/%s/%s/%s.vhd' % (VM, JOB, VDI_A, t) for t in (T1, T2))
    assert repo.cleanup_incomplete(VM) == {'temporary_files': [], 'unreferenced_vhds': []}


def test_cleanup_leaves_an_unfinished_merge_alone(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T3, {VDI_A: DELTA})
    # Retention removed T1 and T2's JSON, a merge of T2 into T1 was interrupted.
    os.unlink(repo.metadata_path(VM, T1))
    os.unlink(repo.metadata_path(VM, T2))
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    state = os.path.join(vdi_dir, '.%s.vhd.merge.json' % T1)
    with open(state, 'w') as target:
        json.dump({'chain': [T1 + '.vhd', T2 + '.vhd'], 'step': 'mergeBlocks', 'currentBlock': 3}, target)
    # The state file is a dot-file, yet never a temporary file to delete.
    report = repo.cleanup_incomplete(VM)
    assert report == {'temporary_files': [], 'unreferenced_vhds': []}
    assert os.path.exists(state)
    files = [name + suffix for name in (T1 + '.vhd', T2 + '.vhd', T3 + '.vhd') for suffix in ('', '.blocksums')]
    assert sorted(os.listdir(vdi_dir)) == sorted(['.%s.vhd.merge.json' % T1] + files)


def test_cleanup_protects_merge_named_files_outside_any_chain(repo):
    add_backup(repo, T3, {VDI_A: FULL})
    add_backup(repo, T1, {VDI_A: FULL}, write_json=False)
    add_backup(repo, T2, {VDI_A: DELTA}, write_json=False)
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    with open(os.path.join(vdi_dir, '.%s.vhd.merge.json' % T1), 'w') as target:
        json.dump({'chain': ['%s.vhd' % T1, '%s.vhd' % T2]}, target)
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == []


def test_cleanup_never_touches_anything_when_a_json_is_bad(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA}, write_json=False)
    with open(repo.metadata_path(VM, T1), 'w') as target:
        target.write('{')
    before = tree(repo.root)
    with pytest.raises(MetadataError, match='is invalid: not valid JSON'):
        repo.cleanup_incomplete(VM)
    assert tree(repo.root) == before


def test_cleanup_keeps_older_files_when_a_referenced_chain_is_unreadable(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    with open(repo.vhd_path(VM, JOB, VDI_A, T2), 'wb') as target:
        target.write(b'garbage, not a VHD')  # damaged after it was written (a VHD is written with its block checksums)
    os.unlink(repo.metadata_path(VM, T1))
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == []


def test_cleanup_understands_the_vhd_engine_merge_state(repo):
    add_backup(repo, T4, {VDI_A: FULL})
    add_backup(repo, T1, {VDI_A: FULL}, write_json=False)
    add_backup(repo, T2, {VDI_A: DELTA}, write_json=False)
    add_backup(repo, T3, {VDI_A: DELTA}, write_json=False)
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    state = os.path.join(vdi_dir, '.%s.vhd.merge.json' % T1)
    with open(state, 'w') as target:
        json.dump({'parent': T1 + '.vhd', 'children': [T2 + '.vhd'], 'step': 'blocks', 'next_block': 7}, target)
    open(state + '.tmp', 'w').write('{')  # a state rewrite cut short: the engine rewrites it
    report = repo.cleanup_incomplete(VM)
    assert report['unreferenced_vhds'] == [os.path.join(vdi_dir, T3 + '.vhd')]
    assert report['temporary_files'] == [state + '.tmp']
    # the removed file's block checksums went with it
    files = [name + suffix for name in (T1 + '.vhd', T2 + '.vhd', T4 + '.vhd') for suffix in ('', '.blocksums')]
    assert sorted(os.listdir(vdi_dir)) == sorted([os.path.basename(state)] + files)


def test_cleanup_protects_the_folder_when_a_merge_state_is_unreadable(repo):
    add_backup(repo, T3, {VDI_A: FULL})
    add_backup(repo, T1, {VDI_A: FULL}, write_json=False)
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    open(os.path.join(vdi_dir, '.%s.vhd.merge.json' % T1), 'w').write('{not json')
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == []


def test_writing_or_removing_a_point_drops_xo_cache(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    cache = os.path.join(repo.vm_dir(VM), 'cache.json.gz')
    open(cache, 'wb').write(b'stale')
    add_backup(repo, T2, {VDI_A: DELTA})
    assert not os.path.exists(cache)
    open(cache, 'wb').write(b'stale')
    assert repo.remove_metadata(VM, T2) is True and repo.remove_metadata(VM, T2) is False
    assert not os.path.exists(cache)
    assert [p.timestamp for p in repo.list_backups(VM)] == [T1]
    assert os.path.exists(repo.vhd_path(VM, JOB, VDI_A, T2))  # VHDs go with the next clean-up
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == [repo.vhd_path(VM, JOB, VDI_A, T2)]


def test_listing_is_read_again_when_the_lock_is_taken(repo):
    # The listing is cached; a run that read it before taking the lock must not clean up with it,
    # or the VHDs of a point another run wrote meanwhile would look unreferenced.
    add_backup(repo, T1, {VDI_A: FULL})
    assert [point.timestamp for point in repo.list_backups(VM)] == [T1]
    other_run = open_repository(repo.root)
    add_backup(other_run, T2, {VDI_A: DELTA})
    assert [point.timestamp for point in repo.list_backups(VM)] == [T1]  # cached until the lock
    with repo.lock(VM, 'nightly'):
        assert [point.timestamp for point in repo.list_backups(VM)] == [T1, T2]
        assert repo.cleanup_incomplete(VM) == {'temporary_files': [], 'unreferenced_vhds': []}
    assert os.path.isfile(repo.vhd_path(VM, JOB, VDI_A, T2))
