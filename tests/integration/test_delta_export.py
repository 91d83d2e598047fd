# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""delta_export through ansible-playbook: fulls, deltas, fall-backs, check mode and faults."""

from __future__ import annotations

import json
import os
import stat

from lifecycle import MIB, assert_point_matches_truth, backup, ground_truth, guest_write
from oracles import backup_points, visible_files

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import HASH_NAME
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import compute_sums


def assert_sidecars_are_the_files_checksums(repository, export) -> dict:
    """Each VHD the export wrote has its block checksum file, equal to the checksums of the file as written
    (read back from disk, hashed by ``compute_sums``), and the point's metadata lists it; returns path -> sidecar bytes."""
    vm_dir = os.path.join(repository, 'xo-vm-backups', export['vm']['uuid'])
    point = next(point for point in backup_points(repository, export['vm']['uuid']) if point['_path'].endswith(export['timestamp'] + '.json'))
    assert 'sha256' not in point['xapi_delta_backup']  # the old whole-file map is gone: the sidecars replace it
    assert point['xapi_delta_backup']['block_checksums'] == {disk['path']: HASH_NAME for disk in export['disks']}
    sidecars = {}
    for disk in export['disks']:
        assert disk['block_checksums'] == disk['path'] + '.blocksums'
        with VhdFile(os.path.join(vm_dir, disk['path'])) as vhd:
            expected = compute_sums(vhd).pack()
        with open(os.path.join(vm_dir, disk['block_checksums']), 'rb') as handle:
            sidecars[disk['path']] = handle.read()
        assert sidecars[disk['path']] == expected, disk['path']
    return sidecars


def test_full_then_deltas_read_back_exactly(app):
    _snap, full = backup(app)
    assert full['mode'] == 'full' and 'no exported snapshot' in full['reason']
    assert sorted(disk['name_label'] for disk in full['disks']) == ['app01-data', 'app01-root']
    exports, truths = [full], [ground_truth(app, full)]
    for round_number in range(3):
        guest_write(app, 'app01-root', (10 + round_number * 20) * MIB + 4096, 700 * 1024, 100 + round_number)
        guest_write(app, 'app01-data', round_number * MIB, 300, 200 + round_number)
        _snap, delta = backup(app)
        assert delta['mode'] == 'delta', delta['reason']
        assert delta['delta_chain_length'] == round_number + 1
        # Only the changed 2 MiB blocks travel: one block per disk plus VHD overhead.
        assert delta['bytes_transferred'] < 6 * MIB
        assert delta['bytes_transferred'] < full['bytes_transferred'] / 2
        exports.append(delta)
        truths.append(ground_truth(app, delta))
    # Every point, old and new, still reads as its snapshot did (older snapshots are gone from the pool by now).
    for export, truth in zip(exports, truths, strict=True):
        assert_point_matches_truth(app, app['repo'], export, truth)
    points = backup_points(app['repo'], full['vm']['uuid'])
    assert [point['_path'].rsplit('/', 1)[1] for point in points] == [export['timestamp'] + '.json' for export in exports]
    latest = points[-1]
    assert all(latest['isVhdDifferencing'].values())
    for export in exports:
        assert_sidecars_are_the_files_checksums(app['repo'], export)
    assert 'NOBAK' not in json.dumps(latest['vhds']) and not any('[NOBAK]' in vdi['name_label'] for vdi in latest['vdis'].values())


def test_files_are_private_and_paths_come_from_uuids(app):
    _snap, full = backup(app)
    vm_dir = os.path.join(app['repo'], 'xo-vm-backups', full['vm']['uuid'])
    for folder, dirs, files in os.walk(vm_dir):
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600
    assert all(part.count('-') in (0, 4) for part in full['disks'][0]['path'].split('/')[1:3])


def test_check_mode_reports_and_changes_nothing(app):
    backup(app)
    before = visible_files(app['repo'])
    _snap, predicted = backup(app, check=True)
    assert predicted['changed'] is True
    # Check mode took no snapshot: the prediction is for a snapshot taken now, on top of the reference.
    assert predicted['mode'] == 'delta', predicted['reason']
    assert sorted(disk['name_label'] for disk in predicted['disks']) == ['app01-data', 'app01-root']
    assert visible_files(app['repo']) == before


