# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What a repository holds (jobs, VMs, backup points, disk chains, sizes), and its verification.

Verification re-hashes every VHD once (files shared by several points' chains are read once),
compares with the sha256 our metadata recorded, checks every point's chains structurally with
the VHD engine, and lists every problem found, each naming its file.
"""

from __future__ import annotations

import os

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import (
    OWN_FIELD, BackupRepository, RepositoryError, job_id_for,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.retention import recorded_checksums, sha256_file
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import check_chain


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def describe_point(repository: BackupRepository, point, problems: list[str], chains: dict) -> dict:
    """One backup point with its disks and their chains (newest file first)."""
    vm_dir = repository.vm_dir(point.vm_uuid)
    disks = []
    for disk in point.disks:
        vdi = point.metadata['vdis'].get(disk.vdi_ref) or {}
        try:
            chain = repository.vhd_chain(point, disk)
        except RepositoryError as error:
            problems.append(str(error))
            chain = []
        chains[(point.timestamp, disk.vdi_uuid)] = chain
        disks.append({
            'vdi_uuid': disk.vdi_uuid,
            'name_label': vdi.get('name_label', ''),
            'path': disk.relative_path,
            'differencing': disk.differencing,
            'virtual_size': disk.virtual_size,
            'file_size': _file_size(disk.path),
            'sha256': disk.sha256,
            'chain': [os.path.relpath(path, vm_dir).replace(os.sep, '/') for path in chain],
        })
    own = point.metadata.get(OWN_FIELD) or {}
    return {
        'timestamp': point.timestamp,
        'job_id': point.job_id,
        'job': point.metadata.get('xapi_delta_backup_job'),
        'size': point.metadata.get('size'),
        'collection_version': own.get('collection_version'),
        'written_by': 'xapi.delta_backup' if own else 'another tool (no checksums recorded)',
        'disks': disks,
    }


def verify_vm(repository: BackupRepository, vm_uuid: str, points: list, chains: dict) -> tuple[list[str], int]:
    """Every problem of the VM's backups, and the number of files hashed."""
    problems: list[str] = []
    vm_dir = repository.vm_dir(vm_uuid)
    expected = recorded_checksums(points)
    files = sorted({path for chain in chains.values() for path in chain})
    for path in files:
        relative = os.path.relpath(path, vm_dir).replace(os.sep, '/')
        digest = expected.get(relative)
        if digest is None:
            continue
        try:
            actual = sha256_file(path)
        except OSError as error:
            problems.append('%s: cannot be read (%s)' % (path, error.strerror or error))
            continue
        if actual != digest:
            problems.append('%s: sha256 %s differs from the %s recorded in the backup metadata (the file was changed or damaged)'
                            % (path, actual, digest))
    seen = set()
    for chain in chains.values():
        if not chain or tuple(chain) in seen:
            continue
        seen.add(tuple(chain))
        problems.extend(str(problem) for problem in check_chain(list(chain)))
    return sorted(set(problems)), len(files)


def describe_repository(repository: BackupRepository, vm: str | None = None, job: str | None = None, verify: bool = False) -> dict:
    """The backup_info module's result: VMs with their points, jobs, and (with verify) every problem."""
    job_id = job_id_for(job) if job else None
    vm_uuids = repository.list_vms()
    result = {'repository': repository.root, 'vms': [], 'jobs': {}, 'problems': [], 'files_verified': 0, 'verified': verify}
    for vm_uuid in vm_uuids:
        problems: list[str] = []
        try:
            points = [point for point in repository.list_backups(vm_uuid) if job_id is None or point.job_id == job_id]
        except RepositoryError as error:
            result['problems'].append(str(error))
            continue
        if not points:
            continue
        name = points[-1].metadata['vm'].get('name_label', '')
        if vm and vm not in (vm_uuid, name):
            continue
        chains: dict = {}
        described = [describe_point(repository, point, problems, chains) for point in points]
        if verify:
            found, hashed = verify_vm(repository, vm_uuid, points, chains)
            problems.extend(found)
            result['files_verified'] += hashed
        for point in described:
            result['jobs'].setdefault(point['job_id'], point['job'])
        result['vms'].append({'uuid': vm_uuid, 'name_label': name, 'backups': described, 'problems': sorted(set(problems)),
                              'size': sum(point['size'] or 0 for point in described)})
        result['problems'].extend(sorted(set(problems)))
    if vm and not result['vms'] and not result['problems']:
        raise RepositoryError('no backup of VM %r in %s%s' % (vm, repository.root, ' by job %r' % job if job else ''))
    result['jobs'] = [{'id': key, 'name': value} for key, value in sorted(result['jobs'].items())]
    return result
