# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Shared helpers of the repository tests: names, small real VHDs, and writing one backup run into a real repository."""

from __future__ import annotations

import os
import uuid

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for, vhd_relative_path
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupRepository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import DISK_DIFFERENCING, DISK_DYNAMIC, ParentLink, VhdStream

VM = '0b7c5d3e-3a51-4a3c-9a55-6e1f8c0a1b2c'
VDI_A = '11111111-2222-4333-8444-555555555555'
VDI_B = '66666666-7777-4888-9999-aaaaaaaaaaaa'
SCHEDULE = '2f0c6b1e-6a8a-4d8e-a3a4-0c4f1b9d7e10'
JOB = job_id_for('nightly')
T1, T2, T3, T4 = '20260101T010000Z', '20260102T010000Z', '20260103T010000Z', '20260104T010000Z'


FULL, DELTA = 'full', 'delta'
DISK_SIZE = 4 * 1024 * 1024


def real_vhd(kind: str, parent_name: str | None, seed: int) -> bytes:
    """A small real VHD: a full, or a delta naming its parent file (relative, as XO writes it)."""
    data = bytes([seed % 251 + 1]) * 4096
    parent = ParentLink(unique_id=uuid.UUID(int=seed).bytes, timestamp=0, name=parent_name) if kind == DELTA else None
    stream = VhdStream(DISK_SIZE, [0], lambda index: (None, data), disk_type=DISK_DIFFERENCING if kind == DELTA else DISK_DYNAMIC,
                       unique_id=uuid.UUID(int=seed + 1).bytes, parent=parent)
    return b''.join(stream)


def add_backup(repo: BackupRepository, timestamp: str, disks: dict, vm: str = VM, write_json: bool = True) -> dict:
    """Write one run: {vdi uuid: vhd bytes}; the JSON last, as the modules will."""
    vhds, differencing, sha, sizes = {}, {}, {}, {}
    sizes_written = 0
    for index, (vdi_uuid, kind) in enumerate(sorted(disks.items())):
        ref = 'OpaqueRef:snap-vdi-%d' % index
        # A delta's parent is the newest older file of its folder, or the T1 file when there is none (a broken chain).
        older = [name for name in repo.disk_files(vm, JOB, vdi_uuid) if name < timestamp + '.vhd']
        content = kind if isinstance(kind, bytes) else real_vhd(kind, older[-1] if older else T1 + '.vhd', int(timestamp[:8]))
        sizes_written += len(content)
        with repo.open_vhd_writer(vm, JOB, vdi_uuid, timestamp) as target:
            target.write(content)
        relative = vhd_relative_path(JOB, vdi_uuid, timestamp)
        vhds[ref] = relative
        differencing[ref] = kind == DELTA
        sha[relative] = target.block_sums.hash_name
        sizes[ref] = 10 * 1024 ** 3
    metadata = build_metadata(JOB, SCHEDULE, 1767229200000, {'uuid': vm}, {'uuid': 'snap'}, {}, {}, {}, vhds, differencing,
                              size=sizes_written, block_checksums=sha, virtual_sizes=sizes)
    if write_json:
        repo.write_metadata(vm, timestamp, metadata)
    return metadata


def tree(root) -> list[str]:
    found = []
    for folder, _subfolders, files in os.walk(str(root)):
        found.extend(os.path.relpath(os.path.join(folder, name), str(root)) for name in files)
    return sorted(found)
