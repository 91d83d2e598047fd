# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The restore plan: plan_restore and restore_result on a backup held in memory (no pool, no repository read)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupPoint
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import vhd_relative_path
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import JOB, SCHEDULE, VM

NULL = 'OpaqueRef:NULL'
ROOT = '11111111-1111-4111-8111-111111111111'
DATA = '22222222-2222-4222-8222-222222222222'
STAMP = '20260105T010000Z'
NETWORKS = {
    'OpaqueRef:lan': {'uuid': 'u-lan', 'name_label': 'lan', 'has_pifs': True, 'vlan': -1, 'internal': False},
    'OpaqueRef:v20': {'uuid': 'u-v20', 'name_label': 'vlan20', 'has_pifs': True, 'vlan': 20, 'internal': False},
}
SR_RECORD = {'uuid': 'u-sr', 'name_label': 'Restore SR'}


def backed_up(blocked=None, vifs=None) -> restore.CheckedBackup:
    """A checked backup of a VM with two disks, a CD drive and two VIFs, as prepare_restore gives it."""
    vbds = {'OpaqueRef:vbd-root': {'VDI': 'OpaqueRef:root', 'userdevice': '0', 'type': 'Disk', 'bootable': True},
            'OpaqueRef:vbd-data': {'VDI': 'OpaqueRef:data', 'userdevice': '1', 'type': 'Disk'},
            'OpaqueRef:vbd-cd': {'VDI': 'OpaqueRef:iso', 'userdevice': '3', 'type': 'CD', 'empty': False, 'bootable': False}}
    vifs = vifs if vifs is not None else {
        'OpaqueRef:vif1': {'device': '1', 'MAC': '02:00:00:00:00:01', '$network$uuid': 'gone', '$network$name_label': 'old dmz',
                           '$network$VLAN': 20},
        'OpaqueRef:vif0': {'device': '0', 'MAC': '02:00:00:00:00:00', '$network$uuid': 'u-lan', '$network$name_label': 'lan',
                           '$network$VLAN': -1}}
    vm = {'uuid': VM, 'name_label': 'web01', 'blocked_operations': blocked or {}}
    vhds = {'OpaqueRef:root': vhd_relative_path(JOB, ROOT, STAMP), 'OpaqueRef:data': vhd_relative_path(JOB, DATA, STAMP)}
    metadata = build_metadata(JOB, SCHEDULE, 1, vm, {}, vbds, vifs, {}, vhds, {ref: True for ref in vhds}, size=0, block_checksums={}, virtual_sizes={})
    point = BackupPoint(vm_uuid=VM, timestamp=STAMP, metadata_storage_path='xo-vm-backups/%s/%s.json' % (VM, STAMP),
                        metadata_path='/backups/xo-vm-backups/%s/%s.json' % (VM, STAMP), metadata=metadata)
    disks = []
    for disk in point.disks:
        vbd = next(vbd for vbd in vbds.values() if vbd['VDI'] == disk.vdi_ref)
        chain = [disk.path, os.path.join(os.path.dirname(disk.path), '20260101T010000Z.vhd')]
        disks.append(restore.DiskRestore(disk=disk, chain=chain, length=3 << 20, virtual_size=1 << 30, record={}, vbd=vbd,
                                         name_label='disk %s' % vbd['userdevice'], userdevice=vbd['userdevice']))
    return restore.CheckedBackup(point=point, disks=disks, verified=['a.vhd'], unverified=['b.vhd'], finished_merges=[])


def test_a_whole_vm_plan_maps_every_vif_and_keeps_the_cd_drives():
    plan = restore.plan_restore(backed_up(), 'OpaqueRef:sr', SR_RECORD, NETWORKS, disk_only=False, affinity='OpaqueRef:host', start=True)
    assert (plan.vm_name, plan.affinity, plan.start, plan.disk_only) == ('web01', 'OpaqueRef:host', True, False)
    assert [(vif.device, vif.network_ref, vif.matched_by) for vif in plan.vifs] == [('0', 'OpaqueRef:lan', 'uuid'), ('1', 'OpaqueRef:v20', 'vlan')]
    assert plan.cd_drives == [{'userdevice': '3', 'bootable': False, 'had_disc': True}]
    assert [item.name_label for item in plan.disks] == ['disk 0', 'disk 1']
    named = restore.plan_restore(backed_up(), 'OpaqueRef:sr', SR_RECORD, NETWORKS, disk_only=False, name_label='web01 copy',
                                 network_map={'old dmz': 'lan'})
    assert named.vm_name == 'web01 copy' and [item.name_label for item in named.disks] == ['disk 0', 'disk 1'], 'name is the VM name'
    assert [(vif.network_ref, vif.matched_by) for vif in named.vifs] == [('OpaqueRef:lan', 'uuid'), ('OpaqueRef:lan', 'map')]
    assert named.affinity == NULL and not named.start


def test_a_disk_only_plan_consults_no_network_and_names_the_disk():
    backup = backed_up(vifs={'OpaqueRef:vif': {'device': '0', '$network$uuid': 'nowhere', '$network$name_label': 'nowhere'}})
    only = restore.CheckedBackup(point=backup.point, disks=backup.disks[1:], verified=[], unverified=[], finished_merges=[])
    plan = restore.plan_restore(only, 'OpaqueRef:sr', SR_RECORD, {}, disk_only=True, name_label='data copy', affinity='OpaqueRef:host',
                                start=True)
    assert plan.vifs == [] and plan.cd_drives == [] and plan.affinity == NULL and not plan.start
    assert [item.name_label for item in plan.disks] == ['data copy']
    assert only.disks[0].name_label == 'disk 1', 'the checked backup given is not changed'


