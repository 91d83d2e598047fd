# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The retention plan: decide_retention on points held in memory (nothing read), then plan_retention on a real repository."""

from __future__ import annotations

import os
import posixpath

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import retention
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupPoint
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError, vhd_relative_path
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import BLOCK, JOB, SCHEDULE, VM, RepoBuilder

OTHER_JOB = Job('weekly').id
VM_DIR = 'xo-vm-backups/%s' % VM  # storage path: relative to the repository root
SHOWN_VM_DIR = '/backups/' + VM_DIR
ROOT = '11111111-1111-4111-8111-111111111111'
DATA = '22222222-2222-4222-8222-222222222222'


def stamp(number: int) -> str:
    return '202601%02dT010000Z' % number


def vhd(disk: str, number: int, job_id: str = JOB) -> str:
    return posixpath.join(VM_DIR, vhd_relative_path(job_id, disk, stamp(number)))


def point(number: int, disks: dict) -> BackupPoint:
    """A point held in memory: ``disks`` maps a live VDI uuid to (job id, full or not)."""
    vhds, differencing = {}, {}
    for index, (disk, (job_id, full)) in enumerate(sorted(disks.items())):
        ref = 'OpaqueRef:%d-%d' % (number, index)
        vhds[ref] = vhd_relative_path(job_id, disk, stamp(number))
        differencing[ref] = not full
    metadata = build_metadata(JOB, SCHEDULE, number, {'uuid': VM}, {}, {}, {}, {}, vhds, differencing, size=0, block_checksums={}, virtual_sizes={})
    name = '%s.json' % stamp(number)
    return BackupPoint(vm_uuid=VM, timestamp=stamp(number), metadata_storage_path=posixpath.join(VM_DIR, name),
                       metadata_path=posixpath.join(SHOWN_VM_DIR, name), metadata=metadata)


def chain(disk: str, newest: int, oldest: int) -> list:
    """Paths newest first, as BackupRepository.vhd_chain gives them."""
    return [vhd(disk, number) for number in range(newest, oldest - 1, -1)]


def test_the_oldest_kept_point_merges_its_deltas_into_the_full():
    points = [point(number, {ROOT: (JOB, number == 1)}) for number in range(1, 6)]
    chains = {(stamp(number), 'OpaqueRef:%d-0' % number): chain(ROOT, number, 1) for number in (4, 5)}
    plan = retention.decide_retention(VM, points, 2, JOB, chains, [vhd(ROOT, number) for number in range(1, 6)])
    assert [p.timestamp for p in plan.kept] == [stamp(4), stamp(5)]
    assert [p.timestamp for p in plan.removed] == [stamp(1), stamp(2), stamp(3)]
    assert len(plan.merges) == 1, 'one merge per disk folder, not one per kept point'
    merge = plan.merges[0]
    assert merge.point is points[3] and merge.disk.vdi_uuid == ROOT
    assert (merge.full, merge.deltas, merge.merged) == (vhd(ROOT, 1), [vhd(ROOT, 2), vhd(ROOT, 3), vhd(ROOT, 4)], vhd(ROOT, 4))
    assert plan.orphans == [] and plan.changes
    relative = 'vdis/%s/%s/' % (JOB, ROOT)
    assert merge.as_result(VM) == {'vdi_uuid': ROOT, 'point': stamp(4), 'full': relative + stamp(1) + '.vhd',
                                   'deltas': [relative + stamp(n) + '.vhd' for n in (2, 3, 4)], 'result': relative + stamp(4) + '.vhd',
                                   'bytes': 0}
    merge.seconds = 1.5
    assert merge.as_result(VM)['seconds'] == 1.5


