# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Retention (continuous merge) on repositories built with the VHD engine; kills at random operations.

``RepoBuilder`` is shared with the seed copy and restore tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import retention
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo import integrity
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for, vhd_relative_path
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import (
    DISK_DIFFERENCING, DISK_DYNAMIC, ParentLink, VhdChain, VhdStream,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.merge import KILL_ENV

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

    def __init__(self, root: str, vm: str = VM, disks: int = 1, size: int = 48 * BLOCK, seed: int = 1):
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

    def add_point(self, full: bool = False, changed_blocks: int = 4, only=None) -> str:
        """One backup run; ``only`` limits it to some disk numbers (a disk detached from the VM)."""
        self.counter += 1
        timestamp = '202601%02dT010000Z' % self.counter
        vhds, differencing, sha, sizes, vdis = {}, {}, {}, {}, {}
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
            sha[relative] = target.sha256
            sizes[ref] = self.size
            vdis[ref] = {'uuid': snap, 'name_label': 'disk %d' % disk, 'name_description': '', '$snapshot_of$uuid': live,
                         'virtual_size': str(self.size), 'type': 'user'}
            self.last[disk] = (snap, timestamp)
        self.truth[timestamp] = [dict(c) if only is None or number in only else None for number, c in enumerate(self.content)]
        metadata = build_metadata(JOB, SCHEDULE, 1767229200000 + self.counter, {'uuid': self.vm, 'name_label': 'vm1'},
                                  {'uuid': str(uuid.uuid4())}, {}, {}, vdis, vhds, differencing, size=0, sha256=sha, virtual_sizes=sizes)
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
    checksums = integrity.recorded_checksums(list(points.values()))
    for timestamp in timestamps:
        point = points[timestamp]
        for disk in point.disks:
            chain = repo.vhd_chain(point, disk)
            checked = integrity.verify_chain(repo, point.vm_uuid, chain, checksums, 'test')
            assert not checked['unverified']
            assert chain_sha(repo, point, disk) == builder.expected_disk(timestamp, builder.live.index(disk.vdi_uuid))


@pytest.fixture
def history(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=2)
    for number in range(6):
        builder.add_point(full=number == 0)
    return builder


def test_check_mode_plans_and_changes_nothing(history):
    before = sorted(os.walk(history.repo.root))
    report = retention.apply_retention(history.repo, VM, JOB, 3, check_mode=True)
    assert report['changed'] is True
    assert report['removed_points'] == sorted(history.truth)[:3]
    assert len(report['merged']) == 2 and all(len(m['deltas']) == 3 for m in report['merged'])
    assert report['bytes_merged'] > 0
    assert sorted(os.walk(history.repo.root)) == before


def test_retention_merges_into_the_full_and_keeps_points_exact(history):
    stamps = sorted(history.truth)
    report = retention.apply_retention(history.repo, VM, JOB, 3)
    assert report['kept_points'] == stamps[3:]
    assert report['removed_points'] == stamps[:3]
    for merged in report['merged']:
        assert merged['result'].endswith(stamps[3] + '.vhd')
    oldest = history.repo.get_backup(VM, stamps[3])
    assert not any(oldest.metadata['isVhdDifferencing'].values())
    assert oldest.metadata['size'] == sum(os.path.getsize(d.path) for d in oldest.disks)
    for folder in map(history.repo.local_path, history.repo.disk_folders(VM, JOB)):
        assert sorted(os.listdir(folder)) == ['%s.vhd' % s for s in stamps[3:]]
    assert_points_restorable(history, stamps[3:])
    again = retention.apply_retention(history.repo, VM, JOB, 3)
    assert again['changed'] is False
    history.add_point()
    assert retention.apply_retention(history.repo, VM, JOB, 1)['removed_points'] == stamps[3:]
    assert_points_restorable(history, sorted(history.truth)[-1:])


def test_corrupted_or_truncated_file_is_refused_naming_it(history):
    stamps = sorted(history.truth)
    point = history.repo.get_backup(VM, stamps[1])
    victim = point.disks[0].path
    with open(victim, 'r+b') as handle:
        handle.seek(3 * 512 + 4096 + 100)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(integrity.IntegrityError) as caught:
        retention.apply_retention(history.repo, VM, JOB, 2)
    assert victim in str(caught.value) and 'sha256' in str(caught.value)
    assert len(history.repo.list_backups(VM)) == 6
    with open(victim, 'r+b') as handle:
        handle.truncate(os.path.getsize(victim) - 4096)
    with pytest.raises(integrity.IntegrityError) as caught:
        retention.apply_retention(history.repo, VM, JOB, 2)
    assert victim in str(caught.value)


# ansible-test makes the collection importable through sys.path, not PYTHONPATH: hand it down to the child.
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))

