# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Where a restored VM goes on the target pool, and what of it cannot come back.

Pure functions on the backed-up metadata and on the pool's SRs and networks as read once: the SR of
each disk (``sr_map`` entry, else ``sr``, else the SR of the backed-up uuid, else the pool's default
SR), the network of each VIF (``network_map``, else the same uuid, else the same name on the same VLAN,
else the first network with PIFs on that VLAN), the VBD and VIF records as they were backed up, and the
list of what this pool cannot give back (vGPUs, PCI and USB passthrough, inserted ISOs, an SR or a
network that is missing and was not mapped). Problems come back as text; ``restore`` decides to raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NULL_REF = 'OpaqueRef:NULL'
# How each disk's SR was chosen (the result's disks[].placed_by).
BY_SR_MAP, BY_SR, BY_SAME_SR, BY_DEFAULT = 'sr_map', 'sr', 'same_sr', 'default'
# Keys XAPI puts on the Host internal management network (ocaml/xapi/create_networks.ml).
INTERNAL_NETWORK_KEYS = ('is_host_internal_management_network', 'is_guest_installer_network')
# VM other_config key of PCI passthrough ("0/0000:04:00.0,..."), read by ocaml/xapi/pciops.ml other_pcidevs_of_vm.
PCI_OTHER_CONFIG_KEY = 'pci'
# Fields XAPI sets itself on a VBD: the device name comes from userdevice when plugged (ocaml/xapi/xapi_vbd.ml create).
VBD_SERVER_FIELDS = ('device', 'currently_attached')


def _natural(text) -> tuple:
    """Sort key: eth2 before eth10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', str(text or '')))


# -- SRs ------------------------------------------------------------------------------------------


def describe_sr(record: dict | None) -> str:
    record = record or {}
    return '%r (uuid %s)' % (record.get('name_label'), record.get('uuid'))


def find_sr(srs: dict, wanted: str) -> tuple[str | None, str]:
    """(SR ref, '') for an SR of ``srs`` (ref -> record) by uuid, else by its unique name; (None, why) otherwise."""
    found = [ref for ref, record in srs.items() if record.get('uuid') == wanted] or \
        [ref for ref, record in srs.items() if record.get('name_label') == wanted]
    if len(found) == 1:
        return found[0], ''
    if not found:
        return None, 'no SR of this pool has the uuid or name %r' % wanted
    return None, '%d SRs of this pool are named %r: give the SR uuid' % (len(found), wanted)


def disk_selectors(point, disk) -> list[str]:
    """The texts that name one disk of a point in ``sr_map``: backed-up VDI uuid, live VDI uuid, name, userdevice, device."""
    record = ((point.metadata.get('vdis') or {}).get(disk.vdi_ref)) or {}
    vbd = next((vbd for vbd in (point.metadata.get('vbds') or {}).values() if isinstance(vbd, dict) and vbd.get('VDI') == disk.vdi_ref), {})
    userdevice = str(vbd.get('userdevice', ''))
    # A halted VM's VBD may have no device name yet: XAPI names disk N xvd<letter N> (ocaml/xapi-idl/xen/device_number.ml)
    device = vbd.get('device') or ('xvd%s' % chr(ord('a') + int(userdevice)) if userdevice.isdigit() and int(userdevice) < 26 else '')
    texts = [disk.vdi_uuid, record.get('uuid'), record.get('$snapshot_of$uuid'), record.get('name_label'), userdevice, device]
    selectors = []
    for text in texts:
        if text not in (None, '') and str(text) not in selectors:
            selectors.append(str(text))
    return selectors


def describe_disk(point, disk) -> str:
    record = ((point.metadata.get('vdis') or {}).get(disk.vdi_ref)) or {}
    vbd = next((vbd for vbd in (point.metadata.get('vbds') or {}).values() if isinstance(vbd, dict) and vbd.get('VDI') == disk.vdi_ref), {})
    return 'disk %s %r (VDI %s)' % (vbd.get('userdevice', '?'), record.get('name_label'), disk.vdi_uuid)


@dataclass
class DiskPlacement:
    """The SR one disk goes to, and the rule that chose it."""

    sr_ref: str
    sr_record: dict
    placed_by: str  # BY_SR_MAP, BY_SR, BY_SAME_SR or BY_DEFAULT


@dataclass
class Placement:
    """Every disk's SR (by backed-up live VDI uuid), the input errors found, and what is not placed as it was."""

    disks: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # bad input: the restore must stop before creating anything
    not_restored: list = field(default_factory=list)  # {what, reason}