def test_files_no_kept_chain_reads_are_orphans_and_a_full_needs_no_merge():
    # point 5 is a full (full_interval reached): keeping only it leaves the older chain unread
    points = [point(number, {ROOT: (JOB, number in (1, 5))}) for number in range(1, 6)]
    stray = os.path.join(os.path.dirname(vhd(ROOT, 1)), '20251231T010000Z.vhd')
    files = [stray] + [vhd(ROOT, number) for number in range(1, 6)]
    plan = retention.decide_retention(VM, points, 1, JOB, {(stamp(5), 'OpaqueRef:5-0'): [vhd(ROOT, 5)]}, files)
    assert plan.merges == []
    assert plan.orphans == [stray] + [vhd(ROOT, number) for number in range(1, 5)]
    assert [p.timestamp for p in plan.removed] == [stamp(n) for n in range(1, 5)]


def test_keeping_every_point_changes_nothing():
    points = [point(1, {ROOT: (JOB, True)}), point(2, {ROOT: (JOB, False)})]
    chains = {(stamp(1), 'OpaqueRef:1-0'): chain(ROOT, 1, 1), (stamp(2), 'OpaqueRef:2-0'): chain(ROOT, 2, 1)}
    plan = retention.decide_retention(VM, points, 5, JOB, chains, [vhd(ROOT, 1), vhd(ROOT, 2)])
    assert plan.kept == points and not plan.removed and not plan.merges and not plan.orphans
    assert not plan.changes


def test_each_disk_folder_merges_at_the_oldest_kept_point_holding_it_and_other_jobs_disks_are_left_alone():
    # the data disk was detached for backup 3: its oldest kept point is 4, the root disk's is 3
    attached = {1: (ROOT, DATA), 2: (ROOT, DATA), 3: (ROOT,), 4: (ROOT, DATA), 5: (ROOT, DATA)}
    points = [point(number, {disk: (JOB, number == 1) for disk in disks}) for number, disks in attached.items()]
    points[-1].metadata['vhds']['OpaqueRef:other'] = vhd_relative_path(OTHER_JOB, 'cccccccc-3333-4333-8333-333333333333', stamp(5))
    chains = {(stamp(number), 'OpaqueRef:%d-0' % number): chain(ROOT, number, 1) for number in (3, 4, 5)}
    chains[(stamp(4), 'OpaqueRef:4-1')] = [vhd(DATA, 4), vhd(DATA, 2), vhd(DATA, 1)]
    chains[(stamp(5), 'OpaqueRef:5-1')] = [vhd(DATA, 5), vhd(DATA, 4), vhd(DATA, 2), vhd(DATA, 1)]
    # the other job's disk has no chain in ``chains``: looking it up would raise KeyError
    plan = retention.decide_retention(VM, points, 3, JOB, chains, [])
    assert [(merge.disk.vdi_uuid, merge.point.timestamp, len(merge.deltas)) for merge in plan.merges] == [(ROOT, stamp(3), 2), (DATA, stamp(4), 2)]


@pytest.mark.parametrize('keep', [0, -3])
def test_keep_below_one_is_refused(keep):
    with pytest.raises(RepositoryError, match=r'keep must be at least 1 \(the newest backup is always kept\), got %d' % keep):
        retention.decide_retention(VM, [point(1, {ROOT: (JOB, True)})], keep, JOB, {}, [])


def test_plan_retention_reads_the_repository_and_changes_nothing(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=2)
    stamps = [builder.add_point(full=number == 0, changed_blocks=3) for number in range(5)]
    before = sorted(os.walk(builder.repo.root))
    plan = retention.plan_retention(builder.repo, VM, JOB, 2)
    assert sorted(os.walk(builder.repo.root)) == before
    assert [p.timestamp for p in plan.kept] == stamps[3:] and [p.timestamp for p in plan.removed] == stamps[:3]
    assert sorted(merge.disk.vdi_uuid for merge in plan.merges) == sorted(builder.live)
    for merge in plan.merges:
        assert merge.point.timestamp == stamps[3] and len(merge.chain) == 4
        # the deltas of points 2 to 4 changed 3 blocks each: at most 9 distinct blocks, at least 3
        assert merge.bytes % BLOCK == 0 and 3 * BLOCK <= merge.bytes <= 9 * BLOCK
    assert plan.orphans == []
    assert plan.vm_uuid == VM
