# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Repositories of a modelled backup history, for the retention, seed copy, restore and catalog tests.

``RepoBuilder`` writes a full then deltas of whole 2 MiB blocks with the VHD engine and keeps the content
every point must read back as; ``assert_points_restorable`` checks exactly that.
"""

from __future__ import annotations

import hashlib
import os
import random
import uuid

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo import integrity
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for, vhd_relative_path
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    DISK_DIFFERENCING, DISK_DYNAMIC, ParentLink, VhdChain, VhdStream,
)

BLOCK = 2 * 1024 * 1024
JOB_NAME = 'nightly'
JOB = job_id_for(JOB_NAME)
SCHEDULE = '2f0c6b1e-6a8a-4d8e-a3a4-0c4f1b9d7e10'
VM = '0b7c5d3e-3a51-4a3c-9a55-6e1f8c0a1b2c'


def block_bytes(seed: int) -> bytes:
    unit = hashlib.sha256(b'%d' % seed).digest() * 64
    return (unit * (BLOCK // len(unit) + 1))[:BLOCK]


class RepoBuilder:
    """A VM's backup history: full then deltas of whole 2 MiB blocks, each point's disk content modelled."""

    def __init__(self, root: str, vm: str = VM, disks: int = 1, size: int = 48 * BLOCK, seed: int = 1, legacy: bool = False):
        os.makedirs(root, exist_ok=True)
        self.repo = open_repository(root, create=True)
        self.vm = vm
        self.rng = random.Random(seed)
        self.live = [str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) for dummy in range(disks)]
        self.size = size
        self.content = [dict() for dummy in range(disks)]      # block index -> seed, current state
        self.truth = {}                                    # timestamp -> [content dict per disk]
        self.last = [None] * disks                         # (snapshot vdi uuid, timestamp) of the newest file
        self.counter = 0
        # legacy: write points as collections before block checksums did (one sha256 per file, no sidecar)
        self.legacy = legacy

    def add_point(self, full: bool = False, changed_blocks: int = 4, only=None) -> str:
        """One backup run; ``only`` limits it to some disk numbers (a disk detached from the VM)."""
        self.counter += 1
        timestamp = '202601%02dT010000Z' % self.counter
        vhds, differencing, sha, sums, sizes, vdis = {}, {}, {}, {}, {}, {}
        for disk, live in enumerate(self.live):
            if only is not None and disk not in only:
                continue
            blocks = self.size // BLOCK
            touched = sorted(self.rng.sample(range(blocks), changed_blocks))
            for index in touched:
                self.content[disk][index] = self.rng.getrandbits(30)
            snap = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            is_full = full or self.last[disk] is None
            include = sorted(self.content[disk]) if is_full else touched
            parent = None
            if not is_full:
                parent = ParentLink(uuid.UUID(self.last[disk][0]).bytes, 0, '%s.vhd' % self.last[disk][1])
            state = dict(self.content[disk])
            stream = VhdStream(self.size, include, lambda i, state=state: (None, block_bytes(state[i])),
                               disk_type=DISK_DYNAMIC if is_full else DISK_DIFFERENCING, unique_id=uuid.UUID(snap), parent=parent)
            with self.repo.open_vhd_writer(self.vm, JOB, live, timestamp) as target:
                for chunk in stream:
                    target.write(chunk)
            ref = 'OpaqueRef:vdi-%d-%d' % (self.counter, disk)
            relative = vhd_relative_path(JOB, live, timestamp)
            vhds[ref] = relative
            differencing[ref] = not is_full
            if self.legacy:
                sha[relative] = hashlib.sha256(self.repo.storage.read_bytes(target.path)).hexdigest()
                self.repo.storage.remove(target.sidecar_path)
            else:
                sums[relative] = target.block_sums.hash_name
            sizes[ref] = self.size
            vdis[ref] = {'uuid': snap, 'name_label': 'disk %d' % disk, 'name_description': '', '$snapshot_of$uuid': live,
                         'virtual_size': str(self.size), 'type': 'user'}
            self.last[disk] = (snap, timestamp)
        self.truth[timestamp] = [dict(c) if only is None or number in only else None for number, c in enumerate(self.content)]
        metadata = build_metadata(JOB, SCHEDULE, 1767229200000 + self.counter, {'uuid': self.vm, 'name_label': 'vm1'},
                                  {'uuid': str(uuid.uuid4())}, {}, {}, vdis, vhds, differencing, size=0, block_checksums=sums, virtual_sizes=sizes)
        if self.legacy:
            metadata['xapi_delta_backup'] = {'collection_version': '1.0.0', 'sha256': sha, 'virtual_sizes': sizes}
        self.repo.write_metadata(self.vm, timestamp, metadata)
        return timestamp

    def expected_disk(self, timestamp: str, disk: int) -> str:
        """sha256 of the whole virtual disk at a point."""
        digest = hashlib.sha256()
        zero = bytes(BLOCK)
        state = self.truth[timestamp][disk]
        for index in range(self.size // BLOCK):
            digest.update(block_bytes(state[index]) if index in state else zero)
        return digest.hexdigest()


def chain_sha(repo, point, disk) -> str:
    digest = hashlib.sha256()
    with VhdChain.from_paths([repo.local_path(path) for path in repo.vhd_chain(point, disk)]) as chain:
        for index in range(chain.block_count):
            data = chain.read_block(index)
            digest.update(bytes(data) if data is not None else bytes(chain.block_size))
    return digest.hexdigest()


def assert_points_restorable(builder: RepoBuilder, timestamps: list) -> None:
    repo = builder.repo
    points = {p.timestamp: p for p in repo.list_backups(builder.vm)}
    assert sorted(points) == sorted(timestamps)
    for timestamp in timestamps:
        point = points[timestamp]
        for disk in point.disks:
            chain = repo.vhd_chain(point, disk)
            checked = integrity.check_chain_integrity(repo, point.vm_uuid, chain, list(points.values()), 'test', read_blocks=True)
            assert not checked.unverified
            assert chain_sha(repo, point, disk) == builder.expected_disk(timestamp, builder.live.index(disk.vdi_uuid))
