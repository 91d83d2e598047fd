# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Copy backups from one repository to another (the initial-seed procedure).

A first full goes to a repository near the pool, the repository travels (or is copied over a slow
link) to the far site, the job is retargeted there, and its next export is a delta because the
copied chain ends with the job's reference snapshot.

For each VM, under both repositories' locks: the source chains are checked (structure, and each
file's block checksum file against the file: identity, footer, header and BAT); every VHD is
copied through an atomic file (temporary name, fsync, rename) with its block checksum file. The
destination writer hashes each block as it passes, and each checksum must equal the source's as soon
as its block has passed (every block read is thus checked, one hash per block; a damaged block stops
the copy there, and nothing of the file is published), and the written file
is read back and checked block by block against them on every core (a destination storage that
changes data is caught; the copy costs a read of the file there anyway). A file written before
block checksums is checked against its recorded sha256 as it is copied and read back whole; a file
with neither (written by Xen Orchestra) is read back against what was written. Only then are the
JSON files copied, oldest first and byte for byte. A backup at the destination is thus visible only
once every file of its chain is there and verified, so an interrupted copy never leaves a point a
backup run would misread. Files already at the destination with the same content (the same block
checksum file, whose digests match the file's structures; else the same sha256) are skipped, so a
rerun finishes an interrupted copy and a second run changes nothing. A destination file of the same
name but different content is never overwritten: the copy stops and names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import time

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.atomic import write_file_atomically
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import (
    IntegrityError, chain_structure_problems, checksum_mismatch, recorded_block_checksums, recorded_checksums, sha256_file,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import (
    VHD_RELATIVE_PATTERN, RepositoryError, metadata_file, relative_to_vm_folder, vm_folder,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import (
    open_or_initialize, open_repository, resolve_backup_vm, same_local_folder,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.retention import refuse_unfinished_merges
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import (
    UNKNOWN, BlockSums, BlockSumsError, BlockProblem, sidecar_name, structure_problems, verify_blocks,
)

COPY_CHUNK = 4 * 1024 * 1024
#: How each copied file is checked (the per-VM report's ``checksums`` lists the files under these keys).
BLOCKS, LEGACY, UNVERIFIED = 'block_checksums', 'sha256', 'unverified'
MIB = 1024 * 1024


class SeedConflictError(RepositoryError):
    """The destination holds a different file under the same name."""

    error_code = 'seed_conflict'


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _remove_our_temporaries(repo, vm_uuid: str) -> list:
    """Temporary files an interrupted copy left in the destination (never complete files); their storage paths."""
    found = []
    for folder in [vm_folder(vm_uuid)] + repo.disk_folders(vm_uuid):
        if not repo.storage.is_dir(folder):
            continue
        found.extend(posixpath.join(folder, name) for name in repo.storage.list_dir(folder)
                     if repo.storage.is_temporary_name(name) and repo.is_file(posixpath.join(folder, name)))
    repo.remove_files(found)
    return found


def _source_file(source, vm_uuid: str, path: str, with_blocks: set, checksums: dict) -> tuple[str, object, list]:
    """How one source file is checked: ``(kind, block sums or expected sha256 or None, problems)``.

    Block checksums: the file's identity and structures against them (a few KiB); its blocks are
    checked as they are copied. A file the metadata says was written with them but has none is damage.
    """
    relative = relative_to_vm_folder(vm_uuid, path)
    try:
        sums = BlockSums.load_for(source.storage, path)
    except BlockSumsError as error:
        return BLOCKS, None, [str(error)]
    if sums is None:
        if relative in checksums:
            return LEGACY, checksums[relative], []
        if relative in with_blocks:
            return BLOCKS, None, ['%s: its block checksum file %s is missing (written with one: it was removed)'
                                  % (source.describe(path), posixpath.basename(sidecar_name(path)))]
        return UNVERIFIED, None, []
    try:
        with VhdFile.open_in(source.storage, path) as vhd:
            return BLOCKS, sums, structure_problems(vhd, sums)
    except (VhdError, OSError) as error:
        return BLOCKS, sums, [str(error)]


def plan_vm_copy(source, vm_uuid: str, job_id: str | None) -> dict:
    """Points and VHD files (oldest first) to copy and how each is checked (``kinds``: relative -> (kind, reference)).

    Structure and block checksum files are checked here; every problem of a chain is named at once.
    """
    points = source.list_backups(vm_uuid, job_id)
    every_point = source.list_backups(vm_uuid)
    checksums = recorded_checksums(every_point)
    with_blocks = recorded_block_checksums(every_point)
    files, kinds = {}, {}
    for point in points:
        for disk in point.disks:
            chain = source.vhd_chain(point, disk)
            problems = chain_structure_problems(source, chain)
            for path in chain:
                relative = relative_to_vm_folder(vm_uuid, path)
                if relative not in kinds:
                    kind, reference, found = _source_file(source, vm_uuid, path, with_blocks, checksums)
                    kinds[relative] = (kind, reference)
                    if not problems:
                        problems.extend(found)
                files[relative] = path
            if problems:
                raise IntegrityError('refusing to copy disk %s of backup %s' % (disk.vdi_uuid, point.timestamp), problems)
    return {'points': points, 'files': sorted(files.items()), 'checksums': checksums, 'kinds': kinds}


def _destination_state(destination, vm_uuid: str, relative: str):
    if destination is None:
        return None
    path = posixpath.join(vm_folder(vm_uuid), relative)
    return path if destination.is_file(path) else None


def _compare_with_source(shown: str, source_sums: BlockSums, read: BlockSums) -> BlockSums:
    """The checksums of the blocks just read (``read``) against the source's; returns the source's, to be copied as they are.

    Blocks the source records as unknown (a merge by another tool) are taken as read.
    """
    problems = []
    if (read.unique_id, read.footer_digest, read.header_digest, read.bat_digest) != (
            source_sums.unique_id, source_sums.footer_digest, source_sums.header_digest, source_sums.bat_digest):
        problems.append('%s: its identity or structures changed while it was copied' % shown)
    elif read.digests != source_sums.digests:
        for index in range(source_sums.entries):
            recorded = source_sums.digest(index)
            if recorded != UNKNOWN and recorded != read.digest(index):
                problems.append(str(BlockProblem(shown, index, index * source_sums.block_size,
                                                 'does not match its recorded checksum (the block is damaged)')))
    if problems:
        raise IntegrityError('refusing to copy %s' % shown, problems)
    return source_sums


def _copy_vhd(source, destination, vm_uuid: str, relative: str, source_path: str, kind: str, reference) -> int:
    """Copy one VHD atomically (with its block checksum file, if it has one); verify the source as it is read, then the destination."""
    job_id, vdi_uuid, timestamp = VHD_RELATIVE_PATTERN.match(relative).groups()[:3]
    shown = source.describe(source_path)
    # the copy is hashed as its source was, so each block compares with the source's checksum
    writer = destination.open_vhd_writer(vm_uuid, job_id, vdi_uuid, timestamp, **({'hash_name': reference.hash_name} if kind == BLOCKS else {}))
    read = {}

    def review(computed: BlockSums):
        read['sums'] = computed
        if kind == BLOCKS:
            return _compare_with_source(shown, reference, computed)
        return None  # the source has no block checksum file: neither has the copy (it stays the same file)

    writer.review_sums = review
    if kind == BLOCKS:
        def check_block(index: int, digest: bytes) -> None:
            # Each block as soon as it has passed: a damaged one stops the copy there, not at the end of the file.
            recorded = reference.digest(index)
            if recorded != UNKNOWN and recorded != digest:
                raise IntegrityError('refusing to copy %s' % shown, [str(BlockProblem(
                    shown, index, index * reference.block_size, 'does not match its recorded checksum (the block is damaged)'))])

        writer.stream_sums.on_block = check_block
    digest = hashlib.sha256() if kind != BLOCKS else None
    writer.__enter__()
    try:
        with source.storage.open_file(source_path) as reader:
            offset = 0
            while True:
                chunk = reader.pread(COPY_CHUNK, offset)
                if not chunk:
                    break
                writer.write(chunk)
                if digest is not None:
                    digest.update(chunk)
                offset += len(chunk)
        if kind == LEGACY and digest.hexdigest() != reference:
            raise IntegrityError('refusing to copy %s' % shown, [checksum_mismatch(shown, digest.hexdigest(), reference)])
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    if kind == BLOCKS:
        try:
            with VhdFile.open_in(destination.storage, writer.path) as copied:
                problems = structure_problems(copied, read['sums']) or [str(problem) for problem in verify_blocks(copied, read['sums'])]
        except (VhdError, OSError) as error:
            problems = [str(error)]
    else:
        actual = sha256_file(destination.storage, writer.path)
        problems = [] if actual == digest.hexdigest() else [
            '%s: sha256 %s after writing, %s was written' % (writer.shown, actual, digest.hexdigest())]
    if problems:
        destination.remove_files([writer.path])
        raise IntegrityError('copy verification failed (the destination storage changed the data; the file was removed)', problems)
    return writer.size


def _same_file(source, destination, source_path: str, existing: str, kind: str, reference) -> bool:
    """Whether the destination's file is the source's: the same block checksum file, matching the file's structures, when
    both have one (a few KiB read); else the same sha256 (both files read)."""
    try:
        theirs = BlockSums.load_for(destination.storage, existing)
    except BlockSumsError:
        return False
    if kind == BLOCKS and theirs is not None:
        if theirs.pack() != reference.pack():
            return False
        try:
            with VhdFile.open_in(destination.storage, existing) as vhd:
                return not structure_problems(vhd, theirs)
        except (VhdError, OSError):
            return False
    expected = reference if kind == LEGACY else sha256_file(source.storage, source_path)
    return sha256_file(destination.storage, existing) == expected


def copy_vm(source, destination, vm_uuid: str, job_id: str | None, check_mode: bool = False) -> dict:
    """Copy one VM's backups (of one job, or all); return what was (or would be) copied and skipped."""
    report = {'vm_uuid': vm_uuid, 'copied_files': [], 'skipped_files': [], 'copied_points': [], 'skipped_points': [],
              'bytes_copied': 0, 'removed_temporary_files': 0, 'checksums': {BLOCKS: [], LEGACY: [], UNVERIFIED: []}}
    with contextlib.ExitStack() as locks:
        if not check_mode:
            locks.enter_context(source.lock(vm_uuid, 'seed_copy'))
            locks.enter_context(destination.lock(vm_uuid, 'seed_copy'))
        refuse_unfinished_merges(source, vm_uuid)
        if destination is not None and destination.storage.is_dir(vm_folder(vm_uuid)):
            refuse_unfinished_merges(destination, vm_uuid)
            if not check_mode:
                report['removed_temporary_files'] = len(_remove_our_temporaries(destination, vm_uuid))
        plan = plan_vm_copy(source, vm_uuid, job_id)
        if not plan['points']:
            raise RepositoryError('repository %s holds no backup of VM %s%s' % (source.root, vm_uuid, ' by this job' if job_id else ''))
        for relative, source_path in plan['files']:
            kind, reference = plan['kinds'][relative]
            report['checksums'][kind].append(relative)
            existing = _destination_state(destination, vm_uuid, relative)
            if existing is not None:
                if not _same_file(source, destination, source_path, existing, kind, reference):
                    raise SeedConflictError('%s already exists at the destination with different content (its block checksums or sha256 '
                                            'differ from those of %s): it belongs to another backup history; move it away or copy to '
                                            'another repository' % (destination.describe(existing), source.describe(source_path)))
                report['skipped_files'].append(relative)
                continue
            report['copied_files'].append(relative)
            if check_mode:
                report['bytes_copied'] += source.storage.size(source_path)
                continue
            report['bytes_copied'] += _copy_vhd(source, destination, vm_uuid, relative, source_path, kind, reference)
        # Metadata last, oldest first, byte for byte: a point appears only once its whole chain is there.
        for point in plan['points']:
            raw = source.storage.read_bytes(point.metadata_storage_path)
            target = metadata_file(vm_uuid, point.timestamp) if destination is not None else None
            if target is not None and destination.is_file(target):
                if destination.storage.read_bytes(target) != raw:
                    raise SeedConflictError('%s already exists at the destination with different content than %s: refusing to '
                                            'overwrite a backup description' % (destination.describe(target), point.metadata_path))
                report['skipped_points'].append(point.timestamp)
                continue
            report['copied_points'].append(point.timestamp)
            if check_mode:
                continue
            digest = write_file_atomically(destination.storage, target, raw)
            if sha256_file(destination.storage, target) != digest or digest != _sha256_bytes(raw):
                raise IntegrityError('copy verification failed', ['%s: does not read back as written' % destination.describe(target)])
            destination.changed(vm_uuid)
    report['changed'] = bool(report['copied_files'] or report['copied_points'] or report['removed_temporary_files'])
    return report


def open_destination(path: str, check_mode: bool, file_mode: int | None = None, dir_mode: int | None = None):
    """The destination repository; an existing empty folder becomes one (except in check mode: ``None``)."""
    modes = {}
    if file_mode is not None:
        modes['file_mode'] = file_mode
    if dir_mode is not None:
        modes['dir_mode'] = dir_mode
    return open_or_initialize(path, check_mode=check_mode, **modes)


def seed_copy(source_path: str, destination_path: str, vms: list | None = None, job_id: str | None = None, check_mode: bool = False,
              file_mode: int | None = None, dir_mode: int | None = None) -> dict:
    """Copy the backups of the given VMs (uuids or names; all when empty) from one repository to another."""
    started = time.monotonic()
    source = open_repository(source_path)
    if same_local_folder(source_path, destination_path):
        raise RepositoryError('source and destination are the same repository (%s)' % source.root)
    destination = open_destination(destination_path, check_mode, file_mode, dir_mode)
    if vms:
        vm_uuids = []
        for vm in vms:
            vm_uuid = resolve_backup_vm(source, vm)
            if vm_uuid not in vm_uuids:
                vm_uuids.append(vm_uuid)
    else:
        vm_uuids = [vm_uuid for vm_uuid in source.list_vms() if source.list_backups(vm_uuid, job_id)]
    reports = [copy_vm(source, destination, vm_uuid, job_id, check_mode=check_mode) for vm_uuid in vm_uuids]
    elapsed = max(time.monotonic() - started, 1e-6)
    copied = sum(report['bytes_copied'] for report in reports)
    return {'changed': any(report['changed'] for report in reports), 'vms': reports,
            'copied_files': sum(len(report['copied_files']) for report in reports),
            'skipped_files': sum(len(report['skipped_files']) for report in reports),
            'copied_points': sum(len(report['copied_points']) for report in reports),
            'bytes_copied': copied, 'duration': round(elapsed, 3), 'throughput_mib_s': round(copied / MIB / elapsed, 1)}


__all__ = ['SeedConflictError', 'seed_copy', 'copy_vm', 'plan_vm_copy', 'open_destination']
