# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Crash-safe, resumable, in-place merge of a run of deltas into their parent (XO direction).

``merge_chain(parent, [d1, ..., dk])`` folds the differencing files d1..dk (oldest first, each the
child of the previous, d1 the child of ``parent``) into ``parent``.  The result is dk's point in
time, carries dk's identity (unique id, sizes, geometry, timestamp) and takes dk's file name; the
points of ``parent`` and d1..dk-1 are retired.  Only blocks the deltas hold are touched.

Why every kept point stays readable at any instant
--------------------------------------------------
A kept point is dk or any newer file stacked on it; it reads the parent only for sectors that no
delta d1..dk provides.  The merge writes into the parent only sectors some delta provides (the
union mask U of a block), so what kept points read from the parent never changes, provided the
parent file stays structurally valid at every instant.  That is what the write ordering ensures:

prepare (step ``prepare``; each sub-step idempotent; for a grown disk the state then moves to
``blocks``, because clearing past the old end must not be redone once blocks land there):
  1. grow the BAT if dk needs more entries: move blocks in the way to the end (as in 3a-3c below),
     write the new entries as ``0xFFFFFFFF``, fsync, then rewrite the header's first sector with
     the larger ``max_table_entries``, fsync;
  2. mark BAT entries past the parent's old end unused and zero the old last block past the old
     end (bitmap bits cleared, data zeroed), fsync.  Those bytes are invisible to every point.
blocks (step ``blocks``; ``next_block`` checkpoints progress):
  3. for a block the parent lacks, in batches: (a) write the current end footer at the end of the
     extended file first, fsync - the file is valid and the gap reads as a hole; (b) write bitmap
     and data into the gap, fsync; (c) write the BAT entries, fsync.  A crash leaves either an
     unused gap or a fully written block.
  4. for a block the parent has: write the U sectors' data, then OR U into its bitmap.  Kept points
     never read those sectors from the parent, so no ordering is needed; a checkpoint fsyncs before
     ``next_block`` is saved.
footer (not saved as a step: a crash here resumes the idempotent blocks step, then this one):
  5. write the footer with dk's identity at the final data end (if unused room follows it: fsync,
     then truncate the room away), write the copy at offset 0, fsync.  Either copy may land first:
     readers trust the end footer, and accept a parent whose id is a newer chain member's (it has
     absorbed that member) as well as the old identity.
rename (step ``rename``):
  6. ``rename(parent, dk)`` atomically replaces dk, fsync the directory, unlink d1..dk-1, fsync,
     remove the state file, fsync.

The state file ``.<parent name>.merge.json`` (next to the files) is written atomically (temporary
file, fsync, rename, directory fsync) at the start, at checkpoints and before the rename step;
:func:`resume_merge` redoes the recorded step, which is idempotent, and so reaches the same result.

Block checksums (``blocksums.py``): when every delta has a sidecar, the result's is computed before
the first write (O(changed): whole delta blocks take the delta's entry, other touched blocks are
hashed as they will be written), saved as ``.<parent name>.merge.blocksums`` before the state that
names it, given the result's structure digests at the footer step, and renamed over the newest
delta's sidecar at the rename step, where the retired files' sidecars are removed; see
``docs/vhd-engine.md``.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import json
import os
import posixpath
import signal
import time
from collections.abc import Callable, Sequence

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import RandomAccessFile, Storage, split_local_path

from .blocksums import (
    ABSENT, DIGEST_SIZE, UNKNOWN, BlockSums, attach, check_read_block, compute_sums, read_structures, sidecar_name,
)
from .disk import VhdChain, VhdFile, pread_exact
from .structures import (
    BAT_UNUSED, FOOTER_SIZE, HEADER_SIZE, MAX_BAT_ENTRIES, SECTOR, Footer, ParentLocator, VhdError,
    bat_pack, bat_parse, bat_unused_flags, bitmap_size, bitmap_to_mask, mask_runs, mask_to_bitmap, used_indices,
)

#: Test hook: SIGKILL the merging process after this many write/fsync/rename operations.
KILL_ENV = "XAPI_DELTA_BACKUP_VHD_MERGE_KILL_AFTER"
BATCH_BLOCKS = 256
CHECKPOINT_SECONDS = 5.0
#: Largest state file read (a state is well under a kilobyte; anything bigger is not ours).
MAX_STATE_BYTES = 1 << 20

Hook = Callable[[str, int], None]
Progress = Callable[[int, int], None]


