# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Snapshot and export against what real pools do: no ignore_vdis on XAPI before 21.4.0, error pages in a
200 answer, deltas refused because of their base, migrations during a backup, export VBDs left in dom0,
uncoalesced VHD chains, and a run killed between writing a point and marking its snapshot."""

from __future__ import annotations

import glob
import os
import random
import time

import pytest
import XenAPI

from faults import expire_orphan_sessions, run_and_kill
from lifecycle import MIB, POOL, assert_point_matches_truth, backup, ground_truth, guest_write
from oracles import backup_points, visible_files

JOB = {'vm': 'app01', 'job': 'nightly'}


def _reload(app, extra_yaml: str) -> None:
    """The app pool again, with extra top-level YAML (the live disk uuids change)."""
    app['sim'].control.load_config(POOL + extra_yaml)
    app['live'] = {name: app['sim'].control.record('VDI', name)['uuid'] for name in ('app01-root', 'app01-data')}


def _xenapi(app):
    session = app['sim'].xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'integration-test')
    return session


def _pool_vdis(app) -> list[dict]:
    session = _xenapi(app)
    try:
        return list(session.xenapi.VDI.get_all_records().values())
    finally:
        session.xenapi.session.logout()


def _dom0_vbds(app) -> list[dict]:
    session = _xenapi(app)
    try:
        api = session.xenapi
        dom0 = [vm for vm in api.VM.get_all() if api.VM.get_is_control_domain(vm)][0]
        return [api.VBD.get_record(vbd) for vbd in api.VM.get_VBDs(dom0)]
    finally:
        session.xenapi.session.logout()


def _assert_no_nobak_snapshot_disk(app):
    nobak = [vdi for vdi in _pool_vdis(app) if '[NOBAK]' in vdi['name_label'] and vdi['is_a_snapshot']]
    assert nobak == [], nobak


@pytest.mark.parametrize('version_readable', [True, False], ids=['by-version', 'by-arity-error'])
def test_nobak_disks_left_out_without_ignore_vdis(app, version_readable):
    # XCP-ng 8.2 LTS: xapi 1.249, VM.snapshot(vm, name) only. Unreadable version: the 3-argument call's arity error tells.
    _reload(app, 'xapi: {profile: xcp-ng-8.2}\n')
    how = 'host.software_version' if version_readable else 'arity error'
    if not version_readable:
        app['sim'].control.fail_next('host.get_software_version', ['INTERNAL_ERROR', 'injected'])
    snap, full = backup(app)
    assert snap['excluded_by'] == 'removed_after_snapshot', how
    assert [disk['name_label'] for disk in snap['excluded_disks']] == ['app01-swap [NOBAK]']
    assert sorted(disk['name_label'] for disk in snap['snapshot']['disks']) == ['app01-data', 'app01-root']
    _assert_no_nobak_snapshot_disk(app)
    assert full['mode'] == 'full'
    assert_point_matches_truth(app, app['repo'], full)
    guest_write(app, 'app01-root', 0, MIB, 31)
    snap, delta = backup(app)
    assert snap['excluded_by'] == 'removed_after_snapshot' and delta['mode'] == 'delta', delta['reason']
    assert_point_matches_truth(app, app['repo'], delta)


def test_nobak_disks_left_out_with_ignore_vdis_on_a_current_xapi(app):
    snap, _full = backup(app)
    assert snap['excluded_by'] == 'ignore_vdis'
    _assert_no_nobak_snapshot_disk(app)


def test_export_answered_with_an_error_page_reports_xapi_error(app):
    backup(app)
    before = visible_files(app['repo'])
    guest_write(app, 'app01-root', 0, MIB, 32)
    app['sim'].control.export_error_page()
    _snap, failed = backup(app, expect_failure=True)
    assert failed['xapi_error']['code'] == 'SR_BACKEND_FAILURE_46', failed['msg']
    assert 'The VDI is not available' in failed['msg'] and 'error page' in failed['msg']
    assert 'cookie' not in failed['msg']
    assert visible_files(app['repo']) == before
    _snap, delta = backup(app)
    assert delta['mode'] == 'delta', delta['reason']


def _base_ref(app, full) -> str:
    root = [disk for disk in full['disks'] if disk['name_label'] == 'app01-root'][0]
    return app['sim'].control.find('VDI', root['snapshot_vdi_uuid'])


def test_delta_refused_because_of_its_base_falls_back_to_a_full(app):
    _snap, full = backup(app)
    guest_write(app, 'app01-data', 0, MIB, 33)
    base = _base_ref(app, full)
    app['sim'].control.fail_next('export_raw_vdi', ['HANDLE_INVALID', 'VDI', base])
    _snap, again = backup(app)
    assert again['mode'] == 'full' and again['base_snapshot'] is None
    assert base in again['delta_fallback'] and 'does not exist' in again['delta_fallback'] and 'the delta export failed' in again['reason']
    assert all(disk['mode'] == 'full' for disk in again['disks'])
    assert_point_matches_truth(app, app['repo'], again)
    assert len(backup_points(app['repo'], full['vm']['uuid'])) == 2


def test_delta_only_fails_instead_of_exporting_a_full(app):
    _snap, full = backup(app)
    before = visible_files(app['repo'])
    app['sim'].control.fail_next('export_raw_vdi', ['HANDLE_INVALID', 'VDI', _base_ref(app, full)])
    _snap, failed = backup(app, expect_failure=True, delta_only=True)
    assert 'delta_only is set' in failed['msg'] and failed['xapi_error']['code'] == 'HANDLE_INVALID'
    assert visible_files(app['repo']) == before


def test_migrations_blocked_while_backing_up_user_blocks_untouched(app):
    session = _xenapi(app)
    try:
        api = session.xenapi
        vm = api.VM.get_by_name_label('app01')[0]
        host = api.pool.get_master(api.pool.get_all()[0])
        api.VM.add_to_blocked_operations(vm, 'migrate_send', 'the user says no')
        first = app['ansible'].run_task('vm_snapshot', JOB)
        assert first['blocked_operations'] == ['pool_migrate']
        assert first['kept_blocked_operations'] == {'migrate_send': 'the user says no'}
        with pytest.raises(XenAPI.Failure, match=r"^\['OPERATION_BLOCKED', ") as refused:
            api.VM.pool_migrate(vm, host, {})
        assert refused.value.details[:2] == ['OPERATION_BLOCKED', vm] and 'backup job nightly is running' in refused.value.details[2]
        # The run "crashed" here (no prune): the next run replaces its own block and keeps the user's.
        second = app['ansible'].run_task('vm_snapshot', JOB)
        assert second['blocked_operations'] == ['pool_migrate']
        pruned = app['ansible'].run_task('vm_snapshot', dict(JOB, state='pruned'))
        assert pruned['unblocked_operations'] == ['pool_migrate']
        assert api.VM.get_blocked_operations(vm) == {'migrate_send': 'the user says no'}
        api.VM.pool_migrate(vm, host, {})
    finally:
        session.xenapi.session.logout()


def test_export_vbds_left_in_dom0_are_removed_by_the_next_run(app):
    _snap, full = backup(app)
    guest_write(app, 'app01-root', 0, MIB, 34)
    app['sim'].control.leave_export_vbd()
    _snap, delta = backup(app)
    assert delta['mode'] == 'delta'
    left = _dom0_vbds(app)
    # The first disk's delta plugged the snapshot VDI and its base: both VBDs were left, as a crashed export leaves them.
    assert len(left) == 2 and all(vbd['currently_attached'] for vbd in left)
    left_vdis = sorted(app['sim'].control.record('VDI', vbd['VDI'])['uuid'] for vbd in left)
    pruned = app['ansible'].run_task('vm_snapshot', dict(JOB, state='pruned'))
    assert sorted(item['vdi_uuid'] for item in pruned['removed_export_vbds']) == left_vdis
    assert _dom0_vbds(app) == []
    # The old reference snapshot (whose disk was plugged as base) could be removed.
    assert pruned['removed_snapshots'] == [full['snapshot']['uuid']]


def _run(app, **snapshot_options):
    """One run as the role does it: snapshot, export, prune; returns the three results."""
    steps = [('vm_snapshot', dict(JOB, repositories=[app['repo']], **snapshot_options)),
             ('delta_export', dict(JOB, repositories=[app['repo']], snapshot='{{ result_0.snapshot.uuid | default(omit, true) }}')),
             ('vm_snapshot', dict(JOB, state='pruned', repositories=[app['repo']]))]
    return app['ansible'].run_tasks(steps)


def test_vdi_chain_protection_skips_the_vm_until_the_sr_coalesces(app):
    app['sim'].control.hold_coalesce()
    for round_number in range(3):
        guest_write(app, 'app01-root', 0, MIB, 40 + round_number)
        snap, export, _prune = _run(app)
        assert not snap['skipped'] and export['mode'] == ('full' if round_number == 0 else 'delta')
    waiting = app['sim'].control.waiting_base_copies()
    assert len(waiting) >= 2
    vm_before = app['sim'].control.record('VM', 'app01')['snapshots']
    skipped = app['ansible'].run_task('vm_snapshot', dict(JOB, repositories=[app['repo']]))
    assert skipped['skipped'] is True and skipped['snapshot'] is None
    assert skipped['skip_reason'].startswith('Job canceled to protect the VDI chain: disk app01-root: 2 base copies wait')
    assert app['sim'].control.record('VM', 'app01')['snapshots'] == vm_before
    # A looser threshold lets it through; after the SR coalesced, the default does too.
    looser = app['ansible'].run_task('vm_snapshot', dict(JOB, repositories=[app['repo']], max_uncoalesced_vdis=2))
    assert looser['skipped'] is False and looser['snapshot']['uuid']
    app['sim'].control.coalesce()
    snap, export, _prune = _run(app)
    assert not snap['skipped'] and export['mode'] == 'delta', export['reason']


def test_kill_after_the_point_is_written_before_the_snapshot_is_marked_next_run_is_a_delta(app):
    _snap, full = backup(app)
    vm_dir = os.path.join(app['repo'], 'xo-vm-backups', full['vm']['uuid'])
    guest_write(app, 'app01-root', 8 * MIB, MIB, 35)
    taken = app['ansible'].run_task('vm_snapshot', JOB)['snapshot']
    truth = ground_truth(app, {'disks': [{'snapshot_vdi_uuid': disk['vdi_uuid']} for disk in taken['disks']]})
    # mark_exported starts with VDI.remove_from_other_config: hold it so the kill lands after the JSON is written.
    app['sim'].control.delay(5, 'VDI.remove_from_other_config')
    try:
        killed = run_and_kill(app['ansible'], 'delta_export', dict(JOB, repositories=[app['repo']], snapshot=taken['uuid']),
                              random.Random(7), (0.2, 0.4), on_start=lambda: _wait_for(lambda: len(glob.glob(os.path.join(vm_dir, '*.json'))) == 2))
    finally:
        app['sim'].control.delay(0, 'VDI.remove_from_other_config')
    assert killed['killed'], killed['output'][-3000:]
    # The kill landed between the two: the point is complete, the snapshot is not marked exported.
    points = backup_points(app['repo'], full['vm']['uuid'])
    assert len(points) == 2
    other = app['sim'].control.record('VM', taken['uuid'])['other_config']
    assert 'xo:backup:exported' not in other and 'xo:backup:deltaChainLength' not in other
    expire_orphan_sessions(app['sim'], 1)
    guest_write(app, 'app01-data', 0, MIB, 36)
    snap, delta, _prune = _run(app)
    assert snap['adopted_snapshot'] == taken['uuid'] and taken['uuid'] not in snap['removed_snapshots']
    assert delta['mode'] == 'delta', delta['reason']
    assert delta['base_snapshot']['uuid'] == taken['uuid'] and delta['delta_chain_length'] == 2
    assert_point_matches_truth(app, app['repo'], delta)
    # The killed run's point still reads as its snapshot did.
    killed_timestamp = os.path.basename(points[-1]['_path'])[:-len('.json')]
    killed_point = dict(delta, disks=[dict(disk, path=disk['path'].replace(delta['timestamp'], killed_timestamp),
                                           snapshot_vdi_uuid=_snapshot_vdi_of(taken, disk['vdi_uuid'])) for disk in delta['disks']])
    assert_point_matches_truth(app, app['repo'], killed_point, truth)


def _snapshot_vdi_of(snapshot: dict, live_uuid: str) -> str:
    return [disk['vdi_uuid'] for disk in snapshot['disks'] if disk['live_vdi_uuid'] == live_uuid][0]


def _wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'condition not met in time'
        time.sleep(0.02)


def test_backup_role_reports_a_vm_kept_back_by_chain_protection_as_skipped(app):
    app['sim'].control.hold_coalesce()
    extra = {'backup_job': 'nightly', 'backup_repositories': [app['repo']], 'backup_vms': ['app01']}
    for _round in range(2):
        guest_write(app, 'app01-root', 0, MIB, 50 + _round)
        stats, _output = app['ansible'].play_collection('backup', extra)
        assert stats['xapi_delta_backup_backup']['results'][0]['status'] == 'ok'
    session = _xenapi(app)
    try:
        vm = session.xenapi.VM.get_by_name_label('app01')[0]
        # Migrations were blocked during each run and unblocked at its end.
        assert session.xenapi.VM.get_blocked_operations(vm) == {}
    finally:
        session.xenapi.session.logout()
    # The second run's prune left one base copy waiting: with a tolerance of 0 the VM is skipped, not failed.
    stats, output = app['ansible'].play_collection('backup', dict(extra, backup_max_uncoalesced_vdis=0))
    result = stats['xapi_delta_backup_backup']['results'][0]
    assert result['status'] == 'skipped' and result['mode'] is None, result
    assert result['reason'].startswith('Job canceled to protect the VDI chain'), result
    assert stats['xapi_delta_backup_backup']['skipped'] == ['app01'] and stats['xapi_delta_backup_backup']['failed'] == []
    assert 'Job canceled to protect the VDI chain' in output
