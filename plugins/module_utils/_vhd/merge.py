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
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import signal
import time

from .disk import VhdChain, VhdFile, pread_exact
from .structures import (
    BAT_UNUSED, FOOTER_SIZE, HEADER_SIZE, MAX_BAT_ENTRIES, SECTOR, Footer, ParentLocator, VhdError,
    bat_pack, bat_parse, bat_unused_flags, bitmap_size, bitmap_to_mask, mask_runs, mask_to_bitmap, used_indices,
)

#: Test hook: SIGKILL the merging process after this many write/fsync/rename operations.
KILL_ENV = "XAPI_DELTA_BACKUP_VHD_MERGE_KILL_AFTER"
BATCH_BLOCKS = 256
CHECKPOINT_SECONDS = 5.0


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

    @staticmethod
    def path_for(directory, parent_name):
        """State file path for a merge into ``parent_name``."""
        return os.path.join(directory, f".{parent_name}.merge.json")

    @classmethod
    def load(cls, path):
        """Read a state file; raise :class:`VhdError` when it is not a merge state."""
        try:
            with open(path, "rb") as handle:
                data = json.loads(handle.read(1 << 20))
            fields = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in fields})
        except (ValueError, TypeError) as error:
            raise VhdError(path, "merge state", "json", None, str(error)) from None


