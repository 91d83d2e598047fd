# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy-on-write block storage for simulated VDIs.

Each SR owns one ``BlockStore``: a sparse file cut into 2 MiB slots, with a
reference count per slot.  A ``Disk`` (the content of one VDI) maps block
indexes to slots.  Cloning a disk copies that map and bumps the reference
counts, so a snapshot costs in proportion to allocated blocks, never to the
virtual size.  Writing to a shared slot first copies it (copy on write), so
two disks that share history differ exactly in the blocks whose slot differs.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid as uuidlib

BLOCK_SIZE = 2 * 1024 * 1024
CBT_BLOCK = 64 * 1024
ZERO_BLOCK = bytes(BLOCK_SIZE)


class StoreFull(Exception):
    """Raised when a new block would exceed the SR's physical size."""

    def __init__(self, requested, maximum):
        super().__init__(requested, maximum)
        self.requested = requested
        self.maximum = maximum


class BlockStore:
    """Slots of BLOCK_SIZE bytes in one sparse file, reference counted."""

    def __init__(self, path, capacity):
        self.path = path
        self.capacity = int(capacity)
        self.reserved = 0
        self.lock = threading.RLock()
        self.refs = {}
        self.free = []
        self.next_slot = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def close(self):
        """Release the backing file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    @property
    def used(self):
        """Bytes held by allocated slots."""
        return len(self.refs) * BLOCK_SIZE

    @property
    def utilisation(self):
        """Bytes counted as used on the SR, including reserved (filled) space."""
        return self.used + self.reserved

    def check_room(self, blocks):
        """Raise StoreFull unless ``blocks`` more slots fit."""
        need = blocks * BLOCK_SIZE
        if self.utilisation + need > self.capacity:
            raise StoreFull(self.utilisation + need, self.capacity)

    def alloc(self, content=None):
        """Allocate a slot holding ``content`` (zeros when None) and return it."""
        with self.lock:
            self.check_room(1)
            if self.free:
                slot = self.free.pop()
                reused = True
            else:
                slot = self.next_slot
                self.next_slot += 1
                reused = False
                # Keep the file as long as its slots (sparse), so sendfile never hits EOF.
                os.ftruncate(self.fd, self.next_slot * BLOCK_SIZE)
            self.refs[slot] = 1
        if content is not None:
            self.pwrite(slot, 0, content)
        elif reused:
            self.pwrite(slot, 0, ZERO_BLOCK)
        return slot

    def incref(self, slot):
        """Add one reference to ``slot``."""
        with self.lock:
            self.refs[slot] += 1

    def decref(self, slot):
        """Drop one reference; the slot is freed when none is left."""
        with self.lock:
            count = self.refs[slot] - 1
            if count:
                self.refs[slot] = count
            else:
                del self.refs[slot]
                self.free.append(slot)

    def shared(self, slot):
        """True when more than one disk references ``slot``."""
        with self.lock:
            return self.refs.get(slot, 0) > 1

    def pwrite(self, slot, offset, data):
        """Write ``data`` at ``offset`` inside ``slot``."""
        view = memoryview(data)
        pos = slot * BLOCK_SIZE + offset
        while view:
            done = os.pwrite(self.fd, view, pos)
            view = view[done:]
            pos += done

    def pread(self, slot, offset, length):
        """Read ``length`` bytes at ``offset`` inside ``slot``."""
        return os.pread(self.fd, length, slot * BLOCK_SIZE + offset)

    def readinto(self, slot, offset, view):
        """Fill ``view`` from ``slot`` at ``offset``."""
        pos = slot * BLOCK_SIZE + offset
        got = 0
        while got < len(view):
            done = os.preadv(self.fd, [view[got:]], pos + got)
            if not done:
                view[got:] = bytes(len(view) - got)
                break
            got += done

    def file_offset(self, slot):
        """Absolute offset of ``slot`` in the backing file (for sendfile)."""
        return slot * BLOCK_SIZE


class Disk:
    """The content of one VDI: block index to slot, plus a virtual size.

    ``vhd_id`` is the unique id in the footer of the VDI's VHD file on the host. It is not the VDI
    uuid: sm's FileSR/LVHDSR snapshot (xapi-project/sm libs/sm/drivers/FileSR.py, _snapshot) turns
    the leaf into a hidden base copy and creates new leaf files, each with a fresh VHD id, for the
    live VDI and for the snapshot. An export with ``base=`` names the base's VHD id as its parent.
    """

    def __init__(self, store, size, blocks=None):
        self.store = store
        self.size = int(size)
        self.blocks = blocks if blocks is not None else {}
        self.lock = threading.RLock()
        self.on_write = None
        self.vhd_id = uuidlib.uuid4().bytes

    def new_leaf(self):
        """A snapshot made this disk a new leaf file on the host: it gets a fresh VHD id."""
        self.vhd_id = uuidlib.uuid4().bytes

    @property
    def nblocks(self):
        """Number of blocks covering the virtual size."""
        return (self.size + BLOCK_SIZE - 1) // BLOCK_SIZE

    @property
    def allocated(self):
        """Bytes of allocated blocks."""
        return len(self.blocks) * BLOCK_SIZE

    def clone(self):
        """A new disk sharing every block (copy on write)."""
        with self.lock, self.store.lock:
            for slot in self.blocks.values():
                self.store.incref(slot)
            return Disk(self.store, self.size, dict(self.blocks))

    def destroy(self):
        """Drop every block."""
        with self.lock:
            for slot in self.blocks.values():
                self.store.decref(slot)
            self.blocks = {}

    def pin(self):
        """A stable copy of the block map whose slots stay valid until ``unpin``."""
        with self.lock, self.store.lock:
            blocks = dict(self.blocks)
            for slot in blocks.values():
                self.store.incref(slot)
        return blocks

    def unpin(self, blocks):
        """Release slots pinned by ``pin``."""
        with self.store.lock:
            for slot in blocks.values():
                self.store.decref(slot)

    def resize(self, size):
        """Grow (or, internally, shrink) the virtual size."""
        with self.lock:
            self.size = int(size)
            last = self.nblocks
            for idx in [i for i in self.blocks if i >= last]:
                self.store.decref(self.blocks.pop(idx))

    def _writable_slot(self, idx, whole):
        slot = self.blocks.get(idx)
        if slot is not None and not self.store.shared(slot):
            return slot
        content = None
        if slot is not None and not whole:
            content = self.store.pread(slot, 0, BLOCK_SIZE)
        new = self.store.alloc(content)
        if slot is not None:
            self.store.decref(slot)
        self.blocks[idx] = new
        return new

    def write(self, offset, data, skip_zero_blocks=False):
        """Write ``data`` at ``offset`` with copy on write.

        With ``skip_zero_blocks`` a whole block of zeros over an absent block
        is not allocated (the content is the same)."""
        view = memoryview(data).cast('B')
        if offset < 0 or offset + len(view) > self.size:
            raise ValueError('write beyond the end of the disk')
        pos = offset
        with self.lock:
            while view:
                idx, inner = divmod(pos, BLOCK_SIZE)
                count = min(len(view), BLOCK_SIZE - inner)
                piece = view[:count]
                whole = count == BLOCK_SIZE
                if not (skip_zero_blocks and whole and idx not in self.blocks and piece == ZERO_BLOCK):
                    slot = self._writable_slot(idx, whole)
                    self.store.pwrite(slot, inner, piece)
                if self.on_write is not None:
                    self.on_write(pos, count)
                view = view[count:]
                pos += count

    def read(self, offset, length):
        """Read bytes; absent blocks read as zeros."""
        length = max(0, min(length, self.size - offset))
        out = bytearray(length)
        view = memoryview(out)
        pos = offset
        with self.lock:
            while view:
                idx, inner = divmod(pos, BLOCK_SIZE)
                count = min(len(view), BLOCK_SIZE - inner)
                slot = self.blocks.get(idx)
                if slot is not None:
                    self.store.readinto(slot, inner, view[:count])
                view = view[count:]
                pos += count
        return bytes(out)

    def sha256(self):
        """sha256 of the whole virtual content."""
        digest = hashlib.sha256()
        blocks = self.pin()
        try:
            buf = bytearray(BLOCK_SIZE)
            view = memoryview(buf)
            for idx in range(self.nblocks):
                count = min(BLOCK_SIZE, self.size - idx * BLOCK_SIZE)
                slot = blocks.get(idx)
                if slot is None:
                    digest.update(ZERO_BLOCK[:count])
                else:
                    self.store.readinto(slot, 0, view[:count])
                    digest.update(view[:count])
        finally:
            self.unpin(blocks)
        return digest.hexdigest()

    def fingerprint(self):
        """A cheap content identity: sha256 over the size and every allocated
        non-zero block (index and data).  Equal content gives equal
        fingerprints whatever the allocation; cost is proportional to
        allocated data, not to the virtual size."""
        digest = hashlib.sha256(b'size:%d;' % self.size)
        blocks = self.pin()
        try:
            buf = bytearray(BLOCK_SIZE)
            view = memoryview(buf)
            for idx in sorted(blocks):
                if idx >= self.nblocks:
                    continue
                self.store.readinto(blocks[idx], 0, view)
                if view != ZERO_BLOCK:
                    digest.update(b'block:%d;' % idx)
                    digest.update(view)
        finally:
            self.unpin(blocks)
        return digest.hexdigest()

    def differing_blocks(self, other):
        """Indexes of blocks whose content may differ from ``other`` (different
        slots, i.e. written in one of them since they shared history)."""
        if other is None or other.store is not self.store:
            return sorted(self.blocks)
        with self.lock, other.lock:
            mine, theirs = self.blocks, other.blocks
            keys = set(mine) | set(theirs)
            return sorted(i for i in keys if i < self.nblocks and mine.get(i) != theirs.get(i))


def pattern(seed, length):
    """Deterministic pseudo-random bytes for guest writes (same on both sides)."""
    out = bytearray()
    counter = 0
    seed_bytes = str(seed).encode()
    while len(out) < length:
        out += hashlib.sha512(seed_bytes + b':' + str(counter).encode()).digest() * 64
        counter += 1
    return bytes(out[:length])
