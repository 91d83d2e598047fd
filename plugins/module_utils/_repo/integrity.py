# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Integrity of a repository's files: block checksums (``_vhd/blocksums.py``), the whole-file sha256 of
repositories written before them, and chain checks.

Shared by retention (merge), seed copy, restore and the catalog: every problem names its file, and a
damaged block is named by file, block number and virtual offset.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import posixpath

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, relative_to_vm_folder
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import OWN_FIELD
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import Storage
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdFile, check_chain
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import (
    ABSENT, BLOCKS_PER_TASK, UNKNOWN, BlockProblem, BlockSums, BlockSumsError, hash_blocks, sidecar_name, structure_problems, verify_blocks,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.structures import BAT_UNUSED
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo import foreign_merge

HASH_CHUNK = 4 * 1024 * 1024
MAX_HASH_THREADS = 8
#: Threads reading and hashing per core when a whole repository is verified: while some wait for the
#: disk, the others hash (a thread reads a few blocks, then hashes them: one per core would leave the
#: cores idle during every read and the disk idle during every hash).
VERIFY_THREADS_PER_CORE = 2


class IntegrityError(RepositoryError):
    """A VHD that fails its structural or checksum check; ``problems`` lists every problem, each naming its file."""

    error_code = 'integrity_check_failed'

    def __init__(self, what: str, problems: list):
        self.problems = list(problems)
        self.files = sorted({problem.split(':', 1)[0] for problem in self.problems})
        super().__init__('%s: %s' % (what, '; '.join(self.problems)))


def sha256_file(storage: Storage, path: str) -> str:
    """SHA-256 of the file at a storage path, read in chunks."""
    digest = hashlib.sha256()
    with storage.open_file(path) as source:
        offset = 0
        while True:
            data = source.pread(HASH_CHUNK, offset)
            if not data:
                return digest.hexdigest()
            digest.update(data)
            offset += len(data)


def sha256_files(storage: Storage, paths: list) -> dict:
    """sha256 of several files, hashed in parallel threads (hashlib releases the GIL): path to digest or OSError."""
    def one(path):
        try:
            return sha256_file(storage, path)
        except OSError as error:
            return error

    if len(paths) <= 1:
        return {path: one(path) for path in paths}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1, MAX_HASH_THREADS)) as pool:
        return dict(zip(paths, pool.map(one, paths), strict=True))


def checksum_mismatch(shown: str, actual: str, expected: str) -> str:
    """The problem of a file whose sha256 is not the one recorded."""
    return '%s: sha256 %s differs from the %s recorded in the backup metadata (the file was changed or damaged)' % (shown, actual, expected)


def recorded_checksums(points: list) -> dict:
    """Relative VHD path to the sha256 our metadata recorded for it.

    A point's own VHDs win over entries another point carries for them (a merge updates the owner).
    """
    own, inherited = {}, {}
    for point in points:
        section = point.metadata.get(OWN_FIELD) or {}
        references = set(point.metadata['vhds'].values())
        for relative, digest in (section.get('sha256') or {}).items():
            if isinstance(digest, str):
                (own if relative in references else inherited)[relative] = digest
    inherited.update(own)
    return inherited


def checksum_problems(repo, vm_uuid: str, paths: list, checksums: dict) -> tuple[list, list, list]:
    """Hash the files (storage paths under the VM folder) that have a recorded sha256 and compare.

    Returns ``(problems, verified, unverified)``; the last two are relative to the VM folder
    (unverified files have no recorded checksum, e.g. written by Xen Orchestra).
    """
    relative_of = {path: relative_to_vm_folder(vm_uuid, path) for path in paths}
    expected_of = {path: checksums.get(relative_of[path]) for path in paths}
    digests = sha256_files(repo.storage, [path for path in paths if expected_of[path] is not None])
    problems, verified, unverified = [], [], []
    for path in paths:
        expected = expected_of[path]
        if expected is None:
            unverified.append(relative_of[path])
            continue
        actual = digests[path]
        if isinstance(actual, OSError):
            problems.append('%s: cannot be read (%s)' % (repo.describe(path), actual.strerror or actual))
        elif actual != expected:
            problems.append(checksum_mismatch(repo.describe(path), actual, expected))
        else:
            verified.append(relative_of[path])
    return problems, verified, unverified


