# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rewrite a VHD's identity while it streams in (one pass, non-seekable input, hashed as written).

Made for XAPI export streams (footer, header, BAT, packed blocks, footer) but accepts any
dynamic or differencing VHD byte stream whose end footer is the last 512 bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import BinaryIO

from .structures import (
    BAT_UNUSED, DISK_DIFFERENCING, DISK_FIXED, FOOTER_SIZE, HEADER_SIZE, MAX_BAT_ENTRIES, SECTOR, Footer, Header,
    ParentLocator, VhdError, bat_parse, bitmap_size, uuid_bytes,
)
from .writer import ParentLink

CHUNK_SIZE = 1 << 20
#: Largest dynamic header offset accepted in a stream (bytes before it are held in memory).
MAX_HEADER_OFFSET = 1 << 16


@dataclasses.dataclass
class RewriteResult:
    """Outcome of :func:`rewrite_identity`: bytes written, the new footer and header, blocks seen."""

    length: int
    footer: Footer
    header: Header
    blocks: int


class _Source:
    """Exact reads from a file-like object that may return short reads (HTTP responses)."""

    def __init__(self, fileobj: BinaryIO, name: str):
        self.fileobj = fileobj
        self.name = name
        self.position = 0

    def read_some(self, size: int) -> bytes:
        data = self.fileobj.read(size)
        self.position += len(data)
        return data

    def readinto(self, view: memoryview) -> int:
        """Fill some of ``view``; 0 at the end. Uses the source's readinto when it has one (no new objects)."""
        readinto = getattr(self.fileobj, "readinto", None)
        if readinto is not None:
            count = readinto(view) or 0
        else:
            data = self.fileobj.read(len(view))
            count = len(data)
            view[:count] = data
        self.position += count
        return count

    def read_exact(self, size: int, structure: str, field: str) -> bytes:
        parts = []
        got = 0
        while got < size:
            data = self.fileobj.read(min(size - got, CHUNK_SIZE))
            if not data:
                raise VhdError(self.name, structure, field, self.position, "stream ended: wanted %d bytes, got %d" % (size, got))
            parts.append(data)
            got += len(data)
            self.position += len(data)
        return b"".join(parts)


def rewrite_identity(src: BinaryIO, dst: BinaryIO, unique_id, parent: ParentLink | None = None,
                     on_write: Callable | None = None, name: str | None = None) -> RewriteResult:
    """Copy the VHD stream ``src`` (``read(n)``) to ``dst`` (``write(b)``), rewriting its identity in passing.

    The footer (both copies) gets ``unique_id``; for a differencing disk the header gets the
    ``parent`` :class:`~.writer.ParentLink` (unique id, timestamp, relative name) and loses its
    parent locators.  Checksums are recomputed.  ``on_write(chunk)`` receives every byte written,
    in order, so the file can be hashed as it is written.  Both ``dst.write`` and ``on_write`` may get
    a memoryview of a reused buffer: consume it during the call, never keep it.  A ``dst`` that also
    has ``acquire``/``submit``/``release`` (``transfer.WriteBehind``) gets the disk's blocks received
    straight into its own buffers, with no copy in between.  The stream is validated on the way
    (cookies, checksums, BAT inside the stream, end footer equal to the head copy); any problem
    raises :class:`VhdError` and ``dst`` then holds a partial copy the caller must discard.
    """
    name = name or getattr(src, "name", None) or "<stream>"
    source = _Source(src, name)
    written = 0

    def emit(data) -> None:
        nonlocal written
        if data:
            dst.write(data)
            if on_write is not None:
                on_write(data)
            written += len(data)

    head = source.read_exact(FOOTER_SIZE, "footer copy", "cookie")
    footer = Footer.parse(head, name, 0)
    if footer.disk_type == DISK_FIXED:
        raise VhdError(name, "footer", "disk_type", 60, "a fixed disk cannot be rewritten as a stream")
    if footer.disk_type == DISK_DIFFERENCING and parent is None:
        raise VhdError(name, "footer", "disk_type", 60, "differencing stream needs a parent link")
    if footer.data_offset > MAX_HEADER_OFFSET:
        raise VhdError(name, "footer", "data_offset", 16, "header offset %d unsupported in a stream" % footer.data_offset)
    gap = source.read_exact(footer.data_offset - FOOTER_SIZE, "footer", "data_offset")
    header_raw = source.read_exact(HEADER_SIZE, "header", "cookie")
    header = Header.parse(header_raw, name, footer.data_offset)
    new_footer = dataclasses.replace(footer, unique_id=uuid_bytes(unique_id))
    new_header = dataclasses.replace(header)
    if footer.disk_type == DISK_DIFFERENCING:
        new_header.parent_unique_id = uuid_bytes(parent.unique_id)
        new_header.parent_timestamp = parent.timestamp
        new_header.parent_name = parent.name
        new_header.locators = [ParentLocator() for _slot in range(8)]
    footer_bytes = new_footer.pack()
    emit(footer_bytes)
    emit(gap)
    emit(new_header.pack())

    block_count = (footer.current_size + header.block_size - 1) // header.block_size
    if block_count > MAX_BAT_ENTRIES:
        raise VhdError(name, "header", "block_size", footer.data_offset + 32, "%d blocks exceed the supported maximum" % block_count)
    if header.max_table_entries < block_count:
        raise VhdError(name, "header", "max_table_entries", footer.data_offset + 28,
                       "%d entries cannot map %d blocks" % (header.max_table_entries, block_count))
    if header.table_offset < source.position:
        raise VhdError(name, "header", "table_offset", footer.data_offset + 16,
                       "BAT at %d overlaps the header (streams must be in file order)" % header.table_offset)
    _copy(source, emit, header.table_offset - source.position, "header", "table_offset")
    bat_raw = source.read_exact(block_count * 4, "BAT", "entries")
    bat_end = header.table_offset + header.bat_bytes
    span = bitmap_size(header.block_size) + header.block_size
    data_end = bat_end
    blocks = 0
    # The BAT is checked (and its parsed copy dropped) before it is passed on, and not kept after:
    # for a 2 TiB disk it is 4 MiB, and the checksum thread is about to parse its own copy.
    for index, entry in enumerate(bat_parse(bat_raw, block_count)):
        if entry == BAT_UNUSED:
            continue
        blocks += 1
        if entry * SECTOR < bat_end:
            raise VhdError(name, "BAT", "entry[%d]" % index, header.table_offset + 4 * index,
                           "block at %d overlaps the header or BAT" % (entry * SECTOR))
        data_end = max(data_end, entry * SECTOR + span)
    emit(bat_raw)
    del bat_raw
    _copy(source, emit, bat_end - source.position, "BAT", "entries")

    # Pass the rest through, holding back the last 512 bytes: they are the end footer.
    if hasattr(dst, "acquire") and hasattr(dst, "submit"):
        held, count = _pass_through_in_place(source, dst, on_write)
        written += count
    else:
        held = _pass_through(source, emit)
    if source.position < data_end + FOOTER_SIZE:
        raise VhdError(name, "BAT", "entries", header.table_offset,
                       "stream of %d bytes ends before its last block (needs %d)" % (source.position, data_end + FOOTER_SIZE))
    if held != head:
        raise VhdError(name, "footer", "cookie", source.position - FOOTER_SIZE, "end footer differs from the copy at offset 0")
    emit(footer_bytes)
    return RewriteResult(length=written, footer=new_footer, header=new_header, blocks=blocks)


