# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block-level integrity: one checksum per data block of a VHD, kept in a sidecar next to it.

Why a sidecar: a whole-file checksum must be recomputed from every byte after a merge changes a
few blocks, so its cost follows the disk, not the change.  A checksum per block lets any reader
check exactly what it reads, and lets a merge update only the entries of the blocks it writes.

``<name>.vhd.blocksums`` (binary, big-endian) holds:

* a 512-byte header: magic, format version, hash name, block size, entry count, the VHD's disk
  type, unique id and parent unique id, the digests of the VHD's end footer, dynamic header and
  BAT (the structures a merge rewrites), and the sha256 of the header itself;
* one 32-byte entry per BAT entry: digest of the block as stored (sector bitmap, then data); all
  zero bytes for an absent block; all ``0xFF`` bytes for a present block whose checksum is not
  known (a merge into a file written by another tool).

The hash is BLAKE3 (the ``blake3`` package) where it is installed, else SHA-256: both give 32
bytes, the file names its own, and every reader uses the one its file names.  BLAKE3 is chosen
because hashing is the CPU cost of every reader and writer here: it runs at about 5 GB/s a core
on the development machine, SHA-256 at 1.1-1.5 GB/s (``benchmarks/bench_verify.py`` prints both).

Xen Orchestra lists a VDI folder for ``.vhd`` files and merge states only, so it neither removes
nor reads a file with this suffix (xen-orchestra ``@xen-orchestra/backup-archive`` RemoteDiskLineage
``init``: ``isDisk``; orphan data files are removed only inside a VHD directory's data folders).
"""

from __future__ import annotations

import array
import concurrent.futures
import dataclasses
import hashlib
import os
import struct
import traceback
from collections.abc import Iterable

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import Storage

from .disk import VhdFile, pread_exact
from .structures import (
    BAT_UNUSED, DISK_FIXED, FOOTER_SIZE, HEADER_SIZE, SECTOR, Footer, Header, VhdError, bat_parse, bitmap_size,
)

SUFFIX = ".blocksums"
MAGIC = b"XDBBSUM1"
VERSION = 1
try:
    import blake3
except ImportError:  # the collection still works without it, with SHA-256 (slower)
    blake3 = None
    BLAKE3_IMPORT_ERROR = traceback.format_exc()
else:
    BLAKE3_IMPORT_ERROR = None

#: The hashes a checksum file may name, and their constructors (each takes optional data, has update/digest).
HASHES = {"sha256": hashlib.sha256}
if blake3 is not None:
    HASHES["blake3"] = blake3.blake3
#: The hash of the checksum files written here.
HASH_NAME = "blake3" if blake3 is not None else "sha256"
DIGEST_SIZE = 32
HEADER_BYTES = 512
ABSENT = bytes(DIGEST_SIZE)
UNKNOWN = b"\xff" * DIGEST_SIZE
#: Cap on the threads hashing a file (hashlib and pread release the GIL, so threads use every core).
MAX_HASH_THREADS = 8
#: Blocks read and hashed per task when a whole file is hashed (bounds memory: tasks x span).
BLOCKS_PER_TASK = 4

# magic, version, hash name, block size, entries, disk type, unique id, parent unique id,
# footer / header / BAT digests, flags; then the sha256 of everything before it.
_HEAD = struct.Struct(">8sI16sIII16s16s32s32s32sI")
#: Flag: the file was merged by another tool and checked block by block against what we recorded.
FLAG_FOREIGN_MERGE = 1


def sidecar_name(vhd_name: str) -> str:
    """The block checksum file of a VHD (a storage path or a file name)."""
    return vhd_name + SUFFIX


def is_sidecar_name(name: str) -> bool:
    return name.endswith(".vhd" + SUFFIX)


def hasher(hash_name: str = HASH_NAME):
    """A new hash object of the named hash (``update``/``digest``)."""
    return HASHES[hash_name]()


def block_digest(span, hash_name: str = HASH_NAME) -> bytes:
    """Checksum of one stored block: its sector bitmap followed by its data (a bytes-like object)."""
    return HASHES[hash_name](span).digest()


def structure_digests(footer_raw: bytes, header_raw: bytes, bat_raw: bytes, hash_name: str = HASH_NAME) -> tuple[bytes, bytes, bytes]:
    return block_digest(footer_raw, hash_name), block_digest(header_raw, hash_name), block_digest(bat_raw, hash_name)


class BlockSumsError(VhdError):
    """A block checksum file that is missing, unreadable or not ours."""

    error_code = 'invalid_block_checksums'


@dataclasses.dataclass
class BlockSums:
    """The checksums of one VHD's blocks and structures (see the module docstring)."""

    block_size: int
    entries: int
    disk_type: int
    unique_id: bytes
    parent_unique_id: bytes
    footer_digest: bytes = ABSENT
    header_digest: bytes = ABSENT
    bat_digest: bytes = ABSENT
    flags: int = 0
    digests: bytearray = dataclasses.field(default_factory=bytearray)
    hash_name: str = HASH_NAME

    def __post_init__(self):
        if not self.digests:
            self.digests = bytearray(self.entries * DIGEST_SIZE)
        if len(self.digests) != self.entries * DIGEST_SIZE:
            raise ValueError("%d digest bytes for %d entries" % (len(self.digests), self.entries))

    # -- entries --------------------------------------------------------------------------------------------

    def digest(self, index: int) -> bytes:
        """The entry of block ``index``: a digest, :data:`ABSENT` or :data:`UNKNOWN`."""
        if index >= self.entries:
            return ABSENT
        return bytes(self.digests[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE])

    def set(self, index: int, digest: bytes) -> None:
        self.digests[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE] = digest

    def grow(self, entries: int) -> None:
        """Room for ``entries`` blocks (a merge into a smaller parent); new entries are absent."""
        if entries > self.entries:
            self.digests.extend(bytes((entries - self.entries) * DIGEST_SIZE))
            self.entries = entries

    def present(self) -> list[int]:
        """Indices of the blocks recorded as present (known or not)."""
        view = memoryview(self.digests)
        return [index for index in range(self.entries) if view[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE] != ABSENT]

    @staticmethod
    def entry_offset(index: int) -> int:
        """Where entry ``index`` lies in the file (entries are updated in place by a merge)."""
        return HEADER_BYTES + index * DIGEST_SIZE

    # -- serialisation -------------------------------------------------------------------------------------

    def pack_header(self) -> bytes:
        head = _HEAD.pack(MAGIC, VERSION, self.hash_name.encode("ascii"), self.block_size, self.entries, self.disk_type,
                          self.unique_id, self.parent_unique_id, self.footer_digest, self.header_digest, self.bat_digest, self.flags)
        return (head + hashlib.sha256(head).digest()).ljust(HEADER_BYTES, b"\x00")

    def pack(self) -> bytes:
        return self.pack_header() + bytes(self.digests)

    @classmethod
    def parse(cls, raw: bytes, path: str) -> 'BlockSums':
        if len(raw) < HEADER_BYTES:
            raise BlockSumsError(path, "block checksums", "header", 0, "file of %d bytes is too short" % len(raw))
        head = raw[:_HEAD.size]
        (magic, version, hash_name, block_size, entries, disk_type, unique_id, parent_unique_id,
         footer_digest, header_digest, bat_digest, flags) = _HEAD.unpack(head)
        if magic != MAGIC:
            raise BlockSumsError(path, "block checksums", "magic", 0, "not a block checksum file")
        if hashlib.sha256(head).digest() != raw[_HEAD.size:_HEAD.size + DIGEST_SIZE]:
            raise BlockSumsError(path, "block checksums", "header", 0, "header checksum mismatch (the file is damaged)")
        hash_name = hash_name.rstrip(b"\x00").decode("ascii", "replace")
        if version != VERSION or hash_name not in ("sha256", "blake3"):
            raise BlockSumsError(path, "block checksums", "version", 8, "version %d / hash %r unsupported by this collection: upgrade it"
                                 % (version, hash_name))
        if hash_name not in HASHES:
            raise BlockSumsError(path, "block checksums", "hash", 12, "its checksums are BLAKE3, and the Python package blake3 is not "
                                 "installed here: install it on the control node (pip install blake3, see requirements/runtime.txt)")
        size = HEADER_BYTES + entries * DIGEST_SIZE
        if len(raw) != size:
            raise BlockSumsError(path, "block checksums", "entries", 36, "%d bytes, %d expected for %d entries (truncated or damaged)"
                                 % (len(raw), size, entries))
        return cls(block_size=block_size, entries=entries, disk_type=disk_type, unique_id=unique_id, parent_unique_id=parent_unique_id,
                   footer_digest=footer_digest, header_digest=header_digest, bat_digest=bat_digest, flags=flags,
                   digests=bytearray(memoryview(raw)[HEADER_BYTES:]), hash_name=hash_name)  # one copy of the entries, not two

    @classmethod
    def load(cls, storage: Storage, name: str) -> 'BlockSums':
        """Read the checksum file ``name`` (the sidecar's own path) from ``storage``."""
        try:
            raw = storage.read_bytes(name)
        except OSError as error:
            raise BlockSumsError(storage.describe(name), "block checksums", "file", None, "cannot be read (%s)" % (error.strerror or error)) from None
        return cls.parse(raw, storage.describe(name))

    @classmethod
    def load_for(cls, storage: Storage, vhd_name: str) -> 'BlockSums | None':
        """The sidecar of the VHD ``vhd_name``, or ``None`` when it has none."""
        name = sidecar_name(vhd_name)
        if not storage.exists(name):
            return None
        return cls.load(storage, name)

    def save(self, storage: Storage, name: str) -> None:
        """Write atomically as ``name`` (the sidecar's own path), replacing any previous one.

        The entries are written from where they lie, not packed into a new object first: for a 2 TiB
        disk they are 32 MiB, and a copy or two of them would push a module past its memory budget.
        """
        writer = storage.atomic_writer(name, overwrite=True)
        try:
            writer.write(self.pack_header())
            writer.write(memoryview(self.digests))
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    # -- the structures ------------------------------------------------------------------------------------

    def set_structures(self, footer_raw: bytes, header_raw: bytes, bat_raw: bytes) -> None:
        self.footer_digest, self.header_digest, self.bat_digest = structure_digests(footer_raw, header_raw, bat_raw, self.hash_name)

    def block_digest(self, span) -> bytes:
        """The digest of a stored block span with this file's hash."""
        return block_digest(span, self.hash_name)

    def describe_block(self, vhd_path: str, index: int) -> str:
        return "%s: block %d (virtual offset %d)" % (vhd_path, index, index * self.block_size)


def read_structures(vhd: VhdFile) -> tuple[bytes, bytes, bytes]:
    """The raw end footer, dynamic header and BAT of a dynamic or differencing file (what the sidecar's digests cover)."""
    footer = pread_exact(vhd.file, FOOTER_SIZE, vhd.footer_offset, vhd.path, "footer", "cookie")
    header = pread_exact(vhd.file, HEADER_SIZE, vhd.footer.data_offset, vhd.path, "header", "cookie")
    bat = pread_exact(vhd.file, vhd.header.max_table_entries * 4, vhd.header.table_offset, vhd.path, "BAT", "entries")
    return footer, header, bat


def new_sums_for(vhd: VhdFile, hash_name: str = HASH_NAME) -> BlockSums:
    """An empty sidecar for ``vhd``: identity and structures filled in, every block absent."""
    sums = BlockSums(block_size=vhd.block_size, entries=vhd.header.max_table_entries, disk_type=vhd.disk_type,
                     unique_id=vhd.unique_id, parent_unique_id=vhd.header.parent_unique_id, hash_name=hash_name)
    sums.set_structures(*read_structures(vhd))
    return sums


# -- whole files: hash (record, migrate) and verify, on every core ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockProblem:
    """One damaged or unrecorded block, named by file, block number and virtual offset."""

    path: str
    index: int
    virtual_offset: int
    problem: str

    def __str__(self) -> str:
        return "%s: block %d (virtual offset %d): %s" % (self.path, self.index, self.virtual_offset, self.problem)


def hash_blocks(vhd: VhdFile, indices: Iterable[int], threads: int | None = None, hash_name: str = HASH_NAME) -> dict:
    """Digest (``hash_name``) of the stored span (bitmap + data) of each present block in ``indices``: index to digest.

    Reads and hashes on ``threads`` threads (every core by default): pread and hashlib release the GIL.
    """
    span = vhd.bitmap_size + vhd.block_size
    bat = vhd.bat
    indices = [index for index in indices if bat[index] != BAT_UNUSED]
    tasks = [indices[start:start + BLOCKS_PER_TASK] for start in range(0, len(indices), BLOCKS_PER_TASK)]

    def run(task):
        return [(index, block_digest(pread_exact(vhd.file, span, bat[index] * SECTOR, vhd.path, "block[%d]" % index, "data"), hash_name))
                for index in task]

    threads = threads or min(os.cpu_count() or 1, MAX_HASH_THREADS)
    if threads <= 1 or len(tasks) <= 1:
        return dict(pair for task in tasks for pair in run(task))
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(pair for result in pool.map(run, tasks) for pair in result)


def compute_sums(vhd: VhdFile, threads: int | None = None, hash_name: str = HASH_NAME) -> BlockSums:
    """The sidecar of an existing file, from reading all of it (migration, or recording another tool's file)."""
    if vhd.is_fixed:
        raise VhdError(vhd.path, "footer", "disk_type", vhd.footer_offset + 60, "a fixed disk has no blocks to checksum")
    sums = new_sums_for(vhd, hash_name)
    for index, digest in hash_blocks(vhd, range(vhd.block_count), threads, hash_name).items():
        sums.set(index, digest)
    return sums


def structure_problems(vhd: VhdFile, sums: BlockSums) -> list[str]:
    """Differences between a file's identity, footer, header and BAT and what its sidecar recorded."""
    problems = []
    if sums.unique_id != vhd.unique_id:
        problems.append("%s: unique id %s, the block checksums are of %s (the file was replaced)"
                        % (vhd.path, vhd.unique_id.hex(), sums.unique_id.hex()))
        return problems
    if sums.block_size != vhd.block_size or sums.entries < vhd.block_count:
        problems.append("%s: block size %d and %d blocks, the block checksums have %d and %d" % (
            vhd.path, vhd.block_size, vhd.block_count, sums.block_size, sums.entries))
        return problems
    footer, header, bat = structure_digests(*read_structures(vhd), hash_name=sums.hash_name)
    for name, actual, recorded in (("footer", footer, sums.footer_digest), ("dynamic header", header, sums.header_digest),
                                   ("BAT", bat, sums.bat_digest)):
        if actual != recorded:
            problems.append("%s: its %s differs from the one recorded with its block checksums (changed or damaged)" % (vhd.path, name))
    return problems


def verify_blocks(vhd: VhdFile, sums: BlockSums, indices: Iterable[int] | None = None, threads: int | None = None) -> list[BlockProblem]:
    """Hash every present block (or those of ``indices``) and compare with the sidecar; returns the problems."""
    indices = range(vhd.block_count) if indices is None else indices
    bat = vhd.bat
    problems = []
    wanted = []
    for index in indices:
        recorded = sums.digest(index)
        present = bat[index] != BAT_UNUSED
        if present and recorded == ABSENT:
            problems.append(BlockProblem(vhd.path, index, index * vhd.block_size, "present in the file but recorded as absent"))
        elif not present and recorded != ABSENT:
            problems.append(BlockProblem(vhd.path, index, index * vhd.block_size, "recorded but absent from the file's BAT"))
        elif present and recorded != UNKNOWN:
            wanted.append(index)
    for index, digest in sorted(hash_blocks(vhd, wanted, threads, sums.hash_name).items()):
        if digest != sums.digest(index):
            problems.append(BlockProblem(vhd.path, index, index * vhd.block_size,
                                         "does not match its recorded checksum (the block is damaged)"))
    return problems


def check_read_block(vhd: VhdFile, sums: BlockSums, index: int, span) -> None:
    """Raise :class:`VhdError` naming the block when a block just read (bitmap + data) is not what was recorded."""
    recorded = sums.digest(index)
    if recorded == UNKNOWN:
        return
    if recorded == ABSENT:
        raise VhdError(vhd.path, "block[%d]" % index, "checksum", None,
                       "block %d (virtual offset %d) is present but recorded as absent" % (index, index * vhd.block_size))
    if sums.block_digest(span) != recorded:
        raise VhdError(vhd.path, "block[%d]" % index, "checksum", vhd.bat[index] * SECTOR,
                       "block %d (virtual offset %d) does not match its recorded checksum (the block is damaged)"
                       % (index, index * vhd.block_size))


def attach(vhd: VhdFile, sums: BlockSums) -> VhdFile:
    """Make every block read from ``vhd`` (restore, merge, copy) be checked against ``sums``; returns ``vhd``."""
    vhd.verify_block = lambda index, span: check_read_block(vhd, sums, index, span)
    return vhd


# -- a VHD written as a stream: checksums computed as the bytes pass --------------------------------------------


class StreamSums:
    """Consumer of a dynamic or differencing VHD's bytes in file order (``update(chunk)``), producing its sidecar.

    The export writes each file once; this sees the same bytes (on a write-behind thread) and
    hashes each block span as it passes, so the checksums cost no extra read.  Bytes between
    structures are ignored; blocks must not overlap (any VHD we accept does not: overlapping
    blocks raise :class:`VhdError`).

    Cost: one hash ``update`` per block span a chunk touches (hashlib releases the GIL for them),
    nothing per byte in Python.  Memory: the BAT (4 bytes an entry), the present blocks in file
    order (4 bytes each) and the sidecar's entries (32 bytes each), so 40 MiB for a 2 TiB disk whose
    every block is present, whatever the chunking.
    """

    def __init__(self, name: str = "<stream>", hash_name: str = HASH_NAME):
        self.name = name
        self.hash_name = hash_name
        self._new_hash = HASHES[hash_name]
        self.position = 0
        self._head = bytearray()  # bytes kept until the footer, header and BAT are known
        self._bat = None  # the BAT's entries (array)
        self._order = None  # indices of the present blocks in file order (array)
        self._next = 0  # position in _order of the next span to fill
        self._done_to = 0  # end of the last span hashed (the next must not start before it)
        self._hash = None
        self._tail = bytearray()  # the last FOOTER_SIZE bytes seen (the end footer, once finished)
        self.sums: BlockSums | None = None
        self._span_size = 0
        #: Called as ``on_block(index, digest)`` as soon as a block's checksum is known (a copy checks it against its
        #: source's there, so a damaged block stops the copy where it is read); what it raises, ``update`` raises.
        self.on_block = None

    def update(self, chunk) -> None:
        view = memoryview(chunk).cast("B")
        start = self.position
        self.position += len(view)
        if len(view) >= FOOTER_SIZE:
            self._tail = bytearray(view[-FOOTER_SIZE:])
        else:
            self._tail = (self._tail + view)[-FOOTER_SIZE:]
        if self._order is None:
            self._head.extend(view)
            if not self._parse_head():
                return
            view = memoryview(self._head)  # the blocks that came with the structures, hashed from there
            start = 0
            self._head = bytearray()
        self._hash_spans(view, start)

    def _parse_head(self) -> bool:
        head = self._head
        if len(head) < FOOTER_SIZE:
            return False
        footer = Footer.parse(bytes(head[:FOOTER_SIZE]), self.name, 0)
        if footer.disk_type == DISK_FIXED:
            raise VhdError(self.name, "footer", "disk_type", 60, "a fixed disk has no blocks to checksum")
        if len(head) < footer.data_offset + HEADER_SIZE:
            return False
        header_raw = bytes(head[footer.data_offset:footer.data_offset + HEADER_SIZE])
        header = Header.parse(header_raw, self.name, footer.data_offset)
        bat_end = header.table_offset + header.max_table_entries * 4
        if len(head) < bat_end:
            return False
        bat_raw = memoryview(head)[header.table_offset:bat_end]  # parsed and hashed where it lies, not copied
        self._bat = bat_parse(bat_raw, header.max_table_entries)
        self.sums = BlockSums(block_size=header.block_size, entries=header.max_table_entries, disk_type=footer.disk_type,
                              unique_id=footer.unique_id, parent_unique_id=header.parent_unique_id, hash_name=self.hash_name)
        # Header and BAT are hashed now (the BAT need not be kept: 4 MiB for a 2 TiB disk); the end
        # footer, which the header copy at offset 0 only announces, at finish.
        self.sums.header_digest, self.sums.bat_digest = self._new_hash(header_raw).digest(), self._new_hash(bat_raw).digest()
        bat_raw.release()
        self._span_size = bitmap_size(header.block_size) + header.block_size
        self._order = present_in_file_order(self._bat)
        return True

    def _hash_spans(self, view: memoryview, start: int) -> None:
        end = start + len(view)
        order, bat = self._order, self._bat
        while self._next < len(order):
            index = order[self._next]
            offset = bat[index] * SECTOR
            if offset >= end:
                return
            span_end = offset + self._span_size
            if self._hash is None:
                if offset < self._done_to or offset < start:
                    # Bytes of this block passed already: as part of another block, or before the
                    # stream reached it (a block inside the header or BAT). Its checksum would be wrong.
                    raise VhdError(self.name, "block[%d]" % index, "offset", offset,
                                   "block overlaps a block or structure before it (its bytes were already written)")
                self._hash = self._new_hash()
            lo = max(offset, start) - start
            hi = min(span_end, end) - start
            self._hash.update(view[lo:hi])
            if span_end > end:
                return
            digest = self._hash.digest()
            self.sums.set(index, digest)
            self._hash = None
            self._done_to = span_end
            self._next += 1
            if self.on_block is not None:
                self.on_block(index, digest)

    __call__ = update

    def finish(self) -> BlockSums:
        """The sidecar, once every byte was given; raises :class:`VhdError` if the stream ended early."""
        if self.sums is None or self._next < len(self._order) or len(self._tail) < FOOTER_SIZE:
            raise VhdError(self.name, "block checksums", "length", self.position, "the VHD stream ended before its last block")
        self.sums.footer_digest = self._new_hash(bytes(self._tail)).digest()
        return self.sums


def present_in_file_order(bat) -> array.array:
    """Indices of the BAT's present blocks, ordered by where they lie in the file (4 bytes each).

    Exports and our own writers lay blocks out in index order, which needs no sort; any other order
    is sorted once (a list for the sort, transient).
    """
    order = array.array("I", (index for index, entry in enumerate(bat) if entry != BAT_UNUSED))
    if any(bat[order[number]] > bat[order[number + 1]] for number in range(len(order) - 1)):
        order = array.array("I", sorted(order, key=bat.__getitem__))
    return order


__all__ = ["SUFFIX", "ABSENT", "UNKNOWN", "FLAG_FOREIGN_MERGE", "BlockSums", "BlockSumsError", "BlockProblem", "StreamSums",
           "sidecar_name", "is_sidecar_name", "block_digest", "read_structures", "new_sums_for", "hash_blocks", "compute_sums",
           "structure_problems", "verify_blocks", "check_read_block", "attach", "present_in_file_order"]