def chain_structure_problems(repo, chain: list) -> list:
    """Structural problems of a newest-first chain of storage paths (every file and link), each naming its file."""
    return [str(problem) for problem in check_chain(chain, storage=repo.storage)]


def verify_chain(repo, vm_uuid: str, chain: list, checksums: dict, what: str) -> dict:
    """Check a newest-first chain of storage paths: structure and the sha256 of each file that has one recorded.

    Raises IntegrityError naming every bad file; returns ``{'verified': [...], 'unverified': [...]}``
    (relative to the VM folder).
    """
    problems = chain_structure_problems(repo, chain)
    found, verified, unverified = checksum_problems(repo, vm_uuid, list(chain), checksums)
    problems.extend(found)
    if problems:
        raise IntegrityError(what, problems)
    return {'verified': verified, 'unverified': unverified}


# -- block checksums ---------------------------------------------------------------------------------------------


def recorded_block_checksums(points: list) -> dict:
    """Relative VHD paths the points' metadata says were written with a block checksum file, to the hash it names."""
    recorded = {}
    for point in points:
        section = point.metadata.get(OWN_FIELD) or {}
        recorded.update((section.get('block_checksums') or {}).items())
    return recorded


@dataclasses.dataclass
class ChainIntegrity:
    """What :func:`check_chain_integrity` found for a chain (paths relative to the VM folder)."""

    verified: list  # block checksums whose structures (and blocks, where read) matched, or a legacy sha256 that matched
    unverified: list  # neither block checksums nor a sha256 (e.g. written by Xen Orchestra)
    legacy: list  # checked by their whole-file sha256 (written before block checksums)
    sums: dict  # storage path -> BlockSums, for readers to check each block they read (``blocksums.attach``)


def check_chain_integrity(repo, vm_uuid: str, chain: list, points: list, what: str, read_blocks=(), checked_sums: dict | None = None) -> ChainIntegrity:
    """Check a newest-first chain of storage paths before it is read or merged.

    Every file: structure and links; its block checksum file, when it has one: identity, footer,
    header and BAT digests (a few KiB whatever the disk size); the blocks of the files in
    ``read_blocks`` (storage paths, or ``True`` for every file) are all read and checked.  A file
    with only a legacy whole-file sha256 is hashed whole.  A file the metadata says was written with
    block checksums but has none is damage.  Raises :class:`IntegrityError` naming every problem.
    ``checked_sums`` (storage path to BlockSums) stands in for files checked but not recorded yet: a
    foreign merge found sound in check mode, which writes nothing.
    """
    problems = chain_structure_problems(repo, chain)
    checked_sums = checked_sums or {}
    with_blocks = recorded_block_checksums(points)
    legacy_sums = recorded_checksums(points)
    result = ChainIntegrity(verified=[], unverified=[], legacy=[], sums={})
    legacy_paths = []
    for path in chain:
        relative = relative_to_vm_folder(vm_uuid, path)
        try:
            sums = checked_sums[path] if path in checked_sums else BlockSums.load_for(repo.storage, path)
        except BlockSumsError as error:
            problems.append(str(error))
            continue
        if sums is None:
            if relative in legacy_sums:
                legacy_paths.append(path)
            elif relative in with_blocks:
                problems.append('%s: its block checksum file %s is missing (written with one: it was removed)'
                                % (repo.describe(path), posixpath.basename(sidecar_name(path))))
            else:
                result.unverified.append(relative)
            continue
        try:
            with VhdFile.open_in(repo.storage, path) as vhd:
                if foreign_merge.looks_merged_by_another_tool(vhd, sums) and foreign_merge.merged_members(repo.storage, path, vhd, sums):
                    # not damage, but not checked yet either: nothing reads it until it is
                    problems.append('%s: %s' % (repo.describe(path), foreign_merge.MERGED_BY_ANOTHER_TOOL))
                    continue
                found = structure_problems(vhd, sums)
                if not found and (read_blocks is True or path in read_blocks):
                    found = [str(problem) for problem in verify_blocks(vhd, sums)]
        except (VhdError, OSError) as error:
            found = [] if problems else [str(error)]  # structural errors were already named
        problems.extend(found)
        if not found:
            result.verified.append(relative)
            result.sums[path] = sums
    if legacy_paths:
        found, verified, _unverified = checksum_problems(repo, vm_uuid, legacy_paths, legacy_sums)
        problems.extend(found)
        result.legacy.extend(verified)
        result.verified.extend(verified)
    if problems:
        raise IntegrityError(what, problems)
    return result