def _pass_through(source: _Source, emit: Callable) -> bytes:
    """Emit the rest of ``source`` but its last 512 bytes, which are returned.

    One buffer is reused for the whole disk (a new 1 MiB object per chunk costs more than the copy
    itself), so ``emit`` gets views that are only valid during the call.
    """
    buffer = bytearray(CHUNK_SIZE + FOOTER_SIZE)
    view = memoryview(buffer)
    held = 0
    while True:
        count = source.readinto(view[held:])
        if not count:
            break
        filled = held + count
        if filled > FOOTER_SIZE:
            emit(view[:filled - FOOTER_SIZE])
            buffer[:FOOTER_SIZE] = buffer[filled - FOOTER_SIZE:filled]
            held = FOOTER_SIZE
        else:
            held = filled
    return bytes(view[:held])


def _pass_through_in_place(source: _Source, dst, on_write: Callable | None) -> tuple[bytes, int]:
    """As :func:`_pass_through`, receiving straight into the buffers of a ring (``transfer.WriteBehind``).

    ``dst.acquire()`` gives a buffer, filled from the source in place, then ``dst.submit(buffer,
    length)`` queues it: no byte is copied by Python but the 512 held back at each buffer's end,
    which start the next buffer. Returns the last 512 bytes and the count of bytes submitted.
    """
    held = b""
    submitted = 0
    while True:
        buffer = dst.acquire()
        try:
            view = memoryview(buffer)
            size = len(view)
            if size <= 2 * FOOTER_SIZE:
                raise ValueError("ring buffers of %d bytes are too small to hold back a footer" % size)
            view[:len(held)] = held
            filled = len(held)
            while filled < size:
                count = source.readinto(view[filled:])
                if not count:
                    break
                filled += count
            keep = min(filled, FOOTER_SIZE)
            held = bytes(view[filled - keep:filled])
            length = filled - keep
            if length and on_write is not None:
                on_write(view[:length])
        except BaseException:
            dst.release(buffer)
            raise
        dst.submit(buffer, length)  # no longer ours: it may be reused once consumed
        submitted += length
        if filled < size:
            return held, submitted


def _copy(source: _Source, emit: Callable, count: int, structure: str, field: str) -> None:
    while count > 0:
        data = source.read_exact(min(count, CHUNK_SIZE), structure, field)
        emit(data)
        count -= len(data)
