# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The whole lifecycle through the collection's playbooks on each XAPI version profile the simulator offers.

A pool of XCP-ng 8.2 LTS (xapi 1.249.x, no ``ignore_vdis`` on ``VM.snapshot``) and one of XCP-ng 8.3 answer
the same playbooks: a backup of a VM with a ``[NOBAK]`` disk, two deltas with retention merging the oldest
into the full, a seed copy to a far repository, a restore of the whole VM from the far copy compared byte for
byte with the source at that point, and a health check. The simulator refuses every call the selected
version would refuse, so a call our code sends that an 8.2 pool does not know fails here.
"""

from __future__ import annotations

import pytest

MIB = 1024 * 1024
JOB = 'profiles-test'
POOL = """
pool: {name: profile-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
xapi: {profile: %s}
srs:
  - {name: Local storage, size: 20GiB, default: true}
  - {name: Restore SR, size: 20GiB}
networks: [{name: Network 0, bridge: xenbr0}]
vms:
  - name: web
    power_state: Running
    tags: [nightly]
    disks:
      - name: web-root
        size: 64MiB
        data: [{offset: 0, length: 3MiB, seed: 1}]
      - name: "web-swap [NOBAK]"
        size: 32MiB
        data: [{offset: 0, length: 1MiB, seed: 2}]
    vifs: [{network: Network 0}]
"""
# What each profile's coordinator reports as its xapi version (host.software_version['xapi']).
PROFILES = {'xcp-ng-8.2': '1.249', 'xcp-ng-8.3': '2'}


def snapshot_disk_names(sim) -> list:
    """name_label of every snapshot VDI on the pool, through XAPI itself."""
    session = sim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'profiles-test')
    try:
        records = session.xenapi.VDI.get_all_records_where('field "is_a_snapshot" = "true"')
        return sorted(record['name_label'] for record in records.values())
    finally:
        session.xenapi.session.logout()


@pytest.mark.parametrize('profile', sorted(PROFILES))
def test_whole_lifecycle_on_each_xapi_version(ansible, pool, tmp_path, profile):
    control = pool.control
    control.load_config(POOL % profile)
    host = control.record('host', 'host1')
    assert host['software_version']['xapi'].startswith(PROFILES[profile]), host['software_version']
    live_root = control.record('VDI', 'web-root')['uuid']
    near, far = str(tmp_path / 'near'), str(tmp_path / 'far')
    backup = {'backup_job': JOB, 'backup_repositories': [near], 'backup_vms': ['web'], 'backup_retention': 2}

    truth = {}
    modes = []
    for run, seed in enumerate((None, 11, 12)):
        if seed is not None:
            control.write_vdi(live_root, (8 + run) * MIB, length=MIB, seed=seed)
        stats, _output = ansible.play_collection('backup', backup)
        result = stats['xapi_delta_backup_backup']['results'][0]
        assert result['status'] == 'ok', result
        modes.append(result['mode'])
        # Only the root disk is backed up; the [NOBAK] disk is neither exported nor left as a snapshot disk.
        assert [disk['name_label'] for disk in result['disks']] == ['web-root']
        truth[result['timestamp']] = control.vdi_sha256(result['disks'][0]['snapshot_vdi_uuid'])
        assert snapshot_disk_names(pool) == ['web-root'], 'only the reference snapshot of web-root is kept'
    assert modes == ['full', 'delta', 'delta']
    assert result['merged_points'] >= 1, 'retention 2 merges the oldest delta into the full on the third run'

    stats, _output = ansible.play_collection('seed', {'seed_job': JOB, 'seed_vms': 'web', 'seed_near_repository': near,
                                                      'seed_far_repository': far})
    assert stats['xapi_delta_backup_seed']['far'][0]['mode'] == 'delta'

    latest = max(truth)
    stats, _output = ansible.play_collection('restore', {'restore_repository': far, 'restore_vm': 'web', 'restore_point': 'latest',
                                                         'restore_sr': 'Restore SR', 'restore_name': 'web restored',
                                                         'restore_start': 'true', 'restore_job': '', 'restore_network_map': ''})
    restored = stats['xapi_delta_backup_restore']
    vm = control.record('VM', restored['vm']['uuid'])
    assert vm['power_state'] == 'Running' and vm['name_label'] == 'web restored'
    assert len(vm['VIFs']) == 1
    assert [control.vdi_sha256(disk['vdi_uuid']) for disk in restored['disks']] == [truth[latest]]

    stats, _output = ansible.play_collection('health_check', {'health_check_repository': far, 'health_check_vms': ['web'],
                                                              'health_check_timeout': ''})
    health = stats['xapi_delta_backup_health_check']
    assert health['failed'] == [] and health['results'][0]['status'] == 'ok'