@dataclasses.dataclass
class MergeState:
    """Persistent merge progress, saved as ``.<parent name>.merge.json`` in the files' directory."""

    parent: str
    children: list
    target_id: str
    old_size: int
    step: str = "prepare"
    next_block: int = 0
    merged_bytes: int = 0
    version: int = 1
    #: Name (in the files' folder) of the result's block checksums, written before the first block
    #: (``.<parent name>.merge.blocksums``); ``None`` when a delta has none, so the result has none.
    sums: str | None = None

    @staticmethod
    def path_for(directory: str, parent_name: str) -> str:
        """State file path for a merge into ``parent_name`` (``directory``: a local folder or a folder in a storage)."""
        return posixpath.join(directory, ".%s.merge.json" % parent_name)

    @staticmethod
    def sums_name_for(parent_name: str) -> str:
        """File name of the result's block checksums while the merge runs (hidden: never taken for a sidecar).

        Xen Orchestra lists a VDI folder for disks and ``.<name>.merge.json`` states only
        (xen-orchestra ``@xen-orchestra/backup-archive/src/RemoteDiskLineage.mts``, ``init``: ``isDisk``
        and ``MERGE_STATE_FILE_RE``), so its clean-up neither opens nor removes this file.
        """
        return ".%s.merge.blocksums" % parent_name

    @classmethod
    def load(cls, path, storage: Storage | None = None) -> 'MergeState':
        """Read a state file (a local path, or a name in ``storage``); raise :class:`VhdError` when it is not a merge state."""
        if storage is None:
            storage, path = split_local_path(path)
        try:
            with storage.open_file(path) as handle:
                data = json.loads(handle.pread(MAX_STATE_BYTES, 0))
            fields = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in fields})
        except (ValueError, TypeError, AttributeError) as error:
            raise VhdError(storage.describe(path), "merge state", "json", None, str(error)) from None


class _Io:
    """Mutating file operations on one storage, counted so tests can kill the process at a chosen one."""

    def __init__(self, storage: Storage, hook: Hook | None = None):
        self.storage = storage
        self.hook = hook
        limit = os.environ.get(KILL_ENV)
        self.kill_after = int(limit) if limit else None
        self.count = 0

    def tick(self, what: str) -> None:
        self.count += 1
        if self.hook is not None:
            self.hook(what, self.count)
        if self.kill_after is not None and self.count >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def pwrite(self, handle: RandomAccessFile, data, offset: int) -> None:
        """Write ``data`` (bytes-like, or a list of them written back to back) at ``offset``: one operation."""
        for part in data if isinstance(data, (list, tuple)) else (data,):
            handle.pwrite(part, offset)
            offset += len(part)
        self.tick("write")

    def copy(self, source: RandomAccessFile, source_offset: int, target: RandomAccessFile, target_offset: int, length: int) -> None:
        """Copy file to file, in the backend when it can (``copy_file_range`` locally)."""
        target.copy_range_from(source, length, source_offset, target_offset)
        self.tick("write")

    def fsync(self, handle: RandomAccessFile) -> None:
        handle.sync()
        self.tick("fsync")

    def fsync_dir(self, directory: str) -> None:
        self.storage.sync_dir(directory)
        self.tick("fsync_dir")

    def replace(self, source: str, target: str) -> None:
        self.storage.rename(source, target)
        self.tick("rename")

    def unlink(self, name: str) -> None:
        self.storage.remove_if_present(name)
        self.tick("unlink")

    def ftruncate(self, handle: RandomAccessFile, size: int) -> None:
        handle.truncate(size)
        self.tick("truncate")

    def save_state(self, directory: str, state: MergeState) -> None:
        name = MergeState.path_for(directory, state.parent)
        # Written first under one fixed name that does not end like a state file: a crash while
        # writing it leaves nothing a repository scan takes for an unfinished merge, and the next
        # save replaces it (a storage's atomic writer would leave a new stray name per crash).
        temporary = name + ".tmp"
        self.storage.remove_if_present(temporary)
        self.storage.create_exclusive(temporary, json.dumps(dataclasses.asdict(state)).encode("utf-8"))
        self.replace(temporary, name)
        self.fsync_dir(directory)

    def save_sums(self, name: str, sums: BlockSums) -> None:
        """Write block checksums atomically as ``name`` (fixed temporary name, fsynced, renamed).

        The folder is not fsynced here: the state save that always follows fsyncs the same folder.
        Should a crash make the state durable and not this rename, the footer step finds no file
        and rebuilds the checksums from the result (slow, but right).
        """
        temporary = name + ".tmp"
        self.storage.remove_if_present(temporary)
        self.storage.create_exclusive(temporary, sums.pack())  # fsyncs the data
        self.tick("write")
        self.replace(temporary, name)


