# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The block checksum sidecar (``_vhd/blocksums.py``): its format, the stream hasher, the readers' checks."""

from __future__ import annotations

import array
import dataclasses
import hashlib
import os
import tracemalloc
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import DISK_DIFFERENCING, DISK_DYNAMIC, ParentLink, VhdError, VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import (
    ABSENT, FLAG_FOREIGN_MERGE, UNKNOWN, BlockSums, BlockSumsError, StreamSums, attach, block_digest, check_read_block,
    compute_sums, present_in_file_order, sidecar_name, structure_problems, verify_blocks,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.structures import (
    BAT_UNUSED, SECTOR, Footer, Header, bat_pack, chs_geometry,
)
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import pattern, write_vhd, xapi_stream_bytes

MIB = 1024 * 1024
BLOCK = 2 * MIB
SPAN = 512 + BLOCK


def dynamic_file(tmp_path, name="20260101T000000Z.vhd", size=9 * MIB, blocks=(0, 2, 4), block_size=BLOCK):
    """A dynamic VHD with whole blocks ``blocks`` (each a distinct pattern) and a partial one; returns its path."""
    model = bytearray(size)
    sectors = set()
    for index in blocks:
        model[index * block_size:(index + 1) * block_size] = pattern(index + 1, block_size)[:len(model[index * block_size:(index + 1) * block_size])]
        sectors.update(range(index * block_size // SECTOR, min((index + 1) * block_size, size) // SECTOR))
    # A block with only three sectors (an exact bitmap, not all ones).
    model[3 * block_size + 5 * SECTOR:3 * block_size + 8 * SECTOR] = pattern(9, 3 * SECTOR)
    sectors.update(range(3 * block_size // SECTOR + 5, 3 * block_size // SECTOR + 8))
    return write_vhd(str(tmp_path / name), size, sectors, block_size, model=model)


def flip_bit(path, offset, bit=0):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ (1 << bit)]))


def block_offset(path, index):
    with VhdFile(path) as vhd:
        return vhd.bat[index] * SECTOR


def feed(data: bytes, cuts) -> BlockSums:
    """StreamSums of ``data`` given in pieces ending at the sorted ``cuts``."""
    sums = StreamSums("stream")
    view = memoryview(data)
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if cut > start:
            sums.update(view[start:cut])
            start = cut
    return sums.finish()


# -- the format ------------------------------------------------------------------------------------------------


def test_a_sidecar_survives_pack_parse_and_save_load(tmp_path):
    sums = BlockSums(block_size=BLOCK, entries=5, disk_type=DISK_DIFFERENCING, unique_id=uuid.uuid4().bytes,
                     parent_unique_id=uuid.uuid4().bytes, flags=FLAG_FOREIGN_MERGE)
    sums.set_structures(b"f" * 512, b"h" * 1024, b"b" * 512)
    sums.set(0, hashlib.sha256(b"zero").digest())
    sums.set(3, UNKNOWN)
    raw = sums.pack()
    assert len(raw) == 512 + 5 * 32
    parsed = BlockSums.parse(raw, "x.vhd.blocksums")
    assert parsed == sums
    assert parsed.digest(0) == hashlib.sha256(b"zero").digest()
    assert parsed.digest(1) == ABSENT and parsed.digest(3) == UNKNOWN and parsed.digest(99) == ABSENT
    assert parsed.present() == [0, 3]
    storage = LocalStorage(str(tmp_path))
    sums.save(storage, sidecar_name("a.vhd"))
    assert BlockSums.load_for(storage, "a.vhd") == sums
    assert BlockSums.load_for(storage, "b.vhd") is None
    # Entries are updated in place by a merge: the offset is where the entry really lies.
    assert raw[BlockSums.entry_offset(0):BlockSums.entry_offset(1)] == hashlib.sha256(b"zero").digest()


def test_growing_adds_absent_entries():
    sums = BlockSums(block_size=BLOCK, entries=2, disk_type=DISK_DYNAMIC, unique_id=bytes(16), parent_unique_id=bytes(16))
    sums.set(1, b"\x01" * 32)
    sums.grow(4)
    assert sums.entries == 4 and sums.digest(1) == b"\x01" * 32 and sums.digest(3) == ABSENT
    sums.grow(3)
    assert sums.entries == 4


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:100], "too short"),
    (lambda raw: b"NOTOURS!" + raw[8:], "not a block checksum file"),
    (lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], "header checksum mismatch"),
    (lambda raw: raw[:-32], "truncated or damaged"),
    (lambda raw: raw + bytes(32), "truncated or damaged"),
])
def test_a_damaged_sidecar_is_refused_naming_the_file(damage, message):
    sums = BlockSums(block_size=BLOCK, entries=3, disk_type=DISK_DYNAMIC, unique_id=uuid.uuid4().bytes, parent_unique_id=bytes(16))
    with pytest.raises(BlockSumsError, match=message) as raised:
        BlockSums.parse(damage(sums.pack()), "/repo/disk.vhd.blocksums")
    assert "/repo/disk.vhd.blocksums" in str(raised.value)


