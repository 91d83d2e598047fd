# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Reading a pool: the VMs a backup may take, with their disks, as plain records.

Templates, snapshots and the control domain are never backup candidates. A disk whose VDI
name contains ``[NOBAK]`` (case-sensitive substring, as Xen Orchestra) is reported but marked
excluded: it is never snapshotted nor exported.
"""

from __future__ import annotations

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import UUID_PATTERN
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import NULL_REF, XapiError
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import VmAmbiguousError, VmNotBackupCandidateError, VmNotFoundError

NOBAK_MARKER = '[NOBAK]'


def is_uuid(value: str) -> bool:
    return bool(UUID_PATTERN.match((value or '').lower()))


def is_backup_candidate(vm_record: dict) -> bool:
    """A real VM: not a template, not a snapshot, not the control domain."""
    return not (vm_record.get('is_a_template') or vm_record.get('is_a_snapshot') or vm_record.get('is_control_domain'))


def is_excluded_disk(vdi_record: dict) -> bool:
    return NOBAK_MARKER in (vdi_record.get('name_label') or '')


def _int(value) -> int:
    # XAPI sends 64-bit integers as strings.
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def describe_disk(vbd_record: dict, vdi_ref: str, vdi_record: dict, sr_record: dict | None) -> dict:
    """One disk of a VM as returned by the modules."""
    return {
        'vdi_uuid': vdi_record.get('uuid'),
        'vdi_ref': vdi_ref,
        'name_label': vdi_record.get('name_label', ''),
        'virtual_size': _int(vdi_record.get('virtual_size')),
        'sr_uuid': (sr_record or {}).get('uuid'),
        'sr_name_label': (sr_record or {}).get('name_label'),
        'userdevice': vbd_record.get('userdevice'),
        'bootable': bool(vbd_record.get('bootable')),
        'mode': vbd_record.get('mode'),
        'excluded': is_excluded_disk(vdi_record),
        'cbt_enabled': bool(vdi_record.get('cbt_enabled')),
    }


def describe_vm(vm_ref: str, vm_record: dict, disks: list[dict], networks: list[dict]) -> dict:
    """A VM as returned by the modules: identity, state, tags and disks."""
    return {
        'uuid': vm_record.get('uuid'),
        'ref': vm_ref,
        'name_label': vm_record.get('name_label', ''),
        'name_description': vm_record.get('name_description', ''),
        'power_state': vm_record.get('power_state'),
        'tags': list(vm_record.get('tags') or []),
        'other_config': dict(vm_record.get('other_config') or {}),
        'memory_static_max': _int(vm_record.get('memory_static_max')),
        'vcpus_max': _int(vm_record.get('VCPUs_max')),
        'resident_on': vm_record.get('resident_on'),
        'disks': sorted(disks, key=lambda disk: str(disk.get('userdevice'))),
        'networks': networks,
    }


class PoolSnapshotOfRecords:
    """All the records needed to describe VMs, fetched with one get_all_records per class.

    Describing a whole pool call by call would cost a round trip per VBD and VDI.
    """

    def __init__(self, xapi):
        self.vms = xapi.call('VM.get_all_records')
        self.vbds = xapi.call('VBD.get_all_records')
        self.vdis = xapi.call('VDI.get_all_records')
        self.srs = xapi.call('SR.get_all_records')
        self.vifs = xapi.call('VIF.get_all_records')
        self.networks = xapi.call('network.get_all_records')

    def disks_of(self, vm_record: dict) -> list[dict]:
        disks = []
        for vbd_ref in vm_record.get('VBDs') or []:
            vbd = self.vbds.get(vbd_ref)
            if not vbd or vbd.get('type') != 'Disk' or vbd.get('VDI') in (None, '', NULL_REF):
                continue
            vdi = self.vdis.get(vbd['VDI'])
            if vdi is None:
                continue
            disks.append(describe_disk(vbd, vbd['VDI'], vdi, self.srs.get(vdi.get('SR'))))
        return disks

    def networks_of(self, vm_record: dict) -> list[dict]:
        result = []
        for vif_ref in vm_record.get('VIFs') or []:
            vif = self.vifs.get(vif_ref)
            if not vif:
                continue
            network = self.networks.get(vif.get('network'), {})
            result.append({'device': vif.get('device'), 'mac': vif.get('MAC'),
                           'network_uuid': network.get('uuid'), 'network_name_label': network.get('name_label')})
        return sorted(result, key=lambda vif: str(vif['device']))

    def backup_candidates(self) -> list[dict]:
        """Every VM a backup may take, described, sorted by name then uuid."""
        described = [describe_vm(ref, record, self.disks_of(record), self.networks_of(record))
                     for ref, record in self.vms.items() if is_backup_candidate(record)]
        return sorted(described, key=lambda vm: (vm['name_label'], vm['uuid']))


def find_vm(xapi, vm: str) -> tuple[str, dict]:
    """Resolve a VM given by uuid or name (a uuid beats a name) to (ref, record).

    Refuses templates, snapshots and the control domain, and a name that several VMs share.
    """
    if not vm or not str(vm).strip():
        raise XapiError('no VM given: set vm to the VM uuid or name')
    vm = str(vm).strip()
    candidates = []
    if is_uuid(vm):
        try:
            ref = xapi.call('VM.get_by_uuid', vm.lower())
            candidates = [(ref, xapi.call('VM.get_record', ref))]
        except XapiError as error:
            if error.code != 'UUID_INVALID':
                raise
    if not candidates:
        refs = xapi.call('VM.get_by_name_label', vm)
        candidates = [(ref, xapi.call('VM.get_record', ref)) for ref in refs]
        candidates = [(ref, record) for ref, record in candidates if is_backup_candidate(record)]
    if not candidates:
        raise VmNotFoundError('no VM named or with uuid %r exists in the pool: check the name or use the uuid' % vm, [vm])
    if len(candidates) > 1:
        uuids = ', '.join(sorted(record['uuid'] for _ref, record in candidates))
        raise VmAmbiguousError('%d VMs are named %r (%s): give the uuid instead' % (len(candidates), vm, uuids), [vm])
    ref, record = candidates[0]
    if not is_backup_candidate(record):
        kind = 'the control domain' if record.get('is_control_domain') else 'a snapshot' if record.get('is_a_snapshot') else 'a template'
        raise VmNotBackupCandidateError('%s (%s) is %s, not a VM that can be backed up' % (vm, record.get('uuid'), kind), [vm])
    return ref, record


def vm_disks(xapi, vm_record: dict) -> list[tuple[str, dict, str, dict]]:
    """The VM's disk VBDs that have a VDI, as (vbd_ref, vbd_record, vdi_ref, vdi_record), by userdevice."""
    disks = []
    for vbd_ref in vm_record.get('VBDs') or []:
        vbd = xapi.call('VBD.get_record', vbd_ref)
        if vbd.get('type') != 'Disk' or vbd.get('VDI') in (None, '', NULL_REF):
            continue
        disks.append((vbd_ref, vbd, vbd['VDI'], xapi.call('VDI.get_record', vbd['VDI'])))
    return sorted(disks, key=lambda disk: str(disk[1].get('userdevice')))


def select_vms(vms: list[dict], wanted: list[str] | None, tags: list[str] | None) -> list[dict]:
    """Keep the described VMs named (by uuid or name label) in ``wanted`` and carrying every tag in ``tags``.

    A name shared by several VMs selects all of them; a wanted entry that matches nothing is an error,
    so a typo never silently backs up nothing.
    """
    selected = vms
    if wanted:
        wanted = [str(item).strip() for item in wanted if str(item or '').strip()]
        unmatched = [item for item in wanted if not any(item.lower() == vm['uuid'] or item == vm['name_label'] for vm in vms)]
        if unmatched:
            raise VmNotFoundError('no VM named or with uuid %s in the pool (templates, snapshots and the control domain are never selected)'
                                  % ', '.join(repr(item) for item in unmatched), unmatched)
        selected = [vm for vm in vms if vm['uuid'] in [item.lower() for item in wanted] or vm['name_label'] in wanted]
    if tags:
        selected = [vm for vm in selected if set(tags) <= set(vm['tags'])]
    return selected
