# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Retention of a job's backups of a VM: keep the newest points, fold the rest into the full ("continuous" merge).

Also the detection of merges left unfinished by a crash (the checksum and chain checks it shares
with seed copy and restore are in ``_repo.integrity``).

Order of a retention run for one VM (under the VM's repository lock)::

  1. finish every merge a crash left behind (engine state files), then reconcile the metadata of
     the point whose VHD it produced (block checksums, isVhdDifferencing, size);
  2. plan: kept = newest ``keep`` points of the job; per disk folder, the chain of the oldest kept
     point referencing it is merged into its full (full + deltas up to that point's own VHD);
  3. migrate: files of those chains written before block checksums (a whole-file sha256, no
     sidecar) are read once, checked and given their sidecar (``_repo/migrate.py``);
  4. check every chain to be merged in O(changed): structure and sidecar identity/structure digests
     of every file, every block of the deltas (the full's data is not read): refuse before changing anything;
  5. copy into the oldest kept point's metadata the checksum entries of every older file of its
     chains, so that they survive the removal of the points that recorded them;
  6. remove the metadata of the retired points (newest first, as XO), then VHDs no kept chain needs;
  7. merge (crash-safe engine, which keeps the sidecar true), then record the merged file's block
     checksums, size and isVhdDifferencing false.

A kill at any instant leaves every kept point readable: steps 4 and 5 only drop what kept chains do
not read, the engine keeps the chain valid during the merge, and step 1 of the next run completes
whatever was left.
"""

from __future__ import annotations

import contextlib
import copy
import posixpath
import time
from dataclasses import dataclass, field

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import (
    IntegrityError, chain_structure_problems, check_chain_integrity, recorded_block_checksums, recorded_checksums,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.migrate import migrate_chain
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.foreign_merge import find_foreign_merges, resolve_foreign_merges
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, relative_to_vm_folder, validate_uuid, vm_folder
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import OWN_FIELD
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupDisk, BackupPoint
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    DISK_DIFFERENCING, VhdChain, VhdError, VhdFile, check_file, merge_chain, resume_merge,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import BlockSums, BlockSumsError, structure_problems


class UnfinishedMergeError(RepositoryError):
    """A merge left unfinished by a crash; backup_merge finishes it."""

    error_code = 'unfinished_merge'


# -- repository walking ------------------------------------------------------------------------


def unfinished_merges(repo, vm_uuid: str, job_id: str | None = None) -> list:
    """State files (storage paths) of merges a crash left unfinished in the VM's disk folders."""
    return [state for folder in repo.disk_folders(vm_uuid, job_id) for state in repo.merge_states(folder)]


def finish_interrupted_merges(repo, vm_uuid: str, job_id: str | None = None) -> dict:
    """Finish the merges a crash left unfinished and record their results in the metadata; call under the VM's lock.

    Returns the state files found (``resumed``, relative to the VM folder) and the VHDs whose metadata
    was brought up to date (``reconciled``).
    """
    states = unfinished_merges(repo, vm_uuid, job_id)
    for state in states:
        try:
            resume_merge(state, storage=repo.storage)
        except VhdError as error:
            raise RepositoryError('cannot finish the interrupted merge %s: %s' % (repo.describe(state), error)) from error
    return {'resumed': [relative_to_vm_folder(vm_uuid, state) for state in states],
            'reconciled': reconcile_merged_points(repo, repo.list_backups(vm_uuid, job_id))}


def refuse_unfinished_merges(repo, vm_uuid: str, job_id: str | None = None) -> None:
    states = unfinished_merges(repo, vm_uuid, job_id)
    if states:
        raise UnfinishedMergeError('a merge in %s was interrupted (state file %s): run xapi.delta_backup.backup_merge on this VM '
                                   'to finish it first' % (repo.describe(posixpath.dirname(states[0])), ', '.join(posixpath.basename(s) for s in states)))


def _own_section(metadata: dict) -> dict:
    section = metadata.get(OWN_FIELD)
    if not isinstance(section, dict):
        section = metadata[OWN_FIELD] = {}
    section.setdefault('sha256', {})
    section.setdefault('block_checksums', {})
    section.setdefault('virtual_sizes', {})
    return section


def reconcile_merged_points(repo, points: list) -> list:
    """Record merges whose metadata update a crash prevented; return the relative paths fixed.

    A disk the metadata calls differencing whose file is now dynamic and structurally sound was
    produced by our merge (the engine writes the full's footer with the delta's identity and renames
    it over the delta): its block checksums (the sidecar the engine left, checked against the file's
    identity, footer, header and BAT: a few KiB, the blocks are not read), size and flag are
    recorded now.  A merged file without a sidecar (a delta written by another tool was merged)
    has no checksum recorded.  Checksum entries of files that no longer exist are dropped.
    """
    fixed = []
    for point in points:
        metadata = copy.deepcopy(point.metadata)
        section = _own_section(metadata)
        changed = False
        for disk in point.disks:
            if not disk.differencing or not repo.is_file(disk.storage_path):
                continue
            try:
                with VhdFile.open_in(repo.storage, disk.storage_path) as vhd:
                    if not vhd.is_dynamic:
                        continue
            except (VhdError, OSError):
                continue
            what = 'backup %s of VM %s' % (point.timestamp, point.vm_uuid)
            problems = [str(p) for p in check_file(disk.storage_path, storage=repo.storage)]
            if problems:
                raise IntegrityError(what, problems)
            section['sha256'].pop(disk.relative_path, None)
            try:
                sums = BlockSums.load_for(repo.storage, disk.storage_path)
            except BlockSumsError as error:
                raise IntegrityError(what, [str(error)]) from error
            if sums is not None and sums.disk_type == DISK_DIFFERENCING:
                # Our merge leaves a sidecar of the dynamic result; one still describing the delta means another
                # tool (Xen Orchestra's merge) made this file: its entry is kept for the integrity check, which
                # checks such a file block by block as a foreign merge, not as damage.
                pass
            elif sums is not None:
                with VhdFile.open_in(repo.storage, disk.storage_path) as vhd:
                    problems = structure_problems(vhd, sums)
                if problems:
                    raise IntegrityError(what, problems)
                section['block_checksums'][disk.relative_path] = sums.hash_name
            else:
                section['block_checksums'].pop(disk.relative_path, None)
            metadata['isVhdDifferencing'][disk.vdi_ref] = False
            fixed.append(disk.relative_path)
            changed = True
        for key in ('sha256', 'block_checksums'):
            for relative in list(section[key]):
                if not repo.is_file(posixpath.join(vm_folder(point.vm_uuid), relative)):
                    del section[key][relative]
                    changed = True
        if changed:
            metadata['size'] = _point_size(repo, point)
            repo.rewrite_metadata(point, metadata)
    return fixed


def _point_size(repo, point) -> int:
    return sum(repo.file_size(disk.storage_path) or 0 for disk in point.disks)


# -- planning ----------------------------------------------------------------------------------


def _merge_refusal(point: BackupPoint, disk: BackupDisk) -> str:
    return 'refusing to merge the chain of disk %s of backup %s' % (disk.vdi_uuid, point.timestamp)


@dataclass
class ChainMerge:
    """The merge of one disk folder: the deltas of a kept point's chain folded into their full."""

    point: BackupPoint  # the oldest kept point reading this folder
    disk: BackupDisk
    chain: list[str]  # newest first, as BackupRepository.vhd_chain gives it: the point's own VHD ... the full
    bytes: int = 0  # what the deltas' blocks hold: what the merge reads and writes
    seconds: float | None = None  # how long the merge took, once carried out

    @property
    def full(self) -> str:
        return self.chain[-1]

    @property
    def deltas(self) -> list[str]:
        """Oldest first, the order merge_chain folds them in."""
        return list(reversed(self.chain[:-1]))

    @property
    def merged(self) -> str:
        """The file the merged full ends as (renamed over the newest delta, so the point's metadata stays right)."""
        return self.chain[0]

    @property
    def refusal(self) -> str:
        return _merge_refusal(self.point, self.disk)

    def as_result(self, vm_uuid: str) -> dict:
        entry = {'vdi_uuid': self.disk.vdi_uuid, 'point': self.point.timestamp, 'full': relative_to_vm_folder(vm_uuid, self.full),
                 'deltas': [relative_to_vm_folder(vm_uuid, path) for path in self.deltas],
                 'result': relative_to_vm_folder(vm_uuid, self.merged),
                 'bytes': self.bytes}
        if self.seconds is not None:
            entry['seconds'] = self.seconds
        return entry


@dataclass
class RetentionPlan:
    """What a retention run does for one VM, in the order it does it (see the module docstring)."""

    vm_uuid: str
    points: list[BackupPoint]  # every point of the job, oldest first
    kept: list[BackupPoint]
    removed: list[BackupPoint]  # oldest first; their metadata goes newest first
    merges: list[ChainMerge] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # VHDs of the job's folders that no kept chain reads

    @property
    def changes(self) -> bool:
        return bool(self.removed or self.merges or self.orphans)


def kept_points(points: list[BackupPoint], keep: int) -> list[BackupPoint]:
    """The newest ``keep`` of the (oldest first) points."""
    if keep < 1:
        raise RepositoryError('keep must be at least 1 (the newest backup is always kept), got %s' % keep)
    return points[-keep:]


def decide_retention(vm_uuid: str, points: list[BackupPoint], keep: int, job_id: str, chains: dict, files: list[str]) -> RetentionPlan:
    """The plan from what the repository holds, without reading it: pure.

    ``chains`` maps (timestamp, VDI ref) of each disk of the job in the kept points to its chain (newest
    first); ``files`` lists the VHDs of the job's disk folders. Per folder, the oldest kept point's chain
    is merged when it holds deltas; every file outside the kept chains is an orphan.
    """
    kept = kept_points(points, keep)
    kept_names = {point.timestamp for point in kept}
    plan = RetentionPlan(vm_uuid=vm_uuid, points=points, kept=kept, removed=[point for point in points if point.timestamp not in kept_names])
    needed, seen_folders = set(), set()
    for point in kept:
        for disk in point.disks:
            if disk.job_id != job_id:
                continue
            chain = chains[(point.timestamp, disk.vdi_ref)]
            needed.update(chain)
            folder = posixpath.dirname(disk.storage_path)
            if folder in seen_folders:
                continue
            seen_folders.add(folder)
            if len(chain) > 1:
                plan.merges.append(ChainMerge(point=point, disk=disk, chain=list(chain)))
    plan.orphans = [path for path in files if path not in needed]
    return plan


def _kept_chain(repo, point: BackupPoint, disk: BackupDisk) -> list[str]:
    try:
        return repo.vhd_chain(point, disk)
    except RepositoryError as error:
        if isinstance(error.__cause__, VhdError):  # a damaged link: name the file, as the checksum check does
            raise IntegrityError(_merge_refusal(point, disk), [str(error.__cause__)]) from error
        raise


def _job_vhd_files(repo, vm_uuid: str, job_id: str) -> list[str]:
    files = []
    for folder in repo.disk_folders(vm_uuid, job_id):
        files.extend(posixpath.join(folder, name) for name in repo.vhd_names_in(folder))
    return files


def _chain_blocks_bytes(repo, merge: ChainMerge) -> int:
    """Bytes of the blocks the deltas hold (what the merge reads and writes)."""
    try:
        with VhdChain.from_paths(list(reversed(merge.deltas)), verify=False, allow_missing_parent=True, storage=repo.storage) as chain:
            return len(chain.allocated_blocks()) * chain.block_size
    except (VhdError, OSError) as error:
        raise IntegrityError(merge.refusal, chain_structure_problems(repo, merge.chain) or [str(error)]) from error


def plan_retention(repo, vm_uuid: str, job_id: str, keep: int) -> RetentionPlan:
    """What a retention run would do for one VM: kept and removed points, merges, orphan files."""
    points = repo.list_backups(vm_uuid, job_id)
    chains = {(point.timestamp, disk.vdi_ref): _kept_chain(repo, point, disk)
              for point in kept_points(points, keep) for disk in point.disks if disk.job_id == job_id}
    plan = decide_retention(vm_uuid, points, keep, job_id, chains, _job_vhd_files(repo, vm_uuid, job_id))
    for merge in plan.merges:
        merge.bytes = _chain_blocks_bytes(repo, merge)
    return plan


# -- the run -----------------------------------------------------------------------------------


def apply_retention(repo, vm_uuid: str, job_id: str, keep: int, check_mode: bool = False, lock_job: str = 'backup_merge') -> dict:
    """Retention for one VM of one job; returns what was (or, in check mode, would be) done."""
    validate_uuid(vm_uuid, 'VM uuid')
    started = time.monotonic()
    lock = contextlib.nullcontext() if check_mode else repo.lock(vm_uuid, lock_job)
    with lock:
        resumed = [relative_to_vm_folder(vm_uuid, state) for state in unfinished_merges(repo, vm_uuid, job_id)]
        if check_mode and resumed:
            # The plan depends on the merge being finished; report only that.
            return dict(_retention_report(vm_uuid, None, resumed, []), changed=True, duration=round(time.monotonic() - started, 3))
        reconciled = [] if check_mode else finish_interrupted_merges(repo, vm_uuid, job_id)['reconciled']
        # A merge Xen Orchestra made of our chains (its retention on a shared repository) is checked
        # against what we recorded, block by block for the blocks it wrote, and recorded before the
        # chains are checked: a sound one is no damage, an unsound one stays damage and is refused.
        points = repo.list_backups(vm_uuid, job_id)
        if check_mode:
            foreign = find_foreign_merges(repo, sorted({disk.storage_path for point in points for disk in point.disks}), all_blocks=False)
        else:
            foreign = resolve_foreign_merges(repo, vm_uuid, points)
        plan = plan_retention(repo, vm_uuid, job_id, keep)
        migrated = []
        if check_mode:
            _verify_merges(repo, plan, {merge.path: merge.sums for merge in foreign if merge.ok})
            timings = {}
        else:
            began = time.monotonic()
            migrated = _migrate(repo, plan)
            timings = {'migrate_seconds': round(time.monotonic() - began, 3)}
            timings.update(_execute(repo, plan))
    report = _retention_report(vm_uuid, plan, resumed, reconciled)
    report['migrated'] = migrated
    report['foreign_merges'] = [merge.report(relative_to_vm_folder(vm_uuid, merge.path)) for merge in foreign]
    report['changed'] = report['changed'] or bool(migrated) or any(merge.ok for merge in foreign)
    return dict(report, **timings, duration=round(time.monotonic() - started, 3))


def _retention_report(vm_uuid: str, plan: RetentionPlan | None, resumed: list, reconciled: list) -> dict:
    """The per-VM report, from the plan (None: not planned, an unfinished merge came first)."""
    report = {'vm_uuid': vm_uuid, 'resumed_merges': resumed, 'reconciled': reconciled, 'kept_points': [], 'removed_points': [],
              'merged': [], 'removed_files': [], 'migrated': [], 'foreign_merges': [], 'bytes_merged': 0, 'changed': bool(resumed or reconciled)}
    if plan is not None:
        report.update(kept_points=[point.timestamp for point in plan.kept], removed_points=[point.timestamp for point in plan.removed],
                      merged=[merge.as_result(plan.vm_uuid) for merge in plan.merges], bytes_merged=sum(merge.bytes for merge in plan.merges),
                      removed_files=[relative_to_vm_folder(plan.vm_uuid, path) for path in plan.orphans])
        report['changed'] = report['changed'] or plan.changes
    return report


def _migrate(repo, plan: RetentionPlan) -> list:
    """3. files of the chains to merge that have only a legacy whole-file sha256 get their sidecar (read once)."""
    migrated = []
    for merge in plan.merges:
        migrated.extend(migrate_chain(repo, plan.vm_uuid, merge.chain, plan.points, merge.refusal))
    return migrated


def _verify_merges(repo, plan: RetentionPlan, checked_sums: dict | None = None) -> None:
    """4. every file's structure and sidecar structures, and every block of the deltas: O(changed), the full's data unread.

    ``checked_sums``: the block checksums of sound foreign merges found in check mode (not recorded).
    """
    for merge in plan.merges:
        check_chain_integrity(repo, plan.vm_uuid, merge.chain, plan.points, merge.refusal, read_blocks=set(merge.deltas),
                              checked_sums=checked_sums)


def _execute(repo, plan: RetentionPlan) -> dict:
    """Steps 4 to 7 of the module docstring; sets each merge's ``seconds`` and returns the phases' timings."""
    began = time.monotonic()
    _verify_merges(repo, plan)
    timings = {'verify_seconds': round(time.monotonic() - began, 3)}
    _carry_checksums(repo, plan)
    _retire(repo, plan)
    timings['merge_seconds'] = 0.0
    for merge in plan.merges:
        began = time.monotonic()
        try:
            merge_chain(merge.full, merge.deltas, storage=repo.storage)
        except VhdError as error:
            raise RepositoryError('merge of %s into %s failed: %s' % (', '.join(repo.describe(path) for path in merge.deltas),
                                                                      repo.describe(merge.full), error)) from error
        merge.seconds = round(time.monotonic() - began, 3)
        timings['merge_seconds'] += merge.seconds
        reconcile_merged_points(repo, [merge.point])
    return timings


def _carry_checksums(repo, plan: RetentionPlan) -> None:
    """5. the oldest kept point inherits the checksum entries (block checksums, legacy sha256) of the older files of its chains."""
    legacy = recorded_checksums(plan.points)
    with_blocks = recorded_block_checksums(plan.points)
    for point in {id(merge.point): merge.point for merge in plan.merges}.values():
        metadata = copy.deepcopy(point.metadata)
        section = _own_section(metadata)
        for merge in plan.merges:
            if merge.point is point:
                for path in merge.chain:
                    relative = relative_to_vm_folder(plan.vm_uuid, path)
                    if relative in with_blocks:
                        section['block_checksums'][relative] = with_blocks[relative]
                    elif relative in legacy:
                        section['sha256'][relative] = legacy[relative]
        if metadata != point.metadata:
            repo.rewrite_metadata(point, metadata)


def _retire(repo, plan: RetentionPlan) -> None:
    """5. retired points: metadata first (newest first), then the files no kept chain reads."""
    for point in reversed(plan.removed):
        repo.remove_metadata(point.vm_uuid, point.timestamp)
    repo.remove_files(plan.orphans)


def retention_for_vms(repo, vm_uuids: list, job: Job, keep: int, check_mode: bool = False) -> dict:
    """Retention over several VMs of the job; totals plus one report per VM."""
    started = time.monotonic()
    reports = [apply_retention(repo, vm_uuid, job.id, keep, check_mode=check_mode) for vm_uuid in vm_uuids]
    return {'changed': any(report['changed'] for report in reports), 'vms': reports,
            'merged_points': sum(len(report['merged']) for report in reports),
            'removed_points': sum(len(report['removed_points']) for report in reports),
            'bytes_merged': sum(report['bytes_merged'] for report in reports),
            'duration': round(time.monotonic() - started, 3), 'job_id': job.id}


def job_vms(repo, job: Job) -> list:
    """VMs of the repository with at least one backup point of the job."""
    return [vm_uuid for vm_uuid in repo.list_vms() if repo.list_backups(vm_uuid, job.id)]


__all__ = ['UnfinishedMergeError', 'unfinished_merges', 'finish_interrupted_merges', 'refuse_unfinished_merges', 'reconcile_merged_points',
           'ChainMerge', 'RetentionPlan', 'kept_points', 'decide_retention', 'plan_retention', 'apply_retention', 'retention_for_vms',
           'job_vms']