def place_disks(point, wanted_disks: list, srs: dict, sr_map: dict | None, sr_ref: str | None, default_sr_ref: str | None) -> Placement:
    """The SR of each of ``wanted_disks`` (BackupDisk items of ``point``).

    ``sr_map`` selectors are checked against every disk of the point (so a map written for the whole VM
    also serves a one-disk restore): a selector naming no disk, or several, or two selectors sending one
    disk to different SRs, is an error. Unmapped disks go to ``sr_ref`` (the ``sr`` option) when given,
    else to the SR with the backed-up ``$SR$uuid`` when this pool has it, else to the default SR; the last
    case is listed in ``not_restored`` (its SR is missing and was not mapped).
    """
    result = Placement()
    targets = {}  # live VDI uuid -> (SR ref, selector)
    for selector, target in (sr_map or {}).items():
        selector, target = str(selector).strip(), str(target).strip()
        named = [disk for disk in point.disks if selector in disk_selectors(point, disk)]
        if len(named) != 1:
            disks = '; '.join('%s: %s' % (describe_disk(point, disk), ', '.join(disk_selectors(point, disk))) for disk in point.disks)
            result.errors.append('sr_map selector %r names %s of backup %s; the selectors of its disks are: %s'
                                 % (selector, 'no disk' if not named else '%d disks' % len(named), point.timestamp, disks))
            continue
        ref, why = find_sr(srs, target)
        if ref is None:
            result.errors.append('sr_map sends %s to %r, but %s' % (describe_disk(point, named[0]), target, why))
            continue
        previous = targets.get(named[0].vdi_uuid)
        if previous is not None and previous[0] != ref:
            result.errors.append('sr_map sends %s to two SRs (selectors %r and %r): keep one' % (describe_disk(point, named[0]), previous[1], selector))
            continue
        targets[named[0].vdi_uuid] = (ref, selector)
    for disk in wanted_disks:
        record = ((point.metadata.get('vdis') or {}).get(disk.vdi_ref)) or {}
        source_sr = record.get('$SR$uuid')
        if disk.vdi_uuid in targets:
            ref, how = targets[disk.vdi_uuid][0], BY_SR_MAP
        elif sr_ref:
            ref, how = sr_ref, BY_SR
        else:
            same = [ref for ref, sr_record in srs.items() if source_sr and sr_record.get('uuid') == source_sr]
            if same:
                ref, how = same[0], BY_SAME_SR
            elif default_sr_ref:
                ref, how = default_sr_ref, BY_DEFAULT
                if source_sr:
                    result.not_restored.append({
                        'what': 'the SR of %s' % describe_disk(point, disk),
                        'reason': 'SR %s of the backup is not in this pool and neither sr_map nor sr places the disk: it goes to the '
                                  'default SR %s' % (source_sr, describe_sr(srs.get(default_sr_ref)))})
            else:
                result.errors.append('%s: this pool has neither its SR (%s) nor a default SR: give sr, or map the disk with sr_map'
                                     % (describe_disk(point, disk), source_sr or 'not recorded'))
                continue
        result.disks[disk.vdi_uuid] = DiskPlacement(sr_ref=ref, sr_record=srs.get(ref) or {}, placed_by=how)
    return result


# -- networks -------------------------------------------------------------------------------------


def vlan_tag(value) -> int | None:
    """A recorded VLAN tag (-1: a physical network) as an int; None when unknown (older metadata, no PIF)."""
    if value in (None, ''):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def describe_network(network: dict) -> str:
    vlan = network.get('vlan')
    return '%r (uuid %s%s)' % (network.get('name_label'), network.get('uuid'),
                               ', VLAN %d' % vlan if vlan is not None and vlan >= 0 else ', untagged' if vlan == -1 else '')


@dataclass
class NetworkChoice:
    """The network of this pool for one backed-up VIF (``ref``, ``rule``), or why there is none (``problem``)."""

    ref: str | None
    rule: str = ''  # map, uuid, name or vlan
    problem: str = ''
    bad_input: bool = False  # a network_map entry that names no network of this pool: always an error


