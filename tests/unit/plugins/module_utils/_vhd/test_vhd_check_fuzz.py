# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structural checks (every problem reported) and parser fuzzing (only VhdError, bounded time and memory)."""

from __future__ import annotations

import io
import os
import resource
import struct
import tempfile
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    DISK_DYNAMIC, Footer, Header, ParentLink, VhdChain, VhdError, VhdFile, check_chain, check_file, rewrite_identity,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.structures import bat_pack, checksum
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import (
    ChainModel, pattern, write_vhd, xapi_stream_bytes,
)

MIB = 1024 * 1024
KIB = 1024


def _patch(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _fix_checksums(buf, footer_at=(0,), header_at=512):
    for at in footer_at:
        if buf[at:at + 8] == b"conectix":
            struct.pack_into(">I", buf, at + 64, checksum(buf[at:at + 512], 64))
    if header_at is not None and buf[header_at:header_at + 8] == b"cxsparse":
        struct.pack_into(">I", buf, header_at + 36, checksum(buf[header_at:header_at + 1024], 36))


def _model(tmp_path, sizes=(4 * MIB, 4 * MIB)):
    model = ChainModel(str(tmp_path), sizes[0], 64 * KIB)
    model.add_point([(0, 300, 1), (2000, 10, 2)])
    for size in sizes[1:]:
        model.add_point([(5, 200, 3)], size=size)
    return model


def test_sound_chain_has_no_problems(tmp_path):
    model = _model(tmp_path)
    assert check_chain(model.paths[-1]) == []
    assert check_chain(list(reversed(model.paths))) == []


def test_every_problem_is_reported(tmp_path):
    model = _model(tmp_path)
    child, parent = model.paths[1], model.paths[0]
    with VhdFile(parent) as vhd:
        table = vhd.header.table_offset
        first_block = vhd.block_offset(0)
    # Parent: block 4 overlaps block 0, block 5 points past the end of the file, footer copies differ.
    _patch(parent, table + 4 * 4, struct.pack(">I", first_block // 512 + 1))
    _patch(parent, table + 5 * 4, struct.pack(">I", 0x00FFFFF0))
    with open(parent, "r+b") as handle:
        head = bytearray(handle.read(512))
    head[24:28] = b"\x00\x00\x00\x07"
    struct.pack_into(">I", head, 64, checksum(head, 64))
    _patch(parent, 0, bytes(head))
    # Child: wrong parent id.
    with VhdFile(child) as vhd:
        header_at = vhd.footer.data_offset
    with open(child, "rb") as handle:
        raw = bytearray(handle.read())
    raw[header_at + 40:header_at + 56] = uuid.uuid4().bytes
    _fix_checksums(raw, header_at=header_at)
    with open(child, "wb") as handle:
        handle.write(raw)
    problems = check_chain(child)
    text = "\n".join(str(p) for p in problems)
    assert "overlaps" in text and "past the footer" in text and "differs from the end footer" in text
    assert "parent_unique_id" in text
    assert all(p.path in (child, parent) for p in problems)
    assert len(problems) >= 4


def test_smaller_child_and_block_size_mismatch(tmp_path):
    big = ChainModel(str(tmp_path / "a"), 6 * MIB, 64 * KIB)
    big.add_point([(0, 10, 1)])
    small = ChainModel(str(tmp_path / "b"), 4 * MIB, 128 * KIB)
    small.add_point([(0, 10, 1)])
    # Make b's only file a child of a's file: smaller and another block size.
    child = str(tmp_path / "a" / "child.vhd")
    write_vhd(child, 4 * MIB, {1, 2}, 128 * KIB, parent=ParentLink.for_parent_file(big.paths[0], child), model=bytes(4 * MIB))
    fields = {(p.structure, p.field) for p in check_chain(child)}
    assert ("footer", "current_size") in fields and ("header", "block_size") in fields
    with pytest.raises(VhdError, match=r"header\.block_size.*differs from parent's"):
        VhdChain.open(child)


def test_grown_child_is_legitimate(tmp_path):
    model = _model(tmp_path, sizes=(4 * MIB, 9 * MIB + 512))
    assert check_chain(model.paths[-1]) == []


def test_missing_parent_is_reported(tmp_path):
    model = _model(tmp_path)
    os.unlink(model.paths[0])
    problems = check_chain(model.paths[1])
    assert problems and any(p.path == model.paths[0] for p in problems)


def test_checks_through_a_storage_name_files_by_their_full_path(tmp_path):
    model = _model(tmp_path / "disk")
    storage = LocalStorage(str(tmp_path))
    names = ["disk/" + os.path.basename(path) for path in reversed(model.paths)]
    assert check_chain(names[0], storage=storage) == []
    assert check_chain(names, storage=storage) == []
    assert check_file(names[1], storage=storage) == []
    os.unlink(model.paths[0])
    problems = check_chain(names[0], storage=storage)
    assert [(p.path, p.structure, p.field) for p in problems][0] == (model.paths[0], "file", "open")
    _patch(model.paths[1], 0, b"X")  # the footer copy's cookie
    assert [(p.path, p.structure, p.field, p.offset) for p in check_file(names[0], storage=storage)] == [(model.paths[1], "footer", "cookie", 0)]
    assert [(p.path, p.field) for p in check_file("../outside.vhd", storage=storage)] == [("../outside.vhd", "open")]


# ---- fuzzing ------------------------------------------------------------------------------------------------

_SAMPLES = {}


def _samples():
    """A small dynamic file, a differencing child of it, and an XAPI stream (bytes), built once."""
    if not _SAMPLES:
        directory = tempfile.mkdtemp()
        model = ChainModel(directory, 1 * MIB + 3 * 512, 64 * KIB)
        model.add_point([(0, 100, 1), (1500, 700, 2)])
        model.add_point([(3, 2, 3), (1900, 200, 4)])
        for name, path in (("dynamic", model.paths[0]), ("differencing", model.paths[1])):
            with open(path, "rb") as handle:
                _SAMPLES[name] = handle.read()
        _SAMPLES["stream"] = xapi_stream_bytes(3 * MIB, {1: pattern(5, 2 * MIB)}, DISK_DYNAMIC)
    return _SAMPLES


FIELDS = [(16, 8), (40, 8), (48, 8), (60, 4)]            # footer: data offset, sizes, disk type
HEADER_FIELDS = [(8, 8), (16, 8), (28, 4), (32, 4)]      # header: data offset, table offset, max entries, block size


@st.composite
def mutated(draw):
    kind = draw(st.sampled_from(["dynamic", "differencing"]))
    buf = bytearray(_samples()[kind])
    for _mutation in range(draw(st.integers(0, 4))):
        position = draw(st.one_of(st.integers(0, 2560), st.integers(len(buf) - 512, len(buf) - 1), st.integers(0, len(buf) - 1)))
        buf[position] = draw(st.integers(0, 255))
    for _field in range(draw(st.integers(0, 3))):
        structure = draw(st.sampled_from(["footer", "header"]))
        offset, width = draw(st.sampled_from(FIELDS if structure == "footer" else HEADER_FIELDS))
        value = draw(st.one_of(st.integers(0, 2 ** (8 * width) - 1), st.sampled_from([0, 1, 511, 512, 2 ** 31, 2 ** (8 * width) - 1])))
        base = 0 if structure == "footer" else 512
        buf[base + offset:base + offset + width] = value.to_bytes(width, "big")
        if structure == "footer":
            buf[len(buf) - 512 + offset:len(buf) - 512 + offset + width] = value.to_bytes(width, "big")
    if draw(st.booleans()):
        _fix_checksums(buf, footer_at=(0, len(buf) - 512))
    cut = draw(st.one_of(st.just(len(buf)), st.integers(0, len(buf))))
    return kind, bytes(buf[:cut])


def _exercise(path):
    try:
        with VhdFile(path) as vhd:
            chain = VhdChain([vhd], verify=False, allow_missing_parent=True)
            for index, _data in chain.iter_blocks():
                assert 0 <= index < chain.block_count
            for index in (0, chain.block_count - 1, chain.block_count):
                chain.read_block(index)
    except VhdError as error:
        assert error.path and error.structure and error.field
    problems = check_file(path)
    assert all(p.path and p.structure and p.field for p in problems)


@settings(max_examples=300, deadline=10000, suppress_health_check=[HealthCheck.too_slow])
@given(sample=mutated())
def test_fuzzed_files_raise_only_vhd_error(sample):
    _kind, data = sample
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "fuzz.vhd")
        with open(path, "wb") as handle:
            handle.write(data)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _exercise(path)
        # Peak RSS is monotonic: whatever a bogus size field says, the process must not balloon.
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


@settings(max_examples=150, deadline=10000, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=4),
       tail=st.integers(0, 600), fix=st.booleans())
def test_fuzzed_streams_raise_only_vhd_error(mutations, tail, fix):
    buf = bytearray(_samples()["stream"])
    for position, value in mutations:
        buf[position] = value
    if fix:
        _fix_checksums(buf, footer_at=(0, len(buf) - 512))
    data = bytes(buf[:len(buf) - tail])
    try:
        rewrite_identity(io.BytesIO(data), io.BytesIO(), uuid.uuid4())
    except VhdError as error:
        assert error.structure and error.field


def _tap_file_with_batmap(path, batmap_bits, bitmaps):
    """A blktap-style dynamic file (creator tap 1.3) with a tdbatmap after the BAT and 64 KiB blocks."""
    block_size, count = 64 * KIB, len(bitmaps)
    footer = Footer(disk_type=DISK_DYNAMIC, current_size=count * block_size, creator_version=0x00010003)
    header = Header(table_offset=1536, max_table_entries=count, block_size=block_size)
    batmap_at = 1536 + header.bat_bytes
    data_at = batmap_at + 1024
    table = [(data_at + i * (512 + block_size)) // 512 for i in range(count)]
    bits = bytes([batmap_bits]).ljust(512, b"\x00")
    batmap = struct.pack(">8sQIII", b"tdbatmap", batmap_at + 512, 1, 0x00010002, checksum(bits, len(bits))).ljust(512, b"\x00")
    with open(path, "wb") as out:
        out.write(footer.pack() + header.pack() + bat_pack(table, header.bat_bytes) + batmap + bits)
        for bitmap in bitmaps:
            out.write(bitmap.ljust(512, b"\x00") + pattern(1, block_size))
        out.write(footer.pack())


def test_batmap_and_bitmap_disagreement(tmp_path):
    good = str(tmp_path / "good.vhd")
    _tap_file_with_batmap(good, 0b11000000, [b"\xff" * 16, b"\xff" * 16])
    assert check_file(good) == []
    bad = str(tmp_path / "bad.vhd")
    _tap_file_with_batmap(bad, 0b11000000, [b"\xff" * 16, b"\x0f" * 16])
    problems = check_file(bad)
    assert [(p.structure, p.field) for p in problems] == [("block[1]", "bitmap")]
