# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The merge keeps block checksum sidecars true: after a merge (interrupted or not) the result's sidecar is exactly
the one computed from the result's bytes, and damaged blocks the merge reads stop it before it writes."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdFile, check_chain, merge_chain, resume_merge
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import (
    UNKNOWN, BlockSums, compute_sums, sidecar_name, structure_problems, verify_blocks,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.merge import MergeState
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.test_vhd_merge import _crash_scenario, _run_child, crash_writes
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import ChainModel, build_model, read_disk

MIB = 1024 * 1024
KIB = 1024


def _with_sidecars(model, skip=()):
    """Give every file of the model its sidecar (as the export writes them), except the indices in ``skip``."""
    for number, path in enumerate(model.paths):
        if number not in skip:
            with VhdFile(path) as vhd:
                raw = compute_sums(vhd).pack()
            with open(sidecar_name(path), "wb") as handle:
                handle.write(raw)
    return model


def _sidecar(path):
    with open(sidecar_name(path), "rb") as handle:
        return BlockSums.parse(handle.read(), sidecar_name(path))


def _assert_sidecar_exact(path):
    """The sidecar is byte for byte the one computed from the file as it is now (identity, structures, every block)."""
    with VhdFile(path) as vhd:
        assert _sidecar(path).pack() == compute_sums(vhd).pack()
        assert verify_blocks(vhd, _sidecar(path)) == []


def _flip(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x10]))


def test_merged_sidecar_is_exact_through_bat_growth_partial_blocks_and_a_cleared_tail(tmp_path):
    # The crash scenario: garbage past the full's end (cleared by the merge), partial bitmaps, a grown disk
    # (BAT growth moves blocks), a kept delta of whole blocks.
    model = _with_sidecars(_crash_scenario(str(tmp_path)))
    result = merge_chain(model.paths[0], model.paths[1:3])
    assert result == model.paths[2]
    _assert_sidecar_exact(result)
    _assert_sidecar_exact(model.paths[3])  # the kept delta's is untouched
    assert read_disk(model.paths[3]) == model.points[3]
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(p) for p in model.paths[2:]]
                                                  + [os.path.basename(sidecar_name(p)) for p in model.paths[2:]])
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_whole_delta_blocks_take_the_deltas_entries_without_reading_them(tmp_path, monkeypatch):
    model = ChainModel(str(tmp_path), 8 * MIB, 2 * MIB)
    model.add_point([(0, 16384, 1)])
    model.add_point([(8, 8, 2), (5000, 4000, 3)], full_blocks=True)
    _with_sidecars(model)
    delta_entries = {index: _sidecar(model.paths[1]).digest(index) for index in (0, 1, 2)}
    read = []
    real = VhdFile.read_block_raw
    monkeypatch.setattr(VhdFile, "read_block_raw", lambda self, index: read.append((self.path, index)) or real(self, index))
    merge_chain(model.paths[0], model.paths[1:])
    # Whole blocks are copied in the kernel and their digests taken from the delta's sidecar: no block went through Python.
    assert read == []
    sums = _sidecar(model.paths[1])
    for index, digest in delta_entries.items():
        assert sums.digest(index) == digest
    _assert_sidecar_exact(model.paths[1])


def test_parent_without_sidecar_gives_unknown_for_its_kept_blocks(tmp_path):
    model = _with_sidecars(_crash_scenario(str(tmp_path)), skip={0})
    with VhdFile(model.paths[0]) as full:
        parent_blocks = {index for index in range(full.block_count) if full.block_offset(index) is not None}
    result = merge_chain(model.paths[0], model.paths[1:3])
    sums = _sidecar(result)
    with VhdFile(result) as merged:
        assert structure_problems(merged, sums) == []
        assert verify_blocks(merged, sums) == []
        exact = compute_sums(merged)
    unknown = {index for index in range(sums.entries) if sums.digest(index) == UNKNOWN}
    # Unknown: exactly the parent's blocks the merge kept or only partly overwrote; every other entry is exact.
    assert unknown and unknown <= parent_blocks
    for index in range(sums.entries):
        if index not in unknown:
            assert sums.digest(index) == exact.digest(index), index


def test_delta_without_sidecar_leaves_the_result_without_one(tmp_path):
    model = _with_sidecars(_crash_scenario(str(tmp_path)), skip={1})
    result = merge_chain(model.paths[0], model.paths[1:3])
    # The newest delta's sidecar described the delta, not the merged file: it went, with the parent's.
    assert not os.path.exists(sidecar_name(result))
    assert not os.path.exists(sidecar_name(model.paths[0]))
    assert read_disk(model.paths[3]) == model.points[3]