def choose_network(vif: dict, networks: dict, mapping: dict, allow_internal: bool) -> NetworkChoice:
    """The network for one backed-up VIF (``networks`` as restore.pool_networks describes them).

    An explicit ``mapping`` entry (source uuid or name -> pool uuid or name) wins, whatever network it names.
    Otherwise: the network with the same uuid, else the one with the same name on the same VLAN, else the first
    network with PIFs on that VLAN (in PIF device order, then name). The automatic rules never choose a network
    without PIFs (a private network, the Host internal management network) unless ``allow_internal``.
    """
    source = {'uuid': vif.get('$network$uuid'), 'name_label': vif.get('$network$name_label'), 'vlan': vlan_tag(vif.get('$network$VLAN'))}
    wanted = mapping.get(source['uuid']) if source['uuid'] in mapping else mapping.get(source['name_label'])
    if wanted is not None:
        found = [ref for ref, net in networks.items() if net['uuid'] == wanted] or \
            [ref for ref, net in networks.items() if net['name_label'] == wanted]
        if len(found) != 1:
            return NetworkChoice(None, problem='network_map sends network %s to %r, which is %s network of this pool: give a network uuid or a '
                                 'unique name' % (describe_network(source), wanted, 'not a' if not found else 'more than one'), bad_input=True)
        return NetworkChoice(found[0], 'map')

    def usable(net: dict) -> bool:
        return allow_internal or (net['has_pifs'] and not net['internal'])

    def order(ref: str) -> tuple:
        return (_natural(networks[ref].get('device')), str(networks[ref].get('name_label')), str(networks[ref].get('uuid')))

    candidates = (
        ('uuid', [ref for ref, net in networks.items() if source['uuid'] is not None and net['uuid'] == source['uuid']]),
        ('name', [ref for ref, net in networks.items() if source['name_label'] is not None and net['name_label'] == source['name_label']
                  and (source['vlan'] is None or net['vlan'] == source['vlan'])]),
        ('vlan', [ref for ref, net in networks.items() if source['vlan'] is not None and net['has_pifs'] and net['vlan'] == source['vlan']]),
    )
    skipped = []
    for rule, found in candidates:
        kept = sorted((ref for ref in found if usable(networks[ref])), key=order)
        skipped.extend(networks[ref] for ref in found if not usable(networks[ref]) and networks[ref] not in skipped)
        if kept:
            return NetworkChoice(kept[0], rule)
    why = 'no network of this pool has its uuid, its name on its VLAN, or PIFs on its VLAN'
    if skipped:
        why = 'the only networks matching it, %s, have no PIFs (private or Host internal management networks), which a restore ' \
              'joins only with allow_internal_networks=true' % ', '.join(describe_network(net) for net in skipped)
    return NetworkChoice(None, problem='VIF %s of the backup was on network %s: %s. Say where it goes with network_map, e.g. network_map: {%r: '
                         '<network name or uuid of this pool>}' % (vif.get('device'), describe_network(source), why,
                                                                   source['name_label'] or source['uuid']))


# -- VBD and VIF records --------------------------------------------------------------------------


def vbd_fields(vbd: dict, fields: dict, clean_other_config) -> dict:
    """A backed-up VBD's own settings (bootable, mode, type, userdevice, unpluggable, empty, QoS, other_config)
    for VBD.create: every constructor field but references and what XAPI sets itself."""
    given = {name: value for name, value in vbd.items()
             if name in fields and name not in VBD_SERVER_FIELDS and not fields[name][0].endswith(' ref') and value is not None}
    given['other_config'] = clean_other_config(vbd.get('other_config'))
    return given


# -- what cannot be restored ----------------------------------------------------------------------


def _refs(value) -> list:
    return [ref for ref in (value or []) if ref not in (None, '', NULL_REF)]


def unrestorable_devices(point) -> list[dict]:
    """What of the backed-up VM a restore does not recreate, as {what, reason}: vGPUs, PCI and USB passthrough, ISOs."""
    vm = point.metadata.get('vm') or {}
    found = []
    vgpus = _refs(vm.get('VGPUs'))
    if vgpus:
        found.append({'what': '%d vGPU(s)' % len(vgpus),
                      'reason': 'a vGPU is tied to a GPU group and vGPU type of its pool, which the backup does not carry: '
                                'add it to the restored VM with VGPU.create (or Xen Orchestra) once a suitable GPU group exists'})
    pcis = _refs(vm.get('attached_PCIs'))
    pci_config = str((vm.get('other_config') or {}).get(PCI_OTHER_CONFIG_KEY) or '')
    if pcis or pci_config:
        found.append({'what': 'PCI passthrough%s' % (' (other_config:pci %s)' % pci_config if pci_config else ' (%d device(s))' % len(pcis)),
                      'reason': 'passed-through PCI devices are hardware of the source host: other_config:pci is dropped, set it again '
                                'for a device of this pool'})
    vusbs = _refs(vm.get('VUSBs'))
    if vusbs:
        found.append({'what': '%d USB passthrough device(s) (VUSBs)' % len(vusbs),
                      'reason': 'a VUSB is bound to a USB group of the source host: create it again with VUSB.create for a USB group of this pool'})
    for vbd in sorted((vbd for vbd in (point.metadata.get('vbds') or {}).values() if isinstance(vbd, dict) and vbd.get('type') == 'CD'
                       and not vbd.get('empty', True)), key=lambda vbd: _natural(vbd.get('userdevice'))):
        iso = vbd.get('$VDI$name_label')
        found.append({'what': 'the disc in CD drive %s%s' % (vbd.get('userdevice'), ' (%s)' % iso if iso else ''),
                      'reason': 'the CD drive is recreated empty (the ISO may not exist in this pool): insert it again with VBD.insert'})
    return found


__all__ = ['BY_DEFAULT', 'BY_SAME_SR', 'BY_SR', 'BY_SR_MAP', 'DiskPlacement', 'NetworkChoice', 'Placement', 'choose_network', 'describe_disk',
           'describe_network', 'describe_sr', 'disk_selectors', 'find_sr', 'place_disks', 'unrestorable_devices', 'vbd_fields', 'vlan_tag']
