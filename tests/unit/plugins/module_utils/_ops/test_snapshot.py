# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The job's snapshots of a VM (manage_job_snapshots), against the simulator in this process.

Taking one, the reference (the newest exported), pruning everything else but what a run still
needs, [NOBAK] disks left out, migrations blocked while the job backs the VM up.
"""

from __future__ import annotations

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.pool import find_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import (
    EXCLUDED_BY_IGNORE_VDIS, KEY_JOB, job_snapshots, manage_job_snapshots, mark_exported, mark_exporting,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

JOB = 'nightly'
JOB_ID = job_id_for(JOB)
POOL = """
pool: {name: snapshot-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
xapi: {profile: xcp-ng-8.3}
srs: [{name: Local storage, size: 4GiB, default: true}]
vms:
  - name: app
    power_state: Running
    disks:
      - {name: app-root, size: 4MiB}
      - {name: "app-swap [NOBAK]", size: 4MiB}
  - name: plain
    power_state: Halted
    disks: [{name: plain-root, size: 4MiB}]
"""


@pytest.fixture
def xapi():
    with running_pool(POOL) as sim:
        with connect(sim) as connection:
            yield connection


def snapshots(xapi, vm='app', job_id=JOB_ID):
    """The job's snapshots of the VM, oldest first, as the pool holds them now."""
    return job_snapshots(xapi, find_vm(xapi, vm)[1], job_id)


def uuids(found):
    return [snapshot.uuid for snapshot in found]


def take(xapi, vm='app', **options):
    return manage_job_snapshots(xapi, vm, Job(JOB), take=True, **options)


def test_a_snapshot_is_taken_tagged_and_without_nobak_disks(xapi):
    result = take(xapi)
    assert result['changed'] is True and result['reference_snapshot'] is None and result['removed_snapshots'] == []
    taken = result['snapshot']
    assert taken['exported'] is False and taken['name_label'] == '[delta_backup nightly] app'
    assert [disk['name_label'] for disk in taken['disks']] == ['app-root']
    assert [disk['name_label'] for disk in result['excluded_disks']] == ['app-swap [NOBAK]']
    assert result['excluded_by'] == EXCLUDED_BY_IGNORE_VDIS
    assert uuids(snapshots(xapi)) == [taken['uuid']]
    record = xapi.call('VM.get_record', xapi.call('VM.get_by_uuid', taken['uuid']))
    assert record['is_a_snapshot'] and record['other_config'][KEY_JOB] == JOB_ID
    # without [NOBAK] disks there is nothing to exclude, and nothing says how
    plain = take(xapi, 'plain')
    assert plain['excluded_disks'] == [] and plain['excluded_by'] is None


def test_the_reference_is_the_newest_exported_and_survives_pruning(xapi):
    first = take(xapi)['snapshot']['uuid']
    mark_exported(xapi, snapshots(xapi)[0], 0)
    second = take(xapi)
    assert second['reference_snapshot']['uuid'] == first
    assert second['removed_snapshots'] == []
    # a snapshot never exported (its export failed) is pruned by the next take; the reference stays
    third = take(xapi)
    assert third['reference_snapshot']['uuid'] == first
    assert third['removed_snapshots'] == [second['snapshot']['uuid']]
    assert uuids(snapshots(xapi)) == [first, third['snapshot']['uuid']]
    # once the newer one is exported it becomes the reference and the old reference goes
    mark_exported(xapi, snapshots(xapi)[1], 1)
    fourth = take(xapi)
    assert fourth['reference_snapshot']['uuid'] == third['snapshot']['uuid']
    assert fourth['reference_snapshot']['delta_chain_length'] == 1
    assert fourth['removed_snapshots'] == [first]
    assert uuids(snapshots(xapi)) == [third['snapshot']['uuid'], fourth['snapshot']['uuid']]
    # the removed snapshots' disks went with them: the live disk and one per kept snapshot remain
    assert len(xapi.call('VDI.get_by_name_label', 'app-root')) == 3


def test_a_snapshot_being_exported_is_not_pruned(xapi):
    first = take(xapi)['snapshot']['uuid']
    mark_exporting(xapi, snapshots(xapi)[0], True)  # by this (live) process
    pruned = manage_job_snapshots(xapi, 'app', Job(JOB), take=False)
    assert pruned['removed_snapshots'] == [] and uuids(snapshots(xapi)) == [first]
    mark_exporting(xapi, snapshots(xapi)[0], False)
    pruned = manage_job_snapshots(xapi, 'app', Job(JOB), take=False)
    assert pruned['removed_snapshots'] == [first] and snapshots(xapi) == []


def test_check_mode_reports_and_changes_nothing(xapi):
    first = take(xapi)['snapshot']['uuid']
    vm_ref = find_vm(xapi, 'app')[0]
    blocked = xapi.call('VM.get_blocked_operations', vm_ref)
    checked = take(xapi, check_mode=True)
    assert checked['changed'] is True and checked['snapshot']['uuid'] is None
    assert checked['removed_snapshots'] == [first]
    assert uuids(snapshots(xapi)) == [first]
    unblocked = manage_job_snapshots(xapi, 'app', Job(JOB), take=False, check_mode=True)
    assert unblocked['unblocked_operations'] == ['migrate_send', 'pool_migrate']
    assert xapi.call('VM.get_blocked_operations', vm_ref) == blocked


def test_other_jobs_snapshots_are_never_touched(xapi):
    other = manage_job_snapshots(xapi, 'app', Job('weekly'), take=True)['snapshot']['uuid']
    take(xapi)
    take(xapi)
    assert uuids(snapshots(xapi, job_id=job_id_for('weekly'))) == [other]
    assert len(snapshots(xapi)) == 1


def test_migrations_are_blocked_while_backing_up_and_unblocked_after(xapi):
    vm_ref = find_vm(xapi, 'app')[0]
    xapi.call('VM.add_to_blocked_operations', vm_ref, 'migrate_send', 'maintenance')
    taken = take(xapi)
    assert taken['blocked_operations'] == ['pool_migrate'] and taken['kept_blocked_operations'] == {'migrate_send': 'maintenance'}
    blocked = xapi.call('VM.get_blocked_operations', vm_ref)
    assert blocked['pool_migrate'].startswith('xapi.delta_backup: backup job nightly is running')
    done = manage_job_snapshots(xapi, 'app', Job(JOB), take=False)
    assert done['unblocked_operations'] == ['pool_migrate']
    assert xapi.call('VM.get_blocked_operations', vm_ref) == {'migrate_send': 'maintenance'}


def test_no_candidate_vm_is_refused_before_anything_happens(xapi):
    with pytest.raises(Exception, match=r"no VM named or with uuid 'nope' exists in the pool: check the name or use the uuid"):
        take(xapi, 'nope')
    dom0 = next(record for record in xapi.call('VM.get_all_records').values() if record['is_control_domain'])
    with pytest.raises(Exception, match=r'is the control domain, not a VM that can be backed up'):
        take(xapi, dom0['uuid'])
