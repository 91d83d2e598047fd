# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Merge: content, identity, names, BAT growth, grown disks, crash safety and resume."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    VhdChain, VhdError, VhdFile, check_chain, merge_chain, resume_merge,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.merge import KILL_ENV, MergeState
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import (
    ChainModel, build_model, libvhdi_read, poke_past_end, read_disk,
)

MIB = 1024 * 1024
KIB = 1024


def _ids(path):
    with VhdFile(path) as vhd:
        return vhd.unique_id, vhd.size, vhd.footer.geometry, vhd.footer.timestamp


def test_merge_child_into_full(tmp_path):
    model = ChainModel(str(tmp_path), 6 * MIB, 2 * MIB)
    model.add_point([(0, 5000, 1), (9000, 100, 2)])
    model.add_point([(3, 1, 3), (4095, 2, 4), (7000, 17, 5), (11000, 300, 6)])
    target = _ids(model.paths[1])
    result = merge_chain(model.paths[0], [model.paths[1]])
    assert result == model.paths[1]
    assert not os.path.exists(model.paths[0])
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(model.paths[1])]
    assert _ids(result) == target
    assert read_disk(result) == model.points[1]
    with VhdFile(result) as merged:
        assert merged.is_dynamic and not merged.footer_copies_differ
    assert libvhdi_read([result]) == model.points[1]
    assert check_chain(result) == []


def test_merge_run_keeps_newer_points(tmp_path):
    model = ChainModel(str(tmp_path), 8 * MIB, 2 * MIB)
    model.add_point([(0, 16384, 1)])
    model.add_point([(8, 8, 2), (5000, 4000, 3)], full_blocks=True)
    model.add_point([(16, 40, 4)])
    model.add_point([(300, 9, 5)])
    model.add_point([(8000, 9, 6)])
    result = merge_chain(model.paths[0], model.paths[1:3])
    assert result == model.paths[2]
    assert not os.path.exists(model.paths[0]) and not os.path.exists(model.paths[1])
    for point in (2, 3, 4):
        assert read_disk(model.paths[point]) == model.points[point]
    assert check_chain(model.paths[4]) == []


def test_merge_into_a_differencing_parent(tmp_path):
    model = ChainModel(str(tmp_path), 4 * MIB, 2 * MIB)
    model.add_point([(0, 8192, 1)])
    model.add_point([(8, 16, 2)])
    model.add_point([(24, 8, 3), (4100, 1, 4)])
    model.add_point([(4096, 4096, 5)])
    result = merge_chain(model.paths[1], model.paths[2:])
    assert read_disk(result) == model.points[3]
    with VhdChain.open(result) as chain:
        assert [m.path for m in chain.members] == [model.paths[3], model.paths[0]]
    assert read_disk(model.paths[0]) == model.points[0]
    assert libvhdi_read([result, model.paths[0]]) == model.points[3]


def test_merge_grown_child_grows_bat_moves_first_block_and_zeroes_old_tail(tmp_path):
    # 64 KiB blocks: the parent's one-sector BAT (128 entries) must grow to map 16 MiB (256 entries),
    # so its first data block has to move.
    model = ChainModel(str(tmp_path), 4 * MIB - 3 * 512, 64 * KIB)
    model.add_point([(0, 8000, 1), (8180, 10, 9)])
    assert poke_past_end(model.paths[0])
    model.add_point([(5, 1, 2), (30000, 2, 3)], size=16 * MIB)
    with VhdFile(model.paths[0]) as parent:
        assert parent.header.max_table_entries == 64
    result = merge_chain(model.paths[0], [model.paths[1]])
    assert read_disk(result) == model.points[1]
    with VhdFile(result) as merged:
        assert merged.size == 16 * MIB and merged.header.max_table_entries >= 256
    assert check_chain(result) == []
    assert libvhdi_read([result]) == model.points[1]


def test_resume_of_stale_state_is_removed(tmp_path):
    state = MergeState(parent="gone.vhd", children=["x.vhd"], target_id="00", old_size=0)
    path = MergeState.path_for(str(tmp_path), state.parent)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"parent": "gone.vhd", "children": ["x.vhd"], "target_id": "00", "old_size": 0}')
    assert resume_merge(path) is None
    assert not os.path.exists(path)


