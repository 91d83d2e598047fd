# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 13's end-to-end restore: a UEFI VM with a vTPM, BIOS strings, NVRAM, locked VIFs on a VLAN and three disks on two
SRs is backed up on pool A and restored on pool B, another simulator whose SRs and networks have other names and
uuids (each disk mapped to an SR, one network mapped, the others matched by VLAN). The restored VM is compared
with the original field by field (VM record, VBDs, VIFs) and its disks byte for byte (the simulators' content hashes).
Real ansible-playbook runs against two real simulator processes."""

from __future__ import annotations

import json

import pytest

from harness import AnsibleRunner, XenApi
from xapisim.testing import start_server

# What the VM's vTPM holds (its swtpm state as VTPM.get_contents returns it): a secret, compared through the simulators' stores.
VTPM_CONTENTS = 'd2luMDEgVFBNIHN0YXRl c2F2ZQ== dm9sYXRpbGU='
POOL_A = """
pool: {name: production}
xapi: {profile: xcp-ng-8.3}
hosts: [{name: prod-host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs:
  - {name: Local storage, size: 8GiB, default: true}
  - {name: NFS A, size: 8GiB, type: nfs, shared: true}
networks:
  - {name: lan, bridge: xenbr0}
  - {name: vlan30-prod, bridge: xapi1, vlan: 30, pif_device: eth1}
  - {name: storage-net, bridge: xapi2, vlan: 40, pif_device: eth1}
vms:
  - name: win01
    memory: 4GiB
    vcpus: 2
    cdrom: true
    vtpm: {contents: "%s"}
    disks:
      - {name: win01-root, size: 64MiB, sr: Local storage, data: [{offset: 0, length: 4MiB, seed: 31}, {offset: 40MiB, length: 2MiB, seed: 32}]}
      - {name: win01-data, size: 48MiB, sr: NFS A, data: [{offset: 2MiB, length: 6MiB, seed: 33}]}
      - {name: win01-logs, size: 32MiB, sr: NFS A, data: [{offset: 30MiB, length: 2MiB, seed: 34}]}
    vifs:
      - {network: lan}
      - {network: vlan30-prod}
""" % VTPM_CONTENTS
# Pool B: other SR names and uuids (none of pool A's), the VLAN 30 network under another name, the VLAN 40 one as well.
POOL_B = """
pool: {name: disaster-recovery}
xapi: {profile: xcp-ng-8.3}
hosts: [{name: dr-host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs:
  - {name: DR local, size: 8GiB, default: true}
  - {name: SSD B, size: 8GiB}
  - {name: Bulk B, size: 8GiB}
networks:
  - {name: Network 0, bridge: xenbr0}
  - {name: dmz, bridge: xapi5, vlan: 30, pif_device: eth1}
  - {name: san, bridge: xapi6, vlan: 40, pif_device: eth1}
"""
# VM fields that are the VM's state or its place in a pool, or that a restore sets on purpose: not compared.
NOT_COMPARED = {'uuid', 'name_label', 'other_config', 'affinity', 'generation_id', 'power_state', 'suspend_VDI', 'suspend_SR', 'is_a_template',
                'is_a_snapshot', 'snapshot_of', 'snapshot_time', 'transportable_snapshot_id', 'parent', 'children', 'snapshots',
                'last_boot_CPU_flags', 'last_booted_record', 'resident_on', 'scheduled_to_be_resident_on', 'domid', 'allowed_operations',
                'current_operations', 'blocked_operations', 'VBDs', 'VIFs', 'consoles', 'crash_dumps', 'metrics', 'guest_metrics', 'VTPMs',
                'snapshot_info', 'snapshot_metadata', 'is_vmss_snapshot', 'is_snapshot_from_vmpp', 'start_time', 'install_time',
                'pending_guidances', 'pending_guidances_recommended', 'pending_guidances_full', 'requires_reboot', 'domarch',
                'is_control_domain', 'appliance', 'protection_policy', 'snapshot_schedule', 'groups', 'VGPUs', 'attached_PCIs', 'VUSBs',
                'power_state_at_snapshot'}
BIOS_STRINGS = {'bios-vendor': 'Acme', 'system-manufacturer': 'Acme', 'system-serial-number': 'SN-4711'}
VBD_FIELDS = ('type', 'bootable', 'mode', 'unpluggable', 'empty', 'other_config', 'qos_algorithm_type', 'qos_algorithm_params')
VIF_FIELDS = ('MTU', 'locking_mode', 'ipv4_allowed', 'ipv6_allowed', 'qos_algorithm_type', 'qos_algorithm_params', 'other_config')


def vm_picture(sim, vm_uuid: str) -> dict:
    """What a restore must keep: the VM record, its VBDs by userdevice (with their disk's SR and content hash), its VIFs by device."""
    with XenApi(sim) as api:
        ref = api.VM.get_by_uuid(vm_uuid)
        record = api.VM.get_record(ref)
        vbds, vifs = {}, {}
        for vbd_ref in record['VBDs']:
            vbd = api.VBD.get_record(vbd_ref)
            entry = {name: vbd[name] for name in VBD_FIELDS}
            if vbd['type'] == 'Disk':
                vdi = api.VDI.get_record(vbd['VDI'])
                entry.update(vdi_uuid=vdi['uuid'], virtual_size=vdi['virtual_size'], sr=api.SR.get_name_label(vdi['SR']))
            vbds[vbd['userdevice']] = entry
        for vif_ref in record['VIFs']:
            vif = api.VIF.get_record(vif_ref)
            vifs[vif['device']] = dict({name: vif[name] for name in VIF_FIELDS}, network=api.network.get_name_label(vif['network']),
                                       MAC=vif['MAC'])
    for entry in vbds.values():
        if 'vdi_uuid' in entry:
            entry['sha256'] = sim.control.vdi_sha256(entry['vdi_uuid'])
    return {'vm': record, 'vbds': vbds, 'vifs': vifs}


def object_counts(sim) -> tuple:
    with XenApi(sim) as api:
        return len(api.VM.get_all()), len(api.VDI.get_all()), len(api.VBD.get_all()), len(api.VIF.get_all())


@pytest.fixture
def pool_b(tmp_path):
    with start_server(POOL_B, https=True) as sim:
        yield sim
        assert sim.control.session_count() == 0, sim.control.sessions()


@pytest.fixture
def backed_up(ansible, pool, tmp_path):
    """win01 on pool A made a UEFI machine with BIOS strings, NVRAM, locked VIFs and per-device settings, backed up once."""
    pool.control.load_config(POOL_A)
    with XenApi(pool) as api:
        vm = api.VM.get_by_name_label('win01')[0]
        api.VM.set_HVM_boot_params(vm, {'firmware': 'uefi', 'order': 'dc'})
        api.VM.set_platform(vm, {'secureboot': 'true', 'viridian': 'true', 'device-model': 'qemu-upstream-uefi', 'device_id': '0002'})
        api.VM.set_NVRAM(vm, {'EFI-variables': 'RUZJIHZhcmlhYmxlcyBvZiB3aW4wMQ=='})
        api.VM.set_bios_strings(vm, BIOS_STRINGS)
        # PCI passthrough of a device of the source host: cannot follow the VM (not_restored)
        api.VM.add_to_other_config(vm, 'pci', '0/0000:04:00.0')
        vifs = {api.VIF.get_device(ref): ref for ref in api.VM.get_VIFs(vm)}
        api.VIF.set_locking_mode(vifs['0'], 'disabled')
        api.VIF.set_locking_mode(vifs['1'], 'locked')
        api.VIF.set_ipv4_allowed(vifs['1'], ['10.0.30.5', '10.0.30.6'])
        api.VIF.set_ipv6_allowed(vifs['1'], ['fd00:30::5'])
        api.VIF.set_qos_algorithm_type(vifs['1'], 'ratelimit')
        api.VIF.set_qos_algorithm_params(vifs['1'], {'kbps': '100000'})
        api.VIF.add_to_other_config(vifs['1'], 'ethtool-tx', 'off')
        # a jumbo-frame VIF on the storage VLAN (MTU is only given at creation)
        api.VIF.create({'device': '2', 'network': api.network.get_by_name_label('storage-net')[0], 'VM': vm, 'MAC': '', 'MTU': '9000',
                        'other_config': {}, 'qos_algorithm_type': '', 'qos_algorithm_params': {}, 'locking_mode': 'network_default',
                        'ipv4_allowed': [], 'ipv6_allowed': []})
        vbds = {api.VBD.get_userdevice(ref): ref for ref in api.VM.get_VBDs(vm)}
        api.VBD.set_qos_algorithm_type(vbds['1'], 'ionice')
        api.VBD.set_qos_algorithm_params(vbds['1'], {'sched': 'rt', 'class': '3'})
        api.VBD.add_to_other_config(vbds['1'], 'owner', 'true')
        api.VBD.set_unpluggable(vbds['2'], True)
        api.VBD.set_mode(vbds['2'], 'RO')
        api.VBD.set_bootable(vbds['3'], True)   # the (empty) CD drive boots first
        live_uuid = api.VM.get_uuid(vm)
    source = vm_picture(pool, live_uuid)
    repository = tmp_path / 'repo'
    repository.mkdir()
    ansible.run_tasks([('vm_snapshot', {'vm': 'win01', 'job': 'nightly'}),
                       ('delta_export', {'vm': 'win01', 'job': 'nightly', 'repositories': [str(repository)],
                                         'snapshot': '{{ result_0.snapshot.uuid }}'})])
    return {'source': source, 'repo': str(repository), 'vm_uuid': live_uuid}


def test_a_vm_restored_on_another_pool_is_the_same_machine(backed_up, pool_b, tmp_path):
    source = backed_up['source']
    runner = AnsibleRunner(pool_b, str(tmp_path))
    with XenApi(pool_b) as api:
        bulk_uuid = api.SR.get_uuid(api.SR.get_by_name_label('Bulk B')[0])
    logs_uuid = source['vbds']['2']['vdi_uuid']
    options = {'repository': backed_up['repo'], 'vm': 'win01', 'name': 'win01 (DR)',
               # one SR per disk, by device, by name and by live VDI uuid; one network mapped, the others found by their VLAN
               'sr_map': {'xvda': 'SSD B', 'win01-data': bulk_uuid, logs_uuid: 'Bulk B'}, 'network_map': {'storage-net': 'san'}}

    counts = object_counts(pool_b)
    planned = runner.run_task('vm_restore', options, check=True)
    assert sorted((disk['userdevice'], disk['sr_name_label'], disk['placed_by']) for disk in planned['disks']) == [
        ('0', 'SSD B', 'sr_map'), ('1', 'Bulk B', 'sr_map'), ('2', 'Bulk B', 'sr_map')]
    assert [(vif['device'], vif['network_name_label'], vif['matched_by']) for vif in planned['vifs']] == [
        ('0', 'Network 0', 'vlan'), ('1', 'dmz', 'vlan'), ('2', 'san', 'map')]
    assert [item['what'] for item in planned['not_restored']] == ['PCI passthrough (other_config:pci 0/0000:04:00.0)']
    # strict: what cannot come back stops the restore before anything is created
    refused = runner.run_task('vm_restore', dict(options, strict=True), expect_failure=True)
    assert 'strict: 1 thing(s) of backup' in refused['msg'] and 'PCI passthrough (other_config:pci 0/0000:04:00.0)' in refused['msg'], refused['msg']
    assert object_counts(pool_b) == counts

    result = runner.run_task('vm_restore', options)
    assert result['not_restored'] == planned['not_restored']
    restored = vm_picture(pool_b, result['vm']['uuid'])

    # the VM record: every configuration field as it was (UEFI boot, Secure Boot platform flags, NVRAM, memory, vCPUs...)
    compared = sorted(set(source['vm']) - NOT_COMPARED)
    assert {name: restored['vm'][name] for name in compared} == {name: source['vm'][name] for name in compared}
    assert restored['vm']['HVM_boot_params'] == {'firmware': 'uefi', 'order': 'dc'} and restored['vm']['platform']['secureboot'] == 'true'
    assert restored['vm']['NVRAM'] == {'EFI-variables': 'RUZJIHZhcmlhYmxlcyBvZiB3aW4wMQ=='}
    # BIOS strings: VM.create stores none, VM.set_bios_strings puts them back (XAPI fills its other keys, so the backed-up ones are compared)
    assert {key: restored['vm']['bios_strings'].get(key) for key in BIOS_STRINGS} == BIOS_STRINGS
    # the vTPM: recreated with the backed-up contents (read from pool B's own store), never in the result
    assert [(item['action'], item['restored']) for item in result['vtpms']] == [('recreate', True)]
    assert [entry['contents'] for entry in pool_b.control.vtpms(result['vm']['uuid'])] == [VTPM_CONTENTS]
    assert VTPM_CONTENTS not in json.dumps(result)
    assert restored['vm']['name_label'] == 'win01 (DR)' and restored['vm']['power_state'] == 'Halted'
    assert 'pci' not in restored['vm']['other_config'], 'a PCI device of the source host is not passed through on this pool'
    assert restored['vm']['affinity'] == 'OpaqueRef:NULL', 'the home host is not in this pool'

    # the VBDs: device numbers, bootable flags, modes, QoS, other_config, the empty CD drive; each disk on its mapped SR, byte for byte
    assert sorted(restored['vbds']) == sorted(source['vbds']) == ['0', '1', '2', '3']
    for device, expected_sr in (('0', 'SSD B'), ('1', 'Bulk B'), ('2', 'Bulk B')):
        was, now = source['vbds'][device], restored['vbds'][device]
        assert {name: now[name] for name in VBD_FIELDS} == {name: was[name] for name in VBD_FIELDS}, device
        assert now['sr'] == expected_sr and now['virtual_size'] == was['virtual_size'] and now['vdi_uuid'] != was['vdi_uuid']
        assert now['sha256'] == was['sha256'], 'disk %s differs from the original' % device
    assert restored['vbds']['3'] == source['vbds']['3'] and restored['vbds']['3']['empty'] and restored['vbds']['3']['bootable']
    assert source['vbds']['1']['qos_algorithm_params'] == {'sched': 'rt', 'class': '3'} and source['vbds']['2']['mode'] == 'RO'

    # the VIFs: the locked VIF on VLAN 30 with exactly its allowed addresses, MTU, QoS and other_config; new MACs
    assert sorted(restored['vifs']) == ['0', '1', '2']
    for device, network in (('0', 'Network 0'), ('1', 'dmz'), ('2', 'san')):
        was, now = source['vifs'][device], restored['vifs'][device]
        assert {name: now[name] for name in VIF_FIELDS} == {name: was[name] for name in VIF_FIELDS}, device
        assert now['network'] == network and now['MAC'] != was['MAC']
    assert restored['vifs']['1']['locking_mode'] == 'locked' and restored['vifs']['1']['ipv4_allowed'] == ['10.0.30.5', '10.0.30.6']
    assert restored['vifs']['1']['ipv6_allowed'] == ['fd00:30::5'] and restored['vifs']['2']['MTU'] == '9000'


def test_the_roles_pass_the_placement_through(backed_up, pool_b, tmp_path):
    runner = AnsibleRunner(pool_b, str(tmp_path))
    counts = object_counts(pool_b)
    common = {'restore_repository': backed_up['repo'], 'restore_vm': 'win01', 'restore_network_map': {'storage-net': 'san'},
              # as an AWX survey sends it: text holding a mapping
              'restore_sr_map': 'xvda: SSD B\n"1": Bulk B\n'}
    _stats, output = runner.play_collection('restore', dict(common, restore_strict='true'), expect_rc=2)
    # the logs disk is not mapped and its SR is not in pool B: listed next to the PCI device
    assert 'strict: 2 thing(s) of backup' in output and "the SR of disk 2 'win01-logs'" in output and 'PCI passthrough' in output
    assert object_counts(pool_b) == counts

    stats, _output = runner.play_collection('restore', dict(common, restore_strict=''))
    disks = stats['xapi_delta_backup_restore']['disks']
    assert [item['what'].split(' (VDI')[0] for item in stats['xapi_delta_backup_restore']['not_restored']] == [
        "the SR of disk 2 'win01-logs'", 'PCI passthrough (other_config:pci 0/0000:04:00.0)']
    assert sorted((disk['userdevice'], disk['sr_name_label'], disk['placed_by']) for disk in disks) == [
        ('0', 'SSD B', 'sr_map'), ('1', 'Bulk B', 'sr_map'), ('2', 'DR local', 'default')]

    # health_check hands its map to vm_restore: a disk the VM does not have fails that VM's check, before anything is created
    counts = object_counts(pool_b)
    stats, _output = runner.play_collection('health_check', {'health_check_repository': backed_up['repo'], 'health_check_vms': ['win01'],
                                                             'health_check_sr_map': {'xvdq': 'Bulk B'}, 'health_check_fail_on_error': False})
    health = stats['xapi_delta_backup_health_check']
    assert health['failed'] == ['win01'] and "sr_map selector 'xvdq' names no disk" in health['results'][0]['error']
    assert object_counts(pool_b) == counts
