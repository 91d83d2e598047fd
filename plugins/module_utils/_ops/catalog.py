# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What a repository holds (jobs, VMs, backup points, disk chains, sizes), and its verification.

Verification reads every VHD once (files shared by several points' chains are read once) and
hashes on every core: each block against its block checksum (``_vhd/blocksums.py``), or the whole
file against the sha256 of repositories written before them; it checks every point's chains
structurally with the VHD engine and lists every problem found, each naming its file, a damaged
block by number and virtual offset with every backup point that reads it. Files merged by another
tool (Xen Orchestra) are checked block by block and listed apart (``_repo/foreign_merge.py``).
"""

from __future__ import annotations

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import (
    chain_structure_problems, recorded_block_checksums, verify_vm_files,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, job_id_for, relative_to_vm_folder
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import OWN_FIELD
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupRepository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdFile


def describe_point(repository: BackupRepository, point, problems: list[str], chains: dict) -> dict:
    """One backup point with its disks and their chains (newest file first)."""
    disks = []
    with_blocks = recorded_block_checksums([point])
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
            'checksums': 'blocks' if disk.relative_path in with_blocks else 'sha256' if disk.sha256 else 'none',
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


def verify_vm(repository: BackupRepository, vm_uuid: str, points: list, chains: dict):
    """Every problem of the VM's backups (a :class:`VerifyReport`), structural ones of every chain included."""
    report = verify_vm_files(repository, vm_uuid, points, chains)
    problems = report.problems
    seen = set()
    for chain in chains.values():
        if not chain or tuple(chain) in seen:
            continue
        seen.add(tuple(chain))
        problems.extend(chain_structure_problems(repository, list(chain)))
    report.problems = sorted(set(problems))
    return report


def describe_repository(repository: BackupRepository, vm: str | None = None, job: str | None = None, verify: bool = False) -> dict:
    """The backup_info module's result: VMs with their points, jobs, and (with verify) every problem."""
    job_id = job_id_for(job) if job else None
    vm_uuids = repository.list_vms()
    result = {'repository': repository.root, 'vms': [], 'jobs': {}, 'problems': [], 'files_verified': 0, 'verified': verify,
              'damaged_blocks': [], 'foreign_merges': [], 'unverified_files': []}
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
        damaged, merges = [], []
        if verify:
            report = verify_vm(repository, vm_uuid, points, chains)
            problems.extend(report.problems)
            result['files_verified'] += report.files
            damaged = [dict(block, vm_uuid=vm_uuid) for block in report.damaged_blocks]
            merges = [dict(merge, vm_uuid=vm_uuid) for merge in report.foreign_merges]
            result['damaged_blocks'].extend(damaged)
            result['foreign_merges'].extend(merges)
            result['unverified_files'].extend({'vm_uuid': vm_uuid, 'file': relative} for relative in sorted(report.unverified))
        for point in described:
            result['jobs'].setdefault(point['job_id'], point['job'])
        result['vms'].append({'uuid': vm_uuid, 'name_label': name, 'backups': described, 'problems': sorted(set(problems)),
                              'damaged_blocks': damaged, 'foreign_merges': merges,
                              'size': sum(point['size'] or 0 for point in described)})
        result['problems'].extend(sorted(set(problems)))
    if vm and not result['vms'] and not result['problems']:
        raise RepositoryError('no backup of VM %r in %s%s' % (vm, repository.root, ' by job %r' % job if job else ''))
    result['jobs'] = [{'id': key, 'name': value} for key, value in sorted(result['jobs'].items())]
    return result
