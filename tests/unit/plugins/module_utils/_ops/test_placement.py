# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Placement of a restore on the target pool (placement.py), pure: each disk's SR (sr_map selectors, sr, same SR,
default SR), the VBD fields kept, and what cannot be restored (listed, or refused with strict)."""

from __future__ import annotations

import re

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import placement, restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupPoint
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import vhd_relative_path
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.constructor import CONSTRUCTOR_FIELDS, REQUIRED
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import JOB, SCHEDULE, VM

STAMP = '20260105T010000Z'
# live VDI uuids (as in the repository) and the backed-up snapshot VDI uuids
ROOT, DATA, LOGS = ('11111111-1111-4111-8111-11111111111%d' % n for n in (1, 2, 3))
SNAP_ROOT, SNAP_DATA, SNAP_LOGS = ('aaaaaaaa-1111-4111-8111-11111111111%d' % n for n in (1, 2, 3))
SRS = {
    'OpaqueRef:fast': {'uuid': 'u-fast', 'name_label': 'SSD'},
    'OpaqueRef:slow': {'uuid': 'u-slow', 'name_label': 'HDD'},
    'OpaqueRef:twin1': {'uuid': 'u-twin1', 'name_label': 'NFS'},
    'OpaqueRef:twin2': {'uuid': 'u-twin2', 'name_label': 'NFS'},
    'OpaqueRef:local': {'uuid': 'u-src-local', 'name_label': 'Local storage'},   # the uuid of the SR the root disk was on
}


def point(vm_extra=None, cd=None) -> BackupPoint:
    """A backup of a VM with three disks: root (xvda) on SR u-src-local, data (xvdb) and logs (xvdc) on SR u-src-nfs."""
    vdis, vbds, vhds = {}, {}, {}
    for n, (live, snap, name, sr) in enumerate(((ROOT, SNAP_ROOT, 'web root', 'u-src-local'), (DATA, SNAP_DATA, 'web data', 'u-src-nfs'),
                                                (LOGS, SNAP_LOGS, 'web logs', 'u-src-nfs'))):
        ref = 'OpaqueRef:vdi%d' % n
        vdis[ref] = {'uuid': snap, 'name_label': name, '$snapshot_of$uuid': live, '$SR$uuid': sr}
        vbds['OpaqueRef:vbd%d' % n] = {'VDI': ref, 'userdevice': str(n), 'device': '', 'type': 'Disk', 'bootable': n == 0, 'mode': 'RW',
                                       'other_config': {'owner': 'true', 'xo:backup:job': 'x'}, 'qos_algorithm_type': 'ionice',
                                       'qos_algorithm_params': {'sched': 'rt', 'class': '2'}, 'unpluggable': n == 2,
                                       'currently_attached': True, 'empty': False}
        vhds[ref] = vhd_relative_path(JOB, live, STAMP)
    if cd is not None:
        vbds['OpaqueRef:cd'] = cd
    vm = dict({'uuid': VM, 'name_label': 'web01', 'VGPUs': [], 'attached_PCIs': [], 'VUSBs': [], 'other_config': {}}, **(vm_extra or {}))
    metadata = build_metadata(JOB, SCHEDULE, 1, vm, {}, vbds, {}, vdis, vhds, {ref: False for ref in vhds}, size=0, block_checksums={}, virtual_sizes={})
    return BackupPoint(vm_uuid=VM, timestamp=STAMP, metadata_storage_path='xo-vm-backups/%s/%s.json' % (VM, STAMP),
                       metadata_path='/backups/xo-vm-backups/%s/%s.json' % (VM, STAMP), metadata=metadata)


def placed(result: placement.Placement) -> dict:
    return {uuid: (where.sr_ref, where.placed_by) for uuid, where in result.disks.items()}


def test_every_kind_of_selector_names_one_disk():
    backup = point()
    assert placement.disk_selectors(backup, backup.disks[0]) == [ROOT, SNAP_ROOT, 'web root', '0', 'xvda']
    for selector, disk in ((ROOT, ROOT), (SNAP_DATA, DATA), ('web logs', LOGS), ('1', DATA), ('xvdc', LOGS)):
        result = placement.place_disks(backup, backup.disks, SRS, {selector: 'SSD'}, None, 'OpaqueRef:slow')
        assert result.errors == [] and result.disks[disk].placed_by == placement.BY_SR_MAP and result.disks[disk].sr_ref == 'OpaqueRef:fast'


def test_unmapped_disks_go_to_sr_else_their_own_sr_else_the_default():
    backup = point()
    # sr_map by SR uuid for one disk, `sr` for the others
    result = placement.place_disks(backup, backup.disks, SRS, {'xvdb': 'u-fast'}, 'OpaqueRef:slow', 'OpaqueRef:local')
    assert placed(result) == {ROOT: ('OpaqueRef:slow', 'sr'), DATA: ('OpaqueRef:fast', 'sr_map'), LOGS: ('OpaqueRef:slow', 'sr')}
    assert result.not_restored == [] and result.errors == []
    # no sr: the root disk's SR (same uuid) exists here; the NFS SR of the two others does not: the default SR, listed
    result = placement.place_disks(backup, backup.disks, SRS, {'web data': 'HDD'}, None, 'OpaqueRef:fast')
    assert placed(result) == {ROOT: ('OpaqueRef:local', 'same_sr'), DATA: ('OpaqueRef:slow', 'sr_map'), LOGS: ('OpaqueRef:fast', 'default')}
    assert result.disks[LOGS].sr_record == SRS['OpaqueRef:fast']
    assert result.not_restored == [{'what': "the SR of disk 2 'web logs' (VDI %s)" % LOGS,
                                    'reason': "SR u-src-nfs of the backup is not in this pool and neither sr_map nor sr places the disk: it goes "
                                              "to the default SR 'SSD' (uuid u-fast)"}]


def test_a_one_disk_restore_places_only_that_disk_but_checks_the_whole_map():
    backup = point()
    result = placement.place_disks(backup, backup.disks[1:2], SRS, {'xvda': 'SSD', 'web data': 'HDD'}, None, None)
    assert placed(result) == {DATA: ('OpaqueRef:slow', 'sr_map')} and result.errors == []
    result = placement.place_disks(backup, backup.disks[1:2], SRS, {'xvdq': 'SSD'}, None, 'OpaqueRef:fast')
    assert len(result.errors) == 1 and "sr_map selector 'xvdq' names no disk of backup %s" % STAMP in result.errors[0]


@pytest.mark.parametrize('sr_map, message', [
    ({'xvdz': 'SSD'}, r"sr_map selector 'xvdz' names no disk of backup 20260105T010000Z; the selectors of its disks are: disk 0 'web root' "
                      r"\(VDI 1+-1111-4111-8111-111111111111\): 1+-1111-4111-8111-111111111111, aaaaaaaa-.*, web root, 0, xvda; disk 1"),
    ({'xvda': 'nowhere'}, r"sr_map sends disk 0 'web root' \(VDI .*\) to 'nowhere', but no SR of this pool has the uuid or name 'nowhere'"),
    ({'xvda': 'NFS'}, r"sr_map sends disk 0 .* to 'NFS', but 2 SRs of this pool are named 'NFS': give the SR uuid"),
    ({'xvda': 'SSD', '0': 'HDD'}, r"sr_map sends disk 0 'web root' .* to two SRs \(selectors 'xvda' and '0'\): keep one"),
])
def test_bad_sr_map_entries_are_errors(sr_map, message):
    backup = point()
    result = placement.place_disks(backup, backup.disks, SRS, sr_map, None, 'OpaqueRef:fast')
    assert len(result.errors) == 1
    assert re.search(message, result.errors[0]), result.errors[0]


def test_a_selector_two_disks_share_is_ambiguous():
    backup = point()
    # two disks with the same name
    backup.metadata['vdis']['OpaqueRef:vdi2']['name_label'] = 'web data'
    result = placement.place_disks(backup, backup.disks, SRS, {'web data': 'SSD'}, None, 'OpaqueRef:fast')
    assert len(result.errors) == 1 and "sr_map selector 'web data' names 2 disks of backup" in result.errors[0]
    # the same entry twice to the same SR is fine
    result = placement.place_disks(backup, backup.disks, SRS, {'xvda': 'SSD', ROOT: 'u-fast'}, None, 'OpaqueRef:slow')
    assert result.errors == [] and result.disks[ROOT].sr_ref == 'OpaqueRef:fast'


def test_no_sr_anywhere_is_an_error():
    backup = point()
    result = placement.place_disks(backup, backup.disks, {}, {}, None, None)
    expected = ["disk 0 'web root' (VDI %s)" % ROOT, "disk 1 'web data' (VDI %s)" % DATA, "disk 2 'web logs' (VDI %s)" % LOGS]
    assert [error.split(':')[0] for error in result.errors] == expected
    assert 'this pool has neither its SR (u-src-local) nor a default SR: give sr, or map the disk with sr_map' in result.errors[0]


def test_the_vbd_keeps_its_backed_up_settings_but_not_our_keys_nor_server_fields():
    backup = point()
    vbd = backup.metadata['vbds']['OpaqueRef:vbd2']
    fields = placement.vbd_fields(vbd, CONSTRUCTOR_FIELDS['VBD'], restore._clean_other_config)  # pylint: disable=protected-access
    assert fields == {'userdevice': '2', 'type': 'Disk', 'bootable': False, 'mode': 'RW', 'other_config': {'owner': 'true'},
                      'qos_algorithm_type': 'ionice', 'qos_algorithm_params': {'sched': 'rt', 'class': '2'}, 'unpluggable': True, 'empty': False}


def test_what_cannot_be_restored_is_listed():
    cd = {'VDI': 'OpaqueRef:iso', 'userdevice': '3', 'type': 'CD', 'empty': False, '$VDI$name_label': 'debian-12.iso'}
    backup = point(vm_extra={'VGPUs': ['OpaqueRef:g1'], 'attached_PCIs': ['OpaqueRef:p1'], 'VUSBs': ['OpaqueRef:u1', 'OpaqueRef:u2'],
                             'other_config': {'pci': '0/0000:04:00.0'}}, cd=cd)
    found = placement.unrestorable_devices(backup)
    assert [item['what'] for item in found] == ['1 vGPU(s)', 'PCI passthrough (other_config:pci 0/0000:04:00.0)',
                                                '2 USB passthrough device(s) (VUSBs)', 'the disc in CD drive 3 (debian-12.iso)']
    assert all(item['reason'] for item in found)
    assert placement.unrestorable_devices(point(vm_extra={'attached_PCIs': ['OpaqueRef:p1']}))[0]['what'] == 'PCI passthrough (1 device(s))'
    # a VM with none of them, an empty CD drive and NULL refs
    assert placement.unrestorable_devices(point(vm_extra={'VGPUs': ['OpaqueRef:NULL']}, cd=dict(cd, empty=True))) == []


def test_the_pci_key_is_not_carried_to_the_new_vm():
    # every field VM.create requires, with a value of its type (the values do not matter here)
    required = {name: {'int': '1', 'bool': False}.get(kind, {} if 'map' in kind else '') for name, (kind, default, _release)
                in CONSTRUCTOR_FIELDS['VM'].items() if default is REQUIRED}
    backup = point(vm_extra=dict(required, other_config={'pci': '0/0000:04:00.0', 'keep': 'me'}))
    record = restore.vm_create_record(backup, 'copy')
    assert 'pci' not in record['other_config'] and record['other_config']['keep'] == 'me'


# -- through plan_restore -------------------------------------------------------------------------


def checked(backup: BackupPoint) -> restore.CheckedBackup:
    disks = [restore.DiskRestore(disk=disk, chain=[disk.path], length=1 << 20, virtual_size=1 << 30, record={}, vbd={}, name_label=disk.vdi_uuid,
                                 userdevice='') for disk in backup.disks]
    return restore.CheckedBackup(point=backup, disks=disks, verified=[], unverified=[], finished_merges=[])


def test_the_plan_places_each_disk_and_lists_or_refuses_what_is_missing():
    backup = point(vm_extra={'VUSBs': ['OpaqueRef:u1']})
    where = placement.place_disks(backup, backup.disks, SRS, {'xvda': 'SSD'}, None, 'OpaqueRef:slow')
    plan = restore.plan_restore(checked(backup), 'OpaqueRef:slow', SRS['OpaqueRef:slow'], {}, disk_only=False, placement=where)
    result = restore.restore_result(plan, {'vms': [], 'vdis': [], 'problems': []})
    assert [(disk['source_vdi_uuid'], disk['sr_name_label'], disk['placed_by']) for disk in result['disks']] == [
        (ROOT, 'SSD', 'sr_map'), (DATA, 'HDD', 'default'), (LOGS, 'HDD', 'default')]
    assert [item['what'] for item in result['not_restored']] == [
        "the SR of disk 1 'web data' (VDI %s)" % DATA, "the SR of disk 2 'web logs' (VDI %s)" % LOGS, '1 USB passthrough device(s) (VUSBs)']
    with pytest.raises(restore.RestoreError, match=r"^strict: 3 thing\(s\) of backup 20260105T010000Z cannot be restored on this pool, so nothing "
                                                   r"was created: the SR of disk 1 .*; the SR of disk 2 .*; 1 USB passthrough .*restore with strict=false"):
        restore.plan_restore(checked(backup), 'OpaqueRef:slow', SRS['OpaqueRef:slow'], {}, disk_only=False, placement=where, strict=True)
    # a disk-only restore lists only its SR, not the VM's devices
    only = restore.plan_restore(checked(backup), 'OpaqueRef:slow', SRS['OpaqueRef:slow'], {}, disk_only=True, placement=where)
    assert [item['what'][:11] for item in only.not_restored] == ['the SR of d', 'the SR of d']


def test_the_plan_refuses_bad_map_entries_even_without_strict():
    backup = point()
    where = placement.place_disks(backup, backup.disks, SRS, {'xvdz': 'SSD', 'xvda': 'nowhere'}, None, 'OpaqueRef:slow')
    with pytest.raises(restore.RestoreError, match=r"sr_map selector 'xvdz' names no disk.*; sr_map sends disk 0 'web root' .* to 'nowhere'"):
        restore.plan_restore(checked(backup), 'OpaqueRef:slow', SRS['OpaqueRef:slow'], {}, disk_only=False, placement=where)


# -- networks -------------------------------------------------------------------------------------

NETWORKS = {
    'OpaqueRef:alpha': {'uuid': 'u-alpha', 'name_label': 'alpha', 'has_pifs': True, 'vlan': -1, 'internal': False, 'device': 'eth10'},
    'OpaqueRef:zeta': {'uuid': 'u-zeta', 'name_label': 'zeta', 'has_pifs': True, 'vlan': -1, 'internal': False, 'device': 'eth2'},
    'OpaqueRef:v30': {'uuid': 'u-v30', 'name_label': 'dmz', 'has_pifs': True, 'vlan': 30, 'internal': False, 'device': 'eth1'},
    'OpaqueRef:priv30': {'uuid': 'u-priv30', 'name_label': 'dmz', 'has_pifs': False, 'vlan': None, 'internal': False, 'device': None},
}


def _vif(uuid, name, vlan):
    return {'device': '0', '$network$uuid': uuid, '$network$name_label': name, '$network$VLAN': vlan}


def test_the_first_network_on_a_vlan_is_in_pif_device_order():
    # eth2 before eth10 (natural order), whatever the names say
    choice = placement.choose_network(_vif('gone', 'lan', -1), NETWORKS, {}, False)
    assert (choice.ref, choice.rule, choice.problem) == ('OpaqueRef:zeta', 'vlan', '')


def test_a_same_name_network_without_pifs_is_not_chosen_unless_allowed():
    # "dmz" exists twice: on VLAN 30 and as a private network. VLAN unknown (older metadata): the name decides, never the private one
    assert placement.choose_network(_vif('gone', 'dmz', None), NETWORKS, {}, False).ref == 'OpaqueRef:v30'
    # same name, other VLAN: not the same network; the VLAN 31 has no network with PIFs: nothing
    choice = placement.choose_network(_vif('gone', 'dmz', 31), NETWORKS, {}, False)
    assert choice.ref is None and not choice.bad_input and "'dmz' (uuid gone, VLAN 31)" in choice.problem
    # the private network by its uuid: only with allow_internal
    choice = placement.choose_network(_vif('u-priv30', 'dmz', None), NETWORKS, {}, False)
    assert (choice.ref, choice.rule) == ('OpaqueRef:v30', 'name'), 'the uuid rule skips it, the name rule finds the network with PIFs'
    assert (placement.choose_network(_vif('u-priv30', 'dmz', None), NETWORKS, {}, True).ref) == 'OpaqueRef:priv30'


def test_a_map_entry_to_no_network_is_bad_input():
    choice = placement.choose_network(_vif('gone', 'lan', -1), NETWORKS, {'lan': 'nowhere'}, False)
    assert choice.ref is None and choice.bad_input and "network_map sends network 'lan'" in choice.problem
