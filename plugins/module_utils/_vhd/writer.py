# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming VHD writer: dynamic and differencing VHDs produced block by block, exact length known in advance.

Layout (accepted by XAPI's importer and blktap): footer copy at 0, dynamic header at 512, BAT at
1536 padded to a sector, then the listed blocks packed in ascending index order (each a sector
bitmap and ``block_size`` bytes of data), then the footer.  No parent locators, no batmap; the
creator is ``tap`` 1.1 so that qemu uses the current size and blktap expects no batmap.
"""

from __future__ import annotations

import array
import dataclasses
import os
import uuid

from .structures import (
    BAT_UNUSED, DEFAULT_BLOCK_SIZE, DISK_DIFFERENCING, DISK_DYNAMIC, FOOTER_SIZE, HEADER_SIZE, SECTOR,
    Footer, Header, bat_pack, bitmap_size, chs_geometry, uuid_bytes, vhd_timestamp,
)

TABLE_OFFSET = FOOTER_SIZE + HEADER_SIZE


@dataclasses.dataclass
class ParentLink:
    """Identity of a differencing disk's parent as recorded in the child's header (XO convention: no locators)."""

    unique_id: bytes
    timestamp: int
    name: str

    @classmethod
    def for_parent_file(cls, parent_path, child_path, unique_id=None):
        """Link to ``parent_path`` from a child to be written at ``child_path``.

        The name is the parent's path relative to the child's directory; the timestamp the parent's
        mtime in the VHD epoch; the id the parent's footer unique id unless given.
        """
        from .disk import VhdFile  # pylint: disable=import-outside-toplevel

        if unique_id is None:
            with VhdFile(parent_path) as parent:
                unique_id = parent.unique_id
        name = os.path.relpath(os.path.abspath(parent_path), os.path.dirname(os.path.abspath(child_path)))
        return cls(unique_id=uuid_bytes(unique_id), timestamp=vhd_timestamp(os.stat(parent_path).st_mtime), name=name)


def make_footer(disk_type, virtual_size, unique_id=None, timestamp=None):
    """A footer for a disk we write: features 2, data offset 512, creator ``tap`` 1.1, CHS geometry of the size."""
    return Footer(disk_type=disk_type, current_size=virtual_size, original_size=virtual_size,
                  unique_id=uuid_bytes(unique_id) if unique_id is not None else uuid.uuid4().bytes,
                  timestamp=vhd_timestamp() if timestamp is None else timestamp, geometry=chs_geometry(virtual_size))


class VhdStream:
    """A dynamic or differencing VHD produced on the fly in constant memory.

    ``block_indices`` lists the blocks to include (sorted ascending); ``read_block(index)`` returns
    ``(bitmap, data)`` where ``bitmap`` is the raw sector bitmap or ``None`` for all sectors set, and
    ``data`` is up to ``block_size`` bytes (shorter is zero padded) or ``None`` for zeros.  ``length``
    is the exact byte count before the first byte is produced.  Iterate for ``bytes``-like chunks,
    or call :meth:`read` like a file.
    """

    def __init__(self, virtual_size, block_indices, read_block, disk_type=DISK_DYNAMIC, unique_id=None,
                 parent=None, timestamp=None, block_size=DEFAULT_BLOCK_SIZE):
        if disk_type == DISK_DIFFERENCING and parent is None:
            raise ValueError("a differencing VHD needs a ParentLink")
        if virtual_size % SECTOR:
            raise ValueError(f"virtual size {virtual_size} is not a multiple of {SECTOR}")
        self.block_size = block_size
        self.block_indices = array.array("I", block_indices)
        entries = (virtual_size + block_size - 1) // block_size
        previous = -1
        for index in self.block_indices:
            if index <= previous or index >= entries:
                raise ValueError("block indices must be unique, ascending and within the disk")
            previous = index
        self._read_block = read_block
        self.footer = make_footer(disk_type, virtual_size, unique_id, timestamp)
        self.header = Header(table_offset=TABLE_OFFSET, max_table_entries=entries, block_size=block_size)
        if parent is not None:
            self.header.parent_unique_id = uuid_bytes(parent.unique_id)
            self.header.parent_timestamp = parent.timestamp
            self.header.parent_name = parent.name
        self.bitmap_size = bitmap_size(block_size)
        self.block_span = self.bitmap_size + block_size
        self.data_start = TABLE_OFFSET + self.header.bat_bytes
        self.length = self.data_start + len(self.block_indices) * self.block_span + FOOTER_SIZE
        self._chunks = None
        self._pending = memoryview(b"")

    def block_table(self):
        """The BAT this stream writes (list of sector numbers or ``0xFFFFFFFF``)."""
        table = array.array("I", [BAT_UNUSED]) * self.header.max_table_entries
        for position, index in enumerate(self.block_indices):
            table[index] = (self.data_start + position * self.block_span) // SECTOR
        return table

    def __iter__(self):
        footer = self.footer.pack()
        yield footer + self.header.pack() + bat_pack(self.block_table(), self.header.bat_bytes)
        full = b"\xff" * self.bitmap_size
        zeros = None
        for index in self.block_indices:
            bitmap, data = self._read_block(index)
            yield full if bitmap is None else bytes(bitmap).ljust(self.bitmap_size, b"\x00")[:self.bitmap_size]
            if data is None:
                if zeros is None:
                    zeros = bytes(self.block_size)
                yield zeros
            elif len(data) < self.block_size:
                yield bytes(data) + bytes(self.block_size - len(data))
            else:
                yield data[:self.block_size]
        yield footer

    def read(self, size=-1):
        """File-like read: up to ``size`` bytes (all remaining when negative); ``b""`` at the end.

        Small reads (``http.client`` uses 8 KiB) slice the current chunk without copying it again.
        """
        if self._chunks is None:
            self._chunks = iter(self)
        parts = []
        have = 0
        while size < 0 or have < size:
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk).cast("B") if not isinstance(chunk, memoryview) else chunk.cast("B")
            take = len(self._pending) if size < 0 else min(size - have, len(self._pending))
            parts.append(self._pending[:take])
            self._pending = self._pending[take:]
            have += take
        return b"".join(parts)


def stream_file(vhd, unique_id=None, parent=None):
    """Copy of one :class:`~.disk.VhdFile`'s own blocks (bitmaps kept) as a stream of the same type."""
    def read_block(index):
        mask, data = vhd.read_block_raw(index)
        if mask == vhd.full_mask():
            return None, data
        return vhd.read_bitmap(index), data

    disk_type = DISK_DIFFERENCING if vhd.is_differencing else DISK_DYNAMIC
    if disk_type == DISK_DIFFERENCING and parent is None:
        parent = ParentLink(vhd.header.parent_unique_id, vhd.header.parent_timestamp, vhd.header.parent_name)
    return VhdStream(vhd.size, vhd.allocated_blocks(), read_block, disk_type=disk_type,
                     unique_id=vhd.unique_id if unique_id is None else unique_id, parent=parent,
                     timestamp=vhd.footer.timestamp, block_size=vhd.block_size)


def write_stream(stream, path, on_write=None, fsync=True):
    """Write an iterable of bytes chunks to ``path`` (via a temporary name, then renamed); return bytes written.

    ``on_write(chunk)`` sees every byte written (e.g. a sha256 ``update``).
    """
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.partial")
    written = 0
    try:
        with open(tmp, "wb") as out:
            for chunk in stream:
                out.write(chunk)
                if on_write is not None:
                    on_write(chunk)
                written += len(chunk)
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return written