def _crash_scenario(directory):
    """Full with garbage past its end, a same-size delta, a grown delta (BAT growth, block move), a kept delta."""
    model = ChainModel(directory, 4 * MIB - 3 * 512, 64 * KIB)
    model.add_point([(0, 6000, 1), (7000, 500, 2), (8180, 10, 11)])
    assert poke_past_end(model.paths[0])
    model.add_point([(3, 1, 3), (100, 700, 4), (7900, 300, 5)])
    model.add_point([(50, 3, 6), (8100, 9, 7), (20000, 2000, 8)], size=12 * MIB)
    model.add_point([(60, 1000, 9), (23000, 10, 10)], full_blocks=True)
    return model


_CHILD = """
import sys
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import merge_chain
print("ready", flush=True)
merge_chain(sys.argv[1], sys.argv[2:])
"""


def _run_child(args, kill_after=None, hook_sleep=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.pop(KILL_ENV, None)
    if kill_after is not None:
        env[KILL_ENV] = str(kill_after)
    return subprocess.Popen([sys.executable, "-c", _CHILD] + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _verify_after_crash(model, kept_from):
    """Kept points (kept_from and newer) read exactly, before and after resume; the result is right."""
    directory = model.directory
    for point in range(kept_from, len(model.paths)):
        assert read_disk(model.paths[point]) == model.points[point], f"point {point} wrong after crash"
    # Structurally sound at every instant: only the signs of an interrupted footer step may show.
    interrupted = {("footer copy", "checksum"), ("footer", "unique_id")}
    problems = check_chain(model.paths[-1])
    assert {(p.structure, p.field) for p in problems} <= interrupted, problems
    states = [n for n in os.listdir(directory) if n.endswith(".merge.json")]
    if states:
        resume_merge(os.path.join(directory, states[0]))
    elif os.path.exists(model.paths[0]):
        merge_chain(model.paths[0], model.paths[1:kept_from + 1])
    for point in range(kept_from, len(model.paths)):
        assert read_disk(model.paths[point]) == model.points[point]
    names = sorted(n for n in os.listdir(directory))
    assert names == sorted(os.path.basename(p) for p in model.paths[kept_from:])
    assert check_chain(model.paths[-1]) == []
    with VhdFile(model.paths[kept_from]) as merged:
        assert merged.is_dynamic and not merged.footer_copies_differ


def test_merge_killed_at_every_kind_of_step_then_resumed(tmp_path):
    # Count the mutating operations of one uninterrupted merge.
    probe = _crash_scenario(str(tmp_path / "probe"))
    operations = []
    merge_chain(probe.paths[0], probe.paths[1:3], hook=lambda what, count: operations.append(what))
    total = len(operations)
    assert total > 30
    rng = random.Random(1234)
    points = sorted(set([1, 2, 3, total - 1, total] + list(range(4, total, max(1, total // 16))) + rng.sample(range(1, total), 8)))
    assert len(points) >= 20
    for number, kill_after in enumerate(points):
        directory = tmp_path / f"kill{number}"
        model = _crash_scenario(str(directory))
        child = _run_child([model.paths[0]] + model.paths[1:3], kill_after=kill_after)
        child.communicate(timeout=60)
        if kill_after < total:
            assert child.returncode == -signal.SIGKILL, (kill_after, total)
        _verify_after_crash(model, kept_from=2)


@pytest.mark.timeout(120)
def test_merge_killed_at_random_times_then_resumed(tmp_path):
    rng = random.Random(99)
    probe = _crash_scenario(str(tmp_path / "probe"))
    child = _run_child([probe.paths[0]] + probe.paths[1:3])
    child.stdout.readline()
    started = time.monotonic()
    child.communicate(timeout=60)
    duration = time.monotonic() - started
    for number in range(8):
        model = _crash_scenario(str(tmp_path / f"random{number}"))
        child = _run_child([model.paths[0]] + model.paths[1:3])
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0, duration))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        _verify_after_crash(model, kept_from=2)


crash_writes = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 2500), st.integers(1, 200)), min_size=1, max_size=5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=crash_writes, deltas=st.lists(st.tuples(crash_writes, st.integers(0, 6000), st.booleans()), min_size=2, max_size=4),
       fraction=st.floats(0, 1), data=st.data())
def test_random_chains_killed_at_a_random_operation(base, deltas, fraction, data):
    with tempfile.TemporaryDirectory() as directory:
        model = ChainModel(os.path.join(directory, "probe"), 3 * MIB + 512 * 5, 64 * KIB)
        model.add_point(base)
        size = 3 * MIB + 512 * 5
        for writes, growth, full_blocks in deltas:
            size += growth * 512
            model.add_point(writes, size=size, full_blocks=full_blocks)
        newest = data.draw(st.integers(1, len(model.paths) - 1), label="newest merged")
        # Replay the same chain in a second directory: one run counts operations, the other is killed.
        twin = ChainModel(os.path.join(directory, "kill"), 3 * MIB + 512 * 5, 64 * KIB)
        twin.add_point(base)
        size = 3 * MIB + 512 * 5
        for writes, growth, full_blocks in deltas:
            size += growth * 512
            twin.add_point(writes, size=size, full_blocks=full_blocks)
        operations = []
        merge_chain(model.paths[0], model.paths[1:newest + 1], hook=lambda what, count: operations.append(what))
        kill_after = max(1, int(fraction * len(operations)))
        child = _run_child([twin.paths[0]] + twin.paths[1:newest + 1], kill_after=kill_after)
        child.communicate(timeout=60)
        _verify_after_crash(twin, kept_from=newest)


def test_merge_again_after_a_crash_resumes(tmp_path):
    model = _crash_scenario(str(tmp_path / "again"))
    child = _run_child([model.paths[0]] + model.paths[1:3], kill_after=40)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    result = merge_chain(model.paths[0], model.paths[1:3])
    assert result == model.paths[2]
    for point in (2, 3):
        assert read_disk(model.paths[point]) == model.points[point]
    assert not [n for n in os.listdir(tmp_path / "again") if n.startswith(".")]


def test_merge_and_resume_through_a_storage(tmp_path):
    """The storage-taking forms: names relative to the storage root, results as names, same files on disk."""
    model = _crash_scenario(str(tmp_path / "repo" / "disk"))
    storage = LocalStorage(str(tmp_path / "repo"))
    names = ["disk/" + os.path.basename(path) for path in model.paths]
    child = _run_child([model.paths[0]] + model.paths[1:3], kill_after=40)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    state = "disk/" + os.path.basename(MergeState.path_for("", os.path.basename(model.paths[0])))
    assert storage.exists(state)
    assert MergeState.load(state, storage).children == [os.path.basename(path) for path in model.paths[1:3]]
    assert resume_merge(state, storage=storage) == names[2]
    for point in (2, 3):
        assert read_disk(model.paths[point]) == model.points[point]
    assert check_chain(names[3], storage=storage) == []
    assert storage.list_dir("disk") == sorted(os.path.basename(path) for path in model.paths[2:])
    # A plain merge of the remaining pair, by name.
    assert merge_chain(names[2], names[3:], storage=storage) == names[3]
    assert read_disk(model.paths[3]) == model.points[3]
    assert storage.list_dir("disk") == [os.path.basename(model.paths[3])]


def test_merge_arguments_are_checked(tmp_path):
    model = _crash_scenario(str(tmp_path / "a"))
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_chain(model.paths[0], [])
    with pytest.raises(ValueError, match="a merge needs the parent and its children in one directory"):
        merge_chain(model.paths[0], [str(tmp_path / "elsewhere.vhd")])
    storage = LocalStorage(str(tmp_path))
    with pytest.raises(ValueError, match="a merge needs the parent and its children in one directory"):
        merge_chain("a/" + os.path.basename(model.paths[0]), [os.path.basename(model.paths[1])], storage=storage)
    garbage = MergeState.path_for(str(tmp_path / "a"), "x.vhd")
    with open(garbage, "w", encoding="utf-8") as handle:
        handle.write("[1, 2]")
    with pytest.raises(VhdError, match=r"merge state\.json: .*'list' object has no attribute 'items'"):
        resume_merge(garbage)


def test_growing_the_table_of_a_parent_without_blocks_keeps_its_end_footer(tmp_path):
    """Found by hypothesis: the grown BAT of an empty delta covered its end footer, so the merge could not reopen it."""
    model = build_model(str(tmp_path), (64 * 1024, 5317120, [], [([], 3000, False), ([], 3000, False)]))
    assert merge_chain(model.paths[1], model.paths[2:3]) == model.paths[2]
    for point in (0, 2):
        assert read_disk(model.paths[point]) == model.points[point]
    assert check_chain(model.paths[2]) == []
