# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property-based: random writes on a raw model -> chain of deltas -> read, merge, stream; always equal to the model."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    VhdChain, VhdFile, check_chain, merge_chain, stream_disk, write_stream,
)
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import build_model, read_disk

KIB = 1024
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

writes = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 3000), st.integers(1, 200)), min_size=0, max_size=6)
deltas = st.lists(st.tuples(writes, st.integers(0, 3000), st.booleans()), min_size=1, max_size=4)


@st.composite
def scenarios(draw):
    block_size = draw(st.sampled_from([64 * KIB, 128 * KIB, 2048 * KIB]))
    base_sectors = draw(st.integers(1, 24576))
    return block_size, base_sectors * 512, draw(writes), draw(deltas)


@SETTINGS
@given(scenario=scenarios())
def test_chain_reads_and_streams_the_model(scenario):
    with tempfile.TemporaryDirectory() as directory:
        model = build_model(directory, scenario)
        for path, expected in zip(model.paths, model.points, strict=True):
            assert read_disk(path) == expected
        with VhdChain.open(model.paths[-1]) as chain:
            stream = stream_disk(chain)
            out = os.path.join(directory, "export.vhd")
            assert write_stream(stream, out) == stream.length
        with VhdFile(out) as single:
            assert single.is_dynamic and single.size == len(model.points[-1])
        assert read_disk(out) == model.points[-1]
        assert check_chain(model.paths[-1]) == []


@SETTINGS
@given(scenario=scenarios(), data=st.data())
def test_merge_at_random_points_keeps_every_kept_point(scenario, data):
    with tempfile.TemporaryDirectory() as directory:
        model = build_model(directory, scenario)
        count = len(model.paths)
        parent = data.draw(st.integers(0, count - 2), label="parent")
        newest = data.draw(st.integers(parent + 1, count - 1), label="newest merged")
        result = merge_chain(model.paths[parent], model.paths[parent + 1:newest + 1])
        assert result == model.paths[newest]
        for point in range(newest, count):
            assert read_disk(model.paths[point]) == model.points[point]
        for point in range(parent):
            assert read_disk(model.paths[point]) == model.points[point]
        assert check_chain(model.paths[-1]) == []
        # Then fold everything left into the base: the chain collapses to one file holding the newest point.
        remaining = [p for p in model.paths if os.path.exists(p)]
        if len(remaining) > 1:
            final = merge_chain(remaining[0], remaining[1:])
            assert read_disk(final) == model.points[-1]
            assert sorted(os.listdir(directory)) == [os.path.basename(model.paths[-1])]