def test_base_missing_in_repository_gives_full_with_reason(app):
    _snap, full = backup(app)
    # Someone deletes the newest backup from the repository: the reference snapshot has no copy there.
    os.unlink(backup_points(app['repo'], full['vm']['uuid'])[-1]['_path'])
    _snap, again = backup(app)
    assert again['mode'] == 'full'
    assert 'holds no backup of this VM' in again['reason']
    assert_point_matches_truth(app, app['repo'], again)


def test_new_repository_gets_a_full_for_every_repository(app, tmp_path):
    backup(app)
    second = tmp_path / 'second'
    second.mkdir()
    _snap, both = backup(app, repositories=[app['repo'], str(second)])
    assert both['mode'] == 'full' and 'second holds no backup of this VM' in both['reason']
    assert_point_matches_truth(app, str(second), both)
    guest_write(app, 'app01-root', 0, 4096, 7)
    _snap, delta = backup(app, repositories=[app['repo'], str(second)])
    assert delta['mode'] == 'delta'
    assert_point_matches_truth(app, app['repo'], delta)
    assert_point_matches_truth(app, str(second), delta)
    # The checksums are computed once for both repositories: each sidecar still equals its own file's.
    for export in (both, delta):
        assert assert_sidecars_are_the_files_checksums(app['repo'], export) == assert_sidecars_are_the_files_checksums(str(second), export)


def test_full_interval_forces_a_full(app):
    backup(app)
    for chain_length in (1, 2):
        _snap, delta = backup(app, full_interval=3)
        assert (delta['mode'], delta['delta_chain_length']) == ('delta', chain_length)
    _snap, forced = backup(app, full_interval=3)
    assert forced['mode'] == 'full' and 'full_interval 3' in forced['reason']
    assert forced['delta_chain_length'] == 0


def test_cut_stream_leaves_no_partial_backup_and_next_run_is_a_delta(app):
    _snap, full = backup(app)
    full_truth = ground_truth(app, full)
    before = visible_files(app['repo'])
    guest_write(app, 'app01-root', 0, MIB, 5)
    app['sim'].control.cut_export(1 * MIB + 4096)
    _snap, failed = backup(app, expect_failure=True)
    assert 'export' in failed['msg']
    # Neither the VHD nor its sidecar (nor a temporary file of either) is left, and the full keeps its own.
    assert visible_files(app['repo']) == before
    assert sum(name.endswith('.vhd.blocksums') for name in before) == sum(name.endswith('.vhd') for name in before) == 2
    _snap, delta = backup(app)
    assert delta['mode'] == 'delta', delta['reason']
    assert_point_matches_truth(app, app['repo'], delta)
    assert_sidecars_are_the_files_checksums(app['repo'], delta)
    assert_point_matches_truth(app, app['repo'], full, full_truth)


def test_xapi_failure_during_export_is_reported(app):
    backup(app)
    app['ansible'].run_task('vm_snapshot', {'vm': 'app01', 'job': 'nightly'})
    app['sim'].control.fail_next('task.create', ['VDI_IO_ERROR', 'device error'])
    failed = app['ansible'].run_task('delta_export', {'vm': 'app01', 'job': 'nightly', 'repositories': [app['repo']]}, expect_failure=True)
    assert 'transfer failed on the host' in failed['msg']


def test_not_a_repository_and_missing_path_are_refused(app, tmp_path):
    stranger = tmp_path / 'home'
    stranger.mkdir()
    (stranger / 'notes.txt').write_text('not backups')
    _snap, refused = backup(app, repositories=[str(stranger)], expect_failure=True)
    assert 'is not a backup repository' in refused['msg']
    assert sorted(os.listdir(stranger)) == ['notes.txt']
    _snap, missing = backup(app, repositories=[str(tmp_path / 'nowhere')], expect_failure=True)
    assert 'does not exist' in missing['msg']


def test_second_run_is_refused_while_the_lock_is_held(app):
    _snap, full = backup(app)
    lock = os.path.join(app['repo'], 'xo-vm-backups', full['vm']['uuid'] + '.lock')
    os.mkdir(lock)
    with open(os.path.join(lock, 'owner.json'), 'w', encoding='utf-8') as owner:
        json.dump({'host': 'other-node', 'pid': 4242, 'job': 'nightly', 'started': '2026-11-26T02:00:00+00:00'}, owner)
    _snap, refused = backup(app, expect_failure=True)
    assert "locked by job 'nightly' (pid 4242 on host other-node" in refused['msg']
