# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""problems.py: Problem records and the rules a chain's links follow, on real files."""

from __future__ import annotations

import uuid

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import ParentLink, Problem, VhdError, VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.problems import chain_link_problems
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import ChainModel, write_vhd

MIB = 1024 * 1024
KIB = 1024


def test_problem_text_and_error_round_trip():
    problem = Problem("/r/a.vhd", "BAT", "entry[3]", 1548, "block at 9 runs past the footer at 4")
    assert str(problem) == "/r/a.vhd: BAT.entry[3] at offset 1548: block at 9 runs past the footer at 4"
    assert str(Problem("/r/a.vhd", "file", "open", None, "gone")) == "/r/a.vhd: file.open: gone"
    error = problem.as_error()
    assert isinstance(error, VhdError) and str(error) == str(problem)
    assert Problem.from_error(error) == problem
    with pytest.raises(VhdError, match=r"^/r/a\.vhd: BAT\.entry\[3\] at offset 1548: "):
        raise problem.as_error()


def _open(paths):
    return [VhdFile(path) for path in paths]


def test_sound_links_have_no_problems_and_a_missing_parent_is_one(tmp_path):
    model = ChainModel(str(tmp_path), 2 * MIB, 128 * KIB)
    model.add_point([(0, 100, 1)])
    model.add_point([(7, 3, 2)])
    members = _open(reversed(model.paths))
    try:
        assert chain_link_problems(members) == []
        lone = chain_link_problems(members[:1])
        assert [(p.path, p.structure, p.field) for p in lone] == [(model.paths[1], "footer", "disk_type")]
        assert "parent missing" in lone[0].message
        assert chain_link_problems(members[:1], allow_missing_parent=True) == []
    finally:
        for member in members:
            member.close()


def test_wrong_parent_id_bigger_parent_and_a_dynamic_child(tmp_path):
    model = ChainModel(str(tmp_path), 4 * MIB, 128 * KIB)
    model.add_point([(0, 100, 1)])
    child = str(tmp_path / "child.vhd")
    write_vhd(child, 2 * MIB, {1}, 128 * KIB, parent=ParentLink(uuid.UUID(int=7).bytes, 0, "x.vhd"), model=bytes(2 * MIB))
    members = _open([child, model.paths[0]])
    try:
        found = {(p.structure, p.field): p for p in chain_link_problems(members)}
        assert set(found) == {("header", "parent_unique_id"), ("footer", "current_size")}
        assert uuid.UUID(int=7).hex in found[("header", "parent_unique_id")].message
        assert "smaller than its parent" in found[("footer", "current_size")].message
        reversed_members = list(reversed(members))
        dynamic_first = chain_link_problems(reversed_members, allow_missing_parent=True)
        assert [(p.path, p.field) for p in dynamic_first] == [(model.paths[0], "disk_type")]
        assert "is not a differencing disk" in dynamic_first[0].message
    finally:
        for member in members:
            member.close()


def test_a_parent_that_absorbed_a_newer_member_is_accepted_and_reported_on_request(tmp_path):
    model = ChainModel(str(tmp_path), 2 * MIB, 128 * KIB)
    model.add_point([(0, 100, 1)])
    model.add_point([(7, 3, 2)])
    with VhdFile(model.paths[1]) as delta:
        delta_id = delta.unique_id
    # Give the full the delta's identity, as an interrupted merge's footer step does.
    absorbed = str(tmp_path / "absorbed.vhd")
    write_vhd(absorbed, 2 * MIB, set(range(100)), 128 * KIB, unique_id=uuid.UUID(bytes=delta_id), model=bytes(model.points[0]))
    members = _open([model.paths[1], absorbed])
    try:
        assert chain_link_problems(members) == []
        reported = chain_link_problems(members, report_absorbed=True)
        assert [(p.path, p.field) for p in reported] == [(absorbed, "unique_id")]
        assert "interrupted merge must be resumed" in reported[0].message
    finally:
        for member in members:
            member.close()