def merge_chain(parent_path, child_paths: Sequence, hook: Hook | None = None, progress: Progress | None = None,
                storage: Storage | None = None) -> str:
    """Fold ``child_paths`` (oldest first, a run of deltas above ``parent_path``) into the parent.

    Paths are local paths, or names in ``storage`` when given.  Returns the path of the result (a
    name in ``storage`` when given): the newest child's name, now holding the merged disk.  If an
    unfinished merge of the same files left its state file, that merge is resumed instead.
    ``hook(operation, count)`` is called after each mutating operation (tests); ``progress(done, total)``
    after each block.  Raises :class:`VhdError` when the files do not form a mergeable chain.
    """
    if storage is not None:
        return _merge(storage, parent_path, list(child_paths), hook, progress)
    storage, parent_name = split_local_path(parent_path)
    child_names = []
    for path in child_paths:
        child_storage, name = split_local_path(path)
        if child_storage.root != storage.root:
            raise ValueError("a merge needs the parent and its children in one directory")
        child_names.append(name)
    return storage.describe(_merge(storage, parent_name, child_names, hook, progress))


def _merge(storage: Storage, parent_name: str, child_names: list, hook: Hook | None, progress: Progress | None) -> str:
    if not child_names:
        raise ValueError("nothing to merge")
    directory = posixpath.dirname(parent_name)
    if any(posixpath.dirname(name) != directory for name in child_names):
        raise ValueError("a merge needs the parent and its children in one directory")
    existing = MergeState.path_for(directory, posixpath.basename(parent_name))
    if storage.exists(existing):
        state = MergeState.load(existing, storage)
        if state.children != [posixpath.basename(name) for name in child_names]:
            raise VhdError(storage.describe(existing), "merge state", "children", None,
                           "an unfinished merge of %s must be resumed first" % state.children)
        return _resume(storage, existing, hook, progress)
    with VhdChain.from_paths(list(reversed(child_names)) + [parent_name], allow_missing_parent=True, storage=storage) as chain:
        parent = chain.members[-1]
        if parent.is_fixed:
            raise VhdError(parent.path, "footer", "disk_type", parent.footer_offset + 60, "cannot merge into a fixed disk")
        for child in chain.members[:-1]:
            if not child.is_differencing:
                raise VhdError(child.path, "footer", "disk_type", child.footer_offset + 60, "only differencing disks can be merged")
        state = MergeState(parent=posixpath.basename(parent_name), children=[posixpath.basename(name) for name in child_names],
                           target_id=chain.newest.unique_id.hex(), old_size=parent.size)
        sums = _result_sums(storage, parent_name, child_names, chain)
    io = _Io(storage, hook)
    if sums is not None:
        # Saved before the state that names it: a crash between leaves only a hidden stray file,
        # which the next merge overwrites (or a repository clean-up removes).
        state.sums = MergeState.sums_name_for(state.parent)
        io.save_sums(posixpath.join(directory, state.sums), sums)
    io.save_state(directory, state)
    return _run(storage, directory, state, io, progress)


def resume_merge(state_path, hook: Hook | None = None, progress: Progress | None = None, storage: Storage | None = None) -> str | None:
    """Finish the merge recorded in ``state_path`` (a local path, or a name in ``storage``); return the result's
    path (a name in ``storage`` when given), or ``None`` if the state was stale.

    A state whose parent and result are both missing is deleted (as XO does).
    """
    if storage is not None:
        return _resume(storage, state_path, hook, progress)
    storage, state_name = split_local_path(state_path)
    result = _resume(storage, state_name, hook, progress)
    return None if result is None else storage.describe(result)


def _resume(storage: Storage, state_name: str, hook: Hook | None, progress: Progress | None) -> str | None:
    directory = posixpath.dirname(state_name)
    state = MergeState.load(state_name, storage)
    io = _Io(storage, hook)
    if not storage.exists(posixpath.join(directory, state.parent)) and state.step != "rename":
        io.unlink(state_name)
        if state.sums:
            io.unlink(posixpath.join(directory, state.sums))
        return None
    return _run(storage, directory, state, io, progress)


