# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Footer, header, bitmap and geometry primitives; fixed parents; merging into a qemu-made parent."""

from __future__ import annotations

import os
import struct
import subprocess
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    DISK_DIFFERENCING, DISK_DYNAMIC, Footer, Header, ParentLink, VhdChain, VhdError, VhdFile, check_file, merge_chain,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.structures import (
    bitmap_to_mask, checksum, chs_geometry, mask_runs, mask_to_bitmap,
)
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import (
    QEMU_IMG, QEMU_IO, pattern, qemu_raw, write_vhd,
)

MIB = 1024 * 1024


def test_footer_and_header_round_trip():
    footer = Footer(disk_type=DISK_DIFFERENCING, current_size=10 * MIB, original_size=10 * MIB, unique_id=uuid.uuid4().bytes,
                    timestamp=1234, geometry=chs_geometry(10 * MIB))
    raw = footer.pack()
    assert len(raw) == 512 and Footer.parse(raw) == footer
    header = Header(table_offset=1536, max_table_entries=5, parent_name="../x/20260101T000000Z.vhd", parent_unique_id=b"\x01" * 16)
    raw = header.pack()
    assert len(raw) == 1024 and Header.parse(raw) == header


def test_parse_errors_name_structure_field_and_offset():
    raw = bytearray(Footer(disk_type=DISK_DYNAMIC, current_size=MIB).pack())
    raw[70] ^= 1
    with pytest.raises(VhdError, match=r"^/x/y\.vhd: footer\.checksum at offset 4160: stored") as error:
        Footer.parse(bytes(raw), "/x/y.vhd", 4096)
    assert error.value.field == "checksum" and error.value.offset == 4096 + 64 and "/x/y.vhd" in str(error.value)
    with pytest.raises(VhdError, match="footer.cookie"):
        Footer.parse(bytes(512), "f", 0)


def test_old_tapdisk_hidden_byte_is_accepted():
    footer = Footer(disk_type=DISK_DYNAMIC, current_size=MIB, creator_app=b"tap\x00")
    raw = bytearray(footer.pack())
    raw[85] = 1  # hidden set without updating the checksum
    assert Footer.parse(bytes(raw)).hidden == 1
    other = bytearray(Footer(disk_type=DISK_DYNAMIC, current_size=MIB, creator_app=b"xo  ").pack())
    other[85] = 1
    with pytest.raises(VhdError, match=r"footer\.checksum"):
        Footer.parse(bytes(other))


def test_geometry_matches_the_known_chs_rounding():
    # The spec divides (963 cylinders); XO rounds cylinders up, hence its 64 MiB = 964 * 8 * 17 * 512 = 67125248.
    assert chs_geometry(64 * MIB) == (963, 8, 17)
    assert chs_geometry(3 * 1024 ** 4)[1:] == (16, 255)


def test_checksum_ignores_its_own_field():
    data = bytearray(range(256)) * 2
    value = checksum(data, 64)
    struct.pack_into(">I", data, 64, value)
    assert checksum(data, 64) == value


@settings(deadline=None, max_examples=200)
@given(st.integers(0, (1 << 4096) - 1))
def test_bitmap_mask_round_trip_and_runs(mask):
    bitmap = mask_to_bitmap(mask, 512)
    assert bitmap_to_mask(bitmap, 4096) == mask
    rebuilt = 0
    for first, count in mask_runs(mask):
        assert count > 0
        rebuilt |= ((1 << count) - 1) << first
    assert rebuilt == mask
    if mask & 1:
        assert bitmap[0] & 0x80  # sector 0 is the most significant bit of byte 0


def test_differencing_child_over_a_fixed_parent(tmp_path):
    base = str(tmp_path / "base.vhd")
    subprocess.run([QEMU_IMG, "create", "-f", "vpc", "-o", "subformat=fixed,force_size=on", base, str(5 * MIB)], check=True, capture_output=True)
    subprocess.run([QEMU_IO, "-f", "vpc", "-c", "write -P 0x33 0 3M", base], check=True, capture_output=True)
    model = bytearray(qemu_raw(base, str(tmp_path / "base.raw")))
    model[512:1536] = pattern(1, 1024)
    child = str(tmp_path / "child.vhd")
    write_vhd(child, 5 * MIB, {1, 2}, 2 * MIB, parent=ParentLink.for_parent_file(base, child), model=model)
    with VhdChain.open(child) as chain:
        assert chain.read(0, chain.size) == bytes(model)
    with pytest.raises(VhdError, match="cannot merge into a fixed disk"):
        merge_chain(base, [child])


def test_merge_into_a_qemu_made_dynamic_parent(tmp_path):
    base = str(tmp_path / "20260101T000000Z.vhd")
    subprocess.run([QEMU_IMG, "create", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", base, str(9 * MIB)], check=True, capture_output=True)
    subprocess.run([QEMU_IO, "-f", "vpc", "-c", "write -P 0x44 1M 3M", "-c", "write -P 0x55 8M 512", base], check=True, capture_output=True)
    model = bytearray(qemu_raw(base, str(tmp_path / "base.raw")))
    model[100 * 512:4200 * 512] = pattern(2, 4100 * 512)
    model[7 * MIB:7 * MIB + 4096] = pattern(3, 4096)
    child = str(tmp_path / "20260102T000000Z.vhd")
    sectors = set(range(100, 4200)) | set(range(7 * MIB // 512, 7 * MIB // 512 + 8))
    write_vhd(child, 9 * MIB, sectors, 2 * MIB, parent=ParentLink.for_parent_file(base, child), model=model)
    result = merge_chain(base, [child])
    assert qemu_raw(result, str(tmp_path / "merged.raw")) == bytes(model)
    assert check_file(result) == []
    assert not os.path.exists(base)
    with VhdFile(result) as merged:
        assert merged.footer.creator_app == b"qem2"