class _Io:
    """Mutating file operations, counted so tests can kill the process at a chosen one."""

    def __init__(self, hook=None):
        self.hook = hook
        limit = os.environ.get(KILL_ENV)
        self.kill_after = int(limit) if limit else None
        self.count = 0

    def tick(self, what):
        self.count += 1
        if self.hook is not None:
            self.hook(what, self.count)
        if self.kill_after is not None and self.count >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def pwrite(self, fd, data, offset):
        if isinstance(data, (list, tuple)):
            total = sum(len(part) for part in data)
            done = os.pwritev(fd, data, offset)
            if done != total:
                os.pwrite(fd, b"".join(bytes(part) for part in data)[done:], offset + done)
        else:
            view = memoryview(data)
            while view:
                view = view[os.pwrite(fd, view, offset + (len(data) - len(view))):]
        self.tick("write")

    def copy(self, src_fd, src_offset, dst_fd, dst_offset, length):
        """Copy file to file in the kernel (``copy_file_range``), falling back to read and write."""
        done = 0
        try:
            while done < length:
                copied = os.copy_file_range(src_fd, dst_fd, length - done, src_offset + done, dst_offset + done)
                if copied <= 0:
                    break
                done += copied
        except OSError:
            pass
        while done < length:
            data = os.pread(src_fd, min(length - done, 1 << 21), src_offset + done)
            if not data:
                raise VhdError(None, "block", "data", src_offset + done, "source file truncated during copy")
            os.pwrite(dst_fd, data, dst_offset + done)
            done += len(data)
        self.tick("write")

    def fsync(self, fd):
        os.fsync(fd)
        self.tick("fsync")

    def fsync_dir(self, directory):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.tick("fsync_dir")

    def replace(self, src, dst):
        os.replace(src, dst)
        self.tick("rename")

    def unlink(self, path):
        if os.path.exists(path):
            os.unlink(path)
        self.tick("unlink")

    def ftruncate(self, fd, size):
        os.ftruncate(fd, size)
        self.tick("truncate")

    def save_state(self, directory, state):
        path = MergeState.path_for(directory, state.parent)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(dataclasses.asdict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        self.replace(tmp, path)
        self.fsync_dir(directory)


def merge_chain(parent_path, child_paths, hook=None, progress=None):
    """Fold ``child_paths`` (oldest first, a run of deltas above ``parent_path``) into the parent.

    Returns the path of the result: the newest child's name, now holding the merged disk.  If an
    unfinished merge of the same files left its state file, that merge is resumed instead.
    ``hook(operation, count)`` is called after each mutating operation (tests); ``progress(done, total)``
    after each block.  Raises :class:`VhdError` when the files do not form a mergeable chain.
    """
    parent_path = os.path.abspath(os.fspath(parent_path))
    child_paths = [os.path.abspath(os.fspath(p)) for p in child_paths]
    if not child_paths:
        raise ValueError("nothing to merge")
    directory = os.path.dirname(parent_path)
    if any(os.path.dirname(p) != directory for p in child_paths):
        raise ValueError("a merge needs the parent and its children in one directory")
    existing = MergeState.path_for(directory, os.path.basename(parent_path))
    if os.path.exists(existing):
        state = MergeState.load(existing)
        if state.children != [os.path.basename(p) for p in child_paths]:
            raise VhdError(existing, "merge state", "children", None, f"an unfinished merge of {state.children} must be resumed first")
        return resume_merge(existing, hook=hook, progress=progress)
    with VhdChain.from_paths(list(reversed(child_paths)) + [parent_path], allow_missing_parent=True) as chain:
        parent = chain.members[-1]
        if parent.is_fixed:
            raise VhdError(parent.path, "footer", "disk_type", parent.footer_offset + 60, "cannot merge into a fixed disk")
        for child in chain.members[:-1]:
            if not child.is_differencing:
                raise VhdError(child.path, "footer", "disk_type", child.footer_offset + 60, "only differencing disks can be merged")
        state = MergeState(parent=os.path.basename(parent_path), children=[os.path.basename(p) for p in child_paths],
                           target_id=chain.newest.unique_id.hex(), old_size=parent.size)
    io = _Io(hook)
    io.save_state(directory, state)
    return _run(directory, state, io, progress)


def resume_merge(state_path, hook=None, progress=None):
    """Finish the merge recorded in ``state_path``; return the result's path, or ``None`` if it was stale.

    A state whose parent and result are both missing is deleted (as XO does).
    """
    state_path = os.path.abspath(os.fspath(state_path))
    directory = os.path.dirname(state_path)
    state = MergeState.load(state_path)
    io = _Io(hook)
    parent = os.path.join(directory, state.parent)
    if not os.path.exists(parent) and state.step != "rename":
        io.unlink(state_path)
        return None
    return _run(directory, state, io, progress)


def _run(directory, state, io, progress):
    parent_path = os.path.join(directory, state.parent)
    child_paths = [os.path.join(directory, name) for name in state.children]
    if state.step in ("prepare", "blocks"):
        with VhdChain.from_paths(list(reversed(child_paths)), allow_missing_parent=True) as children, \
                _Parent(parent_path, io) as parent:
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
        with VhdFile(child_paths[-1]) as target, _Parent(parent_path, io) as parent:
            _write_footer(parent, target.footer)
        state.step = "rename"
        io.save_state(directory, state)
    result = child_paths[-1]
    if os.path.exists(parent_path):
        io.replace(parent_path, result)
        io.fsync_dir(directory)
    elif not os.path.exists(result):
        raise VhdError(result, "merge state", "step", None, "merged file missing: refusing to delete the merged deltas")
    for path in child_paths[:-1]:
        io.unlink(path)
    io.fsync_dir(directory)
    io.unlink(MergeState.path_for(directory, state.parent))
    io.fsync_dir(directory)
    return result


class _Parent:
    """The merge target opened for writing, with its BAT managed in memory."""

    def __init__(self, path, io):
        self.io = io
        self.vhd = VhdFile(path, writable=True)
        self.fd = self.vhd.fd
        self.path = self.vhd.path
        self.header = self.vhd.header
        self.block_size = self.vhd.block_size
        self.bitmap_size = bitmap_size(self.block_size)
        self.span = self.bitmap_size + self.block_size
        self.full_bitmap = b"\xff" * self.bitmap_size
        self.load_bat()

    def load_bat(self):
        entries = self.header.max_table_entries
        if entries > MAX_BAT_ENTRIES:
            raise VhdError(self.path, "header", "max_table_entries", self.vhd.footer.data_offset + 28, "BAT too large to merge into")
        raw = pread_exact(self.fd, entries * 4, self.header.table_offset, self.path, "BAT", "entries")
        self.bat = bat_parse(raw, entries)
        self.unused = bytearray(bat_unused_flags(raw, entries))
        self._blocks_end = None

    def file_size(self):
        return os.fstat(self.fd).st_size

    def end_footer(self):
        size = self.file_size()
        return pread_exact(self.fd, FOOTER_SIZE, size - FOOTER_SIZE, self.path, "footer", "cookie")

    def data_end(self):
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

    def used(self):
        """Indices of present blocks (an ``array('I')``)."""
        return used_indices(bytes(self.unused))

    def set_entry(self, index, offset):
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

    def write_bat_range(self, first, last):
        """Write BAT entries ``first..last`` (inclusive), whole sectors."""
        start = first * 4 // SECTOR * SECTOR
        end = min((last * 4 + 4 + SECTOR - 1) // SECTOR * SECTOR, self.header.bat_bytes)
        raw = bat_pack(self.bat, self.header.bat_bytes)[start:end]
        self.io.pwrite(self.fd, raw, self.header.table_offset + start)

    def reserve(self, count):
        """Step 3a: make room for ``count`` new blocks at the data end; return the first slot's offset.

        The current end footer is written past the reserved room first (and fsynced), so the file
        stays valid while the room is filled; unused room is dropped when the final footer is written.
        """
        start = self.data_end()
        new_end = start + count * self.span
        if self.file_size() < new_end + FOOTER_SIZE:
            self.io.pwrite(self.fd, self.end_footer(), new_end)
            self.io.fsync(self.fd)
        return start

    def commit(self, placed):
        """Steps 3b-3c: make the blocks written into reserved slots durable, then point the BAT at them."""
        if not placed:
            return
        self.io.fsync(self.fd)
        for index, offset in placed:
            self.set_entry(index, offset)
        indices = [index for index, _offset in placed]
        self.write_bat_range(min(indices), max(indices))
        self.io.fsync(self.fd)

    def close(self):
        self.vhd.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _prepare(parent, children, old_size):
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
        bitmap = pread_exact(parent.fd, parent.bitmap_size, offset, parent.path, f"block[{index}]", "bitmap")
        mask = bitmap_to_mask(bitmap, spb) & ((1 << first_sector) - 1)
        parent.io.pwrite(parent.fd, mask_to_bitmap(mask, parent.bitmap_size), offset)
        parent.io.pwrite(parent.fd, bytes(block_size - first_sector * SECTOR), offset + parent.bitmap_size + first_sector * SECTOR)
    if wrote:
        parent.io.fsync(parent.fd)


def _grow_bat(parent, needed):
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
        parent.io.pwrite(parent.fd, header.pack(), parent.vhd.footer.data_offset)
        parent.io.fsync(parent.fd)
    in_the_way = [i for i in parent.used()
                  if parent.bat[i] * SECTOR < new_end and parent.bat[i] * SECTOR + parent.span > header.table_offset]
    for index in in_the_way:
        offset = parent.bat[index] * SECTOR
        raw = pread_exact(parent.fd, parent.span, offset, parent.path, f"block[{index}]", "data")
        start = max(parent.data_end(), new_end)
        if parent.file_size() < start + parent.span + FOOTER_SIZE:
            parent.io.pwrite(parent.fd, parent.end_footer(), start + parent.span)
            parent.io.fsync(parent.fd)
        parent.io.pwrite(parent.fd, raw, start)
        parent.io.fsync(parent.fd)
        parent.set_entry(index, start)
        parent.write_bat_range(index, index)
        parent.io.fsync(parent.fd)
    if parent.file_size() < new_end + FOOTER_SIZE:
        # The grown table would cover the end footer (no block lies past the old table): copy the
        # footer past the new table end first, so the file has a valid end footer at every instant.
        parent.io.pwrite(parent.fd, parent.end_footer(), new_end)
        parent.io.fsync(parent.fd)
    old_entries = header.max_table_entries
    fill = bat_pack([BAT_UNUSED] * (needed - old_entries))
    parent.io.pwrite(parent.fd, fill.ljust(new_bytes - old_entries * 4, b"\xff"), header.table_offset + old_entries * 4)
    parent.io.fsync(parent.fd)
    header.max_table_entries = needed
    parent.io.pwrite(parent.fd, header.pack()[:SECTOR], parent.vhd.footer.data_offset)
    parent.io.fsync(parent.fd)
    parent.load_bat()


def _merge_blocks(parent, children, state, directory, progress):
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
                parent.io.fsync(parent.fd)
            dirty = False
            state.next_block = index + 1
            parent.io.save_state(directory, state)
            last_checkpoint = time.monotonic()
            slots_left = 0
    if placed:
        parent.commit(placed)  # its fsyncs also cover the in-place updates before them
    elif dirty:
        parent.io.fsync(parent.fd)


def _write_block(parent, offset, bitmap, data):
    """Write bitmap and data at ``offset``; ``data`` is bytes or a ``(member, data_offset)`` source to copy."""
    if isinstance(data, tuple):
        member, source_offset = data
        parent.io.copy(member.fd, source_offset, parent.fd, offset + parent.bitmap_size, parent.block_size)
        parent.io.pwrite(parent.fd, bitmap, offset)
    else:
        parent.io.pwrite(parent.fd, [bitmap, data], offset)


def _update_block(parent, index, mask, bitmap, data, full):
    """Step 4: write the provided sectors of a block the parent already has, then OR the bitmap."""
    offset = parent.bat[index] * SECTOR
    if mask == full:
        _write_block(parent, offset, bitmap, data)
        return
    view = memoryview(data)
    data_offset = offset + parent.bitmap_size
    for first, count in mask_runs(mask):
        parent.io.pwrite(parent.fd, view[first * SECTOR:(first + count) * SECTOR], data_offset + first * SECTOR)
    old = pread_exact(parent.fd, parent.bitmap_size, offset, parent.path, f"block[{index}]", "bitmap")
    merged = bitmap_to_mask(old, parent.block_size // SECTOR) | mask
    parent.io.pwrite(parent.fd, mask_to_bitmap(merged, parent.bitmap_size), offset)


def _write_footer(parent, target_footer):
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
    parent.io.pwrite(parent.fd, raw, end)
    if size > end + FOOTER_SIZE:
        # The footer inside the file must be durable before the tail holding the current one goes.
        parent.io.fsync(parent.fd)
        parent.io.ftruncate(parent.fd, end + FOOTER_SIZE)
    # Either copy may reach the disk first: readers trust the end footer and accept either identity.
    parent.io.pwrite(parent.fd, raw, 0)
    parent.io.fsync(parent.fd)


__all__ = ["MergeState", "merge_chain", "resume_merge", "KILL_ENV"]