# -- verifying a VM's whole history (backup_info verify) ---------------------------------------------------------


@dataclasses.dataclass
class VerifyReport:
    """What :func:`verify_vm_files` found (paths relative to the VM folder unless said otherwise)."""

    problems: list  # every problem as a sentence naming its file (and block), with the points that read it
    damaged_blocks: list  # {'file', 'block', 'virtual_offset', 'problem', 'points'}
    foreign_merges: list  # ForeignMerge.report() of each file another tool merged
    files: int  # files read
    verified: list
    unverified: list
    legacy: list


def _points_text(timestamps) -> str:
    timestamps = sorted(timestamps)
    if not timestamps:
        return 'no backup point reads it'
    return 'read by backup point%s %s' % ('s' if len(timestamps) > 1 else '', ', '.join(timestamps))


def block_readers(chains: dict, bats: dict, path: str, index: int) -> list:
    """Timestamps of the points that read block ``index`` of file ``path``.

    A point reads it when the file is in one of its chains and no newer file of that chain holds the
    block (an unreadable newer file counts as not holding it: the point may well need this block).
    """
    readers = set()
    for (timestamp, _vdi), chain in chains.items():
        if path not in chain:
            continue
        newer = chain[:chain.index(path)]
        if all(bats.get(member) is None or index >= len(bats[member]) or bats[member][index] == BAT_UNUSED for member in newer):
            readers.add(timestamp)
    return sorted(readers)


def file_readers(chains: dict, path: str) -> list:
    """Timestamps of the points whose chains hold ``path``."""
    return sorted({timestamp for (timestamp, _vdi), chain in chains.items() if path in chain})


