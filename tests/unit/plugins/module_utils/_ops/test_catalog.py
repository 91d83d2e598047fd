# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What backup_info reports of a repository (describe_repository), and what its verification finds.

On histories written with the VHD engine (RepoBuilder) and on one written by real exports from the
simulator in this process.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.catalog import describe_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import manage_job_snapshots
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import BLOCK, JOB, VM, RepoBuilder
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

POINTS = 4


@pytest.fixture
def history(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=2, size=8 * BLOCK)
    for number in range(POINTS):
        builder.add_point(full=number == 0, changed_blocks=2)
    return builder


def flip_byte(path: str, offset: int) -> None:
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_points_with_their_chains_newest_file_first(history):
    result = describe_repository(history.repo)
    assert result['problems'] == [] and result['verified'] is False and result['files_verified'] == 0
    assert [vm['uuid'] for vm in result['vms']] == [VM] and result['vms'][0]['name_label'] == 'vm1'
    backups = result['vms'][0]['backups']
    assert [point['timestamp'] for point in backups] == sorted(history.truth)
    assert all(point['job_id'] == JOB for point in backups)
    assert result['jobs'] == [{'id': JOB, 'name': None}]
    for number, point in enumerate(backups):
        for disk in point['disks']:
            # a point's chain runs from its own file back to the full
            assert len(disk['chain']) == number + 1
            assert disk['chain'][0] == disk['path'] and disk['differencing'] is (number > 0)
            assert disk['file_size'] == os.path.getsize(os.path.join(history.repo.vm_dir(VM), disk['path']))
    assert backups[0]['written_by'] == 'xapi.delta_backup'


def test_verification_of_an_intact_repository_hashes_every_file_once(history):
    result = describe_repository(history.repo, verify=True)
    assert result['verified'] is True and result['problems'] == []
    assert result['files_verified'] == 2 * POINTS


def test_verification_names_a_damaged_file(history):
    point = history.repo.list_backups(VM)[1]
    victim = point.disks[0].path
    flip_byte(victim, 3 * 512 + 4096 + 100)
    assert describe_repository(history.repo)['problems'] == [], 'without verify nothing is read'
    result = describe_repository(history.repo, verify=True)
    assert result['problems'], 'a flipped byte went unnoticed'
    assert any(problem.startswith(victim + ': sha256 ') and 'differs from the' in problem and 'damaged' in problem
               for problem in result['problems']), result['problems']
    assert all(victim in problem for problem in result['problems'])
    assert result['vms'][0]['problems'] == result['problems']


def test_verification_names_a_truncated_and_a_missing_file(history):
    points = history.repo.list_backups(VM)
    truncated = points[2].disks[1].path
    with open(truncated, 'r+b') as handle:
        handle.truncate(os.path.getsize(truncated) - 4096)
    missing = points[3].disks[0].path
    os.unlink(missing)
    result = describe_repository(history.repo, verify=True)
    assert any(truncated in problem and 'footer' in problem for problem in result['problems']), result['problems']
    relative = os.path.relpath(missing, history.repo.vm_dir(VM))
    assert '%s, which is missing' % relative in ' '.join(result['problems']), result['problems']
    untouched = points[1].disks[0].path
    assert not any(problem.startswith(untouched + ':') for problem in result['problems'])


def test_filters_by_vm_and_job(history):
    assert [vm['uuid'] for vm in describe_repository(history.repo, vm='vm1')['vms']] == [VM]
    assert [vm['uuid'] for vm in describe_repository(history.repo, vm=VM)['vms']] == [VM]
    assert describe_repository(history.repo, job='weekly')['vms'] == []
    with pytest.raises(Exception, match=r"no backup of VM 'vm2' in %s" % history.repo.root):
        describe_repository(history.repo, vm='vm2')
    with pytest.raises(Exception, match=r"no backup of VM 'vm1' in .* by job 'weekly'"):
        describe_repository(history.repo, vm='vm1', job='weekly')


POOL = """
pool: {name: catalog-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
vms:
  - name: app
    power_state: Running
    disks: [{name: app-root, size: 6MiB, data: [{offset: 0, length: 5MiB, seed: 3}]}]
"""


def test_a_repository_written_by_real_exports(tmp_path):
    repo = tmp_path / 'repo'
    repo.mkdir()
    with running_pool(POOL) as sim:
        with connect(sim) as xapi:
            for _run in range(2):
                manage_job_snapshots(xapi, 'app', Job('nightly'), take=True)
                export_vm(xapi, [str(repo)], 'app', Job('nightly'))
            vm_uuid = xapi.call('VM.get_uuid', xapi.call('VM.get_by_name_label', 'app')[0])
    result = describe_repository(open_repository(str(repo)), vm='app', verify=True)
    assert result['problems'] == [] and result['files_verified'] == 2
    assert result['jobs'] == [{'id': job_id_for('nightly'), 'name': 'nightly'}]
    full, delta = result['vms'][0]['backups']
    assert result['vms'][0]['uuid'] == vm_uuid
    assert [disk['name_label'] for disk in full['disks']] == ['app-root']
    assert full['disks'][0]['differencing'] is False and delta['disks'][0]['differencing'] is True
    assert delta['disks'][0]['chain'] == [delta['disks'][0]['path'], full['disks'][0]['path']]
    assert result['vms'][0]['size'] == full['size'] + delta['size'] > 0
    flip_byte(os.path.join(str(repo), 'xo-vm-backups', vm_uuid, full['disks'][0]['path']), 512 + 1024 + 8)
    damaged = describe_repository(open_repository(str(repo)), verify=True)
    assert len(damaged['problems']) >= 1 and all(full['disks'][0]['path'] in problem for problem in damaged['problems'])