def test_an_unreadable_sidecar_is_refused_naming_the_file(tmp_path):
    storage = LocalStorage(str(tmp_path))
    with pytest.raises(BlockSumsError, match="cannot be read") as raised:
        BlockSums.load(storage, "gone.vhd.blocksums")
    assert str(tmp_path / "gone.vhd.blocksums") in str(raised.value)


# -- StreamSums against compute_sums ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_and_sums(tmp_path_factory):
    """A file's bytes and its sidecar computed from the file (not from a stream), made once."""
    path = dynamic_file(tmp_path_factory.mktemp("stream"))
    with open(path, "rb") as handle:
        data = handle.read()
    with VhdFile(path) as vhd:
        return data, compute_sums(vhd).pack()


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4 * SPAN + 4096), max_size=12),
       every=st.sampled_from([0, 511, 512, 4096, 65536, MIB, BLOCK + 1]))
def test_stream_sums_equal_compute_sums_for_any_chunking(file_and_sums, cuts, every):
    data, expected = file_and_sums
    if every:
        cuts = cuts + list(range(every, len(data), every))
    assert feed(data, cuts).pack() == expected


def test_stream_sums_byte_by_byte_around_the_structures(file_and_sums):
    # One byte at a time through the footer, header and BAT (parsed as soon as complete), then big pieces.
    data, expected = file_and_sums
    assert feed(data, list(range(1, 4096)) + list(range(4096, len(data), 999999))).pack() == expected


def test_stream_sums_of_an_xapi_delta_stream(tmp_path):
    data = xapi_stream_bytes(7 * MIB, {1: pattern(3, BLOCK), 3: pattern(4, MIB) + bytes(MIB)}, DISK_DIFFERENCING,
                             parent_id=uuid.uuid4().bytes)
    path = tmp_path / "delta.vhd"
    path.write_bytes(data)
    with VhdFile(str(path)) as vhd:
        expected = compute_sums(vhd)
    got = feed(data, range(0, len(data), 70001))
    assert got.pack() == expected.pack()
    assert got.digest(1) == block_digest(b"\xff" * 512 + pattern(3, BLOCK))
    assert got.digest(0) == ABSENT


def stream_with_blocks_at(size, placed, overlap=False):
    """A dynamic VHD whose blocks lie in the given order in the file (``placed``: index -> data), not index order."""
    entries = (size + BLOCK - 1) // BLOCK
    footer = Footer(disk_type=DISK_DYNAMIC, current_size=size, original_size=size, unique_id=uuid.uuid4().bytes, timestamp=0,
                    creator_app=b"test", creator_version=1, geometry=chs_geometry(size))
    header = Header(table_offset=1536, max_table_entries=entries, block_size=BLOCK)
    bat_bytes = (entries * 4 + 511) // 512 * 512
    table = [BAT_UNUSED] * entries
    position = 1536 + bat_bytes
    for index in placed:
        table[index] = position // SECTOR
        position += SPAN if not overlap else SPAN // 2 // SECTOR * SECTOR
    if overlap:
        position += SPAN
    body = bytearray(position - 1536 - bat_bytes)
    for index, data in placed.items():
        start = table[index] * SECTOR - 1536 - bat_bytes
        body[start:start + SPAN] = b"\xff" * 512 + data
    return footer.pack() + header.pack() + bat_pack(table, bat_bytes) + bytes(body) + footer.pack()