def _bounded_map(pool, tasks, window: int):
    """Run ``tasks`` (an iterator of callables) on ``pool`` with at most ``window`` in flight; yield results in order.

    The tasks of a large repository are many (a few blocks each): they are made as the pool drains,
    so memory stays bounded whatever the disk sizes.
    """
    pending = collections.deque()
    for task in tasks:
        pending.append(pool.submit(task))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def verify_vm_files(repo, vm_uuid: str, points: list, chains: dict, threads: int | None = None) -> VerifyReport:
    """Read and check every file of a VM's chains, hashing on every core; name each damaged block and the points reading it.

    ``chains`` maps ``(timestamp, vdi uuid)`` to a newest-first list of storage paths.  Files with
    block checksums: structures, then every present block (blocks of all files are hashed in one pool
    of threads, so small files and large ones all keep every core busy).  A file another tool merged
    is checked block by block against the sidecars of the files it was merged from and listed in
    ``foreign_merges``, not as damage (verify is read-only: ``resolve_foreign_merges`` records it).
    Legacy files: their whole-file sha256.  Files with neither: unverified.
    """
    threads = threads or VERIFY_THREADS_PER_CORE * min(os.cpu_count() or 1, MAX_HASH_THREADS)
    files = sorted({path for chain in chains.values() for path in chain})
    with_blocks = recorded_block_checksums(points)
    legacy_sums = recorded_checksums(points)
    relative_of = {path: relative_to_vm_folder(vm_uuid, path) for path in files}
    report = VerifyReport(problems=[], damaged_blocks=[], foreign_merges=[], files=len(files), verified=[], unverified=[], legacy=[])
    file_problems: dict = {}  # storage path -> [sentence]
    block_problems: list = []  # (storage path, BlockProblem)
    opened: dict = {}  # storage path -> VhdFile

    def add_file_problem(path, sentence):
        file_problems.setdefault(path, []).append(sentence)

    def hash_task(path, vhd, sums, indices):
        def run():  # only the mismatches come back: a digest per block of a large disk would not fit the memory budget
            return [BlockProblem(vhd.path, index, index * vhd.block_size, 'does not match its recorded checksum (the block is damaged)')
                    for index, digest in hash_blocks(vhd, indices, threads=1, hash_name=sums.hash_name).items() if digest != sums.digest(index)], path
        return run

    def merge_task(path, vhd, sums):
        return lambda: foreign_merge.check_foreign_merge(repo.storage, path, vhd, sums, threads=1)

    def legacy_task(path):
        return lambda: ('legacy', path, sha256_file(repo.storage, path))

    def block_tasks(path, vhd, sums):
        bat = vhd.bat
        wanted = []
        for index in range(vhd.block_count):
            recorded = sums.digest(index)
            present = bat[index] != BAT_UNUSED
            if present and recorded == ABSENT:
                block_problems.append((path, BlockProblem(vhd.path, index, index * vhd.block_size, 'present in the file but recorded as absent')))
            elif not present and recorded != ABSENT:
                block_problems.append((path, BlockProblem(vhd.path, index, index * vhd.block_size, "recorded but absent from the file's BAT")))
            elif present and recorded != UNKNOWN:
                wanted.append(index)
                if len(wanted) == BLOCKS_PER_TASK:
                    yield hash_task(path, vhd, sums, wanted)
                    wanted = []
        if wanted:
            yield hash_task(path, vhd, sums, wanted)

    def tasks():
        """Check each file's sidecar and structures (in this thread) and yield the reading work for the pool."""
        for path in files:
            relative = relative_of[path]
            try:
                sums = BlockSums.load_for(repo.storage, path)
            except BlockSumsError as error:
                add_file_problem(path, str(error))
                continue
            if sums is None:
                if relative in legacy_sums:
                    yield legacy_task(path)
                elif relative in with_blocks:
                    add_file_problem(path, '%s: its block checksum file %s is missing (written with one: it was removed)'
                                     % (repo.describe(path), posixpath.basename(sidecar_name(path))))
                else:
                    report.unverified.append(relative)
                continue
            try:
                vhd = VhdFile.open_in(repo.storage, path)
            except (VhdError, OSError):
                continue  # the chain's structural check names it
            opened[path] = vhd
            try:
                if foreign_merge.looks_merged_by_another_tool(vhd, sums) and foreign_merge.merged_members(repo.storage, path, vhd, sums):
                    yield merge_task(path, vhd, sums)
                    continue
                found = structure_problems(vhd, sums)
            except (VhdError, OSError) as error:
                found = [str(error)]
            if found:
                for sentence in found:
                    add_file_problem(path, sentence)
                continue
            report.verified.append(relative)
            yield from block_tasks(path, vhd, sums)

    def run(task):
        try:
            return task()
        except (VhdError, OSError) as error:
            return error

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            for result in _bounded_map(pool, (functools.partial(run, task) for task in tasks()), 4 * threads):
                if isinstance(result, (VhdError, OSError)):
                    report.problems.append(str(result))
                elif isinstance(result, foreign_merge.ForeignMerge):
                    report.foreign_merges.append(result.report(relative_of[result.path]))
                    block_problems.extend((result.path, problem) for problem in result.problems if isinstance(problem, BlockProblem))
                    if result.ok:
                        report.verified.append(relative_of[result.path])
                elif result[0] == 'legacy':
                    _kind, path, actual = result
                    expected = legacy_sums[relative_of[path]]
                    if actual != expected:
                        add_file_problem(path, checksum_mismatch(repo.describe(path), actual, expected))
                    else:
                        report.legacy.append(relative_of[path])
                        report.verified.append(relative_of[path])
                else:
                    found, path = result
                    block_problems.extend((path, problem) for problem in found)
        bats = {path: vhd.bat for path, vhd in opened.items()}
        for path, problem in sorted(block_problems, key=lambda item: (item[0], item[1].index)):
            readers = block_readers(chains, bats, path, problem.index)
            report.damaged_blocks.append({'file': relative_of[path], 'block': problem.index, 'virtual_offset': problem.virtual_offset,
                                          'problem': problem.problem, 'points': readers})
            report.problems.append('%s; %s' % (problem, _points_text(readers)))
            if relative_of[path] in report.verified:
                report.verified.remove(relative_of[path])
    finally:
        for vhd in opened.values():
            vhd.close()
    for path, sentences in sorted(file_problems.items()):
        for sentence in sentences:
            report.problems.append('%s (%s)' % (sentence, _points_text(file_readers(chains, path)).replace('read by', 'in the chain of')))
    return report
