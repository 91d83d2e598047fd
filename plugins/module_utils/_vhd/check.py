# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structural checks of a VHD file and of a chain, reporting every problem found rather than the first."""

from __future__ import annotations

import os
import struct

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import Storage, split_local_path

from .disk import MAX_CHAIN_LENGTH, Location, VhdFile
from .problems import Problem, chain_link_problems
from .structures import SECTOR, VhdError, bitmap_to_mask, checksum

_BATMAP = struct.Struct(">8sQIII")


def check_file(path, storage: Storage | None = None) -> list[Problem]:
    """Check one VHD file (a local path, or a name in ``storage``); return a list of :class:`Problem` (empty when sound)."""
    try:
        vhd = VhdFile(path, storage=storage)
    except VhdError as error:
        return [Problem.from_error(error)]
    except OSError as error:
        return [Problem(os.fspath(path) if storage is None else _describe(storage, path), "file", "open", None, str(error))]
    with vhd:
        return _file_problems(vhd)


#: At most this many problems of one kind are listed per file; the rest are counted in a summary problem.
MAX_PER_KIND = 50


class _Problems(list):
    """A list of problems that lists at most :data:`MAX_PER_KIND` of each kind (bounded output for garbage input)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.counts = {}

    def add(self, kind: str, problem: Problem) -> None:
        count = self.counts.get(kind, 0) + 1
        self.counts[kind] = count
        if count <= MAX_PER_KIND:
            self.append(problem)

    def finish(self) -> list[Problem]:
        for kind, count in self.counts.items():
            if count > MAX_PER_KIND:
                self.append(Problem(self.path, kind, "count", None, "%d more problems of this kind not listed" % (count - MAX_PER_KIND)))
        return list(self)


def _file_problems(vhd: VhdFile) -> list[Problem]:
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
                                "BAT of %d entries runs past end of file" % header.max_table_entries))
    regions = [(0, SECTOR, "footer copy"), (vhd.footer.data_offset, vhd.footer.data_offset + 1024, "header"),
               (header.table_offset, header.table_offset + vhd.block_count * 4, "BAT")]
    if vhd.is_differencing:
        for number, locator in enumerate(header.locators):
            if locator.platform_code != bytes(4) and locator.data_length:
                end = locator.data_offset + max(locator.data_length, locator.data_space)
                if end > vhd.footer_offset:
                    problems.append(Problem(path, "parent locator[%d]" % number, "data_offset", vhd.footer.data_offset + 576 + 24 * number,
                                            "locator data runs past end of file"))
                else:
                    regions.append((locator.data_offset, end, "parent locator[%d]" % number))
    span = vhd.bitmap_size + vhd.block_size
    batmap = _read_batmap(vhd, problems)
    bat = vhd.bat
    for index in vhd.allocated_blocks():
        offset = bat[index] * SECTOR
        if offset + span > vhd.footer_offset:
            problems.add("BAT", Problem(path, "BAT", "entry[%d]" % index, header.table_offset + 4 * index,
                                        "block at %d runs past the footer at %d" % (offset, vhd.footer_offset)))
            continue
        regions.append((offset, offset + span, "block[%d]" % index))
        if batmap is not None and batmap[index // 8] & (0x80 >> (index % 8)):
            if bitmap_to_mask(vhd.read_bitmap(index), vhd.sectors_per_block) != vhd.full_mask():
                problems.add("bitmap", Problem(path, "block[%d]" % index, "bitmap", offset,
                                               "batmap marks the block full but its sector bitmap is not"))
    regions.sort()
    reach_end, reach_name, reach_start = regions[0][1], regions[0][2], regions[0][0]
    for start, end, name in regions[1:]:
        if start < reach_end:
            problems.add("overlap", Problem(path, name, "offset", start,
                                            "%s at %d overlaps %s (%d..%d)" % (name, start, reach_name, reach_start, reach_end)))
        if end > reach_end:
            reach_end, reach_name, reach_start = end, name, start
    return problems.finish()


def _read_batmap(vhd: VhdFile, problems: _Problems) -> bytes | None:
    """The tdbatmap bits when the creator promises one (``tap`` 1.2 or later), else ``None``."""
    footer = vhd.footer
    if footer.creator_app != b"tap\x00" or footer.creator_version < 0x00010002:
        return None
    at = vhd.header.table_offset + vhd.header.bat_bytes
    raw = vhd.file.pread(_BATMAP.size, at)
    if len(raw) < _BATMAP.size or raw[:8] != b"tdbatmap":
        return None
    _cookie, map_offset, map_sectors, _version, stored = _BATMAP.unpack(raw)
    needed = (vhd.block_count + 7) // 8
    if map_sectors * SECTOR < needed or map_offset + map_sectors * SECTOR > vhd.footer_offset:
        problems.append(Problem(vhd.path, "batmap", "map_size", at + 16, "batmap too small or past end of file"))
        return None
    bits = vhd.file.pread(map_sectors * SECTOR, map_offset)
    if checksum(bits, len(bits)) != stored:
        problems.append(Problem(vhd.path, "batmap", "checksum", at + 28, "batmap checksum mismatch"))
    return bits[:needed]


def check_chain(paths, storage: Storage | None = None) -> list[Problem]:
    """Check newest-first chain members (a list of local paths, or of names in ``storage``) or, given one,
    the chain its parent names form.

    Returns every :class:`Problem` in the files and in their links (types, parent identity, parent
    name, block sizes, a child smaller than its parent).
    """
    follow = isinstance(paths, (str, bytes, os.PathLike))
    queue = [_location(path, storage) for path in ([paths] if follow else paths)]
    shown = [where.describe(name) for where, name in queue]
    problems: list[Problem] = []
    members: list[VhdFile] = []
    try:
        position = 0
        while position < len(queue) and position < MAX_CHAIN_LENGTH:
            location = queue[position]
            path = shown[position]
            position += 1
            problems.extend(check_file(location[1], storage=location[0]))
            try:
                member = VhdFile.open_in(*location)
            except (VhdError, OSError):
                break
            members.append(member)
            try:
                parent = member.parent_location()
            except VhdError as error:
                problems.append(Problem.from_error(error))
                break
            parent_shown = None if parent is None else parent[0].describe(parent[1])
            if follow:
                if parent is not None:
                    if parent_shown in shown:
                        problems.append(Problem(path, "header", "parent_name", None, "parent chain loops"))
                    else:
                        queue.append(parent)
                        shown.append(parent_shown)
            elif position < len(queue) and parent is not None:
                if shown[position] != parent_shown:
                    problems.append(Problem(path, "header", "parent_name", member.footer.data_offset + 64,
                                            "parent name %r does not resolve to %s" % (member.header.parent_name, shown[position])))
        problems.extend(chain_link_problems(members, allow_missing_parent=len(members) != len(queue), report_absorbed=True))
    finally:
        for member in members:
            member.close()
    return problems


def _describe(storage: Storage, path: str) -> str:
    try:
        return storage.describe(path)
    except OSError:
        return str(path)  # a path the storage refuses is shown as given


def _location(path, storage: Storage | None) -> Location:
    return split_local_path(path) if storage is None else (storage, path)


__all__ = ["MAX_PER_KIND", "Problem", "check_chain", "check_file"]