KILL_SCRIPT = r'''
import sys
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import retention
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
retention.apply_retention(open_repository(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
'''


@pytest.mark.parametrize('seed', range(4))
def test_killed_merge_is_finished_by_the_next_run(tmp_path, seed):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=2, seed=seed)
    for number in range(5):
        builder.add_point(full=number == 0, changed_blocks=6)
    stamps = sorted(builder.truth)
    kill_after = random.Random(seed).randint(1, 60)
    completed = subprocess.run([sys.executable, '-c', KILL_SCRIPT, builder.repo.root, VM, JOB, '2'],
                               env=dict(CHILD_ENV, **{KILL_ENV: str(kill_after)}), capture_output=True, check=False)
    assert completed.returncode in (0, -9), completed.stderr
    report = retention.apply_retention(builder.repo, VM, JOB, 2)
    assert report['kept_points'] == stamps[3:]
    assert_points_restorable(builder, stamps[3:])
    assert not retention.unfinished_merges(builder.repo, VM)


def test_metadata_is_reconciled_after_a_kill_between_merge_and_update(history, monkeypatch):
    stamps = sorted(history.truth)

    real = retention.reconcile_merged_points
    calls = []

    def crash(repo, points):
        calls.append(1)
        if len(calls) > 1:  # the first call is the start-of-run reconciliation; die after the first merge
            raise KeyboardInterrupt
        return real(repo, points)

    monkeypatch.setattr(retention, 'reconcile_merged_points', crash)
    with pytest.raises(KeyboardInterrupt):
        retention.apply_retention(history.repo, VM, JOB, 2)
    monkeypatch.undo()
    point = history.repo.get_backup(VM, stamps[4])
    assert any(point.metadata['isVhdDifferencing'].values())
    report = retention.apply_retention(history.repo, VM, JOB, 2)
    assert report['reconciled']
    assert_points_restorable(history, stamps[4:])


def test_keep_must_be_positive(history):
    with pytest.raises(retention.RepositoryError):
        retention.apply_retention(history.repo, VM, JOB, 0)


def test_lock_is_taken(history):
    with history.repo.lock(VM, 'other job'):
        with pytest.raises(retention.RepositoryError, match='locked'):
            retention.apply_retention(history.repo, VM, JOB, 2)


def test_unfinished_merge_blocks_readers(history, tmp_path):
    folder = history.repo.local_path(history.repo.disk_folders(VM, JOB)[0])
    state = os.path.join(folder, '.20260101T010000Z.vhd.merge.json')
    with open(state, 'w', encoding='utf-8') as handle:
        json.dump({'parent': '20260101T010000Z.vhd', 'children': []}, handle)
    with pytest.raises(retention.UnfinishedMergeError, match='backup_merge'):
        retention.refuse_unfinished_merges(history.repo, VM)


def test_disks_added_and_removed_between_points(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=3)
    builder.add_point(full=True, only={0, 1})
    builder.add_point(only={0, 1})
    builder.add_point(only={0, 2})      # disk 1 detached, disk 2 new (a full)
    builder.add_point(only={0, 2})
    stamps = sorted(builder.truth)
    report = retention.apply_retention(builder.repo, VM, JOB, 2)
    assert report['kept_points'] == stamps[2:]
    assert sorted(m['vdi_uuid'] for m in report['merged']) == [builder.live[0]]
    gone = builder.repo.vdi_dir(VM, JOB, builder.live[1])
    assert os.listdir(gone) == []
    assert len(report['removed_files']) == 2
    assert_points_restorable(builder, stamps[2:])


@pytest.mark.parametrize('seed', range(5))
def test_sigkill_at_a_random_time_anywhere_in_the_run(tmp_path, seed):
    """Not only inside the engine: metadata rewrites, removals and reconciliation can be cut too."""
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=2, seed=100 + seed)
    for number in range(5):
        builder.add_point(full=number == 0, changed_blocks=8)
    stamps = sorted(builder.truth)
    # How long a whole run takes here, measured on a copy, so the kill lands inside the run.
    rehearsal = str(tmp_path / 'rehearsal')
    shutil.copytree(builder.repo.root, rehearsal)
    began = time.monotonic()
    subprocess.run([sys.executable, '-c', KILL_SCRIPT, rehearsal, VM, JOB, '2'], env=CHILD_ENV, check=True, capture_output=True)
    duration = time.monotonic() - began
    process = subprocess.Popen([sys.executable, '-c', KILL_SCRIPT, builder.repo.root, VM, JOB, '2'], env=CHILD_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=random.Random(seed).uniform(0.4, 1.0) * duration)
    except subprocess.TimeoutExpired:
        process.kill()
    process.wait()
    # whatever instant it died at, the kept points read exactly once the next run has finished
    retention.apply_retention(builder.repo, VM, JOB, 2)
    assert_points_restorable(builder, stamps[3:])
