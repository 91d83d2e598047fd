# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Retention (continuous merge) on repositories built with the VHD engine; kills at random operations."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import retention
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo import integrity
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.merge import KILL_ENV
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import (
    JOB, VM, RepoBuilder, assert_points_restorable,
)


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
        # Each kept file keeps its block checksums (the merged one's rewritten by the merge); the retired files' went with them.
        assert sorted(os.listdir(folder)) == sorted(['%s.vhd' % s for s in stamps[3:]] + ['%s.vhd.blocksums' % s for s in stamps[3:]])
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
    # The delta's blocks are all read before merging: the damaged one is named by file, block number and virtual offset.
    assert '%s: block ' % victim in str(caught.value) and 'virtual offset' in str(caught.value)
    assert 'does not match its recorded checksum' in str(caught.value)
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
    # These runs make 50 to 60 engine operations: a kill after at most 40 always lands inside the merges.
    kill_after = random.Random(seed).randint(1, 40)
    completed = subprocess.run([sys.executable, '-c', KILL_SCRIPT, builder.repo.root, VM, JOB, '2'],
                               env=dict(CHILD_ENV, **{KILL_ENV: str(kill_after)}), capture_output=True, check=False)
    assert completed.returncode == -signal.SIGKILL, 'the run was not killed after %d operations: %r' % (kill_after, completed.stderr)
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
        process.wait(timeout=random.Random(seed).uniform(0.4, 0.75) * duration)
    except subprocess.TimeoutExpired:
        process.kill()
    # The kill must land inside the run: a run that finished first tested nothing.
    assert process.wait() == -signal.SIGKILL, 'the run ended before the kill (%.2f s rehearsal)' % duration
    # whatever instant it died at, the kept points read exactly once the next run has finished
    retention.apply_retention(builder.repo, VM, JOB, 2)
    assert_points_restorable(builder, stamps[3:])
