# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Transport through ansible-playbook: disks on a pool member's local SR (redirect, per-host
certificates), a long XAPI call that runs out of time, a transfer whose task XAPI destroyed."""

from __future__ import annotations

import pytest

from lifecycle import assert_point_matches_truth, backup

# app01's disks live on a local SR of the pool member host2: XAPI serves them only there.
MEMBER_POOL = """
pool: {name: member-pool}
hosts: [{name: host1, address: 127.0.0.1}, {name: host2, address: 127.0.0.2}]
users: [{name: root, password: secret}]
srs:
  - {name: Local storage host1, size: 20GiB, default: true}
  - {name: Local storage host2, size: 20GiB, host: host2}
networks: [{name: Network 0, bridge: xenbr0}]
vms:
  - name: app01
    power_state: Running
    disks:
      - name: app01-root
        size: 64MiB
        sr: Local storage host2
        data:
          - {offset: 0, length: 6MiB, seed: 11}
          - {offset: 40MiB, length: 1MiB, seed: 12}
    vifs: [{network: Network 0}]
"""


@pytest.fixture
def member_app(ansible, pool, tmp_path):
    pool.control.load_config(MEMBER_POOL)
    repository = tmp_path / 'repo'
    repository.mkdir()
    live = {'app01-root': pool.control.record('VDI', 'app01-root')['uuid']}
    return {'ansible': ansible, 'sim': pool, 'repo': str(repository), 'tmp': tmp_path, 'live': live}


def test_backup_and_restore_of_a_member_local_disk_with_a_bundle(member_app):
    app = member_app
    app['ansible'].env['XENSERVER_CA_PATH'] = app['sim'].ca_bundle_path
    _snap, full = backup(app)
    assert full['mode'] == 'full'
    assert_point_matches_truth(app, app['repo'], full)
    restored = app['ansible'].run_task('vm_restore', {'repository': app['repo'], 'vm': 'app01', 'sr': 'Local storage host2',
                                                      'name': 'app01 restored'})
    control = app['sim'].control
    vbds = [control.record('VBD', vbd) for vbd in control.record('VM', 'app01 restored')['VBDs']]
    new_vdis = [vbd['VDI'] for vbd in vbds if vbd['type'] == 'Disk']
    assert len(new_vdis) == 1, restored
    assert control.record('VDI', new_vdis[0])['SR'] == control.find('SR', 'Local storage host2')
    assert control.vdi_sha256(new_vdis[0]) == control.vdi_sha256(app['live']['app01-root'])


def test_member_certificate_missing_from_ca_path_is_named(member_app):
    app = member_app
    app['ansible'].env['XENSERVER_CA_PATH'] = app['sim'].ca_path  # the coordinator's certificate only
    _snap, export = backup(app, expect_failure=True)
    member = app['sim'].slave_url.split('://', 1)[1]
    assert 'certificate verify failed for pool member %s' % member in export['msg']
    assert 'PEM bundle' in export['msg']
    assert export['error_code'] == 'certificate_verify_failed' and 'xapi_error' not in export, export


def test_a_long_vm_start_that_runs_out_is_cancelled(app):
    _snap, full = backup(app)
    app['sim'].control.delay(30, 'VM.start')
    result = app['ansible'].run_task('vm_restore', {'repository': app['repo'], 'vm': 'app01', 'name': 'slow start', 'start': True,
                                                    'operation_timeout': 1}, expect_failure=True)
    assert 'VM.start on' in result['msg'] and 'did not finish within 1.0 seconds; the task was cancelled' in result['msg']
    assert result['error_code'] == 'task_timeout' and 'xapi_error' not in result, result
    assert app['sim'].control.info()['counts']['task'] == 0
    assert full['mode'] == 'full'


def test_export_whose_task_xapi_destroyed_points_to_the_seed_procedure(app):
    # The disk attach takes long (a delay before the first byte) while the task's progress stays still:
    # XAPI's GC destroys a pending task past its lifetime when two passes see no progress.
    app['sim'].control.lifetimes(task_lifetime=0.3, gc_interval=0.2)
    app['sim'].control.delay(2, 'export_raw_vdi')
    _snap, export = backup(app, expect_failure=True)
    assert export['error_code'] == 'task_destroyed' and 'xapi_error' not in export, export
    assert 'XAPI destroyed the task before the transfer finished' in export['msg']
    assert 'seed' in export['msg']
