# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The full/delta decision of the export and what it writes, against the simulator in this process.

A first run exports fulls; the next one a delta on the reference snapshot; a reference that is gone
or cannot be a base gives a full saying why, unless ``delta_only`` asks to refuse instead. The VHD
files are checked with qemu-img and read back, through their chain, against the simulator's disks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm, plan_export
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import manage_job_snapshots
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdChain
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

MIB = 1024 * 1024
JOB = 'nightly'
JOB_ID = job_id_for(JOB)
POOL = """
pool: {name: export-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
vms:
  - name: app
    power_state: Running
    disks:
      - {name: app-root, size: 8MiB, data: [{offset: 0, length: 3MiB, seed: 1}]}
      - {name: app-data, size: 6MiB, data: [{offset: 2MiB, length: 1MiB, seed: 2}]}
      - {name: "app-swap [NOBAK]", size: 4MiB}
"""


@pytest.fixture
def pool():
    with running_pool(POOL) as sim:
        with connect(sim) as xapi:
            yield sim, xapi


def snapshot_and_export(xapi, repositories, **options):
    for path in repositories:
        os.makedirs(str(path), exist_ok=True)  # an empty folder becomes a repository
    manage_job_snapshots(xapi, 'app', Job(JOB), take=True)
    return export_vm(xapi, [str(path) for path in repositories], 'app', Job(JOB), **options)


def qemu_img(*args) -> str:
    return subprocess.run(['qemu-img'] + list(args), capture_output=True, text=True, check=True).stdout


def chain_content(repository_root: str, vm_uuid: str, live_vdi_uuid: str) -> bytes:
    """The whole virtual disk of the newest backup of one disk, read through its VHD chain."""
    repository = open_repository(repository_root)
    point = repository.list_backups(vm_uuid)[-1]
    disk = next(disk for disk in point.disks if disk.vdi_uuid == live_vdi_uuid)
    with VhdChain.from_paths([repository.local_path(path) for path in repository.vhd_chain(point, disk)]) as chain:
        return b''.join(bytes(chain.read_block(index) or bytes(chain.block_size)) for index in range(chain.block_count))


def test_first_run_is_a_full_of_every_disk_but_nobak(pool, tmp_path):
    sim, xapi = pool
    result = snapshot_and_export(xapi, [tmp_path / 'repo'])
    assert result['mode'] == 'full' and result['base_snapshot'] is None
    assert 'no exported snapshot' in result['reason']
    assert sorted(disk['name_label'] for disk in result['disks']) == ['app-data', 'app-root']
    assert all(disk['mode'] == 'full' for disk in result['disks'])
    assert result['snapshot']['exported'] is True and result['delta_chain_length'] == 0
    vm_dir = os.path.join(str(tmp_path / 'repo'), 'xo-vm-backups', result['vm']['uuid'])
    for disk in result['disks']:
        path = os.path.join(vm_dir, disk['path'])
        # qemu sizes a VHD from its CHS geometry unless told to trust the footer's current size
        info = json.loads(qemu_img('info', '--output', 'json', '--image-opts', 'driver=vpc,force_size_calc=current_size,file.filename=%s' % path))
        assert info['format'] == 'vpc' and info['virtual-size'] == disk['virtual_size'] and info['dirty-flag'] is False
        # qemu-img reads the exported VHD as the snapshot's disk, byte for byte.
        raw = tmp_path / ('%s.raw' % disk['snapshot_vdi_uuid'])
        raw.write_bytes(sim.control.read_vdi(disk['snapshot_vdi_uuid']))
        compared = subprocess.run(['qemu-img', 'compare', '--image-opts', 'driver=vpc,force_size_calc=current_size,file.filename=%s' % path,
                                   'driver=raw,file.filename=%s' % raw], capture_output=True, text=True, check=False)
        assert compared.returncode == 0, compared.stdout + compared.stderr


def test_next_run_is_a_delta_on_the_reference_snapshot(pool, tmp_path):
    sim, xapi = pool
    first = snapshot_and_export(xapi, [tmp_path / 'repo'])
    sim.control.write_vdi(xapi.call('VDI.get_by_name_label', 'app-root')[0], 5 * MIB, seed=7, length=MIB)
    second = snapshot_and_export(xapi, [tmp_path / 'repo'])
    assert second['mode'] == 'delta', second['reason']
    assert second['base_snapshot']['uuid'] == first['snapshot']['uuid']
    assert second['reason'] == 'delta from the reference snapshot %s' % first['snapshot']['datetime']
    assert second['delta_chain_length'] == 1
    by_name = {disk['name_label']: disk for disk in second['disks']}
    # Only the changed 2 MiB block travels for app-root; app-data did not change at all.
    assert by_name['app-root']['blocks'] == 1 and by_name['app-data']['blocks'] == 0
    for disk in second['disks']:
        # the delta file on its parent reads as the new snapshot's disk
        assert chain_content(str(tmp_path / 'repo'), second['vm']['uuid'], disk['vdi_uuid']) == \
            sim.control.read_vdi(disk['snapshot_vdi_uuid'])
    assert sim.control.read_vdi(by_name['app-root']['snapshot_vdi_uuid'], 5 * MIB, MIB) != bytes(MIB)


