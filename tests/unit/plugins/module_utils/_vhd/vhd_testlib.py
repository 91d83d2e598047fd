# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the VHD engine tests: a raw model of a disk and chains of VHDs built from it."""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
import time
import uuid

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import (
    AtomicWriter, RandomAccessFile, Storage, check_relative_path,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    DISK_DIFFERENCING, DISK_DYNAMIC, ParentLink, VhdChain, VhdFile, VhdStream, write_stream,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.structures import (
    SECTOR, Footer, Header, ParentLocator, bat_pack, bitmap_size, chs_geometry, mask_to_bitmap,
)

QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
QEMU_IO = shutil.which("qemu-io") or "/usr/bin/qemu-io"


def pattern(seed, length):
    """Deterministic non-zero bytes for a write (cheap to generate)."""
    unit = bytes(((seed * 37 + i * 11) % 251) + 1 for i in range(509))
    return (unit * (length // len(unit) + 1))[:length]


def write_vhd(path, size, sectors, block_size, parent=None, unique_id=None, full_blocks=False, model=None):
    """Write a dynamic (no ``parent``) or differencing VHD holding ``sectors`` (a set of sector numbers).

    Data comes from ``model`` (the disk's content at this point).  With ``full_blocks`` every touched
    block is written whole with a full bitmap (XAPI/XO style); otherwise bitmaps are exact.
    """
    spb = block_size // SECTOR
    masks = {}
    for sector in sectors:
        if sector * SECTOR < size:
            masks[sector // spb] = masks.get(sector // spb, 0) | (1 << (sector % spb))
    bms = bitmap_size(block_size)

    def read_block(index):
        start = index * block_size
        data = bytes(model[start:start + block_size]).ljust(block_size, b"\x00")
        mask = masks[index]
        if full_blocks or mask == (1 << spb) - 1:
            return None, data
        buf = bytearray(block_size)
        for s in range(spb):
            if mask >> s & 1:
                buf[s * SECTOR:(s + 1) * SECTOR] = data[s * SECTOR:(s + 1) * SECTOR]
        return mask_to_bitmap(mask, bms), bytes(buf)

    stream = VhdStream(size, sorted(masks), read_block, disk_type=DISK_DIFFERENCING if parent else DISK_DYNAMIC,
                       unique_id=unique_id or uuid.uuid4(), parent=parent, block_size=block_size)
    write_stream(stream, path)
    return path


class ChainModel:
    """A disk modelled as raw bytes per restore point, and the chain of VHD files representing it."""

    def __init__(self, directory, size, block_size):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.block_size = block_size
        self.sizes = []
        self.points = []  # raw content per point, oldest first
        self.paths = []   # file per point, oldest first
        self.current = bytearray(size)

    def add_point(self, writes, size=None, full_blocks=False):
        """Apply ``writes`` [(sector, count, seed)] (after resizing to ``size``) and write the next file."""
        size = size or len(self.current)
        if size > len(self.current):
            self.current.extend(bytes(size - len(self.current)))
        touched = set()
        for sector, count, seed in writes:
            sector = sector % (size // SECTOR)
            count = max(1, min(count, size // SECTOR - sector))
            self.current[sector * SECTOR:(sector + count) * SECTOR] = pattern(seed, count * SECTOR)
            touched.update(range(sector, sector + count))
        number = len(self.paths)
        path = os.path.join(self.directory, f"2026010{number // 10}T{number % 10:02d}0000Z.vhd")
        if full_blocks:
            spb = self.block_size // SECTOR
            touched = {s for b in {t // spb for t in touched} for s in range(b * spb, (b + 1) * spb)}
        parent = ParentLink.for_parent_file(self.paths[-1], path) if self.paths else None
        if not self.paths:
            touched = set(range(size // SECTOR)) if not writes else touched
        write_vhd(path, size, touched, self.block_size, parent=parent, full_blocks=full_blocks, model=self.current)
        self.paths.append(path)
        self.points.append(bytes(self.current))
        return path


def build_model(directory, scenario):
    """A :class:`ChainModel` from ``(block_size, size, base_writes, [(writes, growth_sectors, full_blocks), ...])``."""
    block_size, size, base_writes, delta_specs = scenario
    model = ChainModel(directory, size, block_size)
    model.add_point(base_writes)
    for delta_writes, growth, full_blocks in delta_specs:
        size += growth * 512
        model.add_point(delta_writes, size=size, full_blocks=full_blocks)
    return model


def read_disk(path):
    """The whole disk the chain ending at ``path`` represents, read by our engine."""
    with VhdChain.open(path) as chain:
        return chain.read(0, chain.size)


def qemu_raw(path, out):
    """Convert a VHD to raw with qemu-img (current-size semantics forced)."""
    subprocess.run([QEMU_IMG, "convert", "-f", "vpc", "-O", "raw", path, out], check=True, capture_output=True)
    with open(out, "rb") as handle:
        return handle.read()


def libvhdi_read(paths, length=None):
    """Read a newest-first chain with libvhdi (set_parent on every level); return ``length`` bytes (default all)."""
    import pyvhdi  # pylint: disable=import-outside-toplevel,import-error

    handles = []
    for path in paths:
        handle = pyvhdi.file()
        handle.open(path)
        handles.append(handle)
    for child, parent in zip(handles, handles[1:], strict=False):
        child.set_parent(parent)
    # Read in aligned 64 KiB pieces: libvhdi 20260901 mis-reads single reads spanning a partial block.
    total = length or handles[0].get_media_size()
    step = 64 * 1024
    try:
        return b"".join(handles[0].read_buffer_at_offset(min(step, total - offset), offset) for offset in range(0, total, step))
    finally:
        for handle in handles:
            handle.close()


def poke_past_end(path):
    """Store non-zero bytes (bitmap bits set) past the virtual end in the file's last block, as some writers do."""
    with VhdFile(path) as vhd:
        last = vhd.block_count - 1
        offset = vhd.block_offset(last)
        within = vhd.size - last * vhd.block_size
        if offset is None or within == vhd.block_size:
            return False
        bitmap_bytes, block_size = vhd.bitmap_size, vhd.block_size
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * bitmap_bytes)
        handle.seek(offset + bitmap_bytes + within)
        handle.write(b"\x5a" * (block_size - within))
    return True


def xapi_stream_bytes(size, blocks, disk_type, parent_id=None, parent_path="/var/run/sr-mount/abc/base.vhd"):
    """A VHD in the XAPI export stream layout: BAT at 2048, a zero locator sector at 1536, packed full blocks.

    ``blocks`` maps block index -> 2 MiB of data.  A delta gets one MacX locator pointing at 1536.
    """
    block_size = 2 * 1024 * 1024
    entries = (size + block_size - 1) // block_size
    footer = Footer(disk_type=disk_type, current_size=size, original_size=size, unique_id=uuid.uuid4().bytes, timestamp=0,
                    creator_app=b"caml", creator_version=1, geometry=chs_geometry(size))
    header = Header(table_offset=2048, max_table_entries=entries, block_size=block_size)
    if parent_id is not None:
        header.parent_unique_id = parent_id
        header.parent_timestamp = 12345
        header.parent_name = parent_path
        header.locators[0] = ParentLocator(b"MacX", 512, 512, 0, 1536)
    bat_bytes = (entries * 4 + 511) // 512 * 512
    table = [0xFFFFFFFF] * entries
    position = 2048 + bat_bytes
    for index in sorted(blocks):
        table[index] = position // 512
        position += 512 + block_size
    parts = [footer.pack(), header.pack(), bytes(512), bat_pack(table, bat_bytes)]
    for index in sorted(blocks):
        parts += [b"\xff" * 512, blocks[index]]
    parts.append(footer.pack())
    return b"".join(parts)


class TrickleReader:
    """A non-seekable reader returning short reads, like an HTTP response."""

    def __init__(self, data, step=70001):
        self.data = memoryview(data)
        self.position = 0
        self.step = step

    def read(self, size=-1):
        if size < 0:
            size = len(self.data)
        size = min(size, self.step, len(self.data) - self.position)
        chunk = bytes(self.data[self.position:self.position + size])
        self.position += size
        self.step = self.step * 7 % 100003 + 1
        return chunk


class MemoryFile(RandomAccessFile):
    """A file of :class:`MemoryStorage`: shares its bytes with the storage entry, so a rename keeps it open (as an inode)."""

    def __init__(self, data, path, writable):
        self.data = data
        self.path = path
        self.writable = writable
        self.closed = False

    def pread(self, length, offset):
        assert not self.closed, "read after close"
        return bytes(self.data[offset:offset + length])

    def pwrite(self, data, offset):
        assert self.writable and not self.closed, "write to a read-only or closed file"
        if offset > len(self.data):
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset:offset + len(data)] = bytes(data)

    def size(self):
        return len(self.data)

    def truncate(self, size):
        assert self.writable
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    def sync(self):
        assert not self.closed

    def close(self):
        assert not self.closed, "closed twice"
        self.closed = True


class MemoryWriter(AtomicWriter):
    def __init__(self, storage, path, overwrite):
        self.storage, self.path, self.overwrite = storage, path, overwrite
        self.buffer = bytearray()

    def write(self, data):
        self.buffer += bytes(data)

    def commit(self):
        if not self.overwrite and self.path in self.storage.files:
            raise FileExistsError(17, "exists", self.path)
        self.storage.put(self.path, self.buffer)

    def abort(self):
        self.buffer = bytearray()


class MemoryStorage(Storage):
    """Files held in a dict: a second Storage, standing in for an object store, that no ``os`` call can reach."""

    def __init__(self):
        self.files = {}
        self.times = {}

    def put(self, path, data):
        path = check_relative_path(path)
        self.files[path] = bytearray(data)
        self.times[path] = time.time()

    def describe(self, path=""):
        return "mem://" + path

    def _file(self, path):
        path = check_relative_path(path)
        if path not in self.files:
            raise FileNotFoundError(2, "no such file", self.describe(path))
        return path

    def open_file(self, path, writable=False):
        path = self._file(path)
        return MemoryFile(self.files[path], path, writable)

    def atomic_writer(self, path, overwrite=False):
        path = check_relative_path(path)
        if not overwrite and path in self.files:
            raise FileExistsError(17, "exists", self.describe(path))
        return MemoryWriter(self, path, overwrite)

    def list_dir(self, path=""):
        prefix = check_relative_path(path) + "/" if path else ""
        return sorted({name[len(prefix):].split("/")[0] for name in self.files if name.startswith(prefix)})

    def exists(self, path):
        return check_relative_path(path) in self.files or self.is_dir(path)

    def is_dir(self, path):
        prefix = check_relative_path(path) + "/"
        return any(name.startswith(prefix) for name in self.files)

    def size(self, path):
        return len(self.files[self._file(path)])

    def modified_time(self, path):
        return self.times[self._file(path)]

    def touch(self, path):
        self.times[self._file(path)] = time.time()

    def make_dirs(self, path):
        check_relative_path(path)

    def make_dir_exclusive(self, path):
        raise NotImplementedError("folders are prefixes here")

    def create_exclusive(self, path, data):
        if check_relative_path(path) in self.files:
            raise FileExistsError(17, "exists", self.describe(path))
        self.put(path, data)

    def rename(self, source, target):
        source = self._file(source)
        target = check_relative_path(target)
        self.files[target] = self.files.pop(source)
        self.times[target] = self.times.pop(source)

    def remove(self, path):
        path = self._file(path)
        del self.files[path]
        del self.times[path]

    def remove_tree(self, path):
        prefix = check_relative_path(path) + "/"
        for name in [name for name in self.files if name.startswith(prefix)]:
            self.remove(name)

    def sync_dir(self, path):
        if path:
            check_relative_path(path)


def memory_copy(paths, folder):
    """A :class:`MemoryStorage` holding the local ``paths`` under ``folder``; returns it and the names, in order."""
    storage = MemoryStorage()
    names = []
    for path in paths:
        name = posixpath.join(folder, os.path.basename(path))
        with open(path, "rb") as handle:
            storage.put(name, handle.read())
        names.append(name)
    return storage, names
