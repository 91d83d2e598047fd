# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Migration on first touch: VHDs written before block checksums get their sidecar when a merge is about to use them.

A file recorded with a whole-file ``sha256`` and without a sidecar is read once, front to back: the
same bytes feed the whole-file sha256 (checked against the recorded one) and the block checksums
(``blocksums.StreamSums``), each on its own thread while the next chunk is read.  A mismatch is
damage and refuses the migration naming the file.  The sidecar is written (atomically) before the
metadata moves the file's entry from ``sha256`` to ``block_checksums``; a crash between the two
leaves a sidecar and a legacy entry, which the next run moves without reading the file again.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import hashlib
import posixpath

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import IntegrityError, checksum_mismatch, recorded_checksums
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import relative_to_vm_folder
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import OWN_FIELD
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import HASH_NAME, BlockSums, StreamSums, sidecar_name

#: Bytes read per chunk; at most ``PIPELINE_DEPTH`` chunks are in flight (bounded memory).
CHUNK = 8 * 1024 * 1024
PIPELINE_DEPTH = 4


def hash_and_sum(storage, path: str) -> tuple[str, BlockSums]:
    """One sequential read of a VHD: its whole-file sha256 (hex) and its block checksums, hashed on two threads."""
    whole = hashlib.sha256()
    sums = StreamSums(storage.describe(path))
    pending = collections.deque()
    # One single-thread executor per hash keeps each hash's chunks in order; the two run at once
    # (hashlib releases the GIL), and the reads overlap them.
    with storage.open_file(path) as source, \
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as whole_worker, \
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as sums_worker:
        offset = 0
        while True:
            chunk = source.pread(CHUNK, offset)
            if not chunk:
                break
            offset += len(chunk)
            pending.append((whole_worker.submit(whole.update, chunk), sums_worker.submit(sums.update, chunk)))
            while len(pending) >= PIPELINE_DEPTH:
                for future in pending.popleft():
                    future.result()
        for futures in pending:
            for future in futures:
                future.result()
    return whole.hexdigest(), sums.finish()


def _legacy_owners(points: list, relative: str) -> list:
    return [point for point in points if relative in ((point.metadata.get(OWN_FIELD) or {}).get('sha256') or {})]


def migrate_chain(repo, vm_uuid: str, chain: list, points: list, what: str) -> list:
    """Give every file of ``chain`` (storage paths) recorded with a legacy sha256 its sidecar; return the relative paths migrated.

    Files with a sidecar already only have their metadata entry moved.  Raises
    :class:`IntegrityError` naming each file whose bytes are not the ones recorded (nothing is
    written for it).
    """
    legacy = recorded_checksums(points)
    migrated, problems = [], []
    for path in chain:
        relative = relative_to_vm_folder(vm_uuid, path)
        if relative not in legacy:
            continue
        if not repo.storage.exists(sidecar_name(path)):
            try:
                digest, sums = hash_and_sum(repo.storage, path)
            except (VhdError, OSError) as error:
                problems.append('%s: cannot be migrated to block checksums (%s)' % (repo.describe(path), error))
                continue
            if digest != legacy[relative]:
                problems.append(checksum_mismatch(repo.describe(path), digest, legacy[relative]))
                continue
            sums.save(repo.storage, sidecar_name(path))
            repo.storage.sync_dir(posixpath.dirname(path))
            migrated.append(relative)
        _move_entry(repo, points, relative)
    if problems:
        raise IntegrityError(what, problems)
    return migrated


def _move_entry(repo, points: list, relative: str) -> None:
    """Move ``relative`` from ``sha256`` to ``block_checksums`` in every point that records it."""
    for point in _legacy_owners(points, relative):
        metadata = copy.deepcopy(point.metadata)
        section = metadata[OWN_FIELD]
        del section['sha256'][relative]
        section.setdefault('block_checksums', {})[relative] = HASH_NAME
        repo.rewrite_metadata(point, metadata)


__all__ = ['hash_and_sum', 'migrate_chain']
