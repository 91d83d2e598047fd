# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Export a job's backup snapshot of a VM into one or more repositories, as a full or a delta.

The decision (:func:`plan_export`) and the transfer (:func:`run_export`) are separate so that
check mode reports exactly what a real run would do.

A delta needs, for every repository, that the newest backup of the VM by this job ends, for the
disk, in a VHD whose footer unique id is the job's reference snapshot VDI (XO's base acceptance,
xo-repository.md section 9). Any repository that cannot chain makes every repository get a full,
so all of them keep chaining to the same reference snapshot afterwards.

Each disk is read once from XAPI and written to every repository, its identity rewritten in
passing and hashed as written; the metadata JSON of a repository is written only once all of
its VHDs are in place, and the snapshot is marked exported only once every repository has its
JSON. A failure leaves no visible partial backup: the VHDs written so far are removed.
"""

from __future__ import annotations

import contextlib
import datetime
import posixpath
import re
import time
import uuid
import xmlrpc.client
from dataclasses import dataclass, field

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import NULL_REF, XapiError
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import ExportNotVhdError, TransferCutError, TransferTooLongError
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.guest import GUEST_METRICS_KEY, backed_up_guest_metrics
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.pool import find_vm, is_excluded_disk, vm_disks
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.vtpm import read_vtpms
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.suspend import FULL_REASON, snapshot_suspend_vdi, suspended_state
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, format_timestamp, relative_to_vm_folder
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupRepository, open_or_initialize, repository_location
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import (
    BackupSnapshot, SnapshotDisk, adopt_completed_snapshot, job_snapshots, mark_exported, mark_exporting, next_snapshot_time,
    reference_snapshot,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.transfer import WriteBehind
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.record_types import RECORD_TYPES
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.wire_types import jsonrpc_record
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import ParentLink, VhdChain, VhdError, rewrite_identity
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import HASH_NAME, sidecar_name
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.structures import vhd_timestamp

MIB = 1024 * 1024
# Every VHD, and so every VHD export, starts with its footer copy and this cookie.
VHD_COOKIE = b'conectix'
# How much of an error page is kept for the message.
ERROR_PAGE_LIMIT = 64 * 1024


class PrefixedStream:
    """``read(n)`` and ``readinto(b)`` over bytes already taken from a stream, then the stream itself."""

    def __init__(self, prefix: bytes, stream):
        self._prefix = prefix
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size is None or size < 0 or size >= len(self._prefix):
                data, self._prefix = self._prefix, b''
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._stream.read(size)

    def readinto(self, buffer) -> int:
        """Fill some of ``buffer``: the disk's bytes land in the caller's buffer with no copy of ours."""
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        return self._stream.readinto(buffer)


def _read_up_to(stream, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        data = stream.read(size - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b''.join(parts)


def error_page_text(page: bytes) -> str:
    """The readable part of an HTML error page: tags dropped, whitespace folded, at most 500 characters."""
    text = page.decode('utf-8', 'replace')
    if '\r\n\r\n' in text:
        text = text.split('\r\n\r\n', 1)[1]  # XAPI writes a whole HTTP response, headers included
    text = ' '.join(re.sub(r'<[^>]*>', ' ', text).split())
    return text[:500]


def read_vhd_start(stream, label: str) -> bytes:
    """The first bytes of an export, checked to start a VHD before anything parses them.

    On a storage failure after the ``200 OK`` headers, XAPI sends a whole HTTP 500 error page as the body
    (xen-api issue #4603). The export's task then holds the real error: reading to the end checks it and
    raises it. Without a task error, the page's own text is reported.
    """
    head = _read_up_to(stream, len(VHD_COOKIE))
    if head == VHD_COOKIE:
        return head
    shown = 'an empty body'
    try:
        page = head + _read_up_to(stream, ERROR_PAGE_LIMIT)
        shown = error_page_text(page) or shown
        while stream.read(MIB):
            pass  # reaching the end verifies the task: a failed task raises its XAPI error here
    except XapiError as error:
        if not isinstance(error, TransferCutError):
            raise error.reworded('%s (XAPI sent an error page instead of the VHD)' % error.message) from error
    raise ExportNotVhdError('%s: XAPI sent no VHD but %s' % (label, shown))


@dataclass
class DiskPlan:
    """What one disk of the snapshot becomes: a full, or a delta on ``base_disk`` whose tip file is ``parent_name``."""

    disk: SnapshotDisk
    base_disk: SnapshotDisk | None = None
    parent_name: str | None = None
    reason: str = ''

    @property
    def mode(self) -> str:
        return 'delta' if self.base_disk is not None else 'full'


@dataclass
class ExportPlan:
    """The export of one snapshot by a job: overall mode and reason, per-disk plans, where it goes."""

    job: Job
    vm_record: dict
    snapshot: BackupSnapshot
    base: BackupSnapshot | None
    timestamp: str
    mode: str
    reason: str
    disks: list[DiskPlan] = field(default_factory=list)

    @property
    def chain_length(self) -> int:
        """Deltas since the last full, as recorded on the snapshot once exported."""
        if self.mode == 'full' or self.base is None:
            return 0
        return self.base.chain_length + 1


@dataclass
class ExportedDisk:
    """One disk as written to the repositories: what the metadata records (keyed by the snapshot VDI ref) and the module returns."""

    disk_plan: DiskPlan
    path: str  # relative to the VM folder, as the metadata's vhds write it
    size: int
    blocks: int
    seconds: float

    def as_result(self) -> dict:
        disk = self.disk_plan.disk
        return {'vdi_uuid': disk.live_vdi_uuid, 'snapshot_vdi_uuid': disk.vdi_uuid, 'name_label': disk.name_label,
                'userdevice': disk.userdevice, 'mode': self.disk_plan.mode, 'reason': self.disk_plan.reason,
                'virtual_size': disk.virtual_size, 'size': self.size, 'blocks': self.blocks, 'path': self.path,
                'block_checksums': sidecar_name(self.path),
                'duration': round(self.seconds, 3), 'throughput_mib_s': round(self.size / MIB / self.seconds, 1)}


def predicted_snapshot(xapi, vm_record: dict, snapshots: list[BackupSnapshot]) -> BackupSnapshot:
    """The snapshot vm_snapshot would take now, for check mode (where it took none): the VM's own disks."""
    disks = [SnapshotDisk(vdi_ref=vdi_ref, vdi_uuid=None, live_vdi_ref=vdi_ref, live_vdi_uuid=vdi['uuid'],
                          virtual_size=int(vdi.get('virtual_size') or 0), name_label=vdi.get('name_label', ''),
                          userdevice=str(vbd.get('userdevice')))
             for _vbd_ref, vbd, vdi_ref, vdi in vm_disks(xapi, vm_record) if not is_excluded_disk(vdi)]
    return BackupSnapshot(ref=None, uuid=None, name_label='(not taken in check mode)', taken_at=next_snapshot_time(snapshots),
                          exported=False, chain_length=0, disks=disks)


def choose_snapshot(snapshots: list[BackupSnapshot], snapshot_uuid: str | None, vm_record: dict, job: str) -> BackupSnapshot:
    """The snapshot to export: the given one, else the job's newest snapshot not yet exported."""
    if snapshot_uuid:
        for snapshot in snapshots:
            if snapshot.uuid == snapshot_uuid.lower():
                return snapshot
        raise XapiError('snapshot %s is not a snapshot of VM %s taken by job %r (take one with xapi.delta_backup.vm_snapshot)'
                        % (snapshot_uuid, vm_record.get('name_label'), job), code='SNAPSHOT_NOT_FOUND', params=[snapshot_uuid])
    pending = [snapshot for snapshot in snapshots if not snapshot.exported]
    if not pending:
        raise XapiError('job %r has no unexported snapshot of VM %s: take one with xapi.delta_backup.vm_snapshot first'
                        % (job, vm_record.get('name_label')), code='SNAPSHOT_NOT_FOUND', params=[])
    return pending[-1]


def _newest_job_point(repository: BackupRepository, vm_uuid: str, job_id: str):
    points = repository.list_backups(vm_uuid, job_id)
    return points[-1] if points else None


def _repository_tip(repository: BackupRepository, vm_uuid: str, job_id: str, live_vdi_uuid: str, base_vdi_uuid: str) -> tuple[str | None, str]:
    """The file a delta of this disk chains onto in ``repository``, or (None, why not)."""
    point = _newest_job_point(repository, vm_uuid, job_id)
    if point is None:
        return None, 'repository %s holds no backup of this VM by this job' % repository.root
    disk = next((disk for disk in point.disks if disk.vdi_uuid == live_vdi_uuid), None)
    if disk is None:
        return None, 'the newest backup (%s) in %s has no copy of this disk' % (point.timestamp, repository.root)
    try:
        chain = VhdChain.from_paths(repository.vhd_chain(point, disk), storage=repository.storage)
    except (VhdError, RepositoryError, OSError) as error:
        return None, 'the chain of the newest backup (%s) in %s does not open: %s' % (point.timestamp, repository.root, error)
    try:
        tip_id = str(uuid.UUID(bytes=chain.newest.unique_id))
    finally:
        chain.close()
    if tip_id != base_vdi_uuid:
        return None, ('the newest backup (%s) in %s is not of the reference snapshot (its disk is %s, the reference is %s)'
                      % (point.timestamp, repository.root, tip_id, base_vdi_uuid))
    return posixpath.basename(disk.storage_path), ''


def base_unusable(xapi, base_disk: SnapshotDisk) -> str | None:
    """Why the reference snapshot's VDI cannot be the ``base=`` of a delta (gone, or not a VHD), else None."""
    try:
        sm_config = xapi.call('VDI.get_sm_config', base_disk.vdi_ref) or {}
    except XapiError as error:
        if error.code == 'HANDLE_INVALID':
            return 'the reference snapshot disk %s is gone from the pool' % base_disk.vdi_uuid
        raise
    vdi_type = sm_config.get('vdi_type', 'vhd')
    if vdi_type != 'vhd':
        return 'the reference snapshot disk %s is not a VHD (vdi_type %s): XAPI exports no delta from it' % (base_disk.vdi_uuid, vdi_type)
    return None


def plan_export(xapi, repositories: list[BackupRepository | None], vm: str, job: Job, snapshot_uuid: str | None = None,
                full_interval: int = 0, check_mode: bool = False, delta_only: bool = False) -> ExportPlan:
    """Decide full or delta for each disk of the snapshot to export, and say why.

    In check mode without a snapshot to export (vm_snapshot took none), the plan is for the
    snapshot a real run would take now.
    """
    _vm_ref, vm_record = find_vm(xapi, vm)
    snapshots = job_snapshots(xapi, vm_record, job.id)
    if check_mode and not snapshot_uuid and all(snapshot.exported for snapshot in snapshots):
        snapshot = predicted_snapshot(xapi, vm_record, snapshots)
    else:
        snapshot = choose_snapshot(snapshots, snapshot_uuid, vm_record, job.name)
    # A killed run may have written its point without marking its snapshot: the repositories tell.
    adopt_completed_snapshot(xapi, snapshots, repositories, vm_record['uuid'], job.id, before=snapshot.taken_at, check_mode=check_mode)
    base = reference_snapshot([candidate for candidate in snapshots if candidate.taken_at < snapshot.taken_at])
    plan = ExportPlan(job=job, vm_record=vm_record, snapshot=snapshot, base=base, timestamp=format_timestamp(snapshot.taken_at),
                      mode='delta', reason='', disks=[DiskPlan(disk=disk) for disk in snapshot.disks])
    if base is None:
        return _all_full(plan, 'the job has no exported snapshot of this VM (first run, or the previous snapshot was removed)')
    if full_interval and base.chain_length + 1 >= full_interval:
        return _all_full(plan, 'full_interval %d reached (%d deltas since the last full)' % (full_interval, base.chain_length))
    if any(repository is None for repository in repositories):
        return _all_full(plan, 'a repository is new (empty)')
    base_by_live = {disk.live_vdi_uuid: disk for disk in base.disks if disk.live_vdi_uuid}
    for disk_plan in plan.disks:
        base_disk = base_by_live.get(disk_plan.disk.live_vdi_uuid)
        if base_disk is None:
            disk_plan.reason = 'the disk is new since the reference snapshot'
            continue
        tips = set()
        for repository in repositories:
            tip, why_not = _repository_tip(repository, vm_record['uuid'], job.id, disk_plan.disk.live_vdi_uuid, base_disk.vdi_uuid)
            if tip is None:
                return _all_full(plan, why_not)
            tips.add(tip)
        if len(tips) != 1:
            return _all_full(plan, 'the repositories end the chain in different files (%s)' % ', '.join(sorted(tips)))
        unusable = base_unusable(xapi, base_disk)
        if unusable:
            if delta_only:
                raise XapiError('no delta of %s is possible: %s (delta_only is set, so no full is exported instead)'
                                % (disk_plan.disk.name_label, unusable), code='DELTA_NOT_POSSIBLE', params=[unusable])
            disk_plan.reason = unusable
            continue
        disk_plan.base_disk, disk_plan.parent_name = base_disk, tips.pop()
        disk_plan.reason = 'the repositories hold the reference snapshot %s' % base.datetime_tag
    if all(disk_plan.mode == 'full' for disk_plan in plan.disks):
        return _all_full(plan, plan.disks[0].reason if plan.disks else 'the VM has no disk to back up')
    plan.reason = 'delta from the reference snapshot %s' % base.datetime_tag
    return plan


def add_suspend_image(xapi, plan: ExportPlan) -> None:
    """A checkpoint's memory image is exported with its disks, always full, in a folder named after its own uuid (as XO)."""
    if plan.snapshot.ref is None:
        return  # check mode without a snapshot taken
    image = snapshot_suspend_vdi(xapi, plan.snapshot.ref)
    if image is None:
        return
    ref, record = image
    plan.disks.append(DiskPlan(disk=SnapshotDisk(vdi_ref=ref, vdi_uuid=record['uuid'], live_vdi_ref=ref, live_vdi_uuid=record['uuid'],
                                                 virtual_size=int(record.get('virtual_size') or 0), name_label=record.get('name_label', ''),
                                                 userdevice=''), reason=FULL_REASON))


def _all_full(plan: ExportPlan, reason: str) -> ExportPlan:
    plan.mode, plan.reason = 'full', reason
    for disk_plan in plan.disks:
        disk_plan.base_disk, disk_plan.parent_name, disk_plan.reason = None, None, reason
    return plan


def _jsonable(value):
    """XAPI records as JSON: DateTime becomes XAPI's text form."""
    if isinstance(value, xmlrpc.client.DateTime):
        return value.value
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _network_vlan(xapi, network: dict) -> int | None:
    """The VLAN tag of a network as Xen Orchestra records it (VLAN of its first PIF: -1 untagged); None without PIFs.

    vm_restore maps a VIF to a network of the same tag when uuid and name do not match (another pool).
    """
    pifs = network.get('PIFs') or []
    if not pifs:
        return None
    try:
        return int(xapi.call('PIF.get_VLAN', pifs[0]))
    except (XapiError, TypeError, ValueError):
        return None


def _metadata_records(xapi, plan: ExportPlan) -> dict:
    """The XAPI records a restore needs, shaped as XO stores them."""
    snapshot_record = xapi.call('VM.get_record', plan.snapshot.ref)
    vbds, vifs, vdis = {}, {}, {}
    for vbd_ref in snapshot_record.get('VBDs') or []:
        vbds[vbd_ref] = xapi.call('VBD.get_record', vbd_ref)
        if vbds[vbd_ref].get('type') == 'CD' and not vbds[vbd_ref].get('empty', True):
            # The inserted ISO, named in vm_restore's not_restored (CD drives come back empty).
            with contextlib.suppress(XapiError):
                vbds[vbd_ref]['$VDI$name_label'] = xapi.call('VDI.get_name_label', vbds[vbd_ref]['VDI'])
    for vif_ref in snapshot_record.get('VIFs') or []:
        vif = xapi.call('VIF.get_record', vif_ref)
        try:
            network = xapi.call('network.get_record', vif['network'])
        except XapiError:
            network = {}
        vif['$network$uuid'] = network.get('uuid')
        vif['$network$name_label'] = network.get('name_label')
        vif['$network$VLAN'] = _network_vlan(xapi, network)
        vifs[vif_ref] = vif
    for disk_plan in plan.disks:
        disk = disk_plan.disk
        vdi = xapi.call('VDI.get_record', disk.vdi_ref)
        try:
            sr_uuid = xapi.call('SR.get_uuid', vdi['SR']) if vdi.get('SR') not in (None, '', NULL_REF) else None
        except XapiError:
            sr_uuid = None
        if vdi.get('type') != 'suspend':  # a memory image is of no live disk (as XO records it)
            vdi['$snapshot_of$uuid'] = disk.live_vdi_uuid
        vdi['$SR$uuid'] = sr_uuid
        other = dict(vdi.get('other_config') or {})
        other['xo:backup:vm'] = plan.vm_record['uuid']
        if disk_plan.base_disk is not None:
            other['xo:base_delta_vdi'] = disk_plan.base_disk.vdi_uuid
        vdi['other_config'] = other
        vdis[disk.vdi_ref] = vdi
    # A checkpoint's suspended state goes with its image (keyed by its ref in vdis): issue 13, _ops/suspend.py.
    image_ref = snapshot_record.get('suspend_VDI') if snapshot_record.get('suspend_VDI') in vdis else None
    vm = _stored('VM', dict(plan.vm_record, **suspended_state(snapshot_record, image_ref)))
    # What the guest agent reported: a health check of a restore expects an agent only when the VM had one.
    vm[GUEST_METRICS_KEY] = _jsonable(backed_up_guest_metrics(xapi, snapshot_record, plan.vm_record))
    return {'vm': vm, 'vm_snapshot': _stored('VM', snapshot_record),
            'vbds': {ref: _stored('VBD', vbd) for ref, vbd in vbds.items()}, 'vifs': {ref: _stored('VIF', vif) for ref, vif in vifs.items()},
            'vdis': {ref: _stored('VDI', vdi) for ref, vdi in vdis.items()},
            'vtpms': read_vtpms(xapi, plan.snapshot.ref, plan.vm_record.get('VTPMs'))}


def _stored(cls: str, record: dict) -> dict:
    """A record as the metadata keeps it, the way Xen Orchestra does: typed as XAPI's JSON-RPC gives it (ints as
    numbers), and without the ``$`` fields we could not learn (XO's JSON.stringify leaves out what is undefined)."""
    typed = jsonrpc_record(RECORD_TYPES[cls], _jsonable(record))
    return {name: value for name, value in typed.items() if not (name.startswith('$') and value is None)}


def _export_disk(xapi, plan: ExportPlan, disk_plan: DiskPlan, repositories: list[BackupRepository], written: list,
                 timeout: float | None) -> ExportedDisk:
    """Stream one disk from XAPI into every repository."""
    disk = disk_plan.disk
    started = time.monotonic()
    parent = None
    if disk_plan.base_disk is not None:
        parent = ParentLink(unique_id=disk_plan.base_disk.vdi_uuid,
                            timestamp=vhd_timestamp(plan.base.taken_at.timestamp()), name=disk_plan.parent_name)
    base_ref = disk_plan.base_disk.vdi_ref if disk_plan.base_disk is not None else None
    with contextlib.ExitStack() as files:
        writers = [files.enter_context(repository.open_vhd_writer(plan.vm_record['uuid'], plan.job.id, disk.live_vdi_uuid, plan.timestamp))
                   for repository in repositories]
        stream = files.enter_context(contextlib.closing(xapi.open_export(disk.vdi_ref, 'vhd', base_ref, timeout=timeout)))
        label = 'export of %s (%s)' % (disk.name_label, disk.vdi_uuid)
        head = read_vhd_start(stream, label)
        # Files are written, and checksummed, on threads of their own while this one receives (into the
        # ring's buffers) and rewrites. Every repository gets the same bytes, so the block checksums are
        # computed once, by the first writer, and shared. Leaving the block waits for every chunk, so the
        # files commit only once all is written.
        # The ids are ours (XAPI's are random per export and name host files): footer = snapshot VDI uuid.
        for writer in writers[1:]:
            writer.share_block_sums(writers[0])
        with WriteBehind(*[writer.write_data for writer in writers], writers[0].update_hash) as sink:
            result = rewrite_identity(PrefixedStream(head, stream), sink, unique_id=disk.vdi_uuid, parent=parent, name=label)
        # Reading to EOF is what verifies the XAPI task; make sure it happened before committing.
        if stream.read(1):
            raise TransferTooLongError('export of %s sent data after the end of its VHD' % disk.vdi_uuid)
    for repository, writer in zip(repositories, writers, strict=True):
        written.extend([(repository, writer.path), (repository, writer.sidecar_path)])
    elapsed = max(time.monotonic() - started, 1e-6)
    relative = relative_to_vm_folder(plan.vm_record['uuid'], writers[0].path)
    return ExportedDisk(disk_plan=disk_plan, path=relative, size=result.length, blocks=result.blocks, seconds=elapsed)


def run_export(xapi, plan: ExportPlan, repositories: list[BackupRepository], timeout: float | None = None) -> dict:
    """Carry out the plan: disks, then metadata in each repository, then mark the snapshot exported."""
    vm_uuid = plan.vm_record['uuid']
    started = time.monotonic()
    written: list = []  # (repository, storage path) of every file this run published
    with contextlib.ExitStack() as locks:
        for repository in sorted(repositories, key=lambda repo: repo.root):
            locks.enter_context(repository.lock(vm_uuid, plan.job.name))
        cleaned = {repository.root: repository.cleanup_incomplete(vm_uuid) for repository in repositories}
        # A concurrent vm_snapshot of the same job must not prune the snapshot while it streams.
        mark_exporting(xapi, plan.snapshot, True)
        try:
            disks = [_export_disk(xapi, plan, disk_plan, repositories, written, timeout) for disk_plan in plan.disks]
            records = _metadata_records(xapi, plan)
            for repository in repositories:
                metadata = build_metadata(
                    job_id=plan.job.id, schedule_id=plan.job.id, timestamp_ms=int(plan.snapshot.taken_at.timestamp() * 1000),
                    vm=records['vm'], vm_snapshot=records['vm_snapshot'], vbds=records['vbds'], vifs=records['vifs'], vdis=records['vdis'],
                    vhds={disk.disk_plan.disk.vdi_ref: disk.path for disk in disks},
                    differencing={disk.disk_plan.disk.vdi_ref: disk.disk_plan.mode == 'delta' for disk in disks},
                    size=sum(disk.size for disk in disks), block_checksums={disk.path: HASH_NAME for disk in disks},
                    virtual_sizes={disk.disk_plan.disk.vdi_ref: disk.disk_plan.disk.virtual_size for disk in disks},
                    extra=dict(records['vtpms'], xapi_delta_backup_job=plan.job.name))
                written.append((repository, repository.write_metadata(vm_uuid, plan.timestamp, metadata)))
        except BaseException:
            _remove_quietly(written)
            with contextlib.suppress(XapiError):
                mark_exporting(xapi, plan.snapshot, False)
            raise
    mark_exported(xapi, plan.snapshot, plan.chain_length)
    elapsed = max(time.monotonic() - started, 1e-6)
    transferred = sum(disk.size for disk in disks)
    return {'bytes_transferred': transferred, 'duration': round(elapsed, 3), 'throughput_mib_s': round(transferred / MIB / elapsed, 1),
            'disks': [disk.as_result() for disk in disks], 'cleaned_up': cleaned}


def _remove_quietly(written: list) -> None:
    """Undo a failed run's files: metadata first (so nothing points at a missing VHD), then VHDs."""
    for repository, path in sorted(written, key=lambda item: not item[1].endswith('.json')):
        with contextlib.suppress(OSError):
            repository.storage.remove_if_present(path)


def describe_plan(plan: ExportPlan) -> dict:
    """What the modules return about the decision, in check mode and for real."""
    return {
        'vm': {'uuid': plan.vm_record['uuid'], 'name_label': plan.vm_record.get('name_label', '')},
        'snapshot': plan.snapshot.as_result(),
        'base_snapshot': plan.base.as_result() if plan.base is not None and plan.mode == 'delta' else None,
        'timestamp': plan.timestamp,
        'mode': plan.mode,
        'reason': plan.reason,
        'delta_chain_length': plan.chain_length,
    }


def error_names_a_base(plan: ExportPlan, error: XapiError) -> bool:
    """Whether XAPI refused a delta because of its base: its error names a base VDI (XAPI errors carry the ref)."""
    bases = set()
    for disk_plan in plan.disks:
        if disk_plan.base_disk is not None:
            bases.update((disk_plan.base_disk.vdi_ref, disk_plan.base_disk.vdi_uuid))
    return plan.mode == 'delta' and any(str(param) in bases for param in error.params)


def export_vm(xapi, repository_paths: list[str], vm: str, job: Job, snapshot_uuid: str | None = None, full_interval: int = 0,
              file_mode: int = 0o600, dir_mode: int = 0o700, check_mode: bool = False, timeout: float | None = None,
              delta_only: bool = False) -> dict:
    """The delta_export module's work: plan, then (unless check mode) export; return the module result."""
    if not repository_paths:
        raise RepositoryError('no repository given: set repositories to one or more backup repository paths')
    locations = [repository_location(path) for path in repository_paths]
    if len(set(locations)) != len(repository_paths):
        raise RepositoryError('the same repository is listed twice in repositories')
    repositories = [open_or_initialize(path, check_mode=check_mode, file_mode=file_mode, dir_mode=dir_mode) for path in repository_paths]
    plan = plan_export(xapi, repositories, vm, job, snapshot_uuid=snapshot_uuid, full_interval=full_interval, check_mode=check_mode,
                       delta_only=delta_only)
    add_suspend_image(xapi, plan)
    result = dict(describe_plan(plan), changed=True, repositories=locations, delta_fallback=None)
    if check_mode:
        result.update(bytes_transferred=0, duration=0.0, throughput_mib_s=0.0,
                      disks=[{'vdi_uuid': disk_plan.disk.live_vdi_uuid, 'snapshot_vdi_uuid': disk_plan.disk.vdi_uuid,
                              'name_label': disk_plan.disk.name_label, 'userdevice': disk_plan.disk.userdevice, 'mode': disk_plan.mode,
                              'reason': disk_plan.reason, 'virtual_size': disk_plan.disk.virtual_size} for disk_plan in plan.disks])
        return result
    try:
        result.update(run_export(xapi, plan, repositories, timeout=timeout))
    except XapiError as error:
        if not error_names_a_base(plan, error):
            raise
        if delta_only:
            raise error.reworded('%s (delta_only is set, so no full is exported instead)' % error.message) from error
        # Nothing of the failed delta is left (run_export removed its files): export a full in the same run.
        _all_full(plan, 'the delta export failed, so a full was exported instead: %s' % error.message)
        result.update(describe_plan(plan), delta_fallback=error.message)
        result.update(run_export(xapi, plan, repositories, timeout=timeout))
    result['snapshot'] = plan.snapshot.as_result()
    result['exported_at'] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return result
