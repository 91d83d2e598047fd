# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine on a storage that is not the local file system: every file operation goes through the Storage interface.

MemoryStorage (vhd_testlib) holds files in a dict, so any direct ``os``/``open`` use would miss them.
Results are compared with the same operations on local files, read by the engine and by qemu-img.
"""

from __future__ import annotations

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    ParentLink, VhdChain, VhdError, VhdFile, check_chain, check_file, merge_chain, resume_merge, stream_disk, write_stream,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.merge import MergeState
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import (
    ChainModel, memory_copy, poke_past_end, qemu_raw,
)

MIB = 1024 * 1024
KIB = 1024


def _chain(directory):
    """A full with bytes past its end, a same-size delta, a grown delta (BAT growth on merge), a kept delta."""
    model = ChainModel(str(directory), 4 * MIB - 3 * 512, 64 * KIB)
    model.add_point([(0, 6000, 1), (7000, 500, 2), (8180, 10, 11)])
    assert poke_past_end(model.paths[0])
    model.add_point([(3, 1, 3), (100, 700, 4), (7900, 300, 5)])
    model.add_point([(50, 3, 6), (8100, 9, 7), (20000, 2000, 8)], size=12 * MIB)
    model.add_point([(60, 1000, 9), (23000, 10, 10)], full_blocks=True)
    return model


def test_read_check_and_stream_a_chain_in_memory(tmp_path):
    model = _chain(tmp_path / "local")
    storage, names = memory_copy(model.paths, "vm/disk")
    with VhdChain.open_in(storage, names[-1]) as chain:
        assert [layer.path for layer in chain.layers()] == ["mem://" + name for name in reversed(names)]
        assert chain.read(0, chain.size) == model.points[-1]
        stream = stream_disk(chain)
        assert write_stream(stream, "vm/flat.vhd", storage=storage) == stream.length == storage.size("vm/flat.vhd")
    assert check_chain(names[-1], storage=storage) == []
    assert check_file("vm/flat.vhd", storage=storage) == []
    flat = tmp_path / "flat.vhd"
    flat.write_bytes(bytes(storage.files["vm/flat.vhd"]))
    assert qemu_raw(str(flat), str(tmp_path / "flat.raw")) == model.points[-1]
    link = ParentLink.for_parent_in(storage, names[0], "vm/other/child.vhd")
    assert link.name == "../disk/" + names[0].split("/")[-1]


def test_merge_and_resume_in_memory_match_the_local_merge(tmp_path):
    model = _chain(tmp_path / "local")
    storage, names = memory_copy(model.paths, "vm/disk")
    operations = []
    assert merge_chain(names[0], names[1:3], storage=storage, hook=lambda what, count: operations.append(what)) == names[2]
    assert {"write", "fsync", "rename", "fsync_dir", "unlink", "truncate"} >= set(operations) >= {"write", "fsync", "rename"}
    assert merge_chain(model.paths[0], model.paths[1:3]) == model.paths[2]
    with open(model.paths[2], "rb") as merged:
        local = merged.read()
    # The merge is deterministic: the same input files give the same bytes on either storage.
    assert bytes(storage.files[names[2]]) == local
    assert sorted(storage.files) == sorted(names[2:])
    for point in (2, 3):
        with VhdChain.open_in(storage, names[point]) as chain:
            assert chain.read(0, chain.size) == model.points[point]
    assert check_chain(names[3], storage=storage) == []


def test_a_merge_stopped_midway_in_memory_is_resumed_by_name(tmp_path):
    model = _chain(tmp_path / "local")
    storage, names = memory_copy(model.paths, "disk")

    class Stop(Exception):
        pass

    def stop_after_twenty(what, count):
        if count == 20:
            raise Stop(what)

    with pytest.raises(Stop):
        merge_chain(names[0], names[1:3], storage=storage, hook=stop_after_twenty)
    state = MergeState.path_for("disk", names[0].split("/")[-1])
    assert storage.exists(state)
    # Kept points read right while the merge is unfinished.
    for point in (2, 3):
        with VhdChain.open_in(storage, names[point]) as chain:
            assert chain.read(0, chain.size) == model.points[point]
    assert resume_merge(state, storage=storage) == names[2]
    assert sorted(storage.files) == sorted(names[2:])
    with VhdChain.open_in(storage, names[3]) as chain:
        assert chain.read(0, chain.size) == model.points[3]


def test_a_parent_outside_a_remote_storage_is_refused_by_name(tmp_path):
    model = ChainModel(str(tmp_path), MIB, 128 * KIB)
    model.add_point([(0, 10, 1)])
    model.add_point([(3, 2, 2)])
    parent_name = model.paths[0].split("/")[-1]
    storage, names = memory_copy(model.paths[1:], "")
    with VhdFile.open_in(storage, names[0]) as delta:
        assert delta.path == "mem://" + names[0]
        assert delta.parent_location() == (storage, parent_name)
        delta.header.parent_name = "../" + parent_name
        with pytest.raises(VhdError, match=r"header\.parent_name at offset 576: parent '\.\./.*' lies outside mem://: keep a chain's files"):
            delta.parent_location()
    with pytest.raises(VhdError, match=r"parent mem://%s not found" % parent_name):
        VhdChain.open_in(storage, names[0])
    with pytest.raises(FileNotFoundError, match="mem://gone.vhd"):
        VhdChain.open_in(storage, "gone.vhd")
