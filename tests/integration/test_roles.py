# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The roles through the collection's playbooks (ansible-playbook xapi.delta_backup.<name>) against the simulator.

Results are read from the roles' set_stats (ANSIBLE_SHOW_CUSTOM_STATS prints them as one JSON line), ground truth
from the simulator's control API.
"""

from __future__ import annotations

import glob
import os
import re

import pytest
import yaml

from harness import COLLECTION_DIR

MIB = 1024 * 1024
JOB = 'roles-test'
ROLES = ('backup', 'seed', 'restore', 'health_check')
POOL = """
pool: {name: roles-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs:
  - {name: Local storage, size: 20GiB, default: true}
  - {name: Restore SR, size: 20GiB}
networks: [{name: Network 0, bridge: xenbr0}]
templates: [{name: Debian Bookworm 12}]
vms:
  - name: alpha
    power_state: Running
    tags: [nightly]
    disks:
      - name: alpha-root
        size: 64MiB
        data: [{offset: 0, length: 2MiB, seed: 1}]
    vifs: [{network: Network 0}]
  - name: beta
    power_state: Running
    tags: [nightly]
    disks:
      - name: beta-root
        size: 64MiB
        data: [{offset: 0, length: 3MiB, seed: 2}]
      - name: "beta-swap [NOBAK]"
        size: 32MiB
        data: [{offset: 0, length: 1MiB, seed: 3}]
  - name: gamma
    tags: [nightly]
    disks:
      - name: gamma-root
        size: 64MiB
        data: [{offset: 4MiB, length: 2MiB, seed: 4}]
  - name: skipped
    tags: [nightly, "xo:no-bak=test"]
    disks:
      - name: skipped-root
        size: 32MiB
"""


@pytest.fixture
def lab(ansible, pool, tmp_path):
    pool.control.load_config(POOL)
    # Snapshots copy disk names: guest writes address the live disks by uuid.
    live = {name: pool.control.record('VDI', name)['uuid'] for name in ('alpha-root', 'beta-root', 'gamma-root')}
    return {'ansible': ansible, 'sim': pool, 'tmp': tmp_path, 'live': live}


def play(lab, name, extra_vars, check=False, expect_rc=0):
    """Run the collection playbook; return (custom stats, output)."""
    return lab['ansible'].play_collection(name, extra_vars, check=check, expect_rc=expect_rc)


def snapshots(lab, vm):
    return lab['sim'].control.record('VM', vm)['snapshots']


def by_vm(results):
    return {result['vm']: result for result in results}


def test_argument_specs_mirror_defaults():
    """Every option of meta/argument_specs.yml has its twin in defaults/main.yml, with the same default."""
    for role in ROLES:
        with open(os.path.join(COLLECTION_DIR, 'roles', role, 'defaults', 'main.yml'), encoding='utf-8') as handle:
            defaults = yaml.safe_load(handle)
        with open(os.path.join(COLLECTION_DIR, 'roles', role, 'meta', 'argument_specs.yml'), encoding='utf-8') as handle:
            options = yaml.safe_load(handle)['argument_specs']['main']['options']
        assert sorted(defaults) == sorted(options), role
        for key, spec in options.items():
            assert key.startswith(role + '_'), key
            assert not spec.get('required'), '%s: required options have no default; the roles check them instead' % key
            assert spec.get('default') == defaults[key], key


def test_backup_one_failing_vm_others_succeed_no_stray_snapshot(lab):
    repo = str(lab['tmp'] / 'repo')
    extra = {'backup_job': JOB, 'backup_repositories': [repo], 'backup_tags': 'nightly', 'backup_retention': ''}
    # VMs run in name order: alpha's export fails after its snapshot was taken.
    lab['sim'].control.fail_next('export_raw_vdi', ['VDI_IO_ERROR', 'injected device error'])
    stats, output = play(lab, 'backup', extra, expect_rc=1)
    results = by_vm(stats['xapi_delta_backup_backup']['results'])
    assert sorted(results) == ['alpha', 'beta', 'gamma'], output[-4000:]
    assert stats['xapi_delta_backup_backup']['failed'] == ['alpha']
    assert stats['xapi_delta_backup_backup']['skipped'] == ['skipped']
    assert results['alpha']['status'] == 'failed' and 'injected device error' in results['alpha']['error']
    assert results['beta']['mode'] == results['gamma']['mode'] == 'full'
    assert [disk['name_label'] for disk in results['beta']['disks']] == ['beta-root']
    assert '1 of 3 VMs failed: alpha' in output
    # No stray snapshot: alpha's unexported one is gone; the others keep exactly their reference snapshot.
    assert snapshots(lab, 'alpha') == []
    assert len(snapshots(lab, 'beta')) == len(snapshots(lab, 'gamma')) == 1
    alpha_dir = os.path.join(repo, 'xo-vm-backups', results['alpha']['uuid'])
    assert not glob.glob(os.path.join(alpha_dir, '*.json')), 'a failed export left no visible backup'

    # Second run: beta fails this time. Its reference snapshot survives, so its next run is still a delta.
    lab['sim'].control.write_vdi(lab['live']['beta-root'], 0, length=MIB, seed=9)
    lab['sim'].control.fail_next('export_raw_vdi', ['VDI_IO_ERROR', 'injected'])
    stats, _output = play(lab, 'backup', dict(extra, backup_vms='beta, gamma', backup_tags=''), expect_rc=1)
    results = by_vm(stats['xapi_delta_backup_backup']['results'])
    assert results['beta']['status'] == 'failed' and results['gamma']['mode'] == 'delta'
    assert len(snapshots(lab, 'beta')) == 1

    stats, _output = play(lab, 'backup', extra)
    results = by_vm(stats['xapi_delta_backup_backup']['results'])
    assert {vm: r['mode'] for vm, r in results.items()} == {'alpha': 'full', 'beta': 'delta', 'gamma': 'delta'}
    assert all(len(snapshots(lab, vm)) == 1 for vm in results)


def test_backup_check_mode_first_run_changes_nothing(lab):
    empty = lab['tmp'] / 'empty-repo'
    empty.mkdir()
    missing = lab['tmp'] / 'missing-repo'
    counts = lab['sim'].control.info()['counts']
    stats, output = play(lab, 'backup', {'backup_job': JOB, 'backup_repositories': [str(empty), str(missing)],
                                         'backup_retention': 2, 'backup_full_interval': None}, check=True)
    results = by_vm(stats['xapi_delta_backup_backup']['results'])
    assert sorted(results) == ['alpha', 'beta', 'gamma'], output[-4000:]
    assert all(r['status'] == 'ok' and r['mode'] == 'full' for r in results.values())
    assert 'failed=0' in output
    assert lab['sim'].control.info()['counts'] == counts
    assert list(empty.iterdir()) == [] and not missing.exists()


def test_seed_restore_health_check(lab):
    near, far = str(lab['tmp'] / 'near'), str(lab['tmp'] / 'far')
    control = lab['sim'].control
    stats, _output = play(lab, 'backup', {'backup_job': JOB, 'backup_repositories': near, 'backup_vms': ['alpha']})
    first = stats['xapi_delta_backup_backup']['results'][0]
    truth = {disk['vdi_uuid']: control.vdi_sha256(disk['snapshot_vdi_uuid']) for disk in first['disks']}
    control.write_vdi(lab['live']['alpha-root'], 8 * MIB, length=2 * MIB, seed=21)

    stats, _output = play(lab, 'seed', {'seed_job': JOB, 'seed_vms': 'alpha', 'seed_near_repository': near, 'seed_far_repository': far})
    seed = stats['xapi_delta_backup_seed']
    assert seed['near'][0]['mode'] == 'delta' and seed['far'][0]['mode'] == 'delta'
    assert seed['copy']['copied_points'] == 2

    # An earlier point, by timestamp, from the far repository: byte for byte the disk at the first backup.
    stats, _output = play(lab, 'restore', {'restore_repository': far, 'restore_vm': 'alpha', 'restore_point': first['timestamp'],
                                           'restore_sr': 'Restore SR', 'restore_name': 'alpha restored', 'restore_start': 'true',
                                           'restore_job': '', 'restore_network_map': ''})
    restored = stats['xapi_delta_backup_restore']
    assert restored['backup']['timestamp'] == first['timestamp']
    assert control.record('VM', restored['vm']['uuid'])['power_state'] == 'Running'
    for disk in restored['disks']:
        assert control.vdi_sha256(disk['vdi_uuid']) == truth[disk['source_vdi_uuid']]

    vms, vdis = control.info()['counts']['VM'], control.info()['counts']['VDI']
    stats, _output = play(lab, 'health_check', {'health_check_repository': far, 'health_check_vms': ['alpha'], 'health_check_timeout': ''})
    health = stats['xapi_delta_backup_health_check']
    assert health['failed'] == [] and health['results'][0]['status'] == 'ok'
    assert control.info()['counts']['VM'] == vms and control.info()['counts']['VDI'] == vdis
    # the temporary disks the role destroyed are named by uuid, one per backed-up disk of alpha
    destroyed = health['results'][0]['destroyed_vdis']
    assert destroyed and len(set(destroyed)) == len(destroyed) and all(re.fullmatch('[0-9a-f-]{36}', uuid) for uuid in destroyed)
