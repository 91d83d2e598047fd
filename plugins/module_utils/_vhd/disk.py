# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The disk abstraction: :class:`Disk`, with one VHD file (:class:`VhdFile`) and a chain of them (:class:`VhdChain`) as disks.

A disk is ``size`` bytes cut into ``block_size`` blocks: ``allocated_blocks()`` lists the blocks that
may hold data, ``read_block(index)`` returns a block's bytes (or ``None`` when it reads as zeros).
A chain is a disk like a file is (as vhd-lib's ``VhdSynthetic``): both read through the same
``layers()`` walk, so writers, the merge and the checker take any disk.  Files are read through a
:class:`~.._storage.Storage`; the path-taking forms use the local folder of the path.
"""

from __future__ import annotations

import abc
import array
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import (
    LocalStorage, RandomAccessFile, Storage, split_local_path,
)

from .problems import chain_link_problems
from .structures import (
    BAT_UNUSED, DEFAULT_BLOCK_SIZE, DISK_DIFFERENCING, DISK_DYNAMIC, DISK_FIXED, FOOTER_SIZE, HEADER_SIZE,
    MAX_BAT_ENTRIES, SECTOR, Footer, Header, VhdError, and_flags, bat_parse, bat_unused_flags, bitmap_size, bitmap_to_mask,
    mask_runs, used_indices,
)

MAX_CHAIN_LENGTH = 64

#: Where a file is: a storage and the file's path relative to the storage's root.
Location = tuple[Storage, str]


def pread_exact(handle: RandomAccessFile, length: int, offset: int, path: str, structure: str, field: str) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` or raise :class:`VhdError` (truncated file)."""
    data = handle.pread(length, offset)
    if len(data) != length:
        raise VhdError(path, structure, field, offset, "file truncated: wanted %d bytes, got %d" % (length, len(data)))
    return data


def sector_range_mask(size: int, first_sector: int, sectors: int) -> int:
    """Mask of the sectors of ``[first_sector, first_sector + sectors)`` that lie below ``size`` bytes."""
    count = min(max(size // SECTOR - first_sector, 0), sectors)
    return (1 << count) - 1


class Disk(abc.ABC):
    """A virtual disk read block by block: one VHD file or a chain of them.

    Reads walk ``layers()`` newest first: a sector comes from the newest layer whose block is present
    and whose bitmap bit is set; a dynamic or fixed layer ends the walk (its clear bits read as
    zeros), and so does the oldest layer (a differencing one without its parent reads zeros there).
    """

    size: int
    block_size: int
    sectors_per_block: int
    block_count: int

    @abc.abstractmethod
    def layers(self) -> list['VhdFile']:
        """The files this disk reads, newest first."""

    @property
    @abc.abstractmethod
    def unique_id(self) -> bytes:
        """The disk's identity (the newest file's footer unique id, 16 bytes)."""

    @property
    def parent_unique_id(self) -> bytes | None:
        """Identity of the parent this disk needs to be complete, ``None`` when it stands alone."""
        oldest = self.layers()[-1]
        return oldest.header.parent_unique_id if oldest.is_differencing else None

    def allocated_blocks(self) -> array.array:
        """Ascending indices (an ``array('I')``) of blocks that any layer holds, past-the-end blocks excluded."""
        unused = b"\xff" * self.block_count
        for layer in self.layers():
            unused = and_flags(unused, layer.unused_flags()[:self.block_count])
            if not layer.is_differencing:
                break
        return used_indices(unused)

    def read_block_masked(self, index: int) -> tuple[bytes | bytearray | memoryview | None, int]:
        """``(data, mask)`` of block ``index``: ``data`` is ``block_size`` bytes (bytes-like) and ``mask``
        the sectors some layer provided; ``(None, 0)`` when no layer provides any sector."""
        spb = self.sectors_per_block
        need = sector_range_mask(self.size, index * spb, spb)
        if index < 0 or not need:
            return None, 0
        buf = None
        provided = 0
        for layer in self.layers():
            raw = layer.read_block_raw(index)
            if raw is None:
                if layer.is_differencing:
                    continue
                break
            mask, data = raw
            take = need & mask
            if take:
                if buf is None and take == (1 << spb) - 1:
                    # Common case: the newest layer holding the block holds all of it.
                    return data, take
                if buf is None:
                    buf = bytearray(self.block_size)
                for start, count in mask_runs(take):
                    buf[start * SECTOR:(start + count) * SECTOR] = data[start * SECTOR:(start + count) * SECTOR]
                provided |= take
                need &= ~take
            if not layer.is_differencing or not need:
                break
        if buf is None:
            return None, 0
        return buf, provided

    def block_source(self, index: int) -> tuple['VhdFile', int] | None:
        """``(layer, data_offset)`` when one layer provides every sector of block ``index``, else ``None``.

        Lets a consumer copy the whole block file to file (``copy_range_from``) without reading it.
        """
        spb = self.sectors_per_block
        full = (1 << spb) - 1
        if sector_range_mask(self.size, index * spb, spb) != full:
            return None
        for layer in self.layers():
            offset = layer.block_offset(index)
            if offset is None:
                if layer.is_differencing:
                    continue
                return None
            if layer.block_range_mask(index) != full:
                return None
            if layer.is_fixed:
                return layer, offset
            bitmap = layer.read_bitmap(index)
            if bitmap.count(0xFF) == len(bitmap) or bitmap_to_mask(bitmap, spb) == full:
                return layer, offset + layer.bitmap_size
            return None
        return None

    def read_block(self, index: int) -> bytes | bytearray | memoryview | None:
        """Bytes of block ``index`` (``block_size`` long, zeros past the end) or ``None`` if all zeros."""
        return self.read_block_masked(index)[0]

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes of the disk at ``offset`` (clipped to the disk's size)."""
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

    def iter_blocks(self) -> Iterator[tuple[int, bytes | bytearray | memoryview | None]]:
        """Yield ``(index, data)`` for every allocated block, ascending (``data`` may be ``None``: zeros)."""
        for index in self.allocated_blocks():
            yield index, self.read_block(index)

    @abc.abstractmethod
    def close(self) -> None:
        """Close the files."""

    def __enter__(self) -> 'Disk':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VhdFile(Disk):
    """One VHD file (fixed, dynamic or differencing), opened and validated.

    The footer and dynamic header are parsed at open; the BAT is read lazily and bounded by
    the file size and by ``ceil(current_size / block_size)``.  Use as a context manager.
    ``path`` is how to show the file (its local path for a local storage); ``storage`` and
    ``name`` are where it is.
    """

    def __init__(self, path, writable: bool = False, storage: Storage | None = None):
        if storage is None:
            storage, name = split_local_path(path)
        else:
            name = path
        self.storage = storage
        self.name = name
        self.path = storage.describe(name)
        self.writable = writable
        self.file = storage.open_file(name, writable=writable)
        self.closed = False
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        self._bat: array.array | None = None
        self._unused_flags: bytes | None = None
        # ``verify_block(index, span)`` checks each block read (bitmap + data) against its recorded
        # checksum when set (``blocksums.attach``): readers then verify exactly what they read.
        self.verify_block: Callable[[int, memoryview], None] | None = None

    @classmethod
    def open(cls, path, writable: bool = False) -> 'VhdFile':
        """Open and validate the local file ``path``; raise :class:`VhdError` if it is not a well-formed VHD."""
        return cls(path, writable=writable)

    @classmethod
    def open_in(cls, storage: Storage, name: str, writable: bool = False) -> 'VhdFile':
        """Open and validate ``name`` in ``storage``; raise :class:`VhdError` if it is not a well-formed VHD."""
        return cls(name, writable=writable, storage=storage)

    def _load(self) -> None:
        path = self.path
        self.file_size = self.file.size()
        if self.file_size < FOOTER_SIZE:
            raise VhdError(path, "footer", "length", 0, "file of %d bytes is too short for a footer" % self.file_size)
        offset = self.file_size - FOOTER_SIZE
        tail = pread_exact(self.file, FOOTER_SIZE, offset, path, "footer", "cookie")
        if not tail.startswith(b"conectix") and tail[1:9] == b"conectix":
            # Some old Microsoft tools wrote a 511-byte footer.
            offset += 1
            tail = tail[1:] + b"\x00"
        self.footer_offset = offset
        self.footer = Footer.parse(tail, path, offset)
        self.head_footer: Footer | None = None
        self.footer_copies_differ = False
        self.header: Header | None = None
        footer = self.footer
        if footer.disk_type == DISK_FIXED:
            if footer.current_size > offset:
                raise VhdError(path, "footer", "current_size", offset + 48,
                               "fixed disk of %d bytes does not fit a %d-byte file" % (footer.current_size, self.file_size))
            self.block_size = DEFAULT_BLOCK_SIZE
            self.bitmap_size = 0
            self.set_geometry()
            return
        if offset < 3 * SECTOR:
            raise VhdError(path, "footer", "length", offset, "file too short for a dynamic VHD")
        head = pread_exact(self.file, FOOTER_SIZE, 0, path, "footer copy", "cookie")
        self.head_footer = Footer.parse(head, path, 0)
        # The end footer is authoritative (as in blktap); differing copies are reported by the checker.
        self.footer_copies_differ = head != tail[:FOOTER_SIZE]
        if footer.data_offset + HEADER_SIZE > offset:
            raise VhdError(path, "footer", "data_offset", offset + 16, "header offset %d past end of file" % footer.data_offset)
        raw = pread_exact(self.file, HEADER_SIZE, footer.data_offset, path, "header", "cookie")
        self.header = header = Header.parse(raw, path, footer.data_offset)
        self.block_size = header.block_size
        self.bitmap_size = bitmap_size(header.block_size)
        self.set_geometry()
        if self.block_count > MAX_BAT_ENTRIES:
            raise VhdError(path, "header", "block_size", footer.data_offset + 32,
                           "%d blocks of %d bytes exceed the supported %d" % (self.block_count, header.block_size, MAX_BAT_ENTRIES))
        if header.max_table_entries < self.block_count:
            raise VhdError(path, "header", "max_table_entries", footer.data_offset + 28,
                           "%d entries cannot map %d blocks" % (header.max_table_entries, self.block_count))
        bat_end = header.table_offset + self.block_count * 4
        if bat_end > offset:
            raise VhdError(path, "header", "table_offset", footer.data_offset + 16,
                           "BAT at %d (%d entries) runs past end of file" % (header.table_offset, self.block_count))
        if footer.disk_type == DISK_DIFFERENCING and not header.parent_name and header.parent_unique_id == bytes(16):
            raise VhdError(path, "header", "parent_unique_id", footer.data_offset + 40, "differencing disk without parent")

    def set_geometry(self) -> None:
        """Derive size, sectors per block and block count (a fixed disk may be re-cut to a chain's block size)."""
        self.size = self.footer.current_size
        self.sectors_per_block = self.block_size // SECTOR
        self.block_count = (self.size + self.block_size - 1) // self.block_size

    # -- properties -------------------------------------------------------------------------------------------

    def layers(self) -> list['VhdFile']:
        """A file read alone is a one-layer disk."""
        return [self]

    @property
    def disk_type(self) -> int:
        """Footer disk type: 2 fixed, 3 dynamic, 4 differencing."""
        return self.footer.disk_type

    @property
    def is_fixed(self) -> bool:
        """True for a fixed disk."""
        return self.footer.disk_type == DISK_FIXED

    @property
    def is_dynamic(self) -> bool:
        """True for a dynamic (sparse, parentless) disk."""
        return self.footer.disk_type == DISK_DYNAMIC

    @property
    def is_differencing(self) -> bool:
        """True for a differencing disk."""
        return self.footer.disk_type == DISK_DIFFERENCING

    @property
    def unique_id(self) -> bytes:
        """The footer unique id (16 bytes)."""
        return self.footer.unique_id

    @property
    def bat(self) -> array.array:
        """BAT values (bitmap sector numbers or ``0xFFFFFFFF``) for the ``block_count`` blocks of the disk."""
        if self._bat is None:
            if self.is_fixed:
                raise VhdError(self.path, "BAT", "table_offset", None, "fixed disk has no BAT")
            raw = pread_exact(self.file, self.block_count * 4, self.header.table_offset, self.path, "BAT", "entries")
            self._bat = bat_parse(raw, self.block_count)
            self._unused_flags = bat_unused_flags(raw, self.block_count)
        return self._bat

    def unused_flags(self) -> bytes:
        """One byte per block, ``0xFF`` when the block is absent (see :func:`~.structures.bat_unused_flags`)."""
        if self.is_fixed:
            return bytes(self.block_count)
        if self._bat is None:
            self.bat  # pylint: disable=pointless-statement  # noqa: B018 (reading bat loads _unused_flags)
        return self._unused_flags

    def invalidate(self) -> None:
        """Forget the cached BAT (after another writer changed the file)."""
        self._bat = None
        self._unused_flags = None

    def full_mask(self) -> int:
        """Mask with every sector of a block set."""
        return (1 << self.sectors_per_block) - 1

    def block_range_mask(self, index: int) -> int:
        """Mask of the sectors of block ``index`` that lie within this file's virtual size."""
        return sector_range_mask(self.size, index * self.sectors_per_block, self.sectors_per_block)

    # -- blocks -----------------------------------------------------------------------------------------------

    def block_offset(self, index: int) -> int | None:
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
            raise VhdError(self.path, "BAT", "entry[%d]" % index, self.header.table_offset + 4 * index,
                           "block at %d runs past the footer at %d" % (offset, self.footer_offset))
        return offset

    def read_bitmap(self, index: int) -> bytes | None:
        """The raw sector bitmap of present block ``index``."""
        offset = self.block_offset(index)
        if offset is None:
            return None
        return pread_exact(self.file, self.bitmap_size, offset, self.path, "block[%d]" % index, "bitmap")

    def read_block_raw(self, index: int) -> tuple[int, memoryview] | None:
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
            data = pread_exact(self.file, length, offset, self.path, "block[%d]" % index, "data")
            if length < self.block_size:
                data += bytes(self.block_size - length)
            return limit, memoryview(data)
        raw = pread_exact(self.file, self.bitmap_size + self.block_size, offset, self.path, "block[%d]" % index, "data")
        if self.verify_block is not None:
            self.verify_block(index, raw)
        bitmap = raw[:self.bitmap_size]
        if bitmap.count(0xFF) == self.bitmap_size:
            mask = limit
        else:
            mask = bitmap_to_mask(bitmap, self.sectors_per_block) & limit
        return mask, memoryview(raw)[self.bitmap_size:]

    # -- parent -----------------------------------------------------------------------------------------------

    def parent_name(self) -> str | None:
        """The header's parent name resolved against this file's folder, relative to the storage root (``None`` if none).

        It may start with ``..`` or ``/`` when the parent lies outside the storage.
        """
        if not self.is_differencing or not self.header.parent_name:
            return None
        name = self.header.parent_name.replace("\\", "/")
        if len(name) > 1 and name[1] == ":":
            name = name[2:]
        return posixpath.normpath(posixpath.join(posixpath.dirname(self.name), name))

    def parent_location(self) -> Location | None:
        """Where the parent named in the header is (``None`` if none).

        A local parent outside this file's storage is still found (a folder next to it); a remote
        one must lie inside the storage.
        """
        name = self.parent_name()
        if name is None:
            return None
        if not (name == ".." or name.startswith("../") or name.startswith("/")):
            return self.storage, name
        if isinstance(self.storage, LocalStorage):
            return split_local_path(os.path.join(self.storage.root, name))
        raise VhdError(self.path, "header", "parent_name", self.footer.data_offset + 64,
                       "parent %r lies outside %s: keep a chain's files in one storage" % (self.header.parent_name, self.storage.describe()))

    def parent_path(self) -> str | None:
        """How to show the parent named in the header (its local path for a local file), ``None`` if none."""
        location = self.parent_location()
        return None if location is None else location[0].describe(location[1])

    def close(self) -> None:
        """Close the file."""
        if not self.closed:
            self.closed = True
            self.file.close()

    def __repr__(self) -> str:
        return "VhdFile(%r, type=%d, size=%d)" % (self.path, self.disk_type, self.size)


class VhdChain(Disk):
    """Newest-first VHD files read as one logical disk, with exact VHD semantics (see :class:`Disk`).

    The disk's size is the newest member's; a member's bytes past its own size are never used (they
    read as zeros unless a newer member wrote them).  With ``allow_missing_parent`` the oldest member
    may be a differencing file whose parent is absent: its unset sectors then read as zeros.
    """

    def __init__(self, members: Iterable[VhdFile], verify: bool = True, allow_missing_parent: bool = False):
        self.members = list(members)
        if not self.members:
            raise ValueError("a chain needs at least one VHD file")
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
    def open(cls, path, max_length: int = MAX_CHAIN_LENGTH) -> 'VhdChain':
        """Open the local file ``path`` and follow parent names (relative to each child) down to a dynamic or fixed file."""
        return cls._follow(split_local_path(path), max_length)

    @classmethod
    def open_in(cls, storage: Storage, name: str, max_length: int = MAX_CHAIN_LENGTH) -> 'VhdChain':
        """:meth:`open` for ``name`` in ``storage``."""
        return cls._follow((storage, name), max_length)

    @classmethod
    def _follow(cls, location: Location, max_length: int) -> 'VhdChain':
        members: list[VhdFile] = []
        seen = set()
        try:
            while True:
                shown = location[0].describe(location[1])
                if shown in seen or len(members) >= max_length:
                    raise VhdError(shown, "header", "parent_name", None, "parent chain loops or is too long")
                seen.add(shown)
                try:
                    member = VhdFile.open_in(*location)
                except FileNotFoundError:
                    if not members:
                        raise
                    raise VhdError(members[-1].path, "header", "parent_name", members[-1].footer.data_offset + 64,
                                   "parent %s not found" % shown) from None
                members.append(member)
                location = member.parent_location()
                if location is None:
                    break
            return cls(members)
        except BaseException:
            for member in members:
                member.close()
            raise

    @classmethod
    def from_paths(cls, paths: Iterable, verify: bool = True, allow_missing_parent: bool = False,
                   storage: Storage | None = None) -> 'VhdChain':
        """Open the given files (newest first; local paths, or names in ``storage``) as a chain."""
        members: list[VhdFile] = []
        try:
            for path in paths:
                members.append(VhdFile(path, storage=storage))
            return cls(members, verify=verify, allow_missing_parent=allow_missing_parent)
        except BaseException:
            for member in members:
                member.close()
            raise

    def layers(self) -> list[VhdFile]:
        return self.members

    @property
    def unique_id(self) -> bytes:
        return self.newest.unique_id

    def close(self) -> None:
        """Close every member."""
        for member in self.members:
            member.close()


__all__ = ["Disk", "Location", "VhdFile", "VhdChain", "pread_exact", "sector_range_mask", "MAX_CHAIN_LENGTH"]
