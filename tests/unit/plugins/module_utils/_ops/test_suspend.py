# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Suspended VMs and checkpoints (issue 13): the decisions of _ops/suspend.py, then checkpoint -> export -> restore
suspended/halted on a simulated pool (real HTTP, real XenAPI client)."""

from __future__ import annotations

import types

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import suspend
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.catalog import describe_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.seed import seed_copy
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.restore import destroy_restored_vm, restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import job_snapshots, manage_job_snapshots
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

NULL = 'OpaqueRef:NULL'
INTEL = {'vendor': 'GenuineIntel', 'features_hvm': '0000ffff-000000ff', 'features_pv': '000000ff'}


def _point(vm: dict, vdis: dict | None = None):
    return types.SimpleNamespace(metadata={'vm': vm, 'vdis': vdis or {}}, timestamp='20261124T020000Z', vm_uuid='u')


def _suspended_vm(**changes):
    vm = {'power_state': 'Suspended', 'suspend_VDI': 'OpaqueRef:image', 'last_booted_record': 'xenopsd state',
          'last_boot_CPU_flags': {'vendor': 'GenuineIntel', 'features': '00000f0f-0000000f'}, 'domain_type': 'hvm', 'HVM_boot_policy': 'BIOS order'}
    vm.update(changes)
    return vm


def test_checkpoint_for_memory_of_a_running_vm_and_always_for_a_suspended_one():
    assert suspend.checkpoint_decision({'power_state': 'Suspended'}, False, False) == (True, None)
    assert suspend.checkpoint_decision({'power_state': 'Running'}, True, False) == (True, None)
    assert suspend.checkpoint_decision({'power_state': 'Running'}, False, False) == (False, None)
    assert suspend.checkpoint_decision({'power_state': 'Halted'}, True, False) == (False, None)  # nothing in memory
    # Xen Orchestra's tag asks for it too
    assert suspend.checkpoint_decision({'power_state': 'Running', 'tags': ['xo-memory-backup']}, False, False) == (True, None)
    # [NOBAK] disks: a plain snapshot, saying why
    assert suspend.checkpoint_decision({'power_state': 'Running'}, True, True) == (False, suspend.NOBAK_REASON)
    assert suspend.checkpoint_decision({'power_state': 'Suspended'}, False, True) == (False, suspend.NOBAK_REASON)
    assert suspend.checkpoint_decision({'power_state': 'Running'}, False, True) == (False, None)


def test_cpu_problem_as_xapi_resume_checks():
    vm = _suspended_vm()
    assert suspend.cpu_problem(vm, INTEL) is None
    assert 'AuthenticAMD' in suspend.cpu_problem(vm, dict(INTEL, vendor='AuthenticAMD'))
    assert 'features' in suspend.cpu_problem(vm, dict(INTEL, features_hvm='00000f0e-0000000f'))
    assert 'features' in suspend.cpu_problem(vm, dict(INTEL, features_hvm='00000f0f'))  # a missing word is zero
    # a PV guest is compared with features_pv
    assert 'features' in suspend.cpu_problem(_suspended_vm(domain_type='pv'), INTEL)
    assert 'host.cpu_info' in suspend.cpu_problem(vm, {})


def test_plan_power_state():
    image = object()
    point = _point(_suspended_vm())
    assert suspend.plan_power_state(point, image, None, INTEL, False).power_state == 'suspended'
    assert suspend.plan_power_state(point, image, 'halted', None, False).image is None
    assert suspend.plan_power_state(point, image, None, INTEL, True).power_state == 'halted'
    with pytest.raises(suspend.SuspendRestoreError, match='cannot resume.*power_state: halted'):
        suspend.plan_power_state(point, image, None, dict(INTEL, vendor='AuthenticAMD'), False)
    halted_point = _point({'power_state': 'Halted'})
    assert suspend.plan_power_state(halted_point, None, None, None, False).power_state == 'halted'
    with pytest.raises(suspend.SuspendRestoreError, match='holds no memory image'):
        suspend.plan_power_state(halted_point, None, 'suspended', INTEL, False)
    # an image without the state XAPI's VM.create needs is not restorable suspended either
    with pytest.raises(suspend.SuspendRestoreError, match='lacks last_booted_record'):
        suspend.plan_power_state(_point(_suspended_vm(last_booted_record='')), image, 'suspended', INTEL, False)
    assert 'not Suspended' in suspend.plan_power_state(_point(_suspended_vm(power_state='Halted')), image, None, INTEL, False).reason
    with pytest.raises(suspend.SuspendRestoreError, match='must be one of'):
        suspend.plan_power_state(point, image, 'running', INTEL, False)


def test_is_suspend_image_by_vm_record_or_vdi_type():
    point = _point(_suspended_vm(), {'OpaqueRef:image': {'type': 'suspend'}, 'OpaqueRef:disk': {'type': 'user'},
                                     'OpaqueRef:xo': {'type': 'suspend'}})
    assert suspend.is_suspend_image(point, 'OpaqueRef:image') and suspend.is_suspend_image(point, 'OpaqueRef:xo')
    assert not suspend.is_suspend_image(point, 'OpaqueRef:disk')


POOL = """
pool: {name: pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 50GiB, default: true}]
networks: [{name: net0, bridge: xenbr0}]
vms:
  - name: web01
    power_state: Running
    memory: 256MiB
    disks:
      - {name: web01-root, size: 64MiB, data: [{offset: 0, length: 4MiB, seed: 1}]}
    vifs: [{network: net0}]
    cdrom: true
  - name: swapper
    power_state: Running
    memory: 256MiB
    disks:
      - {name: swapper-root, size: 32MiB}
      - {name: "swapper-swap [NOBAK]", size: 16MiB}
  - name: sleepy
    power_state: Suspended
    memory: 256MiB
    disks:
      - {name: sleepy-root, size: 64MiB, data: [{offset: 0, length: 2MiB, seed: 5}]}
