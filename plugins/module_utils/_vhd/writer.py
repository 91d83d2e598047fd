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
import collections
import concurrent.futures
import dataclasses
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import Storage, split_local_path

from .disk import Disk, VhdFile
from .structures import (
    BAT_UNUSED, DEFAULT_BLOCK_SIZE, DISK_DIFFERENCING, DISK_DYNAMIC, FOOTER_SIZE, HEADER_SIZE, SECTOR,
    Footer, Header, bat_pack, bitmap_size, chs_geometry, uuid_bytes, vhd_timestamp,
)

TABLE_OFFSET = FOOTER_SIZE + HEADER_SIZE
#: Blocks read (and checked) ahead of the consumer by :meth:`VhdStream.read_ahead`: bounds memory to a few blocks.
READ_AHEAD_BLOCKS = 4
#: Threads reading ahead: pread and sha256 release the GIL, so two overlap each other and the consumer's sends.
READ_AHEAD_THREADS = 2

#: ``read_block(index) -> (bitmap or None for all sectors, data or None for zeros)``, what a stream asks for each block.
BlockReader = Callable[[int], tuple]


@dataclasses.dataclass
class ParentLink:
    """Identity of a differencing disk's parent as recorded in the child's header (XO convention: no locators)."""

    unique_id: bytes
    timestamp: int
    name: str

    @classmethod
    def for_parent_in(cls, storage: Storage, parent_name: str, child_name: str, unique_id=None) -> 'ParentLink':
        """Link to ``parent_name`` from a child to be written at ``child_name``, both in ``storage``.

        The name is the parent's path relative to the child's folder; the timestamp the parent's
        modification time in the VHD epoch; the id the parent's footer unique id unless given.
        """
        unique_id, timestamp = _parent_identity(storage, parent_name, unique_id)
        name = posixpath.relpath(parent_name, posixpath.dirname(child_name) or ".")
        return cls(unique_id=unique_id, timestamp=timestamp, name=name)

    @classmethod
    def for_parent_file(cls, parent_path, child_path, unique_id=None) -> 'ParentLink':
        """:meth:`for_parent_in` for local paths (which may lie in different folders)."""
        storage, parent_name = split_local_path(parent_path)
        unique_id, timestamp = _parent_identity(storage, parent_name, unique_id)
        # Path arithmetic only: the link is relative to the child's folder wherever the parent is.
        name = os.path.relpath(os.path.abspath(parent_path), os.path.dirname(os.path.abspath(child_path)))
        return cls(unique_id=unique_id, timestamp=timestamp, name=name)


def _parent_identity(storage: Storage, parent_name: str, unique_id) -> tuple[bytes, int]:
    """The parent's unique id (read from its footer unless given) and its modification time as a VHD timestamp."""
    if unique_id is None:
        with VhdFile.open_in(storage, parent_name) as parent:
            unique_id = parent.unique_id
    return uuid_bytes(unique_id), vhd_timestamp(storage.modified_time(parent_name))


def make_footer(disk_type: int, virtual_size: int, unique_id=None, timestamp: int | None = None) -> Footer:
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

    def __init__(self, virtual_size: int, block_indices: Iterable[int], read_block: BlockReader, disk_type: int = DISK_DYNAMIC,
                 unique_id=None, parent: ParentLink | None = None, timestamp: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE):
        if disk_type == DISK_DIFFERENCING and parent is None:
            raise ValueError("a differencing VHD needs a ParentLink")
        if virtual_size % SECTOR:
            raise ValueError("virtual size %d is not a multiple of %d" % (virtual_size, SECTOR))
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
        self._chunks: Iterator | None = None
        self._pending = memoryview(b"")

    def block_table(self) -> array.array:
        """The BAT this stream writes (list of sector numbers or ``0xFFFFFFFF``)."""
        table = array.array("I", [BAT_UNUSED]) * self.header.max_table_entries
        for position, index in enumerate(self.block_indices):
            table[index] = (self.data_start + position * self.block_span) // SECTOR
        return table

    def __iter__(self) -> Iterator:
        return self._produce(map(self._read_block, self.block_indices))

    def read_ahead(self, blocks: int = READ_AHEAD_BLOCKS, threads: int = READ_AHEAD_THREADS) -> Iterator:
        """The same chunks as iterating, with the blocks read by ``threads`` threads up to ``blocks`` ahead.

        An upload then costs about its slowest stage (reading and checking a block, or sending it)
        instead of their sum: the reads, the checksum checks ``read_block`` may do (``blocksums.attach``)
        and the socket sends all release the GIL.  Memory stays bounded (``blocks`` blocks in flight).
        A block whose read fails raises at its place in the stream: every chunk before it was
        produced, nothing after it is.  ``read_block`` must be safe to call from several threads
        (positional reads of already opened files are).
        """
        if threads <= 1 or blocks <= 1:
            return iter(self)
        return self._produce(self._blocks_read_ahead(blocks, threads))

    def _blocks_read_ahead(self, blocks: int, threads: int) -> Iterator:
        indices = iter(self.block_indices)
        pending = collections.deque()
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vhd-read-ahead") as pool:
            try:
                for index in indices:
                    pending.append(pool.submit(self._read_block, index))
                    if len(pending) >= blocks:
                        break
                while pending:
                    result = pending.popleft().result()
                    index = next(indices, None)
                    if index is not None:
                        pending.append(pool.submit(self._read_block, index))
                    yield result
            finally:
                # A consumer that stops (a failed send, a damaged block) leaves no read running behind it.
                for future in pending:
                    future.cancel()

    def _produce(self, blocks: Iterator) -> Iterator:
        """Header, then each ``(bitmap, data)`` of ``blocks`` (one per listed block, in order) as chunks, then the footer."""
        footer = self.footer.pack()
        yield footer + self.header.pack() + bat_pack(self.block_table(), self.header.bat_bytes)
        full = b"\xff" * self.bitmap_size
        zeros = None
        for bitmap, data in blocks:
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

    def read(self, size: int = -1) -> bytes:
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


def stream_disk(disk: Disk, unique_id=None, timestamp: int | None = None) -> VhdStream:
    """Any disk (a file, a chain) as ONE dynamic VHD stream, length known up front (restores, exports)."""
    return VhdStream(virtual_size=disk.size, block_indices=disk.allocated_blocks(), read_block=lambda index: (None, disk.read_block(index)),
                     unique_id=unique_id if unique_id is not None else disk.unique_id, timestamp=timestamp, block_size=disk.block_size)


def stream_file(vhd: VhdFile, unique_id=None, parent: ParentLink | None = None) -> VhdStream:
    """Copy of one file's own blocks (bitmaps kept) as a stream of the same type."""
    def read_block(index: int) -> tuple:
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


def write_stream(stream: Iterable, path, on_write: Callable | None = None, storage: Storage | None = None) -> int:
    """Write an iterable of bytes chunks as the file ``path`` (a local path, or a name in ``storage``); return bytes written.

    The file appears complete and durable, or not at all (the storage's atomic writer).
    ``on_write(chunk)`` sees every byte written (e.g. a sha256 ``update``).
    """
    if storage is None:
        storage, path = split_local_path(path)
    writer = storage.atomic_writer(path, overwrite=True)
    written = 0
    try:
        for chunk in stream:
            writer.write(chunk)
            if on_write is not None:
                on_write(chunk)
            written += len(chunk)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return written


__all__ = ["READ_AHEAD_BLOCKS", "READ_AHEAD_THREADS", "ParentLink", "VhdStream", "make_footer", "stream_disk", "stream_file", "write_stream", "TABLE_OFFSET"]
