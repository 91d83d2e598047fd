# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHD engine: parse, read (files and chains as one disk), write, rewrite identity, merge and check VHDs.

Standard library only.  See docs/vhd-engine.md for the design.
"""

from __future__ import annotations

from .structures import (
    DEFAULT_BLOCK_SIZE, DISK_DIFFERENCING, DISK_DYNAMIC, DISK_FIXED, SECTOR, Footer, Header, VhdError,
    chs_geometry, vhd_timestamp,
)
from .problems import Problem
from .disk import Disk, VhdChain, VhdFile
from .writer import ParentLink, VhdStream, stream_disk, stream_file, write_stream
from .rewrite import RewriteResult, rewrite_identity
from .merge import merge_chain, resume_merge, MergeState
from .check import check_chain, check_file

__all__ = [
    "DEFAULT_BLOCK_SIZE", "DISK_DIFFERENCING", "DISK_DYNAMIC", "DISK_FIXED", "SECTOR", "Footer", "Header", "VhdError",
    "chs_geometry", "vhd_timestamp", "Disk", "VhdChain", "VhdFile", "ParentLink", "VhdStream", "stream_disk", "stream_file", "write_stream",
    "RewriteResult", "rewrite_identity", "merge_chain", "resume_merge", "MergeState", "Problem", "check_chain",
    "check_file",
]
