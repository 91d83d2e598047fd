# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A job's backup snapshots of one VM: take, find, mark exported, prune.

A backup snapshot is tagged in ``other_config`` (on the snapshot VM and on each of its VDIs,
since CBT-purged snapshots lose their VM) with Xen Orchestra's keys: job, schedule, VM and
datetime; ``xo:backup:exported`` is set only once every disk of it has landed in every
repository. The job's **reference snapshot** is its newest exported one: it is the base of the
next delta and is never removed. Snapshots without our job's tags are never touched.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket
import weakref
from dataclasses import dataclass, field

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import NULL_REF, XapiError
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import NotASnapshotError
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.pool import find_vm, is_excluded_disk, vm_disks
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.suspend import checkpoint_decision, snapshot_suspend_vdi
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.lock import process_is_alive
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import holds_repository, open_repository

KEY_JOB = 'xo:backup:job'
KEY_SCHEDULE = 'xo:backup:schedule'
KEY_VM = 'xo:backup:vm'
KEY_DATETIME = 'xo:backup:datetime'
KEY_EXPORTED = 'xo:backup:exported'
KEY_CHAIN_LENGTH = 'xo:backup:deltaChainLength'
KEY_CONTENT = 'xo:backup:contentKey'
KEY_JOB_NAME = 'xapi_delta_backup:job_name'
# Set on the snapshot VM by delta_export while it streams the snapshot: {"host", "pid", "started"} as JSON.
KEY_EXPORTING = 'xapi_delta_backup:exporting'
# An export marker from another host is trusted this long (a longer transfer would have timed out).
EXPORTING_MAX_AGE = datetime.timedelta(hours=24)
# An untagged snapshot with our name is a leftover of a vm_snapshot killed while XAPI took it only when it
# is this much older (host clock) than the snapshot just taken: tagging follows VM.snapshot at once.
ORPHAN_MIN_AGE = datetime.timedelta(seconds=5)
# Xen Orchestra writes the datetime tag with colons (file names have none).
DATETIME_TAG_FORMAT = '%Y%m%dT%H:%M:%SZ'
# Our own name so an operator can tell backup snapshots apart in any client.
SNAPSHOT_NAME_FORMAT = '[delta_backup %s] %s'


