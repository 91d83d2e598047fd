# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Identity rewrite of XAPI export streams, written once and hashed as written."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    DISK_DIFFERENCING, DISK_DYNAMIC, ParentLink, VhdChain, VhdError, VhdFile, check_chain, rewrite_identity,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import StreamSums, compute_sums
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.transfer import WriteBehind
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import (
    TrickleReader, libvhdi_read, pattern, xapi_stream_bytes,
)

MIB = 1024 * 1024


def _land(stream_bytes, path, unique_id, parent=None):
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        result = rewrite_identity(TrickleReader(stream_bytes), out, unique_id, parent=parent, on_write=digest.update)
    with open(path, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == digest.hexdigest()
    assert result.length == os.path.getsize(path) == len(stream_bytes)
    return result


def test_full_then_delta_from_xapi_streams(tmp_path):
    size = 7 * MIB
    full_blocks = {0: pattern(1, 2 * MIB), 3: pattern(2, MIB) + bytes(MIB)}
    base = bytearray(size)
    base[0:2 * MIB] = full_blocks[0]
    base[6 * MIB:7 * MIB] = full_blocks[3][:MIB]
    full_id, delta_id = uuid.uuid4(), uuid.uuid4()
    full_path = str(tmp_path / "20260101T000000Z.vhd")
    result = _land(xapi_stream_bytes(size, full_blocks, DISK_DYNAMIC), full_path, full_id)
    assert result.blocks == 2 and result.footer.unique_id == full_id.bytes

    delta_blocks = {1: pattern(3, 2 * MIB)}
    point = bytearray(base)
    point[2 * MIB:4 * MIB] = delta_blocks[1]
    delta_path = str(tmp_path / "20260102T000000Z.vhd")
    stream = xapi_stream_bytes(size, delta_blocks, DISK_DIFFERENCING, parent_id=uuid.uuid4().bytes)
    parent = ParentLink.for_parent_file(full_path, delta_path)
    _land(stream, delta_path, delta_id, parent=parent)

    with VhdFile(delta_path) as delta:
        assert delta.unique_id == delta_id.bytes
        assert delta.header.parent_unique_id == full_id.bytes
        assert delta.header.parent_name == "20260101T000000Z.vhd"
        assert all(loc.platform_code == bytes(4) for loc in delta.header.locators)
        assert not delta.footer_copies_differ
    with VhdChain.open(delta_path) as chain:
        assert chain.read(0, chain.size) == bytes(point)
    assert libvhdi_read([delta_path, full_path]) == bytes(point)
    assert check_chain(delta_path) == []


@pytest.mark.parametrize("damage, message", [
    ("truncated", "ends before its last block"),
    ("tail", "end footer differs from the copy at offset 0"),
    ("bat", r"BAT\.entry\[0\].*overlaps the header or BAT"),
])
def test_damaged_streams_raise_vhd_error(tmp_path, damage, message):
    stream = bytearray(xapi_stream_bytes(5 * MIB, {1: pattern(4, 2 * MIB)}, DISK_DYNAMIC))
    if damage == "truncated":
        stream = stream[:-600]
    elif damage == "tail":
        stream[-500] ^= 0xFF
    else:
        stream[2048:2052] = (1).to_bytes(4, "big")   # block 0 pointing into the header
    with open(tmp_path / "x.vhd", "wb") as out, pytest.raises(VhdError, match=message):
        rewrite_identity(TrickleReader(bytes(stream)), out, uuid.uuid4())


def test_delta_needs_a_parent_link(tmp_path):
    stream = xapi_stream_bytes(3 * MIB, {}, DISK_DIFFERENCING, parent_id=bytes(16))
    with open(tmp_path / "x.vhd", "wb") as out, pytest.raises(VhdError, match="differencing stream needs a parent link"):
        rewrite_identity(TrickleReader(stream), out, uuid.uuid4())


class ReadintoTrickle(TrickleReader):
    """A short-reading source with ``readinto``, as an HTTP response: the rewriter receives in place."""

    def readinto(self, view):
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)


@pytest.mark.parametrize("buffer_size", [1536, 4096, 65536 + 7, 2 * MIB])
@pytest.mark.parametrize("source_class", [TrickleReader, ReadintoTrickle])
def test_receiving_into_the_ring_writes_what_a_plain_copy_writes(tmp_path, buffer_size, source_class):
    # The in-place path (WriteBehind.acquire/submit) holds the end footer back across buffers; each
    # buffer size puts the buffers' edges elsewhere in the blocks and in the footer.
    stream = xapi_stream_bytes(9 * MIB, {0: pattern(1, 2 * MIB), 2: pattern(2, 2 * MIB), 4: pattern(3, MIB) + bytes(MIB)}, DISK_DYNAMIC)
    unique_id = uuid.uuid4()
    plain = tmp_path / "plain.vhd"
    with open(plain, "wb") as out:
        expected = rewrite_identity(TrickleReader(stream), out, unique_id)
    ring = tmp_path / "ring.vhd"
    sums = StreamSums("ring")
    seen = hashlib.sha256()
    with open(ring, "wb") as out:
        with WriteBehind(out.write, sums.update, buffers=3, buffer_size=buffer_size) as sink:
            result = rewrite_identity(source_class(stream), sink, unique_id, on_write=seen.update)
    assert ring.read_bytes() == plain.read_bytes()
    assert result == expected and result.length == len(stream)
    assert seen.hexdigest() == hashlib.sha256(plain.read_bytes()).hexdigest()
    with VhdFile(str(ring)) as vhd:
        assert sums.finish().pack() == compute_sums(vhd).pack()


@pytest.mark.parametrize("cut", [600, 2 * MIB, 512])
def test_a_cut_stream_fails_on_the_in_place_path_too(tmp_path, cut):
    stream = xapi_stream_bytes(5 * MIB, {1: pattern(4, 2 * MIB)}, DISK_DYNAMIC)[:-cut]
    sums = StreamSums("cut")
    with open(tmp_path / "x.vhd", "wb") as out, pytest.raises(VhdError, match="ends before its last block|end footer differs"):
        with WriteBehind(out.write, sums.update, buffers=2, buffer_size=65536) as sink:
            rewrite_identity(ReadintoTrickle(stream), sink, uuid.uuid4())
    with pytest.raises(VhdError, match="ended before its last block"):
        sums.finish()