def test_a_vif_no_network_fits_is_listed_as_not_restored_or_refused_when_strict():
    backup = backed_up(vifs={'OpaqueRef:vif': {'device': '0', '$network$uuid': 'gone', '$network$name_label': 'storage', '$network$VLAN': 99}})
    plan = restore.plan_restore(backup, 'OpaqueRef:sr', SR_RECORD, NETWORKS, disk_only=False)
    assert plan.vifs == []
    assert [item['what'] for item in plan.not_restored] == ['VIF 0', 'the disc in CD drive 3']
    assert "VIF 0 of the backup was on network 'storage'" in plan.not_restored[0]['reason'] and 'network_map' in plan.not_restored[0]['reason']
    with pytest.raises(restore.RestoreError, match=r"strict: 2 thing\(s\) of backup .* cannot be restored on this pool, so nothing was created: "
                                                   r"VIF 0: VIF 0 of the backup was on network 'storage'.*Say where it goes with network_map"):
        restore.plan_restore(backup, 'OpaqueRef:sr', SR_RECORD, NETWORKS, disk_only=False, strict=True)


def test_strict_refuses_bios_strings_xapi_will_not_set_too():
    backup = backed_up(vifs={})
    backup.point.metadata['vm']['bios_strings'] = {'bios-vendor': 'Acme', 'hp-rombios': 'COMPAQ'}
    plan = restore.plan_restore(backup, 'OpaqueRef:sr', SR_RECORD, NETWORKS, disk_only=False)
    assert [item['key'] for item in plan.vm_record['not_restored']] == ['hp-rombios']
    assert plan.vm_record['bios_strings'] == {'bios-vendor': 'Acme'}
    with pytest.raises(restore.RestoreError, match=r"strict: 2 thing\(s\) .*the disc in CD drive 3: .*; BIOS string hp-rombios: XAPI lets no one set"):
        restore.plan_restore(backup, 'OpaqueRef:sr', SR_RECORD, NETWORKS, disk_only=False, strict=True)


def test_a_start_the_backed_up_vm_blocks_is_refused():
    backup = backed_up(blocked={'start': 'kept for maintenance'})
    with pytest.raises(restore.RestoreError, match=r"has its start blocked \('kept for maintenance'\).*restore it with start=false"):
        restore.plan_restore(backup, 'OpaqueRef:sr', SR_RECORD, NETWORKS, disk_only=False, start=True)
    assert not restore.plan_restore(backup, 'OpaqueRef:sr', SR_RECORD, NETWORKS, disk_only=False).start


def test_the_result_shows_the_plan_then_what_was_created():
    plan = restore.plan_restore(backed_up(), 'OpaqueRef:sr', SR_RECORD, NETWORKS, disk_only=False, start=True)
    leftovers = {'vms': [], 'vdis': [], 'problems': []}
    planned = restore.restore_result(plan, leftovers)
    assert planned['backup'] == {'vm_uuid': VM, 'timestamp': STAMP, 'job_id': JOB, 'vm_name_label': 'web01'}
    assert planned['sr'] == {'uuid': 'u-sr', 'name_label': 'Restore SR'}
    assert planned['vm'] == {'uuid': None, 'name_label': 'web01', 'started': False, 'affinity_kept': False}
    assert [(disk['source_vdi_uuid'], disk['vdi_uuid'], disk['chain_length']) for disk in planned['disks']] == [(ROOT, None, 2), (DATA, None, 2)]
    assert all('duration' not in disk for disk in planned['disks']) and all('mac' not in vif for vif in planned['vifs'])
    assert planned['vifs'][1] == {'device': '1', 'network_uuid': 'u-v20', 'network_name_label': 'vlan20', 'vlan': 20, 'matched_by': 'vlan',
                                  'source_network_uuid': 'gone', 'source_network_name_label': 'old dmz'}
    assert planned['checksums'] == {'verified': ['a.vhd'], 'unverified': ['b.vhd'], 'legacy': []} and planned['bytes_transferred'] == 0
    assert planned['removed_leftovers'] is leftovers and planned['cd_drives'] == plan.cd_drives
    # as _carry_out records what it created
    plan.vm_uuid, plan.started = 'u-new-vm', True
    plan.disks[0].vdi_uuid, plan.disks[0].seconds = 'u-new-root', 0.25
    plan.vifs[0].mac = '02:aa:00:00:00:00'
    done = restore.restore_result(plan, leftovers)
    assert done['vm'] == {'uuid': 'u-new-vm', 'name_label': 'web01', 'started': True, 'affinity_kept': False}
    assert (done['disks'][0]['vdi_uuid'], done['disks'][0]['duration']) == ('u-new-root', 0.25) and 'duration' not in done['disks'][1]
    assert done['vifs'][0]['mac'] == '02:aa:00:00:00:00'
    assert done['bytes_transferred'] == 3 << 20, 'only the disks streamed count'


def test_a_disk_only_result_has_no_vm():
    backup = backed_up()
    plan = restore.plan_restore(backup, 'OpaqueRef:sr', SR_RECORD, {}, disk_only=True)
    result = restore.restore_result(plan, {'vms': [], 'vdis': [], 'problems': []})
    assert result['vm'] is None and result['vifs'] == [] and result['cd_drives'] == []
    assert [disk['name_label'] for disk in result['disks']] == ['disk 0', 'disk 1'], 'without a name, disks keep theirs'
