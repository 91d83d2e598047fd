# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Retention of a job's backups of a VM: keep the newest points, fold the rest into the full ("continuous" merge).

Also the detection of merges left unfinished by a crash (the checksum and chain checks it shares
with seed copy and restore are in ``_repo.integrity``).

Order of a retention run for one VM (under the VM's repository lock)::

  1. finish every merge a crash left behind (engine state files), then reconcile the metadata of
     the point whose VHD it produced (sha256, isVhdDifferencing, size);
  2. plan: kept = newest ``keep`` points of the job; per disk folder, the chain of the oldest kept
     point referencing it is merged into its full (full + deltas up to that point's own VHD);
  3. check every chain to be merged (structure and sha256): refuse before changing anything;
  4. copy into the oldest kept point's metadata the sha256 of every older file of its chains, so
     that checksums survive the removal of the points that recorded them;
  5. remove the metadata of the retired points (newest first, as XO), then VHDs no kept chain needs;
  6. merge (crash-safe engine), then record the merged file's sha256, size and isVhdDifferencing false.

A kill at any instant leaves every kept point readable: steps 4 and 5 only drop what kept chains do
not read, the engine keeps the chain valid during the merge, and step 1 of the next run completes
whatever was left.
"""

from __future__ import annotations

import contextlib
import copy
import posixpath
import time

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import (
    IntegrityError, chain_structure_problems, recorded_checksums, sha256_file, verify_chain,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, relative_to_vm_folder, validate_uuid, vm_folder
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import OWN_FIELD
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    VhdChain, VhdError, VhdFile, check_file, merge_chain, resume_merge,
)


class UnfinishedMergeError(RepositoryError):
    """A merge left unfinished by a crash; backup_merge finishes it."""


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
            # storage: local path for the VHD engine until it takes a Storage
            resume_merge(repo.local_path(state))
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
    section.setdefault('virtual_sizes', {})
    return section


def reconcile_merged_points(repo, points: list) -> list:
    """Record merges whose metadata update a crash prevented; return the relative paths fixed.

    A disk the metadata calls differencing whose file is now dynamic and structurally sound was
    produced by our merge (the engine writes the full's footer with the delta's identity and renames
    it over the delta): its sha256, size and flag are recorded now. Checksum entries of files that
    no longer exist are dropped.
    """
    fixed = []
    for point in points:
        metadata = copy.deepcopy(point.metadata)
        section = _own_section(metadata)
        changed = False
        for disk in point.disks:
            if not disk.differencing or not repo.is_file(disk.storage_path):
                continue
            # storage: local path for the VHD engine until it takes a Storage
            local = repo.local_path(disk.storage_path)
            try:
                with VhdFile.open(local) as vhd:
                    if not vhd.is_dynamic:
                        continue
            except (VhdError, OSError):
                continue
            problems = check_file(local)
            if problems:
                raise IntegrityError('backup %s of VM %s' % (point.timestamp, point.vm_uuid), [str(p) for p in problems])
            section['sha256'][disk.relative_path] = sha256_file(repo.storage, disk.storage_path)
            metadata['isVhdDifferencing'][disk.vdi_ref] = False
            fixed.append(disk.relative_path)
            changed = True
        for relative in list(section['sha256']):
            if not repo.is_file(posixpath.join(vm_folder(point.vm_uuid), relative)):
                del section['sha256'][relative]
                changed = True
        if changed:
            metadata['size'] = _point_size(repo, point)
            repo.rewrite_metadata(point, metadata)
    return fixed


def _point_size(repo, point) -> int:
    return sum(repo.file_size(disk.storage_path) or 0 for disk in point.disks)


# -- planning ----------------------------------------------------------------------------------


def _chain_blocks_bytes(repo, children: list) -> int:
    """Bytes of the blocks the deltas hold (what the merge reads and writes)."""
    # storage: local path for the VHD engine until it takes a Storage
    with VhdChain.from_paths([repo.local_path(path) for path in reversed(children)], verify=False, allow_missing_parent=True) as chain:
        return len(chain.allocated_blocks()) * chain.block_size


def plan_retention(repo, vm_uuid: str, job_id: str, keep: int) -> dict:
    """What a retention run would do for one VM: kept and removed points, merges, orphan files."""
    if keep < 1:
        raise RepositoryError('keep must be at least 1 (the newest backup is always kept), got %s' % keep)
    points = repo.list_backups(vm_uuid, job_id)
    kept = points[-keep:]
    kept_names = {point.timestamp for point in kept}
    removed = [point for point in points if point.timestamp not in kept_names]
    merges, needed = [], set()
    seen_folders = set()
    for point in kept:
        for disk in point.disks:
            if disk.job_id != job_id:
                continue
            try:
                chain = repo.vhd_chain(point, disk)
            except RepositoryError as error:
                if isinstance(error.__cause__, VhdError):  # a damaged link: name the file, as the checksum check does
                    raise IntegrityError('refusing to merge the chain of disk %s of backup %s' % (disk.vdi_uuid, point.timestamp),
                                         [str(error.__cause__)]) from error
                raise
            needed.update(chain)
            folder = posixpath.dirname(disk.storage_path)
            if folder in seen_folders:
                continue
            seen_folders.add(folder)
            if len(chain) > 1:
                children = list(reversed(chain[:-1]))
                merge = {'point': point, 'disk': disk, 'chain': chain, 'parent': chain[-1], 'children': children,
                         'vdi_uuid': disk.vdi_uuid, 'result': children[-1]}
                try:
                    merge['bytes'] = _chain_blocks_bytes(repo, children)
                except (VhdError, OSError) as error:
                    raise IntegrityError(_refusal(merge), chain_structure_problems(repo, chain) or [str(error)]) from error
                merges.append(merge)
    orphans = []
    for folder in repo.disk_folders(vm_uuid, job_id):
        orphans.extend(posixpath.join(folder, name) for name in repo.vhd_names_in(folder)
                       if posixpath.join(folder, name) not in needed)
    return {'points': points, 'kept': kept, 'removed': removed, 'merges': merges, 'orphans': orphans, 'vm_uuid': vm_uuid}


def _merge_result(plan_merge: dict, vm_uuid: str) -> dict:
    return {'vdi_uuid': plan_merge['vdi_uuid'], 'point': plan_merge['point'].timestamp,
            'full': relative_to_vm_folder(vm_uuid, plan_merge['parent']),
            'deltas': [relative_to_vm_folder(vm_uuid, path) for path in plan_merge['children']],
            'result': relative_to_vm_folder(vm_uuid, plan_merge['result']), 'bytes': plan_merge['bytes']}


# -- the run -----------------------------------------------------------------------------------


def apply_retention(repo, vm_uuid: str, job_id: str, keep: int, check_mode: bool = False, lock_job: str = 'backup_merge') -> dict:
    """Retention for one VM of one job; returns what was (or, in check mode, would be) done."""
    validate_uuid(vm_uuid, 'VM uuid')
    started = time.monotonic()
    report = {'vm_uuid': vm_uuid, 'resumed_merges': [], 'reconciled': [], 'kept_points': [], 'removed_points': [],
              'merged': [], 'removed_files': [], 'bytes_merged': 0, 'changed': False}
    lock = contextlib.nullcontext() if check_mode else repo.lock(vm_uuid, lock_job)
    with lock:
        states = unfinished_merges(repo, vm_uuid, job_id)
        report['resumed_merges'] = [relative_to_vm_folder(vm_uuid, state) for state in states]
        if not check_mode:
            report['reconciled'] = finish_interrupted_merges(repo, vm_uuid, job_id)['reconciled']
        elif states:
            # The plan depends on the merge being finished; report only that.
            report['changed'] = True
            report['duration'] = round(time.monotonic() - started, 3)
            return report
        plan = plan_retention(repo, vm_uuid, job_id, keep)
        report['kept_points'] = [point.timestamp for point in plan['kept']]
        report['removed_points'] = [point.timestamp for point in plan['removed']]
        report['merged'] = [_merge_result(merge, vm_uuid) for merge in plan['merges']]
        report['bytes_merged'] = sum(merge['bytes'] for merge in plan['merges'])
        report['removed_files'] = [relative_to_vm_folder(vm_uuid, path) for path in plan['orphans']]
        report['changed'] = bool(report['removed_points'] or report['merged'] or report['removed_files']
                                 or report['resumed_merges'] or report['reconciled'])
        if check_mode:
            checksums = recorded_checksums(plan['points'])
            for merge in plan['merges']:
                verify_chain(repo, vm_uuid, merge['chain'], checksums, _refusal(merge))
            report['duration'] = round(time.monotonic() - started, 3)
            return report
        _execute(repo, plan, report)
    report['duration'] = round(time.monotonic() - started, 3)
    return report


def _refusal(merge: dict) -> str:
    return 'refusing to merge the chain of disk %s of backup %s' % (merge['vdi_uuid'], merge['point'].timestamp)


def _execute(repo, plan: dict, report: dict) -> None:
    vm_uuid = plan['vm_uuid']
    checksums = recorded_checksums(plan['points'])
    began = time.monotonic()
    for merge in plan['merges']:
        verify_chain(repo, vm_uuid, merge['chain'], checksums, _refusal(merge))
    report['verify_seconds'] = round(time.monotonic() - began, 3)
    # 4. the oldest kept point inherits the checksums of the older files of its chains
    for point in {id(merge['point']): merge['point'] for merge in plan['merges']}.values():
        metadata = copy.deepcopy(point.metadata)
        section = _own_section(metadata)
        for merge in plan['merges']:
            if merge['point'] is point:
                for path in merge['chain']:
                    relative = relative_to_vm_folder(vm_uuid, path)
                    if relative in checksums:
                        section['sha256'][relative] = checksums[relative]
        if metadata != point.metadata:
            repo.rewrite_metadata(point, metadata)
    # 5. retired points: metadata first (newest first), then the files no kept chain reads
    for point in reversed(plan['removed']):
        repo.remove_metadata(point.vm_uuid, point.timestamp)
    repo.remove_files(plan['orphans'])
    # 6. merges, each followed by its metadata update
    report['merge_seconds'] = 0.0
    for merge, entry in zip(plan['merges'], report['merged']):
        began = time.monotonic()
        try:
            # storage: local path for the VHD engine until it takes a Storage
            merge_chain(repo.local_path(merge['parent']), [repo.local_path(path) for path in merge['children']])
        except VhdError as error:
            raise RepositoryError('merge of %s into %s failed: %s' % (', '.join(repo.describe(path) for path in merge['children']),
                                                                      repo.describe(merge['parent']), error)) from error
        entry['seconds'] = round(time.monotonic() - began, 3)
        report['merge_seconds'] += entry['seconds']
        reconcile_merged_points(repo, [merge['point']])


def retention_for_vms(repo, vm_uuids: list, job_id: str, keep: int, check_mode: bool = False) -> dict:
    """Retention over several VMs; totals plus one report per VM."""
    started = time.monotonic()
    reports = [apply_retention(repo, vm_uuid, job_id, keep, check_mode=check_mode) for vm_uuid in vm_uuids]
    return {'changed': any(report['changed'] for report in reports), 'vms': reports,
            'merged_points': sum(len(report['merged']) for report in reports),
            'removed_points': sum(len(report['removed_points']) for report in reports),
            'bytes_merged': sum(report['bytes_merged'] for report in reports),
            'duration': round(time.monotonic() - started, 3)}


def job_vms(repo, job_id: str) -> list:
    """VMs of the repository with at least one backup point of the job."""
    return [vm_uuid for vm_uuid in repo.list_vms() if repo.list_backups(vm_uuid, job_id)]


__all__ = ['UnfinishedMergeError', 'unfinished_merges', 'finish_interrupted_merges', 'refuse_unfinished_merges', 'reconcile_merged_points',
           'plan_retention', 'apply_retention', 'retention_for_vms', 'job_vms']
