# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A repository Xen Orchestra wrote, used as a user would: backup_info lists and verifies it, vm_restore previews
then restores its newest point, disks byte for byte. Real ansible-playbook against the simulator.

The repository is xo_fixture's: XO's layout and JSON-RPC typed records (memory above 2^31 as JSON numbers, no
sha256, none of our own fields), VHDs written by the simulator's independent VHD code."""

from __future__ import annotations

import importlib.util
import os

import pytest

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'unit', 'plugins', 'module_utils', '_ops', 'xo_fixture.py')
_spec = importlib.util.spec_from_file_location('xo_fixture', FIXTURE)
xo_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(xo_fixture)

TARGET_POOL = """
pool: {name: recovery}
hosts: [{name: dr-host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
networks: [{name: Pool-wide network associated with eth0, bridge: xenbr0}]
"""


def counts(sim):
    info = sim.control.info()
    return {kind: info['counts'][kind] for kind in ('VM', 'VDI', 'VBD', 'VIF')}


@pytest.mark.parametrize('legacy_booleans', [False, True])
def test_a_point_xo_wrote_is_listed_verified_and_restored(ansible, pool, tmp_path, legacy_booleans):
    pool.control.load_config(TARGET_POOL)
    fixture = xo_fixture.build_xo_repository(str(tmp_path / 'xo-remote'), legacy_booleans=legacy_booleans)
    repository = str(tmp_path / 'xo-remote')

    listed = ansible.run_task('backup_info', {'repository': repository, 'verify': True})
    assert listed['problems'] == [] and listed['files_verified'] == 4
    [vm] = listed['vms']
    assert (vm['uuid'], vm['name_label']) == (xo_fixture.VM_UUID, 'xo-vm')
    assert [point['timestamp'] for point in vm['backups']] == fixture.points
    assert {point['written_by'] for point in vm['backups']} == {'another tool (no checksums recorded)'}
    # XO records no disk sizes of ours: they come from the VHD footers
    assert sorted(disk['virtual_size'] for disk in vm['backups'][-1]['disks']) == sorted(disk['size'] for disk in xo_fixture.DISKS)

    before = counts(pool)
    preview = ansible.run_task('vm_restore', {'repository': repository, 'vm': 'xo-vm'}, check=True)
    assert preview['changed'] is True and preview['vm']['uuid'] is None
    assert sorted(disk['virtual_size'] for disk in preview['disks']) == sorted(disk['size'] for disk in xo_fixture.DISKS)
    assert counts(pool) == before

    result = ansible.run_task('vm_restore', {'repository': repository, 'vm': 'xo-vm'})
    assert result['backup']['timestamp'] == fixture.points[-1] and result['backup']['job_id'] == xo_fixture.JOB_ID
    # XO records no checksums: every file read is listed as not checksum-verified
    assert result['checksums']['verified'] == [] and len(result['checksums']['unverified']) == 4
    newest = fixture.content[fixture.points[-1]]
    for disk in result['disks']:
        assert disk['chain_length'] == 2
        assert pool.control.read_vdi(disk['vdi_uuid']) == newest[disk['source_vdi_uuid']]
    record = pool.control.record('VM', result['vm']['uuid'])
    assert (record['memory_static_max'], record['memory_dynamic_min'], record['VCPUs_max']) == (4 << 30, 2 << 30, 4)
    assert record['is_a_template'] is False and record['power_state'] == 'Halted'
    assert [vif['matched_by'] for vif in result['vifs']] == ['name']
