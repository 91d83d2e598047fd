# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Minimal VHD stream writer and forward-only parser, shaped like XAPI's.

Deliberately independent of the collection's own VHD code so that tests
using the simulator are not circular.  The writer emits XAPI's export layout
(footer copy, header, one zero sector, BAT at 2048, packed blocks in
ascending order with all-ones bitmaps, footer).  The parser reads a VHD
front to back as XAPI's import does and reports which sectors to write.
"""

from __future__ import annotations

import struct
import uuid as uuidlib

SECTOR = 512
VHD_BLOCK = 2 * 1024 * 1024
BITMAP_FULL = b'\xff' * SECTOR
TABLE_OFFSET = 2048
VHD_EPOCH = 946684800
MAX_ENTRIES_LIMIT = 1 << 24


class VhdError(Exception):
    """A stream that cannot be parsed (becomes VDI_IO_ERROR)."""


def _checksum(data):
    return (~sum(data)) & 0xFFFFFFFF


def geometry(size):
    """CHS geometry of a virtual size, as the VHD specification computes it."""
    sectors = min(size // SECTOR, 65535 * 16 * 255)
    if sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = sectors // spt
    else:
        spt = 17
        cth = sectors // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = sectors // spt
    return struct.pack('>HBB', cth // heads, heads, spt)


def make_footer(size, disk_type, unique_id, creator=b'caml', timestamp=0):
    """A 512-byte footer (disk_type 3 dynamic, 4 differencing)."""
    footer = bytearray(SECTOR)
    struct.pack_into('>8sIIQI4sI4sQQ4sII16sBB', footer, 0, b'conectix', 2, 0x00010000, SECTOR, timestamp,
                     creator, 1, b'\0\0\0\0', size, size, geometry(size), disk_type, 0, unique_id, 0, 0)
    struct.pack_into('>I', footer, 64, _checksum(footer))
    return bytes(footer)


def make_header(max_entries, parent_id=None, parent_name='', parent_timestamp=0):
    """A 1024-byte dynamic header with the BAT at 2048."""
    header = bytearray(1024)
    struct.pack_into('>8sQQIII', header, 0, b'cxsparse', 0xFFFFFFFFFFFFFFFF, TABLE_OFFSET, 0x00010000,
                     max_entries, VHD_BLOCK)
    if parent_id is not None:
        header[40:56] = parent_id
        struct.pack_into('>I', header, 56, parent_timestamp)
        name = parent_name.encode('utf-16-be')[:512]
        header[64:64 + len(name)] = name
        # One MacX locator at the zero sector 1536, as vhd-tool writes.
        struct.pack_into('>4sIIIQ', header, 576, b'MacX', SECTOR, 0, 0, 1536)
    struct.pack_into('>I', header, 36, _checksum(header))
    return bytes(header)


class ExportLayout:
    """Byte layout of an XAPI-style VHD export of ``blocks`` (sorted indexes)."""

    def __init__(self, size, blocks, parent_id=None, parent_name='', parent_mtime=0, unique_id=None):
        self.size = int(size)
        self.blocks = list(blocks)
        self.max_entries = (self.size + VHD_BLOCK - 1) // VHD_BLOCK
        self.unique_id = unique_id or uuidlib.uuid4().bytes
        disk_type = 4 if parent_id is not None else 3
        self.footer = make_footer(self.size, disk_type, self.unique_id)
        bat_bytes = (self.max_entries * 4 + SECTOR - 1) // SECTOR * SECTOR
        bat = bytearray(b'\xff' * bat_bytes)
        pos = TABLE_OFFSET + bat_bytes
        for idx in self.blocks:
            struct.pack_into('>I', bat, idx * 4, pos // SECTOR)
            pos += SECTOR + VHD_BLOCK
        ts = max(0, int(parent_mtime) - VHD_EPOCH) if parent_mtime else 0
        self.head = b''.join([self.footer, make_header(self.max_entries, parent_id, parent_name, ts),
                              bytes(SECTOR), bytes(bat)])
        self.total = pos + SECTOR

    def __len__(self):
        return self.total


def parse_footer(data):
    """Decode a footer; raise VhdError when invalid."""
    if len(data) < SECTOR or data[:8] != b'conectix':
        raise VhdError('bad footer cookie')
    stored = struct.unpack_from('>I', data, 64)[0]
    work = bytearray(data[:SECTOR])
    work[64:68] = b'\0\0\0\0'
    if _checksum(work) != stored:
        work[85] = 0
        if _checksum(work) != stored:
            raise VhdError('bad footer checksum')
    data_offset, = struct.unpack_from('>Q', data, 16)
    current_size, = struct.unpack_from('>Q', data, 48)
    disk_type, = struct.unpack_from('>I', data, 60)
    return {'data_offset': data_offset, 'current_size': current_size, 'disk_type': disk_type,
            'unique_id': bytes(data[68:84])}


def parse_header(data):
    """Decode a dynamic header; raise VhdError when invalid."""
    if data[:8] != b'cxsparse':
        raise VhdError('bad header cookie')
    stored = struct.unpack_from('>I', data, 36)[0]
    work = bytearray(data[:1024])
    work[36:40] = b'\0\0\0\0'
    if _checksum(work) != stored:
        raise VhdError('bad header checksum')
    table_offset, _version, max_entries, block_size = struct.unpack_from('>QIII', data, 16)
    if block_size < SECTOR or block_size & (block_size - 1):
        raise VhdError('bad block size %d' % block_size)
    if max_entries > MAX_ENTRIES_LIMIT:
        raise VhdError('BAT too large')
    return {'table_offset': table_offset, 'max_entries': max_entries, 'block_size': block_size}


class ForwardReader:
    """Reads exactly ``length`` bytes from ``read`` (a callable like file.read)."""

    def __init__(self, readinto, length):
        self._readinto = readinto
        self.length = length
        self.pos = 0

    def readinto(self, view):
        """Fill ``view`` entirely or raise VhdError."""
        got = 0
        while got < len(view):
            done = self._readinto(view[got:])
            if not done:
                raise VhdError('unexpected end of stream at %d' % (self.pos + got))
            got += done
        self.pos += got

    def read(self, count):
        """Read exactly ``count`` bytes."""
        buf = bytearray(count)
        self.readinto(memoryview(buf))
        return buf

    def skip_to(self, offset):
        """Discard bytes up to ``offset`` (forward only)."""
        if offset < self.pos:
            raise VhdError('stream not in rising offset order (%d < %d)' % (offset, self.pos))
        buf = memoryview(bytearray(min(offset - self.pos, 1 << 20) or 1))
        while self.pos < offset:
            self.readinto(buf[:min(len(buf), offset - self.pos)])


def _runs(bitmap, sectors):
    """(first sector, count) runs of set bits, MSB first."""
    runs = []
    start = None
    for sec in range(sectors):
        bit = bitmap[sec >> 3] & (0x80 >> (sec & 7))
        if bit and start is None:
            start = sec
        elif not bit and start is not None:
            runs.append((start, sec - start))
            start = None
    if start is not None:
        runs.append((start, sectors - start))
    return runs


def import_vhd(readinto, length, disk_size, write):
    """Parse a VHD stream of ``length`` bytes and call ``write(offset, view)``
    for every run of sectors whose bitmap bit is set.  Returns the VHD's
    current size.  Raises VhdError for anything XAPI would reject."""
    if length < 3 * SECTOR:
        raise VhdError('stream too short')
    src = ForwardReader(readinto, length)
    footer = parse_footer(src.read(SECTOR))
    if footer['disk_type'] not in (3, 4):
        raise VhdError('unsupported disk type %d' % footer['disk_type'])
    if footer['current_size'] > disk_size:
        raise VhdError('VHD virtual size %d larger than the VDI (%d)' % (footer['current_size'], disk_size))
    src.skip_to(footer['data_offset'])
    header = parse_header(src.read(1024))
    src.skip_to(header['table_offset'])
    entries = header['max_entries']
    bat_bytes = (entries * 4 + SECTOR - 1) // SECTOR * SECTOR
    bat = src.read(bat_bytes)
    bsize = header['block_size']
    bitmap_bytes = ((bsize // SECTOR + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR
    limit = min(footer['current_size'], disk_size)
    present = []
    for idx in range(min(entries, (footer['current_size'] + bsize - 1) // bsize)):
        sector, = struct.unpack_from('>I', bat, idx * 4)
        if sector != 0xFFFFFFFF:
            present.append((sector, idx))
    present.sort()
    data = memoryview(bytearray(bsize))
    sectors = bsize // SECTOR
    full = b'\xff' * (sectors // 8)
    for sector, idx in present:
        src.skip_to(sector * SECTOR)
        bitmap = src.read(bitmap_bytes)
        if src.pos + bsize > length - SECTOR:
            raise VhdError('block %d runs past the end of the stream' % idx)
        src.readinto(data)
        base = idx * bsize
        if bitmap[:len(full)] == full:
            runs = [(0, sectors)]
        else:
            runs = _runs(bitmap, sectors)
        for first, count in runs:
            start = base + first * SECTOR
            end = min(start + count * SECTOR, limit)
            if end > start:
                write(start, data[first * SECTOR:first * SECTOR + (end - start)])
    if length - SECTOR < src.pos:
        raise VhdError('no room for the trailing footer')
    src.skip_to(length - SECTOR)
    parse_footer(src.read(SECTOR))
    return footer['current_size']