def test_the_reference_snapshot_removed_gives_a_full_saying_why(pool, tmp_path):
    _sim, xapi = pool
    first = snapshot_and_export(xapi, [tmp_path / 'repo'])
    reference = xapi.call('VM.get_by_uuid', first['snapshot']['uuid'])
    for vbd in xapi.call('VM.get_VBDs', reference):
        vdi = xapi.call('VBD.get_VDI', vbd)
        if vdi != 'OpaqueRef:NULL':
            xapi.call('VDI.destroy', vdi)
    xapi.call('VM.destroy', reference)
    time.sleep(1)  # the job has no snapshot left to order the next one after: let it be another second
    second = snapshot_and_export(xapi, [tmp_path / 'repo'])
    assert second['mode'] == 'full'
    assert second['reason'] == 'the job has no exported snapshot of this VM (first run, or the previous snapshot was removed)'


def test_a_reference_disk_gone_gives_a_full_of_that_disk(pool, tmp_path):
    _sim, xapi = pool
    first = snapshot_and_export(xapi, [tmp_path / 'repo'])
    base_root = next(disk['snapshot_vdi_uuid'] for disk in first['disks'] if disk['name_label'] == 'app-root')
    xapi.call('VDI.destroy', xapi.call('VDI.get_by_uuid', base_root))
    second = snapshot_and_export(xapi, [tmp_path / 'repo'])
    by_name = {disk['name_label']: disk for disk in second['disks']}
    assert second['mode'] == 'delta'
    assert by_name['app-root']['mode'] == 'full' and by_name['app-root']['reason'] == 'the disk is new since the reference snapshot'
    assert by_name['app-data']['mode'] == 'delta'


def not_a_vhd(xapi, first: dict, name: str) -> str:
    """Make the reference snapshot's copy of disk ``name`` a raw VDI, which XAPI exports no delta from."""
    uuid = next(disk['snapshot_vdi_uuid'] for disk in first['disks'] if disk['name_label'] == name)
    ref = xapi.call('VDI.get_by_uuid', uuid)
    xapi.call('VDI.set_sm_config', ref, dict(xapi.call('VDI.get_sm_config', ref), vdi_type='aio'))
    return uuid


def test_a_base_that_is_not_a_vhd_gives_a_full_with_the_reason(pool, tmp_path):
    _sim, xapi = pool
    first = snapshot_and_export(xapi, [tmp_path / 'repo'])
    uuid = not_a_vhd(xapi, first, 'app-root')
    second = snapshot_and_export(xapi, [tmp_path / 'repo'])
    by_name = {disk['name_label']: disk for disk in second['disks']}
    assert by_name['app-root']['mode'] == 'full'
    assert by_name['app-root']['reason'] == ('the reference snapshot disk %s is not a VHD (vdi_type aio): XAPI exports no delta from it'
                                             % uuid)
    assert by_name['app-data']['mode'] == 'delta' and second['mode'] == 'delta'


def test_delta_only_refuses_instead_of_a_full_and_writes_nothing(pool, tmp_path):
    _sim, xapi = pool
    first = snapshot_and_export(xapi, [tmp_path / 'repo'])
    not_a_vhd(xapi, first, 'app-root')
    before = sorted(os.listdir(os.path.join(str(tmp_path / 'repo'), 'xo-vm-backups', first['vm']['uuid'])))
    with pytest.raises(Exception, match=r'no delta of app-root is possible: .*not a VHD.*delta_only is set, so no full is exported') as refused:
        snapshot_and_export(xapi, [tmp_path / 'repo'], delta_only=True)
    assert getattr(refused.value, 'code', 'DELTA_NOT_POSSIBLE') == 'DELTA_NOT_POSSIBLE'
    assert sorted(os.listdir(os.path.join(str(tmp_path / 'repo'), 'xo-vm-backups', first['vm']['uuid']))) == before
    assert len(open_repository(str(tmp_path / 'repo')).list_backups(first['vm']['uuid'])) == 1