def test_blocks_out_of_index_order_are_hashed_where_they_lie(tmp_path):
    placed = {3: pattern(1, BLOCK), 0: pattern(2, BLOCK), 2: pattern(3, BLOCK)}  # the file holds 3, 0, 2 in that order
    data = stream_with_blocks_at(8 * MIB, placed)
    path = tmp_path / "shuffled.vhd"
    path.write_bytes(data)
    with VhdFile(str(path)) as vhd:
        expected = compute_sums(vhd)
        assert list(present_in_file_order(vhd.bat)) == [3, 0, 2]
    got = feed(data, range(0, len(data), 300000))
    assert got.pack() == expected.pack()
    assert got.digest(0) == block_digest(b"\xff" * 512 + placed[0])


def test_overlapping_blocks_are_refused_rather_than_given_a_wrong_checksum():
    data = stream_with_blocks_at(8 * MIB, {0: pattern(1, BLOCK), 1: pattern(2, BLOCK)}, overlap=True)
    with pytest.raises(VhdError, match=r"block\[1\].*overlaps"):
        feed(data, range(0, len(data), MIB))


def test_a_stream_that_ends_early_has_no_sidecar(tmp_path):
    with open(dynamic_file(tmp_path), "rb") as handle:
        data = handle.read()
    for end in (100, 3000, len(data) - SPAN - 512, len(data) - 600):
        with pytest.raises(VhdError, match="ended before its last block"):
            feed(data[:end], range(0, end, 4096))


def test_a_fixed_disk_has_no_blocks_to_checksum():
    footer = Footer(disk_type=2, current_size=MIB, original_size=MIB, unique_id=uuid.uuid4().bytes, timestamp=0,
                    creator_app=b"test", creator_version=1, geometry=chs_geometry(MIB))
    with pytest.raises(VhdError, match="fixed disk"):
        StreamSums("fixed").update(footer.pack())


