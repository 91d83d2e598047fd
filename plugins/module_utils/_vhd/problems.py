# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structural problems, and the rules a chain's links follow (shared by the chain reader and the checker)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .structures import VhdError


@dataclasses.dataclass(frozen=True)
class Problem:
    """One structural problem: the file, the structure, the field, the byte offset (or ``None``) and what is wrong."""

    path: str
    structure: str
    field: str
    offset: int | None
    message: str

    def __str__(self) -> str:
        where = " at offset %d" % self.offset if self.offset is not None else ""
        return "%s: %s.%s%s: %s" % (self.path, self.structure, self.field, where, self.message)

    def as_error(self) -> VhdError:
        """The same problem as a :class:`~.structures.VhdError`."""
        return VhdError(self.path, self.structure, self.field, self.offset, self.message)

    @classmethod
    def from_error(cls, error: VhdError) -> 'Problem':
        """Problem describing a :class:`~.structures.VhdError`."""
        return cls(error.path, error.structure, error.field, error.offset, error.problem)


def chain_link_problems(members: Sequence[Any], allow_missing_parent: bool = False, report_absorbed: bool = False) -> list[Problem]:
    """Problems in the links of newest-first ``members`` (``VhdFile`` objects): types, identities, sizes, block sizes.

    A parent whose unique id equals a newer member's id is accepted: it has absorbed that
    member during an interrupted merge (see merge.py) and already holds its content.  With
    ``report_absorbed`` (the checker) such a link is reported so the merge gets resumed.
    """
    problems = []
    newer_ids = set()
    for position, child in enumerate(members):
        newer_ids.add(child.unique_id)
        if position == len(members) - 1:
            if child.is_differencing and not allow_missing_parent:
                problems.append(Problem(child.path, "footer", "disk_type", 60, "chain ends with a differencing disk (parent missing)"))
            break
        parent = members[position + 1]
        if not child.is_differencing:
            problems.append(Problem(child.path, "footer", "disk_type", child.footer_offset + 60,
                                    "%s has a parent in the chain but is not a differencing disk" % child.path))
            continue
        if parent.unique_id in newer_ids:
            # The parent absorbed a newer member (interrupted merge): it already holds that member's content.
            if report_absorbed:
                problems.append(Problem(parent.path, "footer", "unique_id", parent.footer_offset + 68,
                                        "carries the id of a newer chain member: an interrupted merge must be resumed"))
            continue
        if child.header.parent_unique_id != parent.unique_id:
            problems.append(Problem(child.path, "header", "parent_unique_id", child.footer.data_offset + 40,
                                    "parent id %s does not match %s footer id %s"
                                    % (child.header.parent_unique_id.hex(), parent.path, parent.unique_id.hex())))
        if not parent.is_fixed and parent.block_size != child.block_size:
            problems.append(Problem(child.path, "header", "block_size", child.footer.data_offset + 32,
                                    "block size %d differs from parent's %d" % (child.block_size, parent.block_size)))
        if child.size < parent.size:
            problems.append(Problem(child.path, "footer", "current_size", child.footer_offset + 48,
                                    "child of %d bytes is smaller than its parent %s (%d bytes)" % (child.size, parent.path, parent.size)))
    return problems


__all__ = ["Problem", "chain_link_problems"]
