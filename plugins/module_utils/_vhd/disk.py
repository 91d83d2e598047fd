# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The disk abstraction: one VHD file (:class:`VhdFile`) and a chain of them read as one disk (:class:`VhdChain`).

Both expose the same block-level view: a disk of ``size`` bytes cut into ``block_size`` blocks,
``read_block(index)`` returning the block's bytes (or ``None`` when it holds nothing) and
``allocated_blocks()`` listing the blocks that may hold data.  Writers, the merge and the
checker are compositions of these calls.
"""

from __future__ import annotations

import array
import os

from .structures import (
    BAT_UNUSED, DEFAULT_BLOCK_SIZE, DISK_DIFFERENCING, DISK_DYNAMIC, DISK_FIXED, FOOTER_SIZE, HEADER_SIZE,
    MAX_BAT_ENTRIES, SECTOR, Footer, Header, VhdError, and_flags, bat_parse, bat_unused_flags, bitmap_size, bitmap_to_mask,
    mask_runs, used_indices,
)

MAX_CHAIN_LENGTH = 64


def pread_exact(fd, length, offset, path, structure, field):
    """Read exactly ``length`` bytes at ``offset`` or raise :class:`VhdError` (truncated file)."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            raise VhdError(path, structure, field, offset, f"file truncated: wanted {length} bytes, got {got}")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def sector_range_mask(size, first_sector, sectors):
    """Mask of the sectors of ``[first_sector, first_sector + sectors)`` that lie below ``size`` bytes."""
    count = min(max(size // SECTOR - first_sector, 0), sectors)
    return (1 << count) - 1


class VhdFile:
    """One VHD file (fixed, dynamic or differencing), opened and validated.

    The footer and dynamic header are parsed at open; the BAT is read lazily and bounded by
    the file size and by ``ceil(current_size / block_size)``.  Use as a context manager.
    """

    def __init__(self, path, writable=False):
        self.path = os.fspath(path)
        self.writable = writable
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            self._load()
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise
        self._bat = None
        self._unused_flags = None

    @classmethod
    def open(cls, path, writable=False):
        """Open and validate ``path``; raise :class:`VhdError` if it is not a well-formed VHD."""
        return cls(path, writable=writable)

    def _load(self):
        path = self.path
        self.file_size = os.fstat(self.fd).st_size
        if self.file_size < FOOTER_SIZE:
            raise VhdError(path, "footer", "length", 0, f"file of {self.file_size} bytes is too short for a footer")
        offset = self.file_size - FOOTER_SIZE
        tail = pread_exact(self.fd, FOOTER_SIZE, offset, path, "footer", "cookie")
        if not tail.startswith(b"conectix") and tail[1:9] == b"conectix":
            # Some old Microsoft tools wrote a 511-byte footer.
            offset += 1
            tail = tail[1:] + b"\x00"
        self.footer_offset = offset
        self.footer = Footer.parse(tail, path, offset)
        self.head_footer = None
        self.footer_copies_differ = False
        self.header = None
        footer = self.footer
        if footer.disk_type == DISK_FIXED:
            if footer.current_size > offset:
                raise VhdError(path, "footer", "current_size", offset + 48,
                               f"fixed disk of {footer.current_size} bytes does not fit a {self.file_size}-byte file")
            self.block_size = DEFAULT_BLOCK_SIZE
            self.bitmap_size = 0
            self.set_geometry()
            return
        if offset < 3 * SECTOR:
            raise VhdError(path, "footer", "length", offset, "file too short for a dynamic VHD")
        head = pread_exact(self.fd, FOOTER_SIZE, 0, path, "footer copy", "cookie")
        self.head_footer = Footer.parse(head, path, 0)
        # The end footer is authoritative (as in blktap); differing copies are reported by the checker.
        self.footer_copies_differ = head != tail[:FOOTER_SIZE]
        if footer.data_offset + HEADER_SIZE > offset:
            raise VhdError(path, "footer", "data_offset", offset + 16, f"header offset {footer.data_offset} past end of file")
        raw = pread_exact(self.fd, HEADER_SIZE, footer.data_offset, path, "header", "cookie")
        self.header = header = Header.parse(raw, path, footer.data_offset)
        self.block_size = header.block_size
        self.bitmap_size = bitmap_size(header.block_size)
        self.set_geometry()
        if self.block_count > MAX_BAT_ENTRIES:
            raise VhdError(path, "header", "block_size", footer.data_offset + 32,
                           f"{self.block_count} blocks of {header.block_size} bytes exceed the supported {MAX_BAT_ENTRIES}")
        if header.max_table_entries < self.block_count:
            raise VhdError(path, "header", "max_table_entries", footer.data_offset + 28,
                           f"{header.max_table_entries} entries cannot map {self.block_count} blocks")
        bat_end = header.table_offset + self.block_count * 4
        if bat_end > offset:
            raise VhdError(path, "header", "table_offset", footer.data_offset + 16,
                           f"BAT at {header.table_offset} ({self.block_count} entries) runs past end of file")
        if footer.disk_type == DISK_DIFFERENCING and not header.parent_name and header.parent_unique_id == bytes(16):
            raise VhdError(path, "header", "parent_unique_id", footer.data_offset + 40, "differencing disk without parent")

    def set_geometry(self):
        """Derive size, sectors per block and block count (a fixed disk may be re-cut to a chain's block size)."""
        self.size = self.footer.current_size
        self.sectors_per_block = self.block_size // SECTOR
        self.block_count = (self.size + self.block_size - 1) // self.block_size

    # -- properties -------------------------------------------------------------------------------------------

    @property
    def disk_type(self):
        """Footer disk type: 2 fixed, 3 dynamic, 4 differencing."""
        return self.footer.disk_type

    @property
    def is_fixed(self):
        """True for a fixed disk."""
        return self.footer.disk_type == DISK_FIXED

    @property
    def is_dynamic(self):
        """True for a dynamic (sparse, parentless) disk."""
        return self.footer.disk_type == DISK_DYNAMIC

    @property
    def is_differencing(self):
        """True for a differencing disk."""
        return self.footer.disk_type == DISK_DIFFERENCING

    @property
    def unique_id(self):
        """The footer unique id (16 bytes)."""
        return self.footer.unique_id

    @property
    def bat(self):
        """BAT values (bitmap sector numbers or ``0xFFFFFFFF``) for the ``block_count`` blocks of the disk."""
        if self._bat is None:
            if self.is_fixed:
                raise VhdError(self.path, "BAT", "table_offset", None, "fixed disk has no BAT")
            raw = pread_exact(self.fd, self.block_count * 4, self.header.table_offset, self.path, "BAT", "entries")
            self._bat = bat_parse(raw, self.block_count)
            self._unused_flags = bat_unused_flags(raw, self.block_count)
        return self._bat

    def unused_flags(self):
        """One byte per block, ``0xFF`` when the block is absent (see :func:`~.structures.bat_unused_flags`)."""
        if self.is_fixed:
            return bytes(self.block_count)
        if self._bat is None:
            self.bat  # pylint: disable=pointless-statement  # noqa: B018 (reading bat loads _unused_flags)
        return self._unused_flags

    def invalidate(self):
        """Forget the cached BAT (after another writer changed the file)."""
        self._bat = None
        self._unused_flags = None

    def full_mask(self):
        """Mask with every sector of a block set."""
        return (1 << self.sectors_per_block) - 1

    def block_range_mask(self, index):
        """Mask of the sectors of block ``index`` that lie within this file's virtual size."""
        return sector_range_mask(self.size, index * self.sectors_per_block, self.sectors_per_block)

    # -- blocks -----------------------------------------------------------------------------------------------

    def block_offset(self, index):
        """Byte offset of block ``index``'s bitmap (data follows it), or ``None`` when the block is absent.

        For a fixed disk, the byte offset of the block's data.  Raises :class:`VhdError` for an
        entry pointing past the end of the file.
        """
        if index < 0 or index >= self.block_count:
            return None
        if self.is_fixed:
            return index * self.block_size
        entry = self.bat[index]
        if entry == BAT_UNUSED:
            return None
        offset = entry * SECTOR
        if offset + self.bitmap_size + self.block_size > self.footer_offset or offset < SECTOR:
            raise VhdError(self.path, "BAT", f"entry[{index}]", self.header.table_offset + 4 * index,
                           f"block at {offset} runs past the footer at {self.footer_offset}")
        return offset

    def allocated_blocks(self):
        """Indices of the blocks present in this file (every block for a fixed disk), ascending."""
        if self.is_fixed:
            return array.array("I", range(self.block_count))
        return used_indices(self.unused_flags())

    def read_bitmap(self, index):
        """The raw sector bitmap of present block ``index``."""
        offset = self.block_offset(index)
        if offset is None:
            return None
        return pread_exact(self.fd, self.bitmap_size, offset, self.path, f"block[{index}]", "bitmap")

    def read_block_raw(self, index):
        """``(sector_mask, data)`` of present block ``index`` (mask limited to the virtual size), or ``None``.

        ``data`` is the block's full ``block_size`` bytes as a memoryview; sectors whose bit is clear
        hold unspecified bytes.
        """
        offset = self.block_offset(index)
        if offset is None:
            return None
        limit = self.block_range_mask(index)
        if self.is_fixed:
            length = min(self.block_size, self.size - offset)
            data = pread_exact(self.fd, length, offset, self.path, f"block[{index}]", "data")
            if length < self.block_size:
                data += bytes(self.block_size - length)
            return limit, memoryview(data)
        raw = pread_exact(self.fd, self.bitmap_size + self.block_size, offset, self.path, f"block[{index}]", "data")
        bitmap = raw[:self.bitmap_size]
        if bitmap.count(0xFF) == self.bitmap_size:
            mask = limit
        else:
            mask = bitmap_to_mask(bitmap, self.sectors_per_block) & limit
        return mask, memoryview(raw)[self.bitmap_size:]

    def parent_path(self):
        """Path of the parent named in the header, resolved relative to this file's directory (``None`` if none)."""
        if not self.is_differencing or not self.header.parent_name:
            return None
        name = self.header.parent_name.replace("\\", "/")
        if len(name) > 1 and name[1] == ":":
            name = name[2:]
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(self.path)), name))

    def close(self):
        """Close the file descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"VhdFile({self.path!r}, type={self.disk_type}, size={self.size})"


class VhdChain:
    """Newest-first VHD files read as one logical disk, with exact VHD semantics.

    A sector comes from the newest member whose block is present and whose bitmap bit is set;
    a dynamic or fixed member ends the search (its clear bits read as zeros).  The disk's size is
    the newest member's; a member's bytes past its own size are never used (they read as zeros
    unless a newer member wrote them).  With ``allow_missing_parent`` the oldest member may be a
    differencing file whose parent is absent: its unset sectors then read as zeros.
    """

    def __init__(self, members, verify=True, allow_missing_parent=False):
        if not members:
            raise ValueError("a chain needs at least one VHD file")
        self.members = list(members)
        self.newest = self.members[0]
        self.size = self.newest.size
        self.block_size = self.newest.block_size
        self.sectors_per_block = self.block_size // SECTOR
        self.block_count = (self.size + self.block_size - 1) // self.block_size
        for member in self.members:
            if member.is_fixed and member.block_size != self.block_size:
                member.block_size = self.block_size
                member.set_geometry()
        if verify:
            problems = chain_link_problems(self.members, allow_missing_parent)
            if problems:
                raise problems[0].as_error()

    @classmethod
    def open(cls, path, max_length=MAX_CHAIN_LENGTH):
        """Open ``path`` and follow parent names (relative to each child) down to a dynamic or fixed file."""
        members = []
        seen = set()
        try:
            current = os.path.abspath(os.fspath(path))
            while True:
                if current in seen or len(members) >= max_length:
                    raise VhdError(current, "header", "parent_name", None, "parent chain loops or is too long")
                seen.add(current)
                try:
                    member = VhdFile(current)
                except FileNotFoundError:
                    if not members:
                        raise
                    raise VhdError(members[-1].path, "header", "parent_name", members[-1].footer.data_offset + 64,
                                   f"parent {current} not found") from None
                members.append(member)
                parent = member.parent_path()
                if parent is None:
                    break
                current = parent
            return cls(members)
        except BaseException:
            for member in members:
                member.close()
            raise

    @classmethod
    def from_paths(cls, paths, verify=True, allow_missing_parent=False):
        """Open the given files (newest first) as a chain."""
        members = []
        try:
            for path in paths:
                members.append(VhdFile(path))
            return cls(members, verify=verify, allow_missing_parent=allow_missing_parent)
        except BaseException:
            for member in members:
                member.close()
            raise

    def allocated_blocks(self):
        """Ascending indices (an ``array('I')``) of logical blocks that any member holds, past-the-end blocks excluded."""
        unused = b"\xff" * self.block_count
        for member in self.members:
            unused = and_flags(unused, member.unused_flags()[:self.block_count])
            if not member.is_differencing:
                break
        return used_indices(unused)

    def read_block_masked(self, index):
        """``(data, mask)`` of logical block ``index``: ``data`` is ``block_size`` bytes (bytes-like) and ``mask``
        the sectors some member provided; ``(None, 0)`` when no member provides any sector."""
        spb = self.sectors_per_block
        first = index * spb
        need = sector_range_mask(self.size, first, spb)
        if index < 0 or not need:
            return None, 0
        buf = None
        provided = 0
        for member in self.members:
            raw = member.read_block_raw(index)
            if raw is None:
                if member.is_differencing:
                    continue
                break
            mask, data = raw
            take = need & mask
            if take:
                if buf is None and take == (1 << spb) - 1:
                    # Common case: the newest member holding the block holds all of it.
                    return data, take
                if buf is None:
                    buf = bytearray(self.block_size)
                for start, count in mask_runs(take):
                    buf[start * SECTOR:(start + count) * SECTOR] = data[start * SECTOR:(start + count) * SECTOR]
                provided |= take
                need &= ~take
            if not member.is_differencing or not need:
                break
        if buf is None:
            return None, 0
        return buf, provided

    def block_source(self, index):
        """``(member, data_offset)`` when one member provides every sector of logical block ``index``, else ``None``.

        Lets a consumer copy the whole block file-to-file (``os.copy_file_range``) without reading it.
        """
        spb = self.sectors_per_block
        full = (1 << spb) - 1
        if sector_range_mask(self.size, index * spb, spb) != full:
            return None
        for member in self.members:
            offset = member.block_offset(index)
            if offset is None:
                if member.is_differencing:
                    continue
                return None
            if member.block_range_mask(index) != full:
                return None
            if member.is_fixed:
                return member, offset
            bitmap = member.read_bitmap(index)
            if bitmap.count(0xFF) == len(bitmap) or bitmap_to_mask(bitmap, spb) == full:
                return member, offset + member.bitmap_size
            return None
        return None

    def read_block(self, index):
        """Bytes of logical block ``index`` (``block_size`` long, zeros past the end) or ``None`` if all zeros."""
        return self.read_block_masked(index)[0]

    def read(self, offset, length):
        """Read ``length`` bytes of the logical disk at ``offset`` (clipped to the disk's size)."""
        end = min(offset + length, self.size)
        out = bytearray()
        pos = offset
        while pos < end:
            index = pos // self.block_size
            within = pos - index * self.block_size
            take = min(self.block_size - within, end - pos)
            data = self.read_block(index)
            if data is None:
                out += bytes(take)
            else:
                out += data[within:within + take]
            pos += take
        return bytes(out)

    def iter_blocks(self):
        """Yield ``(index, data)`` for every allocated logical block, ascending (``data`` may be ``None``: zeros)."""
        for index in self.allocated_blocks():
            yield index, self.read_block(index)

    def export_stream(self, unique_id=None, timestamp=None):
        """The whole chain as ONE dynamic VHD stream (a :class:`~.writer.VhdStream`, length known up front)."""
        from .writer import VhdStream  # pylint: disable=import-outside-toplevel

        blocks = self.allocated_blocks()
        return VhdStream(virtual_size=self.size, block_indices=blocks, read_block=lambda i: (None, self.read_block(i)),
                         unique_id=unique_id if unique_id is not None else self.newest.unique_id,
                         timestamp=timestamp, block_size=self.block_size)

    def close(self):
        """Close every member."""
        for member in self.members:
            member.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def chain_link_problems(members, allow_missing_parent=False, report_absorbed=False):
    """Problems (``Problem`` objects) in the links of newest-first ``members``: types, identities, sizes, block sizes.

    A parent whose unique id equals a newer member's id is accepted: it has absorbed that
    member during an interrupted merge (see merge.py) and already holds its content.  With
    ``report_absorbed`` (the checker) such a link is reported so the merge gets resumed.
    """
    from .check import Problem  # pylint: disable=import-outside-toplevel

    problems = []
    newer_ids = set()
    for position, child in enumerate(members):
        newer_ids.add(child.unique_id)
        if position == len(members) - 1:
            if child.is_differencing and not allow_missing_parent:
                problems.append(Problem(child.path, "footer", "disk_type", 60, "chain ends with a differencing disk (parent missing)"))
            break
        parent = members[position + 1]
        if not child.is_differencing:
            problems.append(Problem(child.path, "footer", "disk_type", child.footer_offset + 60,
                                    f"{child.path} has a parent in the chain but is not a differencing disk"))
            continue
        if parent.unique_id in newer_ids:
            # The parent absorbed a newer member (interrupted merge): it already holds that member's content.
            if report_absorbed:
                problems.append(Problem(parent.path, "footer", "unique_id", parent.footer_offset + 68,
                                        "carries the id of a newer chain member: an interrupted merge must be resumed"))
            continue
        if child.header.parent_unique_id != parent.unique_id:
            problems.append(Problem(child.path, "header", "parent_unique_id", child.footer.data_offset + 40,
                                    f"parent id {child.header.parent_unique_id.hex()} does not match {parent.path} footer id "
                                    f"{parent.unique_id.hex()}"))
        if not parent.is_fixed and parent.block_size != child.block_size:
            problems.append(Problem(child.path, "header", "block_size", child.footer.data_offset + 32,
                                    f"block size {child.block_size} differs from parent's {parent.block_size}"))
        if child.size < parent.size:
            problems.append(Problem(child.path, "footer", "current_size", child.footer_offset + 48,
                                    f"child of {child.size} bytes is smaller than its parent {parent.path} ({parent.size} bytes)"))
    return problems


__all__ = ["VhdFile", "VhdChain", "chain_link_problems", "pread_exact", "sector_range_mask", "MAX_CHAIN_LENGTH"]
