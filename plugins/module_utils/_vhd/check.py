# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structural checks of a VHD file and of a chain, reporting every problem found rather than the first."""

from __future__ import annotations

import dataclasses
import os
import struct

from .structures import SECTOR, VhdError, bitmap_to_mask, checksum

_BATMAP = struct.Struct(">8sQIII")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One structural problem: the file, the structure, the field, the byte offset (or ``None``) and what is wrong."""

    path: str
    structure: str
    field: str
    offset: int
    message: str

    def __str__(self):
        where = f" at offset {self.offset}" if self.offset is not None else ""
        return f"{self.path}: {self.structure}.{self.field}{where}: {self.message}"

    def as_error(self):
        """The same problem as a :class:`~.structures.VhdError`."""
        return VhdError(self.path, self.structure, self.field, self.offset, self.message)

    @classmethod
    def from_error(cls, error):
        """Problem describing a :class:`~.structures.VhdError`."""
        return cls(error.path, error.structure, error.field, error.offset, error.problem)


def check_file(path):
    """Check one VHD file; return a list of :class:`Problem` (empty when the file is sound)."""
    from .disk import VhdFile  # pylint: disable=import-outside-toplevel

    try:
        vhd = VhdFile(path)
    except VhdError as error:
        return [Problem.from_error(error)]
    except OSError as error:
        return [Problem(os.fspath(path), "file", "open", None, str(error))]
    with vhd:
        return _file_problems(vhd)


#: At most this many problems of one kind are listed per file; the rest are counted in a summary problem.
MAX_PER_KIND = 50


class _Problems(list):
    """A list of problems that lists at most :data:`MAX_PER_KIND` of each kind (bounded output for garbage input)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.counts = {}

    def add(self, kind, problem):
        count = self.counts.get(kind, 0) + 1
        self.counts[kind] = count
        if count <= MAX_PER_KIND:
            self.append(problem)

    def finish(self):
        for kind, count in self.counts.items():
            if count > MAX_PER_KIND:
                self.append(Problem(self.path, kind, "count", None, f"{count - MAX_PER_KIND} more problems of this kind not listed"))
        return list(self)


def _file_problems(vhd):
    path = vhd.path
    problems = _Problems(path)
    if vhd.footer_copies_differ:
        problems.append(Problem(path, "footer copy", "checksum", 0, "footer copy at offset 0 differs from the end footer"))
    if vhd.is_fixed:
        return problems.finish()
    header = vhd.header
    bat_region_end = header.table_offset + header.bat_bytes
    if bat_region_end > vhd.footer_offset:
        problems.append(Problem(path, "header", "max_table_entries", vhd.footer.data_offset + 28,
                                f"BAT of {header.max_table_entries} entries runs past end of file"))
    regions = [(0, SECTOR, "footer copy"), (vhd.footer.data_offset, vhd.footer.data_offset + 1024, "header"),
               (header.table_offset, header.table_offset + vhd.block_count * 4, "BAT")]
    if vhd.is_differencing:
        for number, locator in enumerate(header.locators):
            if locator.platform_code != bytes(4) and locator.data_length:
                end = locator.data_offset + max(locator.data_length, locator.data_space)
                if end > vhd.footer_offset:
                    problems.append(Problem(path, f"parent locator[{number}]", "data_offset", vhd.footer.data_offset + 576 + 24 * number,
                                            "locator data runs past end of file"))
                else:
                    regions.append((locator.data_offset, end, f"parent locator[{number}]"))
    span = vhd.bitmap_size + vhd.block_size
    batmap = _read_batmap(vhd, problems)
    bat = vhd.bat
    for index in vhd.allocated_blocks():
        offset = bat[index] * SECTOR
        if offset + span > vhd.footer_offset:
            problems.add("BAT", Problem(path, "BAT", f"entry[{index}]", header.table_offset + 4 * index,
                                        f"block at {offset} runs past the footer at {vhd.footer_offset}"))
            continue
        regions.append((offset, offset + span, f"block[{index}]"))
        if batmap is not None and batmap[index // 8] & (0x80 >> (index % 8)):
            if bitmap_to_mask(vhd.read_bitmap(index), vhd.sectors_per_block) != vhd.full_mask():
                problems.add("bitmap", Problem(path, f"block[{index}]", "bitmap", offset,
                                               "batmap marks the block full but its sector bitmap is not"))
    regions.sort()
    reach_end, reach_name, reach_start = regions[0][1], regions[0][2], regions[0][0]
    for start, end, name in regions[1:]:
        if start < reach_end:
            problems.add("overlap", Problem(path, name, "offset", start,
                                            f"{name} at {start} overlaps {reach_name} ({reach_start}..{reach_end})"))
        if end > reach_end:
            reach_end, reach_name, reach_start = end, name, start
    return problems.finish()


def _read_batmap(vhd, problems):
    """The tdbatmap bits when the creator promises one (``tap`` 1.2 or later), else ``None``."""
    footer = vhd.footer
    if footer.creator_app != b"tap\x00" or footer.creator_version < 0x00010002:
        return None
    at = vhd.header.table_offset + vhd.header.bat_bytes
    raw = os.pread(vhd.fd, _BATMAP.size, at)
    if len(raw) < _BATMAP.size or raw[:8] != b"tdbatmap":
        return None
    _cookie, map_offset, map_sectors, _version, stored = _BATMAP.unpack(raw)
    needed = (vhd.block_count + 7) // 8
    if map_sectors * SECTOR < needed or map_offset + map_sectors * SECTOR > vhd.footer_offset:
        problems.append(Problem(vhd.path, "batmap", "map_size", at + 16, "batmap too small or past end of file"))
        return None
    bits = os.pread(vhd.fd, map_sectors * SECTOR, map_offset)
    if checksum(bits, len(bits)) != stored:
        problems.append(Problem(vhd.path, "batmap", "checksum", at + 28, "batmap checksum mismatch"))
    return bits[:needed]


def check_chain(paths):
    """Check newest-first chain members (list of paths) or, given one path, the chain its parent names form.

    Returns every :class:`Problem` in the files and in their links (types, parent identity, parent
    name, block sizes, a child smaller than its parent).
    """
    from .disk import VhdFile, chain_link_problems, MAX_CHAIN_LENGTH  # pylint: disable=import-outside-toplevel

    follow = isinstance(paths, (str, bytes, os.PathLike))
    queue = [os.fspath(paths)] if follow else [os.fspath(p) for p in paths]
    problems = []
    members = []
    try:
        position = 0
        while position < len(queue) and position < MAX_CHAIN_LENGTH:
            path = queue[position]
            position += 1
            problems.extend(check_file(path))
            try:
                member = VhdFile(path)
            except (VhdError, OSError):
                break
            members.append(member)
            parent = member.parent_path()
            if follow:
                if parent is not None:
                    if parent in queue:
                        problems.append(Problem(path, "header", "parent_name", None, "parent chain loops"))
                    else:
                        queue.append(parent)
            elif position < len(queue) and parent is not None:
                if os.path.abspath(queue[position]) != parent:
                    problems.append(Problem(path, "header", "parent_name", member.footer.data_offset + 64,
                                            f"parent name {member.header.parent_name!r} does not resolve to {queue[position]}"))
        problems.extend(chain_link_problems(members, allow_missing_parent=len(members) != len(queue), report_absorbed=True))
    finally:
        for member in members:
            member.close()
    return problems