def _run(storage: Storage, directory: str, state: MergeState, io: _Io, progress: Progress | None) -> str:
    parent_name = posixpath.join(directory, state.parent)
    child_names = [posixpath.join(directory, name) for name in state.children]
    if state.step in ("prepare", "blocks"):
        with VhdChain.from_paths(list(reversed(child_names)), allow_missing_parent=True, storage=storage) as children, \
                _Parent(storage, parent_name, io) as parent:
            _attach_children_sums(storage, children, child_names)
            if state.step == "prepare":
                _prepare(parent, children, state.old_size)
                if children.size != state.old_size:
                    # Preparing a grown disk is not repeatable once blocks land past the old end.
                    state.step = "blocks"
                    io.save_state(directory, state)
            _merge_blocks(parent, children, state, directory, progress)
        # No state save here: redoing the (idempotent) blocks step after a crash in the footer
        # step is correct, and saves two fsyncs on every merge.
        state.step = "footer"
    if state.step == "footer":
        with VhdFile.open_in(storage, child_names[-1]) as target, _Parent(storage, parent_name, io) as parent:
            _write_footer(parent, target.footer)
        if state.sums:
            _finish_sums(storage, io, parent_name, posixpath.join(directory, state.sums))
        state.step = "rename"
        io.save_state(directory, state)
    result = child_names[-1]
    if storage.exists(parent_name):
        io.replace(parent_name, result)
    elif not storage.exists(result):
        raise VhdError(storage.describe(result), "merge state", "step", None, "merged file missing: refusing to delete the merged deltas")
    # The result's checksums replace the newest delta's.  One folder fsync covers both renames: if
    # only one of them survives a crash, the resumed rename step does the other.
    if state.sums:
        if storage.exists(posixpath.join(directory, state.sums)):
            io.replace(posixpath.join(directory, state.sums), sidecar_name(result))
    else:
        io.unlink(sidecar_name(result))  # describes the delta, not the merged file
    io.fsync_dir(directory)  # before any delta is unlinked
    io.unlink(sidecar_name(parent_name))
    for name in child_names[:-1]:
        io.unlink(name)
        io.unlink(sidecar_name(name))
    io.fsync_dir(directory)
    io.unlink(MergeState.path_for(directory, state.parent))
    io.fsync_dir(directory)
    return result


# -- block checksums of the result ---------------------------------------------------------------------------


def _attach_children_sums(storage: Storage, children: VhdChain, child_names: list) -> list:
    """Check every delta block the merge reads through Python against the delta's sidecar; returns the sidecars
    (newest first, ``None`` for a delta without one).  Whole blocks copied in the kernel are not read here:
    the caller verifies the deltas' blocks before merging (retention does, in O(changed))."""
    sums = []
    for member, name in zip(children.members, reversed(child_names), strict=True):
        member_sums = BlockSums.load_for(storage, name)
        if member_sums is not None:
            attach(member, member_sums)
        sums.append(member_sums)
    return sums