def test_the_stream_hasher_holds_4_bytes_per_block_plus_the_sidecar_for_a_2_tib_disk(tmp_path):
    # Every block of a (nearly) 2 TiB disk present: the BAT alone has 10^6 entries. The bookkeeping must stay
    # a few bytes per block (it was a Python tuple per block, over 100 MiB), so a module's peak RSS
    # stays under 100 MiB whatever the disk size.
    entries = 1000000  # 1.9 TiB: a VHD cannot place 2 TiB of blocks below 2^32 sectors
    size = entries * BLOCK
    footer = Footer(disk_type=DISK_DYNAMIC, current_size=size, original_size=size, unique_id=uuid.uuid4().bytes, timestamp=0,
                    creator_app=b"test", creator_version=1, geometry=chs_geometry(size))
    header = Header(table_offset=1536, max_table_entries=entries, block_size=BLOCK)
    first = (1536 + entries * 4) // SECTOR
    table = array.array("I", range(first, first + entries * (SPAN // SECTOR), SPAN // SECTOR))
    table.byteswap()  # big-endian on disk
    head = footer.pack() + header.pack() + table.tobytes()
    del table
    tracemalloc.start()
    try:
        sums = StreamSums("big")
        for start in range(0, len(head), BLOCK):
            sums.update(head[start:start + BLOCK])
        _current, peak = tracemalloc.get_traced_memory()
        assert sums.sums is not None and sums.sums.entries == entries
        tracemalloc.reset_peak()
        base, _peak = tracemalloc.get_traced_memory()
        # Saving writes the 32 MiB of entries from where they lie (a packed copy would double them).
        sums.sums.save(LocalStorage(str(tmp_path)), "big.vhd.blocksums")
        _current, save_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # sidecar entries 32 MiB + BAT 4 MiB + file order 4 MiB + the head's 4 MiB of BAT while parsed.
    assert peak < 52 * MIB, peak / MIB
    assert save_peak - base < MIB, (save_peak - base) / MIB
    assert os.path.getsize(tmp_path / "big.vhd.blocksums") == 512 + 32 * entries


# -- readers check what they read -----------------------------------------------------------------------------


def test_a_flipped_bit_stops_the_reader_of_that_block_naming_file_block_and_offset(tmp_path):
    path = dynamic_file(tmp_path)
    with VhdFile(path) as vhd:
        sums = compute_sums(vhd)
    flip_bit(path, block_offset(path, 2) + 512 + 12345, bit=3)
    with VhdFile(path) as vhd:
        attach(vhd, sums)
        vhd.read_block_raw(0)  # another block reads fine
        with pytest.raises(VhdError) as raised:
            vhd.read_block_raw(2)
    message = str(raised.value)
    assert path in message and "block 2 " in message and "virtual offset %d" % (2 * BLOCK) in message


def test_unknown_entries_are_not_checked_and_absent_ones_refuse_a_present_block(tmp_path):
    path = dynamic_file(tmp_path)
    with VhdFile(path) as vhd:
        sums = compute_sums(vhd)
        span = vhd.file.pread(SPAN, vhd.bat[0] * SECTOR)
        sums.set(0, UNKNOWN)
        check_read_block(vhd, sums, 0, b"anything at all")  # a block recorded as unknown is not checked
        check_read_block(vhd, sums, 2, vhd.file.pread(SPAN, vhd.bat[2] * SECTOR))
        sums.set(0, ABSENT)
        with pytest.raises(VhdError, match=r"block 0 \(virtual offset 0\) is present but recorded as absent"):
            check_read_block(vhd, sums, 0, span)


# -- verify names each damaged block ----------------------------------------------------------------------------


def test_verify_names_every_damaged_block_by_number_and_virtual_offset(tmp_path):
    path = dynamic_file(tmp_path, size=11 * MIB, blocks=(0, 1, 2, 4))
    with VhdFile(path) as vhd:
        sums = compute_sums(vhd)
        assert verify_blocks(vhd, sums) == []
    flip_bit(path, block_offset(path, 1) + 100)  # in the bitmap
    flip_bit(path, block_offset(path, 4) + 512 + BLOCK - 1, bit=7)  # the last data byte
    with VhdFile(path) as vhd:
        problems = verify_blocks(vhd, sums)
        assert [(problem.index, problem.virtual_offset) for problem in problems] == [(1, BLOCK), (4, 4 * BLOCK)]
        assert all(problem.path == path and "damaged" in problem.problem for problem in problems)
        assert str(problems[0]).startswith("%s: block 1 (virtual offset %d)" % (path, BLOCK))
        assert [problem.index for problem in verify_blocks(vhd, sums, indices=[0, 4], threads=1)] == [4]


def test_verify_reports_blocks_the_bat_and_the_sidecar_disagree_on(tmp_path):
    path = dynamic_file(tmp_path)
    with VhdFile(path) as vhd:
        sums = compute_sums(vhd)
        sums.set(1, b"\x07" * 32)  # block 1 is absent from the file
        sums.set(2, ABSENT)  # block 2 is present
        problems = {problem.index: problem.problem for problem in verify_blocks(vhd, sums)}
    assert problems == {1: "recorded but absent from the file's BAT", 2: "present in the file but recorded as absent"}


def test_structure_problems_name_a_changed_footer_and_a_replaced_file(tmp_path):
    path = dynamic_file(tmp_path)
    with VhdFile(path) as vhd:
        sums = compute_sums(vhd)
        assert structure_problems(vhd, sums) == []
        size = os.path.getsize(path)
    with open(path, "r+b") as handle:  # a valid end footer, with another timestamp: only the sidecar tells
        handle.seek(size - 512)
        footer = Footer.parse(handle.read(512), path, size - 512)
        handle.seek(size - 512)
        handle.write(dataclasses.replace(footer, timestamp=footer.timestamp + 1).pack())
    with VhdFile(path) as vhd:
        assert any("footer differs" in problem for problem in structure_problems(vhd, sums))
    other = dynamic_file(tmp_path, name="other.vhd")
    with VhdFile(other) as vhd:
        assert "the file was replaced" in structure_problems(vhd, sums)[0]


def test_a_delta_records_its_parent_in_the_sidecar(tmp_path):
    full = dynamic_file(tmp_path)
    delta_path = str(tmp_path / "20260102T000000Z.vhd")
    model = bytearray(9 * MIB)
    model[0:4096] = pattern(5, 4096)
    write_vhd(delta_path, 9 * MIB, set(range(8)), BLOCK, parent=ParentLink.for_parent_file(full, delta_path), model=model)
    with VhdFile(delta_path) as delta, VhdFile(full) as parent:
        sums = compute_sums(delta)
        assert sums.disk_type == DISK_DIFFERENCING and sums.parent_unique_id == parent.unique_id
        assert sums.present() == [0]