def format_datetime_tag(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime(DATETIME_TAG_FORMAT)


def parse_datetime_tag(text: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(text, DATETIME_TAG_FORMAT).replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return None


@dataclass
class SnapshotDisk:
    """One disk of a backup snapshot: the snapshot VDI and the live disk it was taken of."""

    vdi_ref: str
    vdi_uuid: str
    live_vdi_ref: str
    live_vdi_uuid: str
    virtual_size: int
    name_label: str
    userdevice: str

    def as_result(self) -> dict:
        return {'vdi_uuid': self.vdi_uuid, 'live_vdi_uuid': self.live_vdi_uuid, 'virtual_size': self.virtual_size,
                'name_label': self.name_label, 'userdevice': self.userdevice}


@dataclass
class BackupSnapshot:
    """A snapshot VM of our job, with its disks and tags."""

    ref: str
    uuid: str
    name_label: str
    taken_at: datetime.datetime
    exported: bool
    chain_length: int
    disks: list[SnapshotDisk] = field(default_factory=list)
    exporting: dict | None = None
    # How [NOBAK] disks were left out when this run took it (EXCLUDED_BY_*), None otherwise.
    excluded_by: str | None = None

    @property
    def datetime_tag(self) -> str:
        return format_datetime_tag(self.taken_at)

    def as_result(self) -> dict:
        return {'uuid': self.uuid, 'name_label': self.name_label, 'datetime': self.datetime_tag, 'exported': self.exported,
                'delta_chain_length': self.chain_length, 'disks': [disk.as_result() for disk in self.disks]}


def _is_our_snapshot(record: dict, vm_uuid: str, job_id: str) -> bool:
    other = record.get('other_config') or {}
    return bool(record.get('is_a_snapshot')) and other.get(KEY_JOB) == job_id and other.get(KEY_VM) == vm_uuid


def _load_snapshot(xapi, ref: str, record: dict) -> BackupSnapshot | None:
    other = record.get('other_config') or {}
    taken_at = parse_datetime_tag(other.get(KEY_DATETIME, ''))
    if taken_at is None:
        # A snapshot with our job tag but no readable datetime was not written by a finished
        # vm_snapshot call; it is ours to prune but never a base.
        taken_at = datetime.datetime.fromtimestamp(0, datetime.timezone.utc)
    disks = []
    for _vbd_ref, vbd, vdi_ref, vdi in vm_disks(xapi, record):
        live_ref = vdi.get('snapshot_of') or NULL_REF
        live_uuid = ''
        if live_ref != NULL_REF:
            try:
                live_uuid = xapi.call('VDI.get_uuid', live_ref)
            except XapiError:
                live_uuid = ''  # the live disk was deleted since: this disk can no longer be a base
        disks.append(SnapshotDisk(vdi_ref=vdi_ref, vdi_uuid=vdi['uuid'], live_vdi_ref=live_ref, live_vdi_uuid=live_uuid,
                                  virtual_size=int(vdi.get('virtual_size') or 0), name_label=vdi.get('name_label', ''),
                                  userdevice=str(vbd.get('userdevice'))))
    try:
        chain_length = int(other.get(KEY_CHAIN_LENGTH, 0))
    except ValueError:
        chain_length = 0
    try:
        exporting = json.loads(other[KEY_EXPORTING]) if other.get(KEY_EXPORTING) else None
    except ValueError:
        exporting = None
    return BackupSnapshot(ref=ref, uuid=record['uuid'], name_label=record.get('name_label', ''), taken_at=taken_at,
                          exported=other.get(KEY_EXPORTED) == 'true' and taken_at.year > 1970, chain_length=chain_length, disks=disks,
                          exporting=exporting if isinstance(exporting, dict) else None)


def export_in_progress(snapshot: BackupSnapshot, now: datetime.datetime | None = None) -> bool:
    """Whether a delta_export is streaming this snapshot now: its marker names a live process.

    On this host the pid must still run; a marker from another host counts until EXPORTING_MAX_AGE.
    A marker left by a killed run on this host does not protect the snapshot.
    """
    holder = snapshot.exporting
    if not holder:
        return False
    if holder.get('host') == socket.gethostname():
        pid = holder.get('pid')
        return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and process_is_alive(pid)
    try:
        started = datetime.datetime.fromisoformat(str(holder.get('started')))
    except ValueError:
        return False
    if started.tzinfo is None:
        started = started.replace(tzinfo=datetime.timezone.utc)
    return (now or datetime.datetime.now(datetime.timezone.utc)) - started < EXPORTING_MAX_AGE


def job_snapshots(xapi, vm_record: dict, job_id: str) -> list[BackupSnapshot]:
    """The job's snapshots of this VM, oldest first."""
    found = []
    for ref in vm_record.get('snapshots') or []:
        try:
            record = xapi.call('VM.get_record', ref)
        except XapiError as error:
            if error.code == 'HANDLE_INVALID':
                continue  # deleted while we looked
            raise
        if _is_our_snapshot(record, vm_record['uuid'], job_id):
            found.append(_load_snapshot(xapi, ref, record))
    return sorted(found, key=lambda snapshot: (snapshot.taken_at, snapshot.uuid))


def reference_snapshot(snapshots: list[BackupSnapshot]) -> BackupSnapshot | None:
    """The newest exported snapshot: the base of the next delta."""
    exported = [snapshot for snapshot in snapshots if snapshot.exported]
    return exported[-1] if exported else None


def existing_repositories(paths: list[str] | None) -> list:
    """The paths that already hold a repository, opened; the others have no point to learn from yet."""
    return [open_repository(path) for path in paths or [] if holds_repository(path)]


def point_snapshot_vdis(point) -> set[str]:
    """uuids of the snapshot VDIs a repository point holds (its metadata's VDI records of exported disks)."""
    vdis = point.metadata.get('vdis') or {}
    # A checkpoint's memory image is exported too but is no disk of the snapshot (BackupSnapshot.disks).
    return {str((vdis.get(ref) or {}).get('uuid', '')).lower() for ref in point.metadata.get('vhds') or {}
            if (vdis.get(ref) or {}).get('type') != 'suspend'}


def deltas_since_full(points: list) -> int:
    """Deltas at the end of the job's points since its newest full (what ``deltaChainLength`` records)."""
    length = 0
    for point in reversed(points):
        if not any(disk.differencing for disk in point.disks):
            break
        length += 1
    return length


def adopt_completed_snapshot(xapi, snapshots: list[BackupSnapshot], repositories: list, vm_uuid: str, job_id: str,
                             before: datetime.datetime | None = None, check_mode: bool = False) -> BackupSnapshot | None:
    """The repository is the truth: mark exported a snapshot whose disks the job's newest complete point holds.

    A run killed after writing a point's metadata but before marking its snapshot left it unmarked: without
    this it would be pruned and the next run would be a full. Only snapshots newer than the reference (and
    taken before ``before``) and not being exported now qualify. In check mode nothing is written to XAPI.
    """
    reference = reference_snapshot(snapshots)
    candidates = [snapshot for snapshot in reversed(snapshots)
                  if not snapshot.exported and snapshot.disks and (reference is None or snapshot.taken_at > reference.taken_at)
                  and (before is None or snapshot.taken_at < before) and not export_in_progress(snapshot)]
    if not candidates:
        return None
    for repository in repositories:
        if repository is None:
            continue
        points = repository.list_backups(vm_uuid, job_id)
        if not points:
            continue
        held = point_snapshot_vdis(points[-1])
        for snapshot in candidates:
            if {disk.vdi_uuid for disk in snapshot.disks} == held:
                if check_mode:
                    snapshot.exported, snapshot.chain_length = True, deltas_since_full(points)
                else:
                    mark_exported(xapi, snapshot, deltas_since_full(points))
                return snapshot
    return None


def snapshots_to_prune(snapshots: list[BackupSnapshot], keep: list[BackupSnapshot | None]) -> list[BackupSnapshot]:
    """Every job snapshot except the reference, those listed in ``keep`` and those another run is exporting now."""
    kept = {snapshot.ref for snapshot in keep if snapshot is not None}
    kept.update(snapshot.ref for snapshot in snapshots if export_in_progress(snapshot))
    reference = reference_snapshot(snapshots)
    if reference is not None:
        kept.add(reference.ref)
    return [snapshot for snapshot in snapshots if snapshot.ref not in kept]


def next_snapshot_time(snapshots: list[BackupSnapshot], now: datetime.datetime | None = None) -> datetime.datetime:
    """Now, to the second, but strictly after the job's newest snapshot.

    Repository file names are built from this time, so two runs within one second must still differ.
    """
    moment = (now or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
    if snapshots and moment <= snapshots[-1].taken_at:
        moment = snapshots[-1].taken_at + datetime.timedelta(seconds=1)
    return moment


def excluded_vdis(xapi, vm_record: dict) -> tuple[list[str], list[dict]]:
    """The VM's [NOBAK] disks: refs for ignore_vdis, and a description for the result."""
    refs, described = [], []
    for _vbd_ref, vbd, vdi_ref, vdi in vm_disks(xapi, vm_record):
        if is_excluded_disk(vdi):
            refs.append(vdi_ref)
            described.append({'vdi_uuid': vdi['uuid'], 'name_label': vdi.get('name_label', ''), 'userdevice': str(vbd.get('userdevice'))})
    return refs, described


# XAPI release that added VM.snapshot's ignore_vdis (xapi-datamodel.json note; XCP-ng 8.2 LTS ships 1.249.x without it).
IGNORE_VDIS_SINCE = (21, 4, 0)
# How the [NOBAK] disks were left out of a snapshot, as the result reports it.
EXCLUDED_BY_IGNORE_VDIS = 'ignore_vdis'
EXCLUDED_BY_REMOVAL = 'removed_after_snapshot'
# Per connection: does VM.snapshot take ignore_vdis? (None: not known yet.)
_IGNORE_VDIS_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parse_xapi_version(text) -> tuple[int, ...] | None:
    """``'1.249.26'`` or ``'24.19.2'`` as a tuple of ints; None when it is not a dotted number."""
    parts = str(text or '').strip().split('.')
    if not parts or not all(part.isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


def coordinator_xapi_version(xapi) -> tuple[int, ...] | None:
    """The XAPI version of the pool coordinator (``host.software_version['xapi']``), None when unreadable."""
    try:
        pools = xapi.call('pool.get_all')
        master = xapi.call('pool.get_master', pools[0])
        return parse_xapi_version((xapi.call('host.get_software_version', master) or {}).get('xapi'))
    except (XapiError, IndexError, AttributeError):
        return None


def snapshot_takes_ignore_vdis(xapi) -> bool | None:
    """Whether VM.snapshot accepts ignore_vdis on this pool, decided once per connection; None when unknown."""
    if xapi in _IGNORE_VDIS_SUPPORT:
        return _IGNORE_VDIS_SUPPORT[xapi]
    version = coordinator_xapi_version(xapi)
    supported = None if version is None else version >= IGNORE_VDIS_SINCE
    _IGNORE_VDIS_SUPPORT[xapi] = supported
    return supported


def _call_snapshot(xapi, vm_ref: str, name: str, ignored: list[str], timeout: float | None, what: str) -> tuple[str, str | None]:
    """VM.snapshot, with ignore_vdis only when there is something to ignore and XAPI takes it.

    Returns (snapshot ref, how [NOBAK] disks were left out: EXCLUDED_BY_IGNORE_VDIS, EXCLUDED_BY_REMOVAL
    meaning the caller must remove them from the snapshot, or None when there are none).
    """
    if not ignored:
        return xapi.call_async('VM.snapshot', vm_ref, name, timeout=timeout, what=what), None
    if snapshot_takes_ignore_vdis(xapi) is not False:
        try:
            return xapi.call_async('VM.snapshot', vm_ref, name, ignored, timeout=timeout, what=what), EXCLUDED_BY_IGNORE_VDIS
        except XapiError as error:
            if error.code != 'MESSAGE_PARAMETER_COUNT_MISMATCH':
                raise
            # The version did not tell (or lied): XAPI refused the third argument before doing anything.
            _IGNORE_VDIS_SUPPORT[xapi] = False
    return xapi.call_async('VM.snapshot', vm_ref, name, timeout=timeout, what=what), EXCLUDED_BY_REMOVAL


def remove_excluded_disks(xapi, snapshot_ref: str) -> list[str]:
    """Destroy the [NOBAK] VBDs and VDIs of a fresh snapshot (XAPI without ignore_vdis), as Xen Orchestra does.

    They are never exported: nothing but this run knows the snapshot yet. Returns the VDI uuids removed.
    """
    removed = []
    for vbd_ref, _vbd, vdi_ref, vdi in vm_disks(xapi, xapi.call('VM.get_record', snapshot_ref)):
        if not is_excluded_disk(vdi) or not vdi.get('is_a_snapshot'):
            continue
        xapi.call('VBD.destroy', vbd_ref, what='removal of the [NOBAK] disk %s from the snapshot' % vdi['uuid'])
        xapi.call('VDI.destroy', vdi_ref, what='removal of the [NOBAK] snapshot disk %s' % vdi['uuid'])
        removed.append(vdi['uuid'])
    return removed


def take_backup_snapshot(xapi, vm_ref: str, vm_record: dict, job: Job, taken_at: datetime.datetime,
                         timeout: float | None = None, memory: bool = False) -> BackupSnapshot:
    """Snapshot the VM without its [NOBAK] disks and tag the snapshot and its VDIs for the job.

    A checkpoint (with the memory image) instead with ``memory`` or of a suspended VM, unless it has [NOBAK] disks
    (suspend.checkpoint_decision).
    """
    ignored, _described = excluded_vdis(xapi, vm_record)
    name = SNAPSHOT_NAME_FORMAT % (job.name, vm_record.get('name_label', vm_record['uuid']))
    what = 'snapshot of VM %s (%s)' % (vm_record.get('name_label'), vm_record['uuid'])
    if checkpoint_decision(vm_record, memory, bool(ignored))[0]:
        snapshot_ref = xapi.call_async('VM.checkpoint', vm_ref, name, timeout=timeout, what='checkpoint' + what[len('snapshot'):])
        excluded_by = None
    else:
        snapshot_ref, excluded_by = _call_snapshot(xapi, vm_ref, name, ignored, timeout, what)
    try:
        if excluded_by == EXCLUDED_BY_REMOVAL:
            remove_excluded_disks(xapi, snapshot_ref)
        tags = {KEY_JOB: job.id, KEY_SCHEDULE: job.id, KEY_VM: vm_record['uuid'], KEY_DATETIME: format_datetime_tag(taken_at),
                KEY_JOB_NAME: job.name}
        snapshot_record = xapi.call('VM.get_record', snapshot_ref)
        _tag(xapi, 'VM', snapshot_ref, snapshot_record, tags)
        for _vbd_ref, _vbd, vdi_ref, vdi in vm_disks(xapi, snapshot_record):
            _tag(xapi, 'VDI', vdi_ref, vdi, dict(tags, **{KEY_CONTENT: vdi['uuid']}))
        snapshot = _load_snapshot(xapi, snapshot_ref, xapi.call('VM.get_record', snapshot_ref))
        snapshot.excluded_by = excluded_by
        return snapshot
    except BaseException:
        # An untagged snapshot would be invisible to every later prune: remove it now.
        destroy_snapshot_vm(xapi, snapshot_ref)
        raise


def _tag(xapi, cls: str, ref: str, record: dict, tags: dict) -> None:
    present = record.get('other_config') or {}
    for key, value in tags.items():
        if key in present:
            # Copied from the live VM (XAPI copies other_config into snapshots): replace it.
            xapi.call('%s.remove_from_other_config' % cls, ref, key)
        xapi.call('%s.add_to_other_config' % cls, ref, key, value)


def mark_exported(xapi, snapshot: BackupSnapshot, chain_length: int) -> None:
    """Record that every disk of the snapshot landed: it becomes the job's reference snapshot.

    The chain length goes first and ``exported`` last, so a crash in between leaves a snapshot
    that is simply not a base.
    """
    targets = [('VDI', disk.vdi_ref) for disk in snapshot.disks] + [('VM', snapshot.ref)]
    for cls, ref in targets:
        _set_other_config(xapi, cls, ref, KEY_CHAIN_LENGTH, str(chain_length))
    for cls, ref in targets:
        _set_other_config(xapi, cls, ref, KEY_EXPORTED, 'true')
    snapshot.exported = True
    snapshot.chain_length = chain_length
    mark_exporting(xapi, snapshot, False)


def mark_exporting(xapi, snapshot: BackupSnapshot, exporting: bool) -> None:
    """Set (or clear) the marker that keeps a concurrent vm_snapshot from pruning the snapshot being exported."""
    if exporting:
        holder = {'host': socket.gethostname(), 'pid': os.getpid(),
                  'started': datetime.datetime.now(datetime.timezone.utc).isoformat()}
        _set_other_config(xapi, 'VM', snapshot.ref, KEY_EXPORTING, json.dumps(holder, sort_keys=True))
        snapshot.exporting = holder
        return
    try:
        xapi.call('VM.remove_from_other_config', snapshot.ref, KEY_EXPORTING)
    except XapiError:
        pass
    snapshot.exporting = None


def _set_other_config(xapi, cls: str, ref: str, key: str, value: str) -> None:
    try:
        xapi.call('%s.remove_from_other_config' % cls, ref, key)
    except XapiError:
        pass
    xapi.call('%s.add_to_other_config' % cls, ref, key, value)


def destroy_snapshot_vm(xapi, snapshot_ref: str) -> list[str]:
    """Destroy a snapshot VM and its disk VDIs (VM.destroy leaves VDIs behind); return the VDI uuids removed."""
    record = xapi.call('VM.get_record', snapshot_ref)
    if not record.get('is_a_snapshot'):
        raise NotASnapshotError('refusing to destroy %s: it is not a snapshot' % record.get('uuid'))
    disks = vm_disks(xapi, record)
    image = snapshot_suspend_vdi(xapi, snapshot_ref)
    xapi.call('VM.destroy', snapshot_ref, what='removal of snapshot %s' % record.get('uuid'))
    removed = []
    if image is not None:
        # VM.destroy leaves a checkpoint's memory image too (ocaml/xapi/xapi_vm_helpers.ml destroy).
        disks.append((None, {}, image[0], image[1]))
    for _vbd_ref, _vbd, vdi_ref, vdi in disks:
        if not vdi.get('is_a_snapshot'):
            continue  # never a live disk, whatever the VBDs say
        try:
            xapi.call('VDI.destroy', vdi_ref, what='removal of snapshot disk %s' % vdi['uuid'])
            removed.append(vdi['uuid'])
        except XapiError as error:
            if error.code != 'HANDLE_INVALID':
                raise
    return removed


def _xapi_time(value) -> datetime.datetime | None:
    """A XAPI DateTime (``20261126T02:00:00Z``, the Z sometimes missing) as an aware datetime."""
    text = str(getattr(value, 'value', value) or '')
    return parse_datetime_tag(text if text.endswith('Z') else text + 'Z')


def orphaned_snapshots(xapi, vm_record: dict, name_label: str, newest_ref: str) -> list[tuple[str, dict]]:
    """Snapshots a vm_snapshot of this job left untagged when it was killed while XAPI took them.

    They carry the job's exact snapshot name, no job tag, and were taken (host clock) at least
    ORPHAN_MIN_AGE before the snapshot this run just took and tagged: no later prune could find them.
    """
    newest_time = _xapi_time(xapi.call('VM.get_record', newest_ref).get('snapshot_time'))
    if newest_time is None:
        return []
    found = []
    for ref in vm_record.get('snapshots') or []:
        if ref == newest_ref:
            continue
        try:
            record = xapi.call('VM.get_record', ref)
        except XapiError as error:
            if error.code == 'HANDLE_INVALID':
                continue
            raise
        other = record.get('other_config') or {}
        if not record.get('is_a_snapshot') or record.get('name_label') != name_label or KEY_JOB in other:
            continue
        taken = _xapi_time(record.get('snapshot_time'))
        if taken is not None and taken <= newest_time - ORPHAN_MIN_AGE:
            found.append((ref, record))
    return found


def orphaned_snapshot_vdis(xapi, vm_uuid: str, job_id: str) -> list[tuple[str, dict]]:
    """Snapshot VDIs of the job whose snapshot VM is gone: a prune killed between VM.destroy and VDI.destroy.

    Tagged with our job and VM, a snapshot, attached to nothing (no VBD): no snapshot VM lists them any more.
    """
    records = xapi.call('VDI.get_all_records_where', 'field "is_a_snapshot" = "true"')
    found = []
    for ref, record in sorted(records.items()):
        other = record.get('other_config') or {}
        if other.get(KEY_JOB) == job_id and other.get(KEY_VM) == vm_uuid and not record.get('VBDs'):
            found.append((ref, record))
    return found


# Operations blocked on a VM while a run of ours backs it up (vm_operations names, XAPI's blocked_operations keys).
MIGRATIONS = ('pool_migrate', 'migrate_send')
# The value we store in blocked_operations; XAPI refuses the operation with OPERATION_BLOCKED [vm, this text].
BLOCK_REASON_FORMAT = 'xapi.delta_backup: backup job %s is running (since %s)'
BLOCK_REASON_PATTERN = re.compile(r'^xapi\.delta_backup: backup job (.*) is running \(since [^)]*\)$')
# Xen Orchestra's VDI chain protection default (xo-server config xapiOptions.maxUncoalescedVdis = 1): base copies
# waiting for the SR to coalesce them that a disk's chain may hold before its VM is skipped.
DEFAULT_MAX_UNCOALESCED_VDIS = 1
# xapi-project/sm libs/sm/vhdutil.py MAX_CHAIN_SIZE: a snapshot of a VHD chain this deep fails SR_BACKEND_FAILURE_109.
SM_MAX_CHAIN_SIZE = 30
# Xen Orchestra's wording, so operators recognise the situation.
CHAIN_PROTECTION_MESSAGE = 'Job canceled to protect the VDI chain'


def _block_holder(value) -> str | None:
    """The job name in a blocked_operations value we wrote, None for anyone else's."""
    match = BLOCK_REASON_PATTERN.match(str(value or ''))
    return match.group(1) if match else None


def block_migrations(xapi, vm_ref: str, vm_record: dict, job_name: str, check_mode: bool = False) -> tuple[list[str], dict]:
    """Block pool_migrate and migrate_send on the VM while the job backs it up.

    A block left by a killed run of this job is replaced; a block set by the user (or by another job of ours) is
    left as it is: the operation stays blocked either way. Returns (operations we blocked, blocks left alone).
    """
    present = vm_record.get('blocked_operations') or {}
    reason = BLOCK_REASON_FORMAT % (job_name, datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))
    blocked, kept = [], {}
    for operation in MIGRATIONS:
        if operation in present and _block_holder(present[operation]) != job_name:
            kept[operation] = present[operation]
            continue
        blocked.append(operation)
        if check_mode:
            continue
        if operation in present:
            xapi.call('VM.remove_from_blocked_operations', vm_ref, operation)
        xapi.call('VM.add_to_blocked_operations', vm_ref, operation, reason)
    return blocked, kept


def unblock_migrations(xapi, vm_ref: str, job_name: str, check_mode: bool = False) -> list[str]:
    """Remove the migration blocks this job set (also those of a killed run); never anyone else's."""
    present = xapi.call('VM.get_blocked_operations', vm_ref) or {}
    removed = []
    for operation, value in sorted(present.items()):
        if _block_holder(value) == job_name:
            removed.append(operation)
            if not check_mode:
                xapi.call('VM.remove_from_blocked_operations', vm_ref, operation)
    return removed


def job_snapshot_vdis(xapi, vm_uuid: str, job_id: str) -> list[tuple[str, dict]]:
    """Every snapshot VDI tagged with the job and VM, attached or not."""
    records = xapi.call('VDI.get_all_records_where', 'field "is_a_snapshot" = "true"')
    return [(ref, record) for ref, record in sorted(records.items())
            if (record.get('other_config') or {}).get(KEY_JOB) == job_id and (record.get('other_config') or {}).get(KEY_VM) == vm_uuid]


def remove_export_vbds(xapi, snapshots: list[BackupSnapshot], vdis: list[tuple[str, dict]], check_mode: bool = False) -> list[dict]:
    """Unplug and destroy control-domain VBDs on the job's snapshot VDIs: left by an export that crashed.

    XAPI plugs each exported VDI (and its base) into the control domain for the copy and removes the VBD after
    (ocaml/xapi/attach_helpers.ml with_vbds); a crashed export leaves it, and it keeps VDI.destroy from pruning
    the snapshot (VDI_IN_USE). Nothing is touched while a run of ours is exporting one of these snapshots.
    """
    if any(export_in_progress(snapshot) for snapshot in snapshots):
        return []
    control_domains: dict[str, bool] = {}
    removed = []
    for _vdi_ref, vdi in vdis:
        vdi_uuid = vdi['uuid']
        for vbd_ref in vdi.get('VBDs') or []:
            try:
                vbd = xapi.call('VBD.get_record', vbd_ref)
            except XapiError as error:
                if error.code == 'HANDLE_INVALID':
                    continue  # gone meanwhile
                raise
            if vbd['VM'] not in control_domains:
                control_domains[vbd['VM']] = bool(xapi.call('VM.get_is_control_domain', vbd['VM']))
            if not control_domains[vbd['VM']]:
                continue
            removed.append({'vbd_uuid': vbd['uuid'], 'vdi_uuid': vdi_uuid, 'currently_attached': bool(vbd.get('currently_attached'))})
            if check_mode:
                continue
            if vbd.get('currently_attached'):
                try:
                    xapi.call('VBD.unplug', vbd_ref, what='unplug of the leftover export VBD %s' % vbd['uuid'])
                except XapiError as error:
                    if error.code != 'DEVICE_ALREADY_DETACHED':
                        raise
            xapi.call('VBD.destroy', vbd_ref, what='removal of the leftover export VBD %s' % vbd['uuid'])
    return removed


def unhealthy_vdi_chains(xapi, vm_record: dict, max_uncoalesced: int) -> list[str]:
    """Why one more snapshot of the VM would harm its disks' VHD chains, one line per disk; empty when healthy.

    As Xen Orchestra's chain protection: along each disk's ``sm_config['vhd-parent']`` chain, a hidden base copy
    (``managed`` false) with exactly one child that is itself a base copy waits for the SR's garbage collector to
    coalesce it. More than ``max_uncoalesced`` of them, or a chain one snapshot away from sm's depth limit, skips the VM.
    """
    problems = []
    by_sr: dict[str, tuple[dict, dict]] = {}
    for _vbd_ref, _vbd, _vdi_ref, vdi in vm_disks(xapi, vm_record):
        sr = vdi.get('SR')
        if sr not in by_sr:
            records = xapi.call('VDI.get_all_records_where', 'field "SR" = "%s"' % sr)
            by_uuid = {record['uuid']: record for record in records.values()}
            children: dict[str, list[dict]] = {}
            for record in records.values():
                parent = (record.get('sm_config') or {}).get('vhd-parent')
                if parent:
                    children.setdefault(parent, []).append(record)
            by_sr[sr] = (by_uuid, children)
        by_uuid, children = by_sr[sr]
        depth, waiting, node = 1, 0, vdi
        seen = {vdi['uuid']}
        while (node.get('sm_config') or {}).get('vhd-parent') in by_uuid:
            node = by_uuid[node['sm_config']['vhd-parent']]
            if node['uuid'] in seen:
                break  # a loop in the SR's records: stop rather than spin
            seen.add(node['uuid'])
            depth += 1
            kids = children.get(node['uuid'], [])
            if not node.get('managed') and len(kids) == 1 and not kids[0].get('managed'):
                waiting += 1
        name = vdi.get('name_label', vdi['uuid'])
        if waiting > max_uncoalesced:
            problems.append('disk %s: %d base copies wait for the SR to coalesce them (max_uncoalesced_vdis is %d)'
                            % (name, waiting, max_uncoalesced))
        elif depth + 1 >= SM_MAX_CHAIN_SIZE:
            problems.append('disk %s: its VHD chain is %d deep; one more snapshot nears the SR limit of %d'
                            % (name, depth, SM_MAX_CHAIN_SIZE))
    return problems


def manage_job_snapshots(xapi, vm: str, job: Job, take: bool, check_mode: bool = False, timeout: float | None = None,
                         repositories: list | None = None, block_migrations_while_backing_up: bool = True,
                         max_uncoalesced_vdis: int = DEFAULT_MAX_UNCOALESCED_VDIS, memory: bool = False) -> dict:
    """Take (``take``) the job's snapshot of the VM, then remove the job's snapshots except the reference.

    Returns what the modules report: the new snapshot, the reference snapshot as it was before this
    call (the base for this run's export), the snapshots removed and the disks left out. With
    ``repositories``, a snapshot their newest point holds becomes the reference first (adopt_completed_snapshot).
    """
    vm_ref, vm_record = find_vm(xapi, vm)
    snapshots = job_snapshots(xapi, vm_record, job.id)
    adopted = adopt_completed_snapshot(xapi, snapshots, repositories or [], vm_record['uuid'], job.id, check_mode=check_mode)
    reference = reference_snapshot(snapshots)
    _refs, excluded = excluded_vdis(xapi, vm_record)
    result = {'changed': False, 'vm': {'uuid': vm_record['uuid'], 'name_label': vm_record.get('name_label', '')}, 'job_id': job.id,
              'snapshot': None, 'reference_snapshot': reference.as_result() if reference else None, 'removed_snapshots': [],
              'removed_orphan_disks': [], 'excluded_disks': excluded, 'excluded_by': None,
              'adopted_snapshot': adopted.uuid if adopted is not None else None, 'removed_export_vbds': [],
              'skipped': False, 'skip_reason': None, 'blocked_operations': [], 'kept_blocked_operations': {}, 'unblocked_operations': [],
              'checkpoint': False, 'memory_skipped_reason': None}
    # Export VBDs left in the control domain go first: they would make VDI.destroy fail below.
    result['removed_export_vbds'] = remove_export_vbds(xapi, snapshots, job_snapshot_vdis(xapi, vm_record['uuid'], job.id), check_mode)
    if adopted is not None or result['removed_export_vbds']:
        result['changed'] = True
    if take:
        problems = unhealthy_vdi_chains(xapi, vm_record, max_uncoalesced_vdis)
        if problems:
            # Pruning still runs: removing old snapshots is what lets the SR coalesce.
            result.update(skipped=True, skip_reason='%s: %s' % (CHAIN_PROTECTION_MESSAGE, '; '.join(problems)))
            take = False
    elif block_migrations_while_backing_up:
        result['unblocked_operations'] = unblock_migrations(xapi, vm_ref, job.name, check_mode)
        result['changed'] = result['changed'] or bool(result['unblocked_operations'])
    new_snapshot = None
    if take:
        new_snapshot = _take_job_snapshot(xapi, vm_ref, vm_record, job, snapshots, result, check_mode, timeout, block_migrations_while_backing_up,
                                          memory)
    _prune_job_snapshots(xapi, vm_record, job, snapshots, new_snapshot, result, check_mode)
    return result


def _take_job_snapshot(xapi, vm_ref: str, vm_record: dict, job: Job, snapshots: list[BackupSnapshot], result: dict, check_mode: bool,
                       timeout: float | None, block_migrations_while_backing_up: bool, memory: bool = False) -> BackupSnapshot | None:
    """Block migrations (when asked) and take the snapshot, recording both in ``result``; None in check mode."""
    taken_at = next_snapshot_time(snapshots)
    result['changed'] = True
    result['checkpoint'], result['memory_skipped_reason'] = checkpoint_decision(vm_record, memory, bool(result['excluded_disks']))
    if block_migrations_while_backing_up:
        result['blocked_operations'], result['kept_blocked_operations'] = block_migrations(xapi, vm_ref, vm_record, job.name, check_mode)
    if check_mode:
        result['snapshot'] = {'uuid': None, 'name_label': SNAPSHOT_NAME_FORMAT % (job.name, vm_record.get('name_label', '')),
                              'datetime': format_datetime_tag(taken_at), 'exported': False, 'delta_chain_length': 0, 'disks': []}
        return None
    try:
        new_snapshot = take_backup_snapshot(xapi, vm_ref, vm_record, job, taken_at, timeout=timeout, memory=memory)
    except BaseException:
        if block_migrations_while_backing_up:
            with contextlib.suppress(XapiError):
                unblock_migrations(xapi, vm_ref, job.name)
        raise
    result['snapshot'] = new_snapshot.as_result()
    result['excluded_by'] = new_snapshot.excluded_by
    return new_snapshot


def _prune_job_snapshots(xapi, vm_record: dict, job: Job, snapshots: list[BackupSnapshot], new_snapshot: BackupSnapshot | None,
                         result: dict, check_mode: bool) -> None:
    """Remove the job's snapshots but the reference and the new one, then what killed runs left: untagged snapshots, lone VDIs."""
    for stale in snapshots_to_prune(snapshots, keep=[new_snapshot]):
        result['changed'] = True
        result['removed_snapshots'].append(stale.uuid)
        if not check_mode:
            destroy_snapshot_vm(xapi, stale.ref)
    if new_snapshot is not None:
        name = SNAPSHOT_NAME_FORMAT % (job.name, vm_record.get('name_label', vm_record['uuid']))
        for ref, record in orphaned_snapshots(xapi, vm_record, name, new_snapshot.ref):
            result['removed_snapshots'].append(record['uuid'])
            destroy_snapshot_vm(xapi, ref)
    for ref, record in orphaned_snapshot_vdis(xapi, vm_record['uuid'], job.id):
        result['changed'] = True
        result['removed_orphan_disks'].append(record['uuid'])
        if not check_mode:
            try:
                xapi.call('VDI.destroy', ref, what='removal of orphaned snapshot disk %s' % record['uuid'])
            except XapiError as error:
                if error.code != 'HANDLE_INVALID':
                    raise
