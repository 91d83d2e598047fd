# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""writer.py: VhdStream, stream_disk of any disk, ParentLink and write_stream through a Storage, read back by qemu-img and libvhdi."""

from __future__ import annotations

import os
import stat
import uuid

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    DISK_DIFFERENCING, ParentLink, VhdChain, VhdFile, VhdStream, stream_disk, vhd_timestamp, write_stream,
)
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import (
    ChainModel, libvhdi_read, pattern, qemu_raw,
)

MIB = 1024 * 1024
KIB = 1024


def test_stream_of_listed_blocks_is_read_back_by_qemu_and_libvhdi(tmp_path):
    blocks = {0: pattern(1, 2 * MIB), 3: pattern(2, MIB)}  # block 3 short: zero padded
    stream = VhdStream(7 * MIB, sorted(blocks), lambda index: (None, blocks[index]), unique_id=uuid.UUID(int=5))
    data = b"".join(bytes(chunk) for chunk in stream)
    assert len(data) == stream.length == 512 + 1024 + 512 + 2 * (512 + 2 * MIB) + 512
    out = tmp_path / "s.vhd"
    out.write_bytes(data)
    expected = bytearray(7 * MIB)
    expected[0:2 * MIB] = blocks[0]
    expected[6 * MIB:7 * MIB] = blocks[3]
    assert qemu_raw(str(out), str(tmp_path / "s.raw")) == bytes(expected)
    assert libvhdi_read([str(out)]) == bytes(expected)
    with VhdFile(str(out)) as vhd:
        assert vhd.unique_id == uuid.UUID(int=5).bytes and list(vhd.allocated_blocks()) == [0, 3]


def test_stream_disk_takes_a_file_or_a_chain(tmp_path):
    model = ChainModel(str(tmp_path / "chain"), 5 * MIB, 2 * MIB)
    model.add_point([(0, 5000, 1)])
    model.add_point([(4096, 4096, 2)], full_blocks=True)
    with VhdFile(model.paths[0]) as full:
        one = tmp_path / "one.vhd"
        write_stream(stream_disk(full), str(one))
    assert qemu_raw(str(one), str(tmp_path / "one.raw")) == model.points[0]
    with VhdChain.open(model.paths[1]) as chain:
        stream = stream_disk(chain, unique_id=uuid.UUID(int=9), timestamp=1234)
        flat = tmp_path / "flat.vhd"
        assert write_stream(stream, str(flat)) == stream.length == os.path.getsize(flat)
    assert qemu_raw(str(flat), str(tmp_path / "flat.raw")) == model.points[1] == libvhdi_read([str(flat)])
    with VhdFile(str(flat)) as vhd:
        assert vhd.is_dynamic and vhd.unique_id == uuid.UUID(int=9).bytes and vhd.footer.timestamp == 1234


def test_parent_link_in_a_storage_is_relative_to_the_child_folder(tmp_path):
    model = ChainModel(str(tmp_path), MIB, 128 * KIB)
    model.add_point([(0, 10, 1)])
    os.utime(model.paths[0], (1800000000, 1800000000))
    storage = LocalStorage(str(tmp_path))
    name = os.path.basename(model.paths[0])
    link = ParentLink.for_parent_in(storage, name, "sub/child.vhd")
    with VhdFile(model.paths[0]) as parent:
        assert link == ParentLink(parent.unique_id, vhd_timestamp(1800000000), "../" + name)
    given = ParentLink.for_parent_in(storage, name, "child.vhd", unique_id=uuid.UUID(int=1))
    assert given.unique_id == uuid.UUID(int=1).bytes and given.name == name
    assert ParentLink.for_parent_file(model.paths[0], str(tmp_path / "child.vhd")) == ParentLink(link.unique_id, link.timestamp, name)


def test_write_stream_through_a_storage_publishes_whole_files_only(tmp_path):
    storage = LocalStorage(str(tmp_path), file_mode=0o640)
    stream = VhdStream(MIB, [0], lambda index: (None, pattern(3, MIB)))
    seen = []
    assert write_stream(stream, "whole.vhd", on_write=seen.append, storage=storage) == stream.length
    assert b"".join(bytes(chunk) for chunk in seen) == (tmp_path / "whole.vhd").read_bytes()
    assert stat.S_IMODE(os.stat(tmp_path / "whole.vhd").st_mode) == 0o640

    def failing():
        yield b"partial bytes"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        write_stream(failing(), "broken.vhd", storage=storage)
    assert sorted(os.listdir(tmp_path)) == ["whole.vhd"]


def test_stream_arguments_are_checked():
    with pytest.raises(ValueError, match="a differencing VHD needs a ParentLink"):
        VhdStream(MIB, [], lambda index: (None, None), disk_type=DISK_DIFFERENCING)
    with pytest.raises(ValueError, match="virtual size 1000 is not a multiple of 512"):
        VhdStream(1000, [], lambda index: (None, None))
    with pytest.raises(ValueError, match="block indices must be unique, ascending and within the disk"):
        VhdStream(4 * MIB, [1, 0], lambda index: (None, None))
    with pytest.raises(ValueError, match="block indices must be unique, ascending and within the disk"):
        VhdStream(4 * MIB, [2], lambda index: (None, None))
