# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What a repository holds (jobs, VMs, backup points, disk chains, sizes), and its verification.

Verification re-hashes every VHD once (files shared by several points' chains are read once),
compares with the sha256 our metadata recorded, checks every point's chains structurally with
the VHD engine, and lists every problem found, each naming its file.
"""

from __future__ import annotations

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import (
    chain_structure_problems, checksum_problems, recorded_checksums,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, job_id_for, relative_to_vm_folder
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import OWN_FIELD
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupRepository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdFile


def describe_point(repository: BackupRepository, point, problems: list[str], chains: dict) -> dict:
    """One backup point with its disks and their chains (newest file first)."""
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
            'virtual_size': disk.virtual_size if disk.virtual_size is not None else _footer_size(repository, chain),
            'file_size': repository.file_size(disk.storage_path),
            'sha256': disk.sha256,
            'chain': [relative_to_vm_folder(point.vm_uuid, path) for path in chain],
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


def _footer_size(repository: BackupRepository, chain: list) -> int | None:
    """The disk size in the footer of a chain's newest VHD (a point of another tool records none of ours); None if unreadable."""
    if not chain:
        return None
    try:
        with VhdFile.open_in(repository.storage, chain[0]) as vhd:
            return vhd.size
    except (VhdError, OSError):
        return None


def verify_vm(repository: BackupRepository, vm_uuid: str, points: list, chains: dict) -> tuple[list[str], int]:
    """Every problem of the VM's backups, and the number of files hashed."""
    files = sorted({path for chain in chains.values() for path in chain})
    problems, _verified, _unverified = checksum_problems(repository, vm_uuid, files, recorded_checksums(points))
    seen = set()
    for chain in chains.values():
        if not chain or tuple(chain) in seen:
            continue
        seen.add(tuple(chain))
        problems.extend(chain_structure_problems(repository, list(chain)))
    return sorted(set(problems)), len(files)


def describe_repository(repository: BackupRepository, vm: str | None = None, job: str | None = None, verify: bool = False) -> dict:
    """The backup_info module's result: VMs with their points, jobs, and (with verify) every problem."""
    job_id = job_id_for(job) if job else None
    vm_uuids = repository.list_vms()
    result = {'repository': repository.root, 'vms': [], 'jobs': {}, 'problems': [], 'files_verified': 0, 'verified': verify}
    for vm_uuid in vm_uuids:
        problems: list[str] = []
        try:
            points = repository.list_backups(vm_uuid, job_id)
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