"""


def _vdi_by_uuid(sim, uuid):
    return next(ref for ref, obj in sim.store.objects['VDI'].items() if obj['uuid'] == uuid)


def _vm_by_uuid(sim, uuid):
    return next(ref for ref, obj in sim.store.objects['VM'].items() if obj['uuid'] == uuid)


@pytest.mark.parametrize('profile', ['xcp-ng-8.3', 'xcp-ng-8.2'])
def test_checkpoint_export_restore_suspended_and_halted(tmp_path, profile):
    repository = str(tmp_path / 'repo')
    (tmp_path / 'repo').mkdir()
    job = Job('memory')
    with running_pool(POOL + 'xapi: {profile: %s}\n' % profile) as running, connect(running) as xapi:
        sim = running.server.sim
        assert sim.software_version()['xapi'].startswith('1.249' if profile == 'xcp-ng-8.2' else '26.')
        taken = manage_job_snapshots(xapi, 'web01', job, take=True, memory=True)
        assert taken['checkpoint'] and taken['excluded_by'] is None and taken['memory_skipped_reason'] is None
        assert [disk['name_label'] for disk in taken['snapshot']['disks']] == ['web01-root']
        snapshot_ref = _vm_by_uuid(sim, taken['snapshot']['uuid'])
        image_ref = sim.store.raw('VM', snapshot_ref)['suspend_VDI']
        image_sha = sim.disk(image_ref).sha256()
        exported = export_vm(xapi, [repository], 'web01', job, file_mode=0o600, dir_mode=0o700)
        image_uuid = sim.store.raw('VDI', image_ref)['uuid']
        by_folder = {disk['vdi_uuid']: disk for disk in exported['disks']}
        assert by_folder[image_uuid]['mode'] == 'full' and by_folder[image_uuid]['reason'] == suspend.FULL_REASON
        repo = open_repository(repository)
        point = repo.list_backups(sim.store.raw('VM', _vm_by_uuid_name(sim, 'web01'))['uuid'])[-1]
        vm = point.metadata['vm']
        assert vm['power_state'] == 'Suspended' and vm['suspend_VDI'] in point.metadata['vdis'] and vm['last_booted_record']
        assert point.metadata['vdis'][vm['suspend_VDI']]['type'] == 'suspend'
        assert '$snapshot_of$uuid' not in point.metadata['vdis'][vm['suspend_VDI']]

        # the job's next run: the disk is a delta, the new image a full again
        sim.disk(_vdi_by_name(sim, 'web01-root')).write(0, b'x' * 4096)
        manage_job_snapshots(xapi, 'web01', job, take=True, memory=True)
        second = export_vm(xapi, [repository], 'web01', job)
        modes = {disk['name_label']: disk['mode'] for disk in second['disks']}
        assert modes == {'web01-root': 'delta', 'Suspend image': 'full'}
        assert len(job_snapshots(xapi, xapi.call('VM.get_record', xapi.call('VM.get_by_name_label', 'web01')[0]), job.id)) == 2
        pruned = manage_job_snapshots(xapi, 'web01', job, take=False)
        assert pruned['removed_snapshots'] == [taken['snapshot']['uuid']]
        assert not sim.store.exists('VDI', image_ref)  # the pruned checkpoint's image went with it

        web_uuid = sim.store.raw('VM', _vm_by_uuid_name(sim, 'web01'))['uuid']
        result = restore(xapi, repo, web_uuid, job=job, point=0, name_label='back', start=False)
        assert result['power_state']['power_state'] == 'suspended'
        new_vm = _vm_by_uuid(sim, result['vm']['uuid'])
        record = sim.store.raw('VM', new_vm)
        assert record['power_state'] == 'Suspended'
        assert sim.disk(record['suspend_VDI']).sha256() == image_sha  # the memory image byte for byte
        assert sim.store.raw('VDI', record['suspend_VDI'])['type'] == 'suspend'
        assert [d['name_label'] for d in result['disks']] == ['web01-root']  # the image got no VBD
        assert result['bytes_transferred'] > result['disks'][0]['bytes']  # the image was streamed too
        assert 'resume' not in record['blocked_operations']
        # its disk, CD drive and VIF are attached as in the checkpoint, so XAPI hands them to the resumed domain
        recorded = sorted([('VBD', o['userdevice'], o['currently_attached']) for o in point.metadata['vbds'].values()]
                          + [('VIF', o['device'], o['currently_attached']) for o in point.metadata['vifs'].values()])
        assert _attachment(sim, new_vm) == recorded and len(recorded) == 3
        assert [o['currently_attached'] for o in sim.store.objects['VBD'].values() if o['VM'] == new_vm and o['type'] == 'Disk'] == [True]
        assert {o['device'] for o in sim.store.objects['VBD'].values() if o['VM'] == new_vm and o['type'] == 'Disk'} == {'xvda'}
        xapi.call('VM.resume', new_vm, False, False)
        assert sim.store.raw('VM', new_vm)['power_state'] == 'Running'
        assert _attachment(sim, new_vm) == recorded

        images = len([o for o in sim.store.objects['VDI'].values() if o['type'] == 'suspend'])
        halted = restore(xapi, repo, web_uuid, job=job, point=0, name_label='cold', power_state='halted', start=True)
        cold = sim.store.raw('VM', _vm_by_uuid(sim, halted['vm']['uuid']))
        assert halted['power_state']['power_state'] == 'halted' and cold['suspend_VDI'] == NULL and cold['power_state'] == 'Running'
        assert len([o for o in sim.store.objects['VDI'].values() if o['type'] == 'suspend']) == images  # no image restored

        # a pool whose CPU cannot resume it: refused before anything is created
        sim.store.raw('host', sim.master_ref)['cpu_info']['vendor'] = 'AuthenticAMD'
        count = len(sim.store.objects['VM']), len(sim.store.objects['VDI'])
        with pytest.raises(suspend.SuspendRestoreError, match='AuthenticAMD'):
            restore(xapi, repo, web_uuid, job=job, point=0, name_label='amd')
        assert (len(sim.store.objects['VM']), len(sim.store.objects['VDI'])) == count


def test_suspended_vm_is_checkpointed_and_restored_with_start_resumed(tmp_path):
    repository = str(tmp_path / 'repo')
    (tmp_path / 'repo').mkdir()
    job = Job('plain')
    with running_pool(POOL) as running, connect(running) as xapi:
        sim = running.server.sim
        live = _vm_by_uuid_name(sim, 'sleepy')
        live_image = sim.store.raw('VM', live)['suspend_VDI']
        taken = manage_job_snapshots(xapi, 'sleepy', job, take=True)  # no memory option: suspended VMs always are
        assert taken['checkpoint']
        assert sim.store.raw('VM', live)['power_state'] == 'Suspended' and sim.store.raw('VM', live)['suspend_VDI'] == live_image
        export_vm(xapi, [repository], 'sleepy', job)
        result = restore(xapi, open_repository(repository), sim.store.raw('VM', live)['uuid'], job=job, start=True)
        restored = sim.store.raw('VM', _vm_by_uuid(sim, result['vm']['uuid']))
        assert result['vm']['started'] and restored['power_state'] == 'Running' and restored['suspend_VDI'] == NULL
        assert result['power_state']['suspend_vdi_uuid'] and not any(
            o['uuid'] == result['power_state']['suspend_vdi_uuid'] for o in sim.store.objects['VDI'].values())  # consumed by resume


def _attachment(sim, vm_ref):
    return sorted((cls, o.get('userdevice', o.get('device')), o['currently_attached'])
                  for cls in ('VBD', 'VIF') for o in sim.store.objects[cls].values() if o['VM'] == vm_ref)


def _vm_by_uuid_name(sim, name):
    return next(ref for ref, obj in sim.store.objects['VM'].items() if obj['name_label'] == name and not obj['is_a_snapshot'])


def _vdi_by_name(sim, name):
    return next(ref for ref, obj in sim.store.objects['VDI'].items() if obj['name_label'] == name and not obj['is_a_snapshot']
                and obj['managed'])


def test_a_vm_with_nobak_disks_gets_a_plain_snapshot_saying_why(tmp_path):
    job = Job('memory')
    with running_pool(POOL) as running, connect(running) as xapi:
        sim = running.server.sim
        checked = manage_job_snapshots(xapi, 'swapper', job, take=True, memory=True, check_mode=True)
        assert not checked['checkpoint'] and checked['memory_skipped_reason'] == suspend.NOBAK_REASON
        taken = manage_job_snapshots(xapi, 'swapper', job, take=True, memory=True)
        assert not taken['checkpoint'] and taken['memory_skipped_reason'] == suspend.NOBAK_REASON
        snapshot = sim.store.raw('VM', _vm_by_uuid(sim, taken['snapshot']['uuid']))
        assert snapshot['power_state'] == 'Halted' and snapshot['suspend_VDI'] == NULL
        assert [disk['name_label'] for disk in taken['snapshot']['disks']] == ['swapper-root']
        del tmp_path


def test_checkpoint_points_are_adopted_listed_verified_and_seeded(tmp_path):
    """A point with a memory image: a killed run's checkpoint is still adopted (the image is no disk of the snapshot),
    backup_info verifies it, seed_copy copies it and the copy restores suspended."""
    repository, far = str(tmp_path / 'repo'), str(tmp_path / 'far')
    (tmp_path / 'repo').mkdir()
    (tmp_path / 'far').mkdir()
    job = Job('memory')
    with running_pool(POOL) as running, connect(running) as xapi:
        sim = running.server.sim
        taken = manage_job_snapshots(xapi, 'web01', job, take=True, memory=True)
        export_vm(xapi, [repository], 'web01', job)
        snapshot_ref = _vm_by_uuid(sim, taken['snapshot']['uuid'])
        # as if killed between writing the point and marking the checkpoint exported
        xapi.call('VM.remove_from_other_config', snapshot_ref, 'xo:backup:exported')
        adopted = manage_job_snapshots(xapi, 'web01', job, take=False, repositories=[open_repository(repository)])
        assert adopted['adopted_snapshot'] == taken['snapshot']['uuid'] and adopted['removed_snapshots'] == []

        described = describe_repository(open_repository(repository), verify=True)
        assert described['problems'] == [] and described['files_verified'] == 2, described  # the disk and the image
        # both checked block by block (the image too): nothing only structurally
        assert described['unverified_files'] == [] and described['damaged_blocks'] == []
        assert {disk['checksums'] for point in described['vms'][0]['backups'] for disk in point['disks']} == {'blocks'}
        web_uuid = sim.store.raw('VM', _vm_by_uuid_name(sim, 'web01'))['uuid']
        seed_copy(repository, far, vms=[web_uuid])
        result = restore(xapi, open_repository(far), web_uuid, name_label='from the far copy')
        assert result['power_state']['power_state'] == 'suspended'
        image = sim.store.raw('VDI', sim.store.raw('VM', snapshot_ref)['suspend_VDI'])
        restored_image = next(ref for ref, obj in sim.store.objects['VDI'].items() if obj['uuid'] == result['power_state']['suspend_vdi_uuid'])
        assert sim.disk(restored_image).sha256() == sim.disk(sim.store.ref_of_uuid('VDI', image['uuid'])).sha256()
        # restored_vm_destroy of the suspended copy leaves nothing of it: hard_shutdown drops the image, then VM and disks go
        destroyed = destroy_restored_vm(xapi, result['vm']['uuid'])
        assert destroyed['vm']['power_state'] == 'Suspended' and len(destroyed['destroyed_vdis']) == 1
        assert not sim.store.exists('VDI', restored_image)
        assert not [o for o in sim.store.objects['VDI'].values() if 'restored_from' in str(o['other_config'])]


def test_a_failed_suspended_restore_removes_its_image_too(tmp_path):
    repository = str(tmp_path / 'repo')
    (tmp_path / 'repo').mkdir()
    job = Job('memory')
    with running_pool(POOL) as running, connect(running) as xapi:
        sim = running.server.sim
        manage_job_snapshots(xapi, 'sleepy', job, take=True)
        export_vm(xapi, [repository], 'sleepy', job)
        before = set(sim.store.objects['VM']), set(sim.store.objects['VDI'])
        # the disk's VBD is created after the image, the suspended VM and the disk
        sim.faults['fail'].setdefault('VBD.create', []).append((['INTERNAL_ERROR', 'injected'], 1))
        with pytest.raises(Exception, match='everything it created was removed'):
            restore(xapi, open_repository(repository), sim.store.raw('VM', _vm_by_uuid_name(sim, 'sleepy'))['uuid'], job=job)
        assert (set(sim.store.objects['VM']), set(sim.store.objects['VDI'])) == before


def test_the_memory_image_alone_with_disk(tmp_path):
    repository = str(tmp_path / 'repo')
    (tmp_path / 'repo').mkdir()
    job = Job('memory')
    with running_pool(POOL) as running, connect(running) as xapi:
        sim = running.server.sim
        manage_job_snapshots(xapi, 'sleepy', job, take=True)
        export_vm(xapi, [repository], 'sleepy', job)
        vm_uuid = sim.store.raw('VM', _vm_by_uuid_name(sim, 'sleepy'))['uuid']
        result = restore(xapi, open_repository(repository), vm_uuid, job=job, disk='Suspend image')
        assert result['vm'] is None and result['power_state']['power_state'] == 'halted'
        [restored] = result['disks']
        vdi_ref = sim.store.ref_of_uuid('VDI', restored['vdi_uuid'])
        assert sim.store.raw('VDI', vdi_ref)['type'] == 'suspend'
        assert not [vbd for vbd in sim.store.objects['VBD'].values() if vbd['VDI'] == vdi_ref]
        live_image = sim.store.raw('VM', _vm_by_uuid_name(sim, 'sleepy'))['suspend_VDI']
        assert sim.disk(sim.store.ref_of_uuid('VDI', restored['vdi_uuid'])).sha256() == sim.disk(live_image).sha256()


def test_a_suspended_point_with_a_vtpm_is_refused_suspended_and_restores_halted_with_it(tmp_path):
    """XAPI creates a vTPM only on a halted VM (xapi_vtpm.ml create) and VM.create makes a suspended restore suspended at
    once: such a point is refused suspended, before anything is created, and comes back halted with its vTPM."""
    repository = str(tmp_path / 'repo')
    (tmp_path / 'repo').mkdir()
    job = Job('tpm')
    pool = POOL.replace("  - name: sleepy\n", "  - name: sleepy\n    vtpm: {contents: c2xlZXB5 dHBt c3RhdGU=, is_unique: false}\n")
    assert pool != POOL
    with running_pool(pool) as running, connect(running) as xapi:
        sim = running.server.sim
        live = _vm_by_uuid_name(sim, 'sleepy')
        manage_job_snapshots(xapi, 'sleepy', job, take=True)
        export_vm(xapi, [repository], 'sleepy', job)
        repo = open_repository(repository)
        vm_uuid = sim.store.raw('VM', live)['uuid']
        count = len(sim.store.objects['VM']), len(sim.store.objects['VDI'])
        with pytest.raises(suspend.SuspendRestoreError, match='vTPM.*power_state=halted'):
            restore(xapi, repo, vm_uuid, job=job, name_label='tpm suspended')
        assert (len(sim.store.objects['VM']), len(sim.store.objects['VDI'])) == count
        result = restore(xapi, repo, vm_uuid, job=job, name_label='tpm halted', power_state='halted')
        assert result['power_state']['power_state'] == 'halted'
        assert [item['restored'] for item in result['vtpms']] == [True]
        new_vm = _vm_by_uuid(sim, result['vm']['uuid'])
        assert sim.store.raw('VM', new_vm)['power_state'] == 'Halted'
        assert [entry['contents'] for entry in running.control.vtpms(new_vm)] == ['c2xlZXB5 dHBt c3RhdGU=']
