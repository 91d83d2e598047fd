# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Restore a VM (or one disk) as it was at a backup point.

Every disk chain of the point is checked first: structure, and each file's block checksums
(identity, footer, header and BAT: a few KiB whatever the disk size; a file written before block
checksums is hashed whole against its recorded sha256). Nothing is created on the pool before all
of them pass. While a chain streams, every block read is checked against its recorded checksum on
read-ahead threads (``VhdStream.read_ahead``); a damaged block aborts the upload short of its
length, so the host fails the import, and the restore removes what it created, naming the file,
block and virtual offset. Then, as Xen Orchestra does, the VM is created from the
backed-up record with its start blocked (its CD drives come back empty), each disk gets a new VDI of the point's virtual size and
its chain is streamed as ONE dynamic VHD to ``/import_raw_vdi`` (exact Content-Length, one block in
memory at a time), VBDs and VIFs are recreated, and the start is unblocked. Whatever was created is
destroyed again if a step fails; what a killed restore left (marked with the run's host and pid) is
destroyed by the next restore. The VM's repository lock is held throughout, so no merge rewrites
a file being read; a merge that a crash left unfinished is finished first (as backup_merge would).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import time
from dataclasses import dataclass

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import NULL_REF, XapiError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.foreign_merge import resolve_foreign_merges
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import IntegrityError, check_chain_integrity
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import (
    TIMESTAMP_PATTERN, RepositoryError, parse_timestamp, validate_uuid,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.lock import lock_is_stale
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupDisk, BackupPoint
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.retention import finish_interrupted_merges, refuse_unfinished_merges
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.placement import (
    INTERNAL_NETWORK_KEYS, Placement, choose_network, disk_selectors, place_disks, unrestorable_devices, vbd_fields, vlan_tag,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.vtpm import backed_up_vtpms, plan_vtpms, pool_vtpm_support, recreate_vtpms
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.guest import backed_up_agent
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.suspend import (
    HALTED, RESUME_OPERATIONS, PowerStatePlan, SuspendRestoreError, attached_state, coordinator_cpu_info, plan_power_state, split_suspend_image,
    suspended_create_fields,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdChain, VhdError, stream_disk
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import attach
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import Storage
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.constructor import CONSTRUCTOR_FIELDS
# The VM record (VM.create, what is set after it, name and tags) has its own module; its names stay importable from here.
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.vm_record import (  # noqa: F401  pylint: disable=unused-import
    BACKUP_KEY_PREFIXES, BLOCK_REASON, IN_PROGRESS_KEY, MAC_SEED_KEY, RESTORED_FROM_KEY, VM_STATE_FIELDS, RestoreError,
    apply_server_owned_fields, backed_up_blocked_operations, blocked_while_restoring, check_name_template, constructor_record, fresh_generation_id,
    in_progress_marker, plan_server_owned_fields, resolve_affinity, restored_name, restored_tags, vm_create_record,
    clean_other_config as _clean_other_config, recorded_fields as _recorded,
)

MIB = 1024 * 1024


# -- choosing what to restore ------------------------------------------------------------------


def select_point(points: list, selector) -> object:
    """The point named by ``selector``: ``latest`` (default), an index (0 oldest, -1 newest), or a timestamp.

    A timestamp is ``YYYYMMDDTHHMMSSZ`` or ISO 8601 (``2026-01-02T01:00:00Z``); it selects the newest point
    taken at or before that moment, so "the backup of last night" needs no exact time.
    """
    if not points:
        raise RestoreError('there is no backup to restore')
    text = 'latest' if selector in (None, '') else str(selector).strip()
    if text == 'latest':
        return points[-1]
    if text.lstrip('-').isdigit():
        index = int(text)
        if not -len(points) <= index < len(points):
            raise RestoreError('backup index %d is out of range: there are %d backups (0 is the oldest, -1 the newest)' % (index, len(points)))
        return points[index]
    moment = _parse_moment(text)
    eligible = [point for point in points if point.datetime <= moment]
    if not eligible:
        raise RestoreError('no backup was taken at or before %s (the oldest is %s)' % (text, points[0].timestamp))
    return eligible[-1]


def _parse_moment(text: str) -> datetime.datetime:
    if TIMESTAMP_PATTERN.match(text):
        try:
            return parse_timestamp(text)
        except RepositoryError as error:
            raise RestoreError(str(error)) from None
    try:
        moment = datetime.datetime.fromisoformat(text.replace('Z', '+00:00'))
    except ValueError:
        raise RestoreError('backup %r is neither latest, an index nor a timestamp (YYYYMMDDTHHMMSSZ or ISO 8601)' % text) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def _vbd_of(point, vdi_ref: str) -> dict:
    for vbd in (point.metadata.get('vbds') or {}).values():
        if isinstance(vbd, dict) and vbd.get('VDI') == vdi_ref:
            return vbd
    return {}


def cd_drives(point) -> list:
    """The backed-up VM's CD drives (userdevice, bootable, and whether a disc was in), in device order."""
    drives = []
    for vbd in (point.metadata.get('vbds') or {}).values():
        if isinstance(vbd, dict) and vbd.get('type') == 'CD':
            drives.append({'userdevice': str(vbd.get('userdevice', '')), 'bootable': bool(vbd.get('bootable', False)),
                           'had_disc': not vbd.get('empty', True)})
    return sorted(drives, key=lambda drive: (len(drive['userdevice']), drive['userdevice']))


def cd_vbd(point, userdevice: str) -> dict:
    """The backed-up VBD of the CD drive at ``userdevice`` ({} when none)."""
    return next((vbd for vbd in (point.metadata.get('vbds') or {}).values()
                 if isinstance(vbd, dict) and vbd.get('type') == 'CD' and str(vbd.get('userdevice', '')) == userdevice), {})


def _vdi_record(point, vdi_ref: str) -> dict:
    record = (point.metadata.get('vdis') or {}).get(vdi_ref)
    return record if isinstance(record, dict) else {}


def select_disks(point, disk: str | None) -> list:
    """Every disk of the point, or the one ``disk`` names (placement.disk_selectors: VDI uuids, name, userdevice, device)."""
    disks = point.disks
    if not disk:
        return disks
    wanted = str(disk).strip()
    found = [item for item in disks if wanted in disk_selectors(point, item)]
    if not found:
        names = ', '.join('%s (%s)' % (_vdi_record(point, item.vdi_ref).get('name_label', '?'), item.vdi_uuid) for item in disks)
        raise RestoreError('backup %s has no disk %r; its disks are: %s' % (point.timestamp, wanted, names))
    if len(found) > 1:
        raise RestoreError('%r names %d disks of backup %s: give the VDI uuid' % (wanted, len(found), point.timestamp))
    return found


# -- the pool side -----------------------------------------------------------------------------


def resolve_sr(xapi, sr: str | None) -> tuple[str, dict]:
    """The SR by uuid or name (a uuid beats a name); the pool's default SR when not given."""
    if not sr:
        pool_ref = xapi.call('pool.get_all')[0]
        ref = xapi.call('pool.get_default_SR', pool_ref)
        if ref in (None, '', NULL_REF):
            raise RestoreError('the pool has no default SR: choose one with sr')
        return ref, xapi.call('SR.get_record', ref)
    try:
        ref = xapi.call('SR.get_by_uuid', sr)
        return ref, xapi.call('SR.get_record', ref)
    except XapiError as error:
        if error.code not in ('UUID_INVALID', 'HANDLE_INVALID'):
            raise
    refs = xapi.call('SR.get_by_name_label', sr)
    if len(refs) != 1:
        raise RestoreError('%s SR named or with uuid %r: give the SR uuid' % ('no' if not refs else '%d' % len(refs), sr))
    return refs[0], xapi.call('SR.get_record', refs[0])


def pool_networks(xapi) -> dict:
    """The pool's networks: ref -> uuid, name_label, VLAN tag (of its first PIF, as XO records it), whether it has PIFs, the device of its first PIF."""
    pifs = xapi.call('PIF.get_all_records')
    networks = {}
    for ref, record in xapi.call('network.get_all_records').items():
        own = [pifs[pif] for pif in record.get('PIFs') or [] if pif in pifs]
        other = record.get('other_config') or {}
        networks[ref] = {'uuid': record.get('uuid'), 'name_label': record.get('name_label'), 'has_pifs': bool(own),
                         'vlan': vlan_tag(own[0].get('VLAN')) if own else None,
                         'internal': any(str(other.get(key, '')).lower() == 'true' for key in INTERNAL_NETWORK_KEYS),
                         'device': own[0].get('device') if own else None}
    return networks


def map_network(vif: dict, networks: dict, mapping: dict, allow_internal: bool) -> tuple[str, str]:
    """(network ref, rule) for one backed-up VIF (rules: placement.choose_network); RestoreError saying what to pass when none fits."""
    choice = choose_network(vif, networks, mapping, allow_internal)
    if choice.ref is None:
        raise RestoreError(choice.problem)
    return choice.ref, choice.rule


@dataclass
class VifRestore:
    """One backed-up VIF and the network of this pool it will join."""

    record: dict  # the backed-up VIF record, with the $network$ fields export adds
    network_ref: str
    network: dict  # the pool network, as pool_networks describes it
    matched_by: str  # the map_network rule that chose it
    mac: str | None = None  # the MAC XAPI gave the new VIF, once created

    @property
    def device(self) -> str:
        return str(self.record.get('device'))

    @property
    def backed_up_mac(self) -> str:
        return self.record.get('MAC', '')

    def as_result(self) -> dict:
        entry = {'device': self.device, 'network_uuid': self.network['uuid'], 'network_name_label': self.network['name_label'],
                 'vlan': self.network['vlan'], 'matched_by': self.matched_by, 'source_network_uuid': self.record.get('$network$uuid'),
                 'source_network_name_label': self.record.get('$network$name_label')}
        if self.mac is not None:
            entry['mac'] = self.mac
        return entry


def map_networks(point, networks: dict, network_map: dict | None, allow_internal: bool = False, unmapped: list | None = None) -> list[VifRestore]:
    """One entry per backed-up VIF, in device order: the network it will join and the rule that chose it (see map_network).

    A VIF no network fits raises RestoreError, or with ``unmapped`` (a list) is left out and described there ({what, reason}).
    A network_map entry naming no network of this pool always raises.
    """
    mapping = {str(k): str(v) for k, v in (network_map or {}).items()}
    result = []
    for vif in sorted((point.metadata.get('vifs') or {}).values(), key=lambda vif: (len(str(vif.get('device'))), str(vif.get('device')))):
        choice = choose_network(vif, networks, mapping, allow_internal)
        if choice.ref is None and (unmapped is None or choice.bad_input):
            raise RestoreError(choice.problem)
        if choice.ref is None:
            unmapped.append({'what': 'VIF %s' % vif.get('device'), 'reason': choice.problem})
            continue
        result.append(VifRestore(record=vif, network_ref=choice.ref, network=networks[choice.ref], matched_by=choice.rule))
    return result


def _marker_of(record) -> dict | None:
    text = (record.get('other_config') or {}).get(IN_PROGRESS_KEY)
    if text is None:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        return {}
    return marker if isinstance(marker, dict) else {}


def find_abandoned_restores(xapi) -> dict:
    """VMs and VDIs of restores whose process died (on this host) before finishing.

    A marker from another host, or whose pid still runs, is left alone: that restore may be
    running. The disks of an abandoned VM are those it was restoring (same ``restored_from``).
    """
    vms, vdis = {}, {}
    vdi_records = xapi.call('VDI.get_all_records')
    for ref, record in xapi.call('VM.get_all_records').items():
        marker = _marker_of(record)
        if marker is None or record.get('is_a_snapshot') or not lock_is_stale(marker):
            continue
        vms[ref] = record
        origin = (record.get('other_config') or {}).get(RESTORED_FROM_KEY)
        for vbd_ref in record.get('VBDs') or []:
            with contextlib.suppress(XapiError):
                vdi_ref = xapi.call('VBD.get_VDI', vbd_ref)
                vdi_record = vdi_records.get(vdi_ref)
                if vdi_record and origin and (vdi_record.get('other_config') or {}).get(RESTORED_FROM_KEY) == origin:
                    vdis[vdi_ref] = vdi_record
    for ref, record in vdi_records.items():
        marker = _marker_of(record)
        if marker is not None and lock_is_stale(marker):
            vdis[ref] = record
    return {'vms': vms, 'vdis': vdis}


def remove_abandoned_restores(xapi, abandoned: dict, check_mode: bool = False) -> dict:
    """Destroy what ``find_abandoned_restores`` found (VMs first: their VBDs go with them)."""
    removed = {'vms': [], 'vdis': [], 'problems': []}
    for kind, destroy in (('vms', 'VM.destroy'), ('vdis', 'VDI.destroy')):
        for ref, record in abandoned[kind].items():
            try:
                if not check_mode:
                    xapi.call(destroy, ref)
                removed[kind].append({'uuid': record.get('uuid'), 'name_label': record.get('name_label'),
                                      'restored_from': (record.get('other_config') or {}).get(RESTORED_FROM_KEY)})
            except XapiError as error:
                removed['problems'].append('%s %s: %s' % (kind[:-1].upper(), record.get('uuid'), error))
    return removed


def vif_create_record(vif: VifRestore, vm_ref: str, keep_mac: bool) -> dict:
    """VIF.create's record for one resolved VIF: its backed-up settings, the mapped network, MAC "" (new) unless ``keep_mac``."""
    given = _recorded('VIF', vif.record, ('currently_attached',))
    given.update(device=vif.device, network=vif.network_ref, VM=vm_ref, MAC=vif.backed_up_mac if keep_mac and vif.backed_up_mac else '',
                 other_config=_clean_other_config(given.get('other_config')))
    for name, fallback in (('MTU', '1500'), ('qos_algorithm_type', ''), ('qos_algorithm_params', {})):
        if given.get(name) is None:
            given[name] = fallback
    return constructor_record('VIF', given, 'VIF %s of the backup' % vif.device)


# -- the restore -------------------------------------------------------------------------------


class _Created:
    """What the restore created, destroyed again in reverse order on failure."""

    def __init__(self, xapi):
        self.xapi = xapi
        self.vm_ref = None
        self.vdi_refs = []

    def rollback(self) -> list:
        problems = []
        if self.vm_ref:
            try:
                self.xapi.call('VM.destroy', self.vm_ref)  # VBDs and VIFs go with it
            except XapiError as error:
                problems.append('VM %s: %s' % (self.vm_ref, error))
        for ref in reversed(self.vdi_refs):
            try:
                self.xapi.call('VDI.destroy', ref)
            except XapiError as error:
                problems.append('VDI %s: %s' % (ref, error))
        return problems


@dataclass
class DiskRestore:
    """One disk of the point: its checked chain, and the VDI it becomes."""

    disk: BackupDisk
    chain: list[str]  # newest first: the point's own VHD ... the full (paths in ``storage``)
    length: int  # bytes of the one dynamic VHD streamed to /import_raw_vdi
    virtual_size: int
    record: dict  # the backed-up VDI record ({} in older metadata)
    vbd: dict  # the backed-up VBD that attached it ({} when none)
    name_label: str  # of the new VDI
    userdevice: str
    vdi_uuid: str | None = None  # once created
    seconds: float | None = None  # the transfer, once done
    storage: Storage | None = None  # the repository's, where ``chain`` lies (None: local paths)
    sr_ref: str | None = None  # the SR of the new VDI, once placed (None: the plan's sr_ref)
    sr_record: dict | None = None
    placed_by: str | None = None  # the placement rule that chose it (placement.BY_*)
    block_sums: dict = dataclasses.field(default_factory=dict)  # storage path -> BlockSums: each block read is checked

    def as_result(self) -> dict:
        entry = {'source_vdi_uuid': self.disk.vdi_uuid, 'vdi_uuid': self.vdi_uuid, 'name_label': self.name_label,
                 'userdevice': self.userdevice, 'virtual_size': self.virtual_size, 'bytes': self.length, 'chain_length': len(self.chain)}
        if self.seconds is not None:
            entry['duration'] = self.seconds
        if self.sr_record is not None:
            entry.update(sr_uuid=self.sr_record.get('uuid'), sr_name_label=self.sr_record.get('name_label'), placed_by=self.placed_by)
        return entry


@dataclass
class CheckedBackup:
    """The repository side of a restore: the chosen point and its disks, every chain checked."""

    point: BackupPoint
    disks: list[DiskRestore]
    verified: list[str]  # VHDs (relative to the VM folder) checked: block checksums (each block as it streams) or a legacy sha256
    unverified: list[str]  # VHDs without block checksums or a recorded sha256 (e.g. written by Xen Orchestra)
    finished_merges: list[str]
    legacy: list[str] = dataclasses.field(default_factory=list)  # of ``verified``: hashed whole up front (written before block checksums)


@dataclass
class RestorePlan:
    """Everything a restore creates, decided before anything is: the VM (unless ``disk_only``), its disks, VIFs and CD drives."""

    backup: CheckedBackup
    sr_ref: str
    sr_record: dict
    disk_only: bool
    vm_name: str
    affinity: str  # the backed-up home host when this pool has it, else OpaqueRef:NULL
    vifs: list[VifRestore]
    cd_drives: list[dict]
    start: bool
    keep_mac: bool
    vm_uuid: str | None = None  # once created
    started: bool = False
    tags: list[str] = dataclasses.field(default_factory=list)  # of the new VM (restored_tags)
    dropped_tags: list[str] = dataclasses.field(default_factory=list)  # backed-up tags the new VM does not get
    vm_record: dict = dataclasses.field(default_factory=dict)  # fields set after VM.create, and those not restored
    not_restored: list = dataclasses.field(default_factory=list)  # {what, reason}: what this pool does not get back
    vtpms: list = dataclasses.field(default_factory=list)  # VtpmRestore of each backed-up vTPM (_ops/vtpm.py)
    power: PowerStatePlan | None = None  # suspended (with the memory image) or halted: _ops/suspend.py

    @property
    def point(self) -> BackupPoint:
        return self.backup.point

    @property
    def disks(self) -> list[DiskRestore]:
        return self.backup.disks

    @property
    def bytes_transferred(self) -> int:
        image = [self.power.image] if self.power is not None and self.power.image is not None else []  # the memory image too
        return sum(item.length for item in self.disks + image if item.seconds is not None)


def prepare_restore(repo, vm_uuid: str, job_id: str | None, point_selector, disk: str | None, finish_merges: bool = False) -> CheckedBackup:
    """Choose the point and disks and check every chain before anything is created.

    Structure, and each file's block checksum file against the file (identity and structures, not
    the blocks: those are checked as they stream); a legacy whole-file sha256 is checked here.

    A merge a crash left unfinished is finished first with ``finish_merges`` (the caller holds the
    VM's lock), else refused with a message saying how to finish it.
    """
    validate_uuid(vm_uuid, 'VM uuid')
    finished = finish_interrupted_merges(repo, vm_uuid)['resumed'] if finish_merges else []
    refuse_unfinished_merges(repo, vm_uuid)
    # A merge Xen Orchestra made of our chains is checked (the blocks it wrote) and recorded under the
    # lock, as backup_merge does; one that does not check out is damage, named below.
    unsound = {merge.path: merge for merge in resolve_foreign_merges(repo, vm_uuid) if not merge.ok} if finish_merges else {}
    points = repo.list_backups(vm_uuid, job_id)
    if not points:
        raise RestoreError('repository %s holds no backup of VM %s%s' % (repo.root, vm_uuid, ' by this job' if job_id else ''))
    point = select_point(points, point_selector)
    every_point = repo.list_backups(vm_uuid)
    disks, verified, unverified, legacy = [], [], [], []
    for item in select_disks(point, disk):
        what = 'refusing to restore disk %s of backup %s' % (item.vdi_uuid, point.timestamp)
        try:
            chain = repo.vhd_chain(point, item)
        except RepositoryError as error:
            raise RestoreError('%s: %s' % (what, error)) from error
        if any(path in unsound for path in chain):
            raise IntegrityError(what, ['%s: merged by another tool, and %s' % (merge.shown, problem)
                                        for path in chain if path in unsound for merge in [unsound[path]] for problem in merge.problems])
        checked = check_chain_integrity(repo, vm_uuid, chain, every_point, what)
        verified.extend(checked.verified)
        unverified.extend(checked.unverified)
        legacy.extend(checked.legacy)
        with VhdChain.from_paths(chain, storage=repo.storage) as opened:
            length = stream_disk(opened).length
            chain_size = opened.size
        record = _vdi_record(point, item.vdi_ref)
        # Our own field, else the chain's footer (its current size): a point Xen Orchestra wrote has no such field.
        size = item.virtual_size if item.virtual_size is not None else chain_size
        vbd = _vbd_of(point, item.vdi_ref)
        disks.append(DiskRestore(disk=item, chain=chain, storage=repo.storage, length=length, virtual_size=max(size, chain_size), record=record, vbd=vbd,
                                 name_label=record.get('name_label') or 'restored disk %s' % item.vdi_uuid,
                                 userdevice=str(vbd.get('userdevice', '')) if vbd else '', block_sums=checked.sums))
    return CheckedBackup(point=point, disks=disks, verified=sorted(set(verified)), unverified=sorted(set(unverified)), finished_merges=finished,
                         legacy=sorted(set(legacy)))


def plan_restore(backup: CheckedBackup, sr_ref: str, sr_record: dict, networks: dict, disk_only: bool, name_label: str | None = None,
                 network_map: dict | None = None, allow_internal_networks: bool = False, affinity: str = NULL_REF, start: bool = False,
                 keep_mac: bool = False, name_template: str | None = None, keep_tags: bool = False, placement: Placement | None = None,
                 strict: bool = False, vtpm_unsupported: str | None = None, allow_vtpm_loss: bool = False,
                 restore_vifs: bool = True) -> RestorePlan:
    """What the restore will create, from the checked backup and the pool's SR and networks: pure (reads nothing).

    Refuses (RestoreError) a start the backed-up VM blocks and bad sr_map or network_map entries. A VIF no network of
    ``networks`` fits, and what else this pool cannot give back (placement.unrestorable_devices, a missing SR), are listed
    in the plan's ``not_restored``; with ``strict`` they are refused instead, and so are BIOS strings XAPI will not set.
    Disks go to ``placement``'s SRs (placement.place_disks), else all to ``sr_ref``.
    With ``disk_only``, only the disk is created, named ``name_label`` when given. The VM is named ``name_label``,
    else ``name_template`` filled in (a bad template is refused here), else as it was backed up; its tags are the
    backed-up ones with ``keep_tags``, else only the backup-exclusion tags (vm_record.restored_tags).
    Refuses a backed-up vTPM the pool cannot recreate (``vtpm_unsupported`` says why) unless ``allow_vtpm_loss``.
    """
    point = backup.point
    vm_uuid = point.vm_uuid
    source_vm = point.metadata.get('vm') or {}
    not_restored = []
    if placement is not None:
        if placement.errors:
            raise RestoreError('; '.join(placement.errors))
        not_restored.extend(placement.not_restored)
        backup = dataclasses.replace(backup, disks=[dataclasses.replace(item, sr_ref=placement.disks[item.disk.vdi_uuid].sr_ref,
                                                                        sr_record=placement.disks[item.disk.vdi_uuid].sr_record,
                                                                        placed_by=placement.disks[item.disk.vdi_uuid].placed_by)
                                                    for item in backup.disks])
    # Without restore_vifs the VM joins no network (a health check's temporary VM), so no network needs to match.
    vifs = [] if disk_only or not restore_vifs else map_networks(point, networks, network_map, allow_internal_networks, unmapped=not_restored)
    if not disk_only:
        not_restored.extend(unrestorable_devices(point))
    vm_record = {} if disk_only else plan_server_owned_fields(point)
    # strict refuses all that is known not to come back: what this pool lacks, and the BIOS strings XAPI will not take
    # (reported under vm_record); a vTPM dropped with allow_vtpm_loss was consented to by name.
    refused = not_restored + [{'what': 'BIOS string %s' % item['key'], 'reason': item['reason']}
                              for item in vm_record.get('not_restored', []) if item.get('field') == 'bios_strings']
    if strict and refused:
        raise RestoreError('strict: %d thing(s) of backup %s cannot be restored on this pool, so nothing was created: %s. Map the SRs and networks '
                           '(sr_map, sr, network_map), or restore with strict=false to restore without them'
                           % (len(refused), point.timestamp, '; '.join('%s: %s' % (item['what'], item['reason']) for item in refused)))
    if start and not disk_only and 'start' in backed_up_blocked_operations(point):
        raise RestoreError('the backed-up VM has its start blocked (%r), and the restored VM keeps that block: restore it with start=false'
                           % backed_up_blocked_operations(point)['start'])
    vtpms = []
    if not disk_only:
        try:
            vtpms = backed_up_vtpms(point.metadata)
        except ValueError as error:
            raise RestoreError('backup %s cannot be restored: %s' % (point.timestamp, error)) from None
        vtpms, refusal = plan_vtpms(vtpms, vtpm_unsupported, allow_vtpm_loss)
        if refusal:
            raise RestoreError('backup %s: %s' % (point.timestamp, refusal))
    if disk_only and name_label:
        backup = dataclasses.replace(backup, disks=[dataclasses.replace(item, name_label=name_label) for item in backup.disks])
    tags, dropped_tags = ([], []) if disk_only else restored_tags(point, keep_tags)
    return RestorePlan(backup=backup, sr_ref=sr_ref, sr_record=sr_record, disk_only=disk_only,
                       vm_name=(name_label or source_vm.get('name_label') or 'restored VM %s' % vm_uuid) if disk_only else
                       restored_name(point, name_label, name_template),
                       affinity=NULL_REF if disk_only else affinity, vifs=vifs, cd_drives=[] if disk_only else cd_drives(point),
                       start=start and not disk_only, keep_mac=keep_mac, tags=tags, dropped_tags=dropped_tags,
                       vm_record=vm_record, not_restored=not_restored, vtpms=vtpms)


def restore_result(plan: RestorePlan, removed_leftovers: dict) -> dict:
    """The vm_restore module's result: the plan, and what was created once it was carried out."""
    point = plan.point
    source_vm = point.metadata.get('vm') or {}
    return {
        'changed': True,
        'backup': {'vm_uuid': point.vm_uuid, 'timestamp': point.timestamp, 'job_id': point.job_id, 'vm_name_label': source_vm.get('name_label')},
        'sr': {'uuid': plan.sr_record.get('uuid'), 'name_label': plan.sr_record.get('name_label')},
        'vm': None if plan.disk_only else {'uuid': plan.vm_uuid, 'name_label': plan.vm_name, 'started': plan.started,
                                           'affinity_kept': plan.affinity != NULL_REF},
        'disks': [item.as_result() for item in plan.disks],
        'vifs': [vif.as_result() for vif in plan.vifs],
        'checksums': {'verified': plan.backup.verified, 'unverified': plan.backup.unverified, 'legacy': plan.backup.legacy},
        'finished_merges': plan.backup.finished_merges,
        'removed_leftovers': removed_leftovers,
        'cd_drives': plan.cd_drives,
        'bytes_transferred': plan.bytes_transferred,
        'tags': {'kept': plan.tags, 'dropped': plan.dropped_tags},
        'vm_record': {key: value for key, value in plan.vm_record.items() if key != 'bios_strings'},
        'not_restored': plan.not_restored,
        'vtpms': [item.as_result() for item in plan.vtpms],
        'backed_up_guest_agent': backed_up_agent(source_vm),
        'power_state': plan.power.as_result() if plan.power is not None else None,
    }


def restore(xapi, repo, vm_uuid: str, job: Job | None = None, point=None, sr: str | None = None, name_label: str | None = None,
            network_map: dict | None = None, start: bool = False, disk: str | None = None, check_mode: bool = False,
            keep_mac: bool = False, transfer_timeout: float | None = None, allow_internal_networks: bool = False,
            name_template: str | None = None, keep_tags: bool = False, sr_map: dict | None = None, strict: bool = False,
            allow_vtpm_loss: bool = False, restore_vifs: bool = True, power_state: str | None = None) -> dict:
    """Restore the VM (or with ``disk``, that one disk to a new VDI); see the module documentation."""
    started = time.monotonic()
    if name_template and not name_label and not disk:
        check_name_template(name_template)  # a bad option is refused before the repository is even locked
    lock = contextlib.nullcontext() if check_mode else repo.lock(vm_uuid, 'vm_restore')
    with lock:
        backup = prepare_restore(repo, vm_uuid, job.id if job else None, point, disk, finish_merges=not check_mode)
        sr_ref, sr_record, placement = place_on_pool(xapi, backup, sr, sr_map)
        disk_only = bool(disk)
        # The memory image of a suspended or checkpointed VM gets no VBD; whether it is restored is decided here.
        # (With ``disk`` naming it, it is restored alone like any disk, as a VDI of type suspend.)
        attached, image = (backup.disks, None) if disk_only else split_suspend_image(backup.disks, backup.point)
        backup = dataclasses.replace(backup, disks=attached)
        if image is not None and image.disk.vdi_uuid in placement.disks:
            placed = placement.disks[image.disk.vdi_uuid]  # the memory image goes where placement puts it, like a disk
            image = dataclasses.replace(image, sr_ref=placed.sr_ref, sr_record=placed.sr_record, placed_by=placed.placed_by)
        resumable = image is not None and not disk_only and power_state != HALTED
        power = plan_power_state(backup.point, image, power_state, coordinator_cpu_info(xapi) if resumable else None, disk_only)
        plan = plan_restore(backup, sr_ref, sr_record, {} if disk_only else pool_networks(xapi), disk_only, name_label=name_label,
                            network_map=network_map, allow_internal_networks=allow_internal_networks,
                            affinity=NULL_REF if disk_only else resolve_affinity(xapi, backup.point.metadata.get('vm') or {}),
                            start=start, keep_mac=keep_mac, name_template=name_template, keep_tags=keep_tags, placement=placement,
                            strict=strict, allow_vtpm_loss=allow_vtpm_loss, restore_vifs=restore_vifs,
                            vtpm_unsupported=None if disk_only else pool_vtpm_support(xapi.call('pool.get_restrictions', xapi.call('pool.get_all')[0])))
        plan.power = power
        if power.suspended and any(item.action == 'recreate' for item in plan.vtpms):
            # XAPI creates a vTPM only on a halted VM (ocaml/xapi/xapi_vtpm.ml create), and VM.create makes this one suspended.
            raise SuspendRestoreError('backup %s holds a memory image and a vTPM: XAPI cannot give a vTPM to a VM created suspended, '
                                      'so restore it with power_state=halted (the vTPM is restored, the memory image is not)'
                                      % backup.point.timestamp)
        # Only once the plan is sound: a restore refused for bad input changes nothing on the pool.
        leftovers = remove_abandoned_restores(xapi, find_abandoned_restores(xapi), check_mode)
        if check_mode:
            return dict(restore_result(plan, leftovers), duration=round(time.monotonic() - started, 3))
        created = _Created(xapi)
        try:
            _carry_out(xapi, plan, created, transfer_timeout)
        except BaseException as error:
            problems = created.rollback()
            if isinstance(error, (XapiError, RepositoryError, VhdError, OSError)):
                message = 'restore of VM %s backup %s failed, everything it created was removed%s: %s' % (
                    vm_uuid, plan.point.timestamp, ' except: %s' % '; '.join(problems) if problems else '', error)
                if isinstance(error, XapiError):
                    raise error.reworded(message) from error
                raise RestoreError(message) from error
            raise
    elapsed = max(time.monotonic() - started, 1e-6)
    return dict(restore_result(plan, leftovers), duration=round(elapsed, 3),
                throughput_mib_s=round(plan.bytes_transferred / MIB / elapsed, 1))


def place_on_pool(xapi, backup: CheckedBackup, sr: str | None, sr_map: dict | None) -> tuple[str | None, dict, Placement]:
    """The ``sr`` SR (else the pool's default SR, the result's ``sr``; None and {} when the pool has none) and each disk's SR."""
    srs = xapi.call('SR.get_all_records')
    default_ref = xapi.call('pool.get_default_SR', xapi.call('pool.get_all')[0])
    default_ref = default_ref if default_ref in srs else None
    sr_ref = resolve_sr(xapi, sr)[0] if sr else None
    placement = place_disks(backup.point, [item.disk for item in backup.disks], srs, sr_map, sr_ref, default_ref)
    shown = sr_ref or default_ref
    return shown, srs.get(shown, {}) if shown else {}, placement


def _carry_out(xapi, plan: RestorePlan, created: _Created, timeout: float | None) -> None:
    """Create what the plan says, recording it in ``created`` (for the rollback) and the plan (for the result)."""
    suspended = plan.power is not None and plan.power.suspended
    if not plan.disk_only:
        record = vm_create_record(plan.point, plan.vm_name, plan.affinity, plan.keep_mac, plan.tags)
        blocked = blocked_while_restoring(plan.point)
        if suspended:
            # The memory image first: XAPI's VM.create takes a suspended VM only with its suspend VDI.
            record.update(suspended_create_fields(plan.point, _restore_disk(xapi, plan, plan.power.image, created, timeout)))
            blocked.update(dict.fromkeys(RESUME_OPERATIONS, BLOCK_REASON))
        created.vm_ref = xapi.call('VM.create', record)
        # VM.create ignores blocked_operations: the start block of a restore in progress goes on here.
        xapi.call('VM.set_blocked_operations', created.vm_ref, blocked)
        plan.vm_uuid = xapi.call('VM.get_uuid', created.vm_ref)
    for item in plan.disks:
        vdi_ref = _restore_disk(xapi, plan, item, created, timeout)
        if not plan.disk_only:
            _attach_disk(xapi, created.vm_ref, vdi_ref, item, suspended)
    # Markers go before the start is unblocked: a kill in between leaves a finished but blocked VM
    # (kept), never an unblocked one that the next restore would take for abandoned.
    for vdi_ref in created.vdi_refs:
        xapi.call('VDI.remove_from_other_config', vdi_ref, IN_PROGRESS_KEY)
    if plan.disk_only:
        return
    for drive in plan.cd_drives:
        # Recreated empty: the ISO the VM had inserted may not exist in this pool (or its SR may be gone).
        backed_up = cd_vbd(plan.point, drive['userdevice'])
        given = dict({'bootable': drive['bootable'], 'qos_algorithm_type': '', 'qos_algorithm_params': {}, 'unpluggable': True},
                     **vbd_fields(backed_up, CONSTRUCTOR_FIELDS['VBD'], _clean_other_config))
        given.update(VM=created.vm_ref, VDI=NULL_REF, userdevice=drive['userdevice'] or 'autodetect', mode='RO', type='CD', empty=True)
        if suspended:
            given.update(attached_state(backed_up))
        xapi.call('VBD.create', constructor_record('VBD', given, 'CD drive %s' % drive['userdevice']))
    for vif in plan.vifs:
        vif_record = vif_create_record(vif, created.vm_ref, plan.keep_mac)
        if suspended:
            vif_record['currently_attached'] = attached_state(vif.record)['currently_attached']
        vif_ref = xapi.call('VIF.create', vif_record)
        vif.mac = xapi.call('VIF.get_MAC', vif_ref)
    # On the halted VM (VTPM.create wants it so), before the start is unblocked; VM.destroy of a rollback takes them too.
    recreate_vtpms(xapi, created.vm_ref, plan.vtpms)
    plan.vm_record = apply_server_owned_fields(xapi, created.vm_ref, plan.point, plan.vm_record)
    xapi.call('VM.remove_from_other_config', created.vm_ref, IN_PROGRESS_KEY)
    xapi.call('VM.set_blocked_operations', created.vm_ref, backed_up_blocked_operations(plan.point))
    if plan.start:
        xapi.call('VM.resume' if suspended else 'VM.start', created.vm_ref, False, False)
        plan.started = True


def _restore_disk(xapi, plan: RestorePlan, item: DiskRestore, created: _Created, timeout: float | None) -> str:
    """Create the disk's VDI (marked as a restore in progress) and stream its chain into it; returns the VDI ref."""
    point = plan.point
    vdi_ref = xapi.call('VDI.create', constructor_record('VDI', {
        'name_label': item.name_label, 'name_description': item.record.get('name_description', ''), 'SR': item.sr_ref or plan.sr_ref,
        'virtual_size': item.virtual_size, 'type': 'suspend' if item.record.get('type') == 'suspend' else 'user',
        'sharable': False, 'read_only': False,
        'other_config': dict(_clean_other_config(item.record.get('other_config')),
                             **{RESTORED_FROM_KEY: '%s@%s' % (point.vm_uuid, point.timestamp), IN_PROGRESS_KEY: in_progress_marker()}),
        'sm_config': {}, 'xenstore_data': {}, 'tags': []}, 'disk %s' % item.name_label))
    created.vdi_refs.append(vdi_ref)
    item.vdi_uuid = xapi.call('VDI.get_uuid', vdi_ref)
    began = time.monotonic()
    with VhdChain.from_paths(item.chain, storage=item.storage) as chain:
        for layer in chain.layers():
            sums = item.block_sums.get(layer.name)
            if sums is not None:
                attach(layer, sums)  # each block read is checked: a damaged one stops the upload, naming it
        stream = stream_disk(chain)
        xapi.import_stream(vdi_ref, stream.read_ahead(), stream.length, timeout=timeout)
    item.seconds = round(time.monotonic() - began, 3)
    return vdi_ref


def _attach_disk(xapi, vm_ref: str, vdi_ref: str, item: DiskRestore, suspended: bool = False) -> None:
    """The VBD of a restored disk, with the backed-up VBD's settings (placement.vbd_fields: QoS, other_config, unpluggable...;
    on a suspended VM, its device and attachment)."""
    vbd = item.vbd
    given = dict({'bootable': item.userdevice == '0', 'mode': 'RW', 'qos_algorithm_type': '', 'qos_algorithm_params': {}, 'unpluggable': False},
                 **vbd_fields(vbd, CONSTRUCTOR_FIELDS['VBD'], _clean_other_config))
    given.update(VM=vm_ref, VDI=vdi_ref, userdevice=item.userdevice or 'autodetect', type='Disk', empty=False)
    if suspended:
        given.update(attached_state(vbd))
    xapi.call('VBD.create', constructor_record('VBD', given, 'the VBD of disk %s' % item.name_label))


def destroy_restored_vm(xapi, vm_uuid: str, name_label: str | None = None, check_mode: bool = False) -> dict:
    """Destroy a VM that vm_restore created, with the disks that restore created for it.

    Anything else is refused: a VM without our ``restored_from`` mark (so a wrong uuid never
    destroys a production VM), a template, a snapshot, the control domain, or, with ``name_label``,
    a VM of another name. Disks the user attached later (without the same mark) are detached with
    the VM but kept. An absent VM is not an error (already destroyed: nothing changes).
    """
    vm_uuid = validate_uuid(str(vm_uuid or '').strip().lower(), 'VM uuid')
    try:
        vm_ref = xapi.call('VM.get_by_uuid', vm_uuid)
    except XapiError as error:
        if error.code == 'UUID_INVALID':
            return {'changed': False, 'vm': {'uuid': vm_uuid, 'existed': False}, 'destroyed_vdis': [], 'kept_vdis': []}
        raise
    record = xapi.call('VM.get_record', vm_ref)
    if record.get('is_a_template') or record.get('is_a_snapshot') or record.get('is_control_domain'):
        raise RestoreError('refusing to destroy VM %s: it is a template, a snapshot or the control domain' % vm_uuid)
    origin = (record.get('other_config') or {}).get(RESTORED_FROM_KEY)
    if not origin:
        raise RestoreError('refusing to destroy VM %s (%s): it was not created by xapi.delta_backup.vm_restore (no %s in its other_config)'
                           % (vm_uuid, record.get('name_label'), RESTORED_FROM_KEY))
    if name_label is not None and record.get('name_label') != name_label:
        raise RestoreError('refusing to destroy VM %s: it is named %r, not %r' % (vm_uuid, record.get('name_label'), name_label))
    destroyed, kept = [], []
    for vbd_ref in record.get('VBDs') or []:
        vbd = xapi.call('VBD.get_record', vbd_ref)
        if vbd.get('type') != 'Disk' or vbd.get('empty') or vbd.get('VDI') in (None, '', NULL_REF):
            continue
        vdi = xapi.call('VDI.get_record', vbd['VDI'])
        ours = (vdi.get('other_config') or {}).get(RESTORED_FROM_KEY) == origin
        (destroyed if ours else kept).append((vbd['VDI'], {'uuid': vdi.get('uuid'), 'name_label': vdi.get('name_label')}))
    result = {'changed': True, 'vm': {'uuid': vm_uuid, 'name_label': record.get('name_label'), 'restored_from': origin,
                                      'power_state': record.get('power_state'), 'existed': True},
              'destroyed_vdis': [entry for _ref, entry in destroyed], 'kept_vdis': [entry for _ref, entry in kept]}
    if check_mode:
        return result
    if record.get('power_state') != 'Halted':
        xapi.call('VM.hard_shutdown', vm_ref)
    xapi.call('VM.destroy', vm_ref)  # its VBDs and VIFs go with it
    for vdi_ref, _entry in destroyed:
        xapi.call('VDI.destroy', vdi_ref)
    return result


__all__ = ['RestoreError', 'blocked_while_restoring', 'cd_drives', 'constructor_record', 'map_network', 'pool_networks', 'vif_create_record',
           'vm_create_record', 'destroy_restored_vm', 'find_abandoned_restores', 'remove_abandoned_restores', 'select_point',
           'select_disks', 'resolve_sr', 'map_networks', 'prepare_restore', 'plan_restore', 'restore_result', 'restore', 'CheckedBackup', 'DiskRestore',
           'RestorePlan', 'VifRestore']