def test_a_new_repository_or_a_missing_point_makes_every_repository_full(pool, tmp_path):
    _sim, xapi = pool
    snapshot_and_export(xapi, [tmp_path / 'near'])
    (tmp_path / 'far').mkdir()
    manage_job_snapshots(xapi, 'app', Job(JOB), take=True)
    planned = export_vm(xapi, [str(tmp_path / 'near'), str(tmp_path / 'far')], 'app', Job(JOB), check_mode=True)
    assert planned['mode'] == 'full' and planned['reason'] == 'a repository is new (empty)'
    assert os.listdir(str(tmp_path / 'far')) == [], 'check mode initialised the new repository'
    both = export_vm(xapi, [str(tmp_path / 'near'), str(tmp_path / 'far')], 'app', Job(JOB))
    assert both['mode'] == 'full' and both['reason'] == 'repository %s holds no backup of this VM by this job' % (tmp_path / 'far')
    # The newest point of one repository disappears: the chains would differ, so both get a full.
    vm_uuid = both['vm']['uuid']
    far = open_repository(str(tmp_path / 'far'))
    os.unlink(far.list_backups(vm_uuid)[-1].metadata_path)
    shutil.rmtree(os.path.join(far.vm_dir(vm_uuid), 'vdis'))
    third = snapshot_and_export(xapi, [tmp_path / 'near', tmp_path / 'far'])
    assert third['mode'] == 'full'
    assert third['reason'] == 'repository %s holds no backup of this VM by this job' % far.root
    assert all(disk['mode'] == 'full' for disk in third['disks'])


def test_full_interval_and_check_mode(pool, tmp_path):
    _sim, xapi = pool
    repo = str(tmp_path / 'repo')
    snapshot_and_export(xapi, [repo])
    assert snapshot_and_export(xapi, [repo], full_interval=3)['mode'] == 'delta'
    manage_job_snapshots(xapi, 'app', Job(JOB), take=True)
    before = sorted(os.walk(repo))
    planned = export_vm(xapi, [repo], 'app', Job(JOB), full_interval=3, check_mode=True)
    assert planned['mode'] == 'delta' and planned['bytes_transferred'] == 0
    repositories = [open_repository(repo)]
    assert plan_export(xapi, repositories, 'app', Job(JOB), full_interval=2).reason == \
        'full_interval 2 reached (1 deltas since the last full)'
    assert sorted(os.walk(repo)) == before, 'check mode and planning wrote to the repository'
    assert export_vm(xapi, [repo], 'app', Job(JOB), full_interval=3)['mode'] == 'delta'


def test_nothing_to_export_is_refused_with_what_to_do(pool, tmp_path):
    _sim, xapi = pool
    (tmp_path / 'repo').mkdir()
    with pytest.raises(Exception, match=r"job 'nightly' has no unexported snapshot of VM app: take one with xapi.delta_backup.vm_snapshot"):
        export_vm(xapi, [str(tmp_path / 'repo')], 'app', Job(JOB))
    with pytest.raises(Exception, match='the same repository is listed twice'):
        export_vm(xapi, [str(tmp_path / 'repo'), str(tmp_path / 'repo') + '/'], 'app', Job(JOB))


def test_a_delta_xapi_refuses_for_its_base_falls_back_to_a_full_in_the_same_run(pool, tmp_path):
    sim, xapi = pool
    first = snapshot_and_export(xapi, [tmp_path / 'repo'])
    base_root = xapi.call('VDI.get_by_uuid', next(disk['snapshot_vdi_uuid'] for disk in first['disks'] if disk['name_label'] == 'app-root'))
    # XAPI's error names the base VDI: the delta cannot be made, a full can
    sim.control.fail_next('export_raw_vdi', ['VDI_MISSING', 'OpaqueRef:sr', base_root])
    with pytest.raises(Exception, match=r'delta_only is set, so no full is exported instead') as refused:
        snapshot_and_export(xapi, [tmp_path / 'repo'], delta_only=True)
    assert getattr(refused.value, 'params', [base_root])[-1] == base_root
    assert len(open_repository(str(tmp_path / 'repo')).list_backups(first['vm']['uuid'])) == 1, 'the failed delta left a point'
    sim.control.fail_next('export_raw_vdi', ['VDI_MISSING', 'OpaqueRef:sr', base_root])
    fallback = export_vm(xapi, [str(tmp_path / 'repo')], 'app', Job(JOB))
    assert fallback['mode'] == 'full' and fallback['delta_fallback']
    assert fallback['reason'].startswith('the delta export failed, so a full was exported instead: ')
    assert all(disk['mode'] == 'full' for disk in fallback['disks'])
    # an error that does not name a base is no reason for a full: it fails the run
    manage_job_snapshots(xapi, 'app', Job(JOB), take=True)
    sim.control.fail_next('export_raw_vdi', ['VDI_IO_ERROR', 'injected device error'])
    with pytest.raises(Exception, match='injected device error'):
        export_vm(xapi, [str(tmp_path / 'repo')], 'app', Job(JOB))