def _result_sums(storage: Storage, parent_name: str, child_names: list, chain: VhdChain) -> BlockSums | None:
    """The block checksums the merged file will have, computed before any byte of the parent changes.

    Entries are per BAT index, so blocks moved by BAT growth keep theirs.  A block one delta
    provides whole takes that delta's entry (its stored span is the one the merge writes); any other
    block the deltas touch is hashed as the merge will write it, from the parent's block (checked
    against the parent's entry on the way) and the deltas' sectors.  Cost: the deltas' blocks, never
    the parent's untouched ones.  Without a sidecar for some delta, the result gets none (``None``);
    a parent without one (written by another tool) gives ``UNKNOWN`` for its blocks the merge keeps.
    """
    parent = chain.members[-1]
    children = VhdChain(chain.members[:-1], allow_missing_parent=True)
    member_sums = _attach_children_sums(storage, children, child_names)
    # One hash per checksum file: deltas hashed differently (written by control nodes with and without
    # the blake3 package) give no result sidecar, as a delta without one does; a parent hashed
    # differently gives UNKNOWN for its kept blocks, as a parent without one does.
    if any(sums is None for sums in member_sums) or len({sums.hash_name for sums in member_sums}) > 1:
        return None
    hash_name = member_sums[0].hash_name
    parent_sums = BlockSums.load_for(storage, parent_name)
    if parent_sums is not None and (parent_sums.unique_id != parent.unique_id or parent_sums.block_size != parent.block_size):
        raise VhdError(parent.path, "block checksums", "unique_id", None,
                       "its block checksums are of another file (unique id %s): refusing to merge" % parent_sums.unique_id.hex())
    if parent_sums is not None and parent_sums.hash_name != hash_name:
        parent_sums = None
    block_size = parent.block_size
    spb = block_size // SECTOR
    full = (1 << spb) - 1
    bitmap_bytes = bitmap_size(block_size)
    full_bitmap = b"\xff" * bitmap_bytes
    old_blocks = (parent.size + block_size - 1) // block_size
    entries = max(parent.header.max_table_entries, (children.size + block_size - 1) // block_size)
    result = BlockSums(block_size=block_size, entries=entries, disk_type=parent.disk_type, unique_id=chain.newest.unique_id,
                       parent_unique_id=parent.header.parent_unique_id, hash_name=hash_name)
    bat = parent.bat
    present = [index for index in range(min(len(bat), old_blocks)) if bat[index] != BAT_UNUSED]
    if parent_sums is not None:
        kept = min(parent_sums.entries, old_blocks)
        result.digests[:kept * DIGEST_SIZE] = parent_sums.digests[:kept * DIGEST_SIZE]
    else:
        for index in present:
            result.set(index, UNKNOWN)
    # Entries past the old end are dropped by the prepare step (their bytes were never visible).

    def parent_span(index: int) -> bytearray | None:
        """The parent's stored block as the prepare step leaves it, checked against its entry; None when unknown."""
        recorded = result.digest(index)
        if recorded == UNKNOWN:
            return None
        span = bytearray(pread_exact(parent.file, bitmap_bytes + block_size, bat[index] * SECTOR, parent.path, "block[%d]" % index, "data"))
        check_read_block(parent, parent_sums, index, span)
        if index == old_blocks - 1 and parent.size % block_size and children.size > parent.size:
            first = (parent.size - index * block_size) // SECTOR
            mask = bitmap_to_mask(bytes(span[:bitmap_bytes]), spb) & ((1 << first) - 1)
            span[:bitmap_bytes] = mask_to_bitmap(mask, bitmap_bytes)
            span[bitmap_bytes + first * SECTOR:] = bytes(block_size - first * SECTOR)
        return span

    parent_present = set(present)
    touched = set()
    for index in children.allocated_blocks():
        source = children.block_source(index)
        if source is not None:
            layer = source[0]
            touched.add(index)
            recorded = member_sums[children.members.index(layer)].digest(index)
            if recorded not in (ABSENT, UNKNOWN) and layer.read_bitmap(index) == full_bitmap:
                result.set(index, recorded)  # the delta's stored span is byte for byte what the merge writes
            else:
                raw = layer.read_block_raw(index)  # checked against the delta's entry (attached)
                result.set(index, result.block_digest(full_bitmap + bytes(raw[1])))
            continue
        data, mask = children.read_block_masked(index)
        if not mask:
            continue
        touched.add(index)
        if mask == full:
            result.set(index, result.block_digest(full_bitmap + bytes(data)))
        elif index in parent_present:
            span = parent_span(index)
            if span is None:
                continue  # kept UNKNOWN: part of the block is the parent's, never checked
            merged = bitmap_to_mask(bytes(span[:bitmap_bytes]), spb) | mask
            span[:bitmap_bytes] = mask_to_bitmap(merged, bitmap_bytes)
            view = memoryview(data)
            for first, count in mask_runs(mask):
                span[bitmap_bytes + first * SECTOR:bitmap_bytes + (first + count) * SECTOR] = view[first * SECTOR:(first + count) * SECTOR]
            result.set(index, result.block_digest(span))
        else:
            result.set(index, result.block_digest(mask_to_bitmap(mask, bitmap_bytes) + bytes(data)))
    last = old_blocks - 1
    if last in parent_present and last not in touched and parent.size % block_size and children.size > parent.size:
        span = parent_span(last)  # the prepare step clears its tail past the old end
        if span is not None:
            result.set(last, result.block_digest(span))
    return result


def _finish_sums(storage: Storage, io: _Io, parent_name: str, sums_name: str) -> None:
    """Footer step: the result's structure digests and identity, read from the final file (a few KiB), saved atomically."""
    with VhdFile.open_in(storage, parent_name) as merged:
        if storage.exists(sums_name):
            sums = BlockSums.load(storage, sums_name)
            sums.grow(merged.header.max_table_entries)
            sums.set_structures(*read_structures(merged))
        else:
            # Removed by hand while the merge ran: rebuild from the result (reads it whole, once).
            sums = compute_sums(merged)
        sums.unique_id = merged.unique_id
        sums.parent_unique_id = merged.header.parent_unique_id
        sums.disk_type = merged.disk_type
    io.save_sums(sums_name, sums)


class _Parent:
    """The merge target opened for writing, with its BAT managed in memory."""

    def __init__(self, storage: Storage, name: str, io: _Io):
        self.io = io
        self.vhd = VhdFile.open_in(storage, name, writable=True)
        self.file = self.vhd.file
        self.path = self.vhd.path
        self.header = self.vhd.header
        self.block_size = self.vhd.block_size
        self.bitmap_size = bitmap_size(self.block_size)
        self.span = self.bitmap_size + self.block_size
        self.full_bitmap = b"\xff" * self.bitmap_size
        self.load_bat()

    def load_bat(self) -> None:
        entries = self.header.max_table_entries
        if entries > MAX_BAT_ENTRIES:
            raise VhdError(self.path, "header", "max_table_entries", self.vhd.footer.data_offset + 28, "BAT too large to merge into")
        raw = pread_exact(self.file, entries * 4, self.header.table_offset, self.path, "BAT", "entries")
        self.bat = bat_parse(raw, entries)
        self.unused = bytearray(bat_unused_flags(raw, entries))
        self._blocks_end = None

    def file_size(self) -> int:
        return self.file.size()

    def end_footer(self) -> bytes:
        size = self.file_size()
        return pread_exact(self.file, FOOTER_SIZE, size - FOOTER_SIZE, self.path, "footer", "cookie")

    def data_end(self) -> int:
        """First sector-aligned offset after the header, BAT, locator data and every block the BAT points at."""
        end = max(self.vhd.footer.data_offset + HEADER_SIZE, self.header.table_offset + self.header.bat_bytes)
        for loc in self.header.locators:
            if loc.platform_code != bytes(4) and loc.data_offset:
                end = max(end, loc.data_offset + max(loc.data_space, loc.data_length, SECTOR))
        if self._blocks_end is None:
            last = max((self.bat[index] for index in self.used()), default=None)
            self._blocks_end = 0 if last is None else last * SECTOR + self.span
        end = max(end, self._blocks_end)
        return (end + SECTOR - 1) // SECTOR * SECTOR

    def used(self) -> array.array:
        """Indices of present blocks (an ``array('I')``)."""
        return used_indices(bytes(self.unused))

    def set_entry(self, index: int, offset: int | None) -> None:
        """Point BAT entry ``index`` at ``offset`` (``None``: unused) in memory; see :meth:`write_bat_range`."""
        if offset is None:
            self.bat[index] = BAT_UNUSED
            self.unused[index] = 0xFF
            self._blocks_end = None
        else:
            self.bat[index] = offset // SECTOR
            self.unused[index] = 0
            if self._blocks_end is not None:
                self._blocks_end = max(self._blocks_end, offset + self.span)

    def write_bat_range(self, first: int, last: int) -> None:
        """Write BAT entries ``first..last`` (inclusive), whole sectors."""
        start = first * 4 // SECTOR * SECTOR
        end = min((last * 4 + 4 + SECTOR - 1) // SECTOR * SECTOR, self.header.bat_bytes)
        raw = bat_pack(self.bat, self.header.bat_bytes)[start:end]
        self.io.pwrite(self.file, raw, self.header.table_offset + start)

    def reserve(self, count: int) -> int:
        """Step 3a: make room for ``count`` new blocks at the data end; return the first slot's offset.

        The current end footer is written past the reserved room first (and fsynced), so the file
        stays valid while the room is filled; unused room is dropped when the final footer is written.
        """
        start = self.data_end()
        new_end = start + count * self.span
        if self.file_size() < new_end + FOOTER_SIZE:
            self.io.pwrite(self.file, self.end_footer(), new_end)
            self.io.fsync(self.file)
        return start

    def commit(self, placed: list[tuple[int, int]]) -> None:
        """Steps 3b-3c: make the blocks written into reserved slots durable, then point the BAT at them."""
        if not placed:
            return
        self.io.fsync(self.file)
        for index, offset in placed:
            self.set_entry(index, offset)
        indices = [index for index, _offset in placed]
        self.write_bat_range(min(indices), max(indices))
        self.io.fsync(self.file)

    def close(self) -> None:
        self.vhd.close()

    def __enter__(self) -> '_Parent':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _prepare(parent: _Parent, children: VhdChain, old_size: int) -> None:
    """Steps 1 and 2: BAT capacity for the target's size, then clear everything past the old end."""
    block_size = parent.block_size
    if children.block_size != block_size:
        raise VhdError(children.newest.path, "header", "block_size", None, "block size differs from the parent's")
    needed = (children.size + block_size - 1) // block_size
    grown = needed > parent.header.max_table_entries
    if grown:
        _grow_bat(parent, needed)
    old_blocks = (old_size + block_size - 1) // block_size
    stale = [i for i in parent.used() if i >= old_blocks]
    if stale:
        for index in stale:
            parent.set_entry(index, None)
        parent.write_bat_range(stale[0], stale[-1])
    wrote = grown or bool(stale)
    if old_size % block_size and children.size > old_size and parent.bat[old_blocks - 1] != BAT_UNUSED:
        wrote = True
        index = old_blocks - 1
        offset = parent.bat[index] * SECTOR
        first_sector = (old_size - index * block_size) // SECTOR
        spb = block_size // SECTOR
        bitmap = pread_exact(parent.file, parent.bitmap_size, offset, parent.path, "block[%d]" % index, "bitmap")
        mask = bitmap_to_mask(bitmap, spb) & ((1 << first_sector) - 1)
        parent.io.pwrite(parent.file, mask_to_bitmap(mask, parent.bitmap_size), offset)
        parent.io.pwrite(parent.file, bytes(block_size - first_sector * SECTOR), offset + parent.bitmap_size + first_sector * SECTOR)
    if wrote:
        parent.io.fsync(parent.file)


def _grow_bat(parent: _Parent, needed: int) -> None:
    """Step 1: make room for ``needed`` BAT entries after the table offset, then raise ``max_table_entries``."""
    header = parent.header
    new_bytes = (needed * 4 + SECTOR - 1) // SECTOR * SECTOR
    new_end = header.table_offset + new_bytes
    changed_locators = False
    for number, loc in enumerate(header.locators):
        if loc.platform_code != bytes(4) and loc.data_offset < new_end and loc.data_offset + max(loc.data_space, loc.data_length) > header.table_offset:
            # Locator data in the way: drop the locator (chains resolve by parent name).
            header.locators[number] = ParentLocator()
            changed_locators = True
    if changed_locators:
        parent.io.pwrite(parent.file, header.pack(), parent.vhd.footer.data_offset)
        parent.io.fsync(parent.file)
    in_the_way = [i for i in parent.used()
                  if parent.bat[i] * SECTOR < new_end and parent.bat[i] * SECTOR + parent.span > header.table_offset]
    for index in in_the_way:
        offset = parent.bat[index] * SECTOR
        raw = pread_exact(parent.file, parent.span, offset, parent.path, "block[%d]" % index, "data")
        start = max(parent.data_end(), new_end)
        if parent.file_size() < start + parent.span + FOOTER_SIZE:
            parent.io.pwrite(parent.file, parent.end_footer(), start + parent.span)
            parent.io.fsync(parent.file)
        parent.io.pwrite(parent.file, raw, start)
        parent.io.fsync(parent.file)
        parent.set_entry(index, start)
        parent.write_bat_range(index, index)
        parent.io.fsync(parent.file)
    if parent.file_size() < new_end + FOOTER_SIZE:
        # The grown table would cover the end footer (no block lies past the old table): copy the
        # footer past the new table end first, so the file has a valid end footer at every instant.
        parent.io.pwrite(parent.file, parent.end_footer(), new_end)
        parent.io.fsync(parent.file)
    old_entries = header.max_table_entries
    fill = bat_pack([BAT_UNUSED] * (needed - old_entries))
    parent.io.pwrite(parent.file, fill.ljust(new_bytes - old_entries * 4, b"\xff"), header.table_offset + old_entries * 4)
    parent.io.fsync(parent.file)
    header.max_table_entries = needed
    parent.io.pwrite(parent.file, header.pack()[:SECTOR], parent.vhd.footer.data_offset)
    parent.io.fsync(parent.file)
    parent.load_bat()


def _merge_blocks(parent: _Parent, children: VhdChain, state: MergeState, directory: str, progress: Progress | None) -> None:
    """Steps 3 and 4, from ``state.next_block``; saves checkpoints.

    New blocks are written straight into slots reserved ``BATCH_BLOCKS`` at a time, so memory
    holds one block whatever the disk size.
    """
    spb = parent.block_size // SECTOR
    full = (1 << spb) - 1
    blocks = children.allocated_blocks()
    blocks = blocks[bisect.bisect_left(blocks, state.next_block):]
    candidates_left = sum(1 for i in blocks if parent.bat[i] == BAT_UNUSED)
    placed = []
    slot = slots_left = 0
    dirty = False
    last_checkpoint = time.monotonic()
    for done, index in enumerate(blocks, 1):
        # Whole blocks (every XAPI/XO delta block) are copied file to file in the kernel; others
        # are assembled sector run by sector run from the chain.
        source = children.block_source(index)
        if source is not None:
            data, mask = source, full
        else:
            data, mask = children.read_block_masked(index)
        is_new = parent.bat[index] == BAT_UNUSED
        if mask:
            bitmap = parent.full_bitmap if mask == full else mask_to_bitmap(mask, parent.bitmap_size)
            if is_new:
                if not slots_left:
                    parent.commit(placed)
                    placed = []
                    slots_left = min(BATCH_BLOCKS, candidates_left)
                    slot = parent.reserve(slots_left)
                _write_block(parent, slot, bitmap, data)
                placed.append((index, slot))
                slot += parent.span
                slots_left -= 1
            else:
                _update_block(parent, index, mask, bitmap, data, full)
                dirty = True
            state.merged_bytes += mask.bit_count() * SECTOR
        if is_new:
            candidates_left -= 1
        if progress is not None:
            progress(done, len(blocks))
        if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
            if placed:
                parent.commit(placed)
                placed = []
            elif dirty:
                parent.io.fsync(parent.file)
            dirty = False
            state.next_block = index + 1
            parent.io.save_state(directory, state)
            last_checkpoint = time.monotonic()
            slots_left = 0
    if placed:
        parent.commit(placed)  # its fsyncs also cover the in-place updates before them
    elif dirty:
        parent.io.fsync(parent.file)


def _write_block(parent: _Parent, offset: int, bitmap: bytes, data) -> None:
    """Write bitmap and data at ``offset``; ``data`` is bytes or a ``(member, data_offset)`` source to copy."""
    if isinstance(data, tuple):
        member, source_offset = data
        parent.io.copy(member.file, source_offset, parent.file, offset + parent.bitmap_size, parent.block_size)
        parent.io.pwrite(parent.file, bitmap, offset)
    else:
        parent.io.pwrite(parent.file, [bitmap, data], offset)


def _update_block(parent: _Parent, index: int, mask: int, bitmap: bytes, data, full: int) -> None:
    """Step 4: write the provided sectors of a block the parent already has, then OR the bitmap."""
    offset = parent.bat[index] * SECTOR
    if mask == full:
        _write_block(parent, offset, bitmap, data)
        return
    view = memoryview(data)
    data_offset = offset + parent.bitmap_size
    for first, count in mask_runs(mask):
        parent.io.pwrite(parent.file, view[first * SECTOR:(first + count) * SECTOR], data_offset + first * SECTOR)
    old = pread_exact(parent.file, parent.bitmap_size, offset, parent.path, "block[%d]" % index, "bitmap")
    merged = bitmap_to_mask(old, parent.block_size // SECTOR) | mask
    parent.io.pwrite(parent.file, mask_to_bitmap(merged, parent.bitmap_size), offset)


def _write_footer(parent: _Parent, target_footer: Footer) -> None:
    """Step 5: the parent takes the target's identity and sizes; end footer first, then the copy at 0."""
    footer = Footer.parse(parent.end_footer(), parent.path, parent.file_size() - FOOTER_SIZE)
    footer = dataclasses.replace(footer, current_size=target_footer.current_size, original_size=target_footer.original_size,
                                 geometry=target_footer.geometry, timestamp=target_footer.timestamp,
                                 unique_id=target_footer.unique_id)
    if footer.creator_app == b"tap\x00" and footer.creator_version >= 0x00010002:
        # A tdbatmap we did not maintain (and may have overwritten growing the BAT) must be ignored by blktap.
        footer.creator_version = 0x00010001
    raw = footer.pack()
    end = parent.data_end()
    size = parent.file_size()
    parent.io.pwrite(parent.file, raw, end)
    if size > end + FOOTER_SIZE:
        # The footer inside the file must be durable before the tail holding the current one goes.
        parent.io.fsync(parent.file)
        parent.io.ftruncate(parent.file, end + FOOTER_SIZE)
    # Either copy may reach the disk first: readers trust the end footer and accept either identity.
    parent.io.pwrite(parent.file, raw, 0)
    parent.io.fsync(parent.file)


__all__ = ["MergeState", "merge_chain", "resume_merge", "KILL_ENV"]