def test_a_damaged_parent_block_the_merge_reads_stops_it_before_any_write(tmp_path):
    model = _with_sidecars(_crash_scenario(str(tmp_path)))
    with VhdFile(model.paths[0]) as full:
        offset = full.block_offset(0)  # block 0: partly overwritten by the first delta, so the merge reads it
    _flip(model.paths[0], offset + 512 + 700)
    before = {name: open(os.path.join(tmp_path, name), "rb").read() for name in os.listdir(tmp_path)}
    with pytest.raises(VhdError, match=r"block 0 \(virtual offset 0\) does not match its recorded checksum"):
        merge_chain(model.paths[0], model.paths[1:3])
    after = {name: open(os.path.join(tmp_path, name), "rb").read() for name in os.listdir(tmp_path)}
    assert after == before  # no state, no sidecar, no byte of any file changed


def test_a_damaged_delta_block_read_for_a_partial_merge_stops_it(tmp_path):
    model = _with_sidecars(_crash_scenario(str(tmp_path)))
    with VhdFile(model.paths[1]) as delta:
        index = next(i for i in range(delta.block_count) if delta.block_offset(i) is not None)
        offset = delta.block_offset(index) + delta.bitmap_size
        virtual = index * delta.block_size
    _flip(model.paths[1], offset + 1)
    with pytest.raises(VhdError, match=r"block %d \(virtual offset %d\) does not match" % (index, virtual)):
        merge_chain(model.paths[0], model.paths[1:3])
    assert not os.path.exists(MergeState.path_for(str(tmp_path), os.path.basename(model.paths[0])))


def test_merge_with_sidecars_killed_at_every_operation_then_resumed(tmp_path):
    probe = _with_sidecars(_crash_scenario(str(tmp_path / "probe")))
    operations = []
    merge_chain(probe.paths[0], probe.paths[1:3], hook=lambda what, count: operations.append(what))
    total = len(operations)
    assert total > 30
    for kill_after in range(1, total + 1):
        directory = tmp_path / ("kill%d" % kill_after)
        model = _with_sidecars(_crash_scenario(str(directory)))
        child = _run_child([model.paths[0]] + model.paths[1:3], kill_after=kill_after)
        child.communicate(timeout=60)
        if kill_after < total:
            assert child.returncode == -signal.SIGKILL, (kill_after, total)
        for point in (2, 3):
            assert read_disk(model.paths[point]) == model.points[point], (kill_after, point)
        states = [name for name in os.listdir(directory) if name.endswith(".merge.json")]
        if states:
            resume_merge(os.path.join(directory, states[0]))
        elif os.path.exists(model.paths[0]):
            merge_chain(model.paths[0], model.paths[1:3])  # killed before the state existed: start again
        for point in (2, 3):
            assert read_disk(model.paths[point]) == model.points[point], (kill_after, point)
        assert check_chain(model.paths[3]) == []
        _assert_sidecar_exact(model.paths[2])
        _assert_sidecar_exact(model.paths[3])
        assert sorted(os.listdir(directory)) == sorted(
            [os.path.basename(p) for p in model.paths[2:]] + [os.path.basename(sidecar_name(p)) for p in model.paths[2:]]), kill_after


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=crash_writes, deltas=st.lists(st.tuples(crash_writes, st.integers(0, 6000), st.booleans()), min_size=1, max_size=3),
       fraction=st.floats(0, 1), data=st.data())
def test_random_chains_with_sidecars_killed_at_a_random_operation(base, deltas, fraction, data):
    """Random partial and whole blocks, growth, garbage-free fulls: after a kill and the resume, the sidecar is exact."""
    scenario = (64 * KIB, 3 * MIB + 512 * 5, base, deltas)
    with tempfile.TemporaryDirectory() as directory:
        probe = _with_sidecars(build_model(os.path.join(directory, "probe"), scenario))
        newest = data.draw(st.integers(1, len(probe.paths) - 1), label="newest merged")
        operations = []
        merge_chain(probe.paths[0], probe.paths[1:newest + 1], hook=lambda what, count: operations.append(what))
        _assert_sidecar_exact(probe.paths[newest])
        twin = _with_sidecars(build_model(os.path.join(directory, "kill"), scenario))
        child = _run_child([twin.paths[0]] + twin.paths[1:newest + 1], kill_after=max(1, int(fraction * len(operations))))
        child.communicate(timeout=60)
        states = [name for name in os.listdir(twin.directory) if name.endswith(".merge.json")]
        if states:
            resume_merge(os.path.join(twin.directory, states[0]))
        elif os.path.exists(twin.paths[0]):
            merge_chain(twin.paths[0], twin.paths[1:newest + 1])
        for point in range(newest, len(twin.paths)):
            assert read_disk(twin.paths[point]) == twin.points[point]
            _assert_sidecar_exact(twin.paths[point])
