# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Suspended VMs and checkpoints (issue 13), through the real playbooks and modules against the simulator: a running VM
backed up with memory (checkpoint) and a suspended VM come back suspended and resume, their disks and memory image byte
for byte equal to the snapshot's (simulator ground truth); power_state: halted gives a halted VM without suspend VDI;
after a checkpoint run the next run still sends only the delta of the disks; retention keeps one image per kept point."""

from __future__ import annotations

import glob
import os
from harness import XenApi

MIB = 1024 * 1024
JOB = 'with-memory'
POOL = """
pool: {name: pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 20GiB, default: true}]
networks: [{name: Network 0, bridge: xenbr0}]
vms:
  - name: web
    power_state: Running
    memory: 256MiB
    disks:
      - {name: web-root, size: 64MiB, data: [{offset: 0, length: 4MiB, seed: 1}]}
      - {name: web-data, size: 16MiB, data: [{offset: 0, length: 2MiB, seed: 2}]}
    vifs: [{network: Network 0}]
  - name: sleepy
    power_state: Suspended
    memory: 256MiB
    disks:
      - {name: sleepy-root, size: 32MiB, data: [{offset: 0, length: 2MiB, seed: 3}]}
    vifs: [{network: Network 0}]
"""


def suspend_vdi_of(sim, vm_uuid):
    with XenApi(sim) as api:
        ref = api.VM.get_suspend_VDI(api.VM.get_by_uuid(vm_uuid))
        return None if ref == 'OpaqueRef:NULL' else api.VDI.get_uuid(ref)


def backup_run(ansible, repo, memory=True):
    stats, _output = ansible.play_collection('backup', {'backup_job': JOB, 'backup_repositories': [repo], 'backup_vms': ['web', 'sleepy'],
                                                        'backup_retention': 2, 'backup_memory': memory})
    results = {result['vm']: result
               for result in stats['xapi_delta_backup_backup']['results']}
    assert all(result['status'] == 'ok' for result in results.values()), results
    return results


def by_name(result):
    return {disk['name_label']: disk for disk in result['disks']}


def test_checkpoint_and_suspended_vm_come_back_suspended_and_resume(ansible, pool, tmp_path):
    control = pool.control
    control.load_config(POOL)
    repo = str(tmp_path / 'repo')
    os.mkdir(repo)
    web_uuid, sleepy_uuid = control.record('VM', 'web')['uuid'], control.record('VM', 'sleepy')['uuid']
    live_root = control.record('VDI', 'web-root')['uuid']
    sleepy_image = suspend_vdi_of(pool, sleepy_uuid)
    sleepy_image_sha = control.vdi_sha256(sleepy_image)

    truth, images, modes = {}, [], []
    for run in range(3):
        if run:
            control.write_vdi(live_root, (8 + run) * MIB, length=MIB, seed=20 + run)
        results = backup_run(ansible, repo)
        web, sleepy = results['web'], results['sleepy']
        disks = by_name(web)
        # the memory image is exported with the disks, always full
        assert sorted(disks) == ['Suspend image', 'web-data', 'web-root'], sorted(disks)
        assert disks['Suspend image']['mode'] == 'full'
        modes.append((disks['web-root']['mode'], disks['web-data']['mode']))
        truth[web['timestamp']] = {name: control.vdi_sha256(disk['snapshot_vdi_uuid']) for name, disk in disks.items()}
        images.append(disks['Suspend image']['vdi_uuid'])
        # the suspended VM stays suspended on its own image, which its checkpoint copied
        assert control.record('VM', 'sleepy')['power_state'] == 'Suspended' and suspend_vdi_of(pool, sleepy_uuid) == sleepy_image
        assert control.vdi_sha256(by_name(sleepy)['Suspend image']['snapshot_vdi_uuid']) == sleepy_image_sha
        assert control.record('VM', 'web')['power_state'] == 'Running'  # resumed after its checkpoint
    # a run after a checkpoint run still sends only the delta of the disks
    assert modes == [('full', 'full'), ('delta', 'delta'), ('delta', 'delta')]
    assert len(set(images)) == 3  # a new image each time, in a folder of its own
    # retention 2: the folders of the retired points' images are gone, those of the kept points hold one full each
    vm_dir = os.path.join(repo, 'xo-vm-backups', web_uuid)
    image_files = sorted(path for uuid in images for path in glob.glob(os.path.join(vm_dir, 'vdis', '*', uuid, '*.vhd')))
    assert [os.path.basename(os.path.dirname(path)) for path in image_files] == sorted(images[1:]), image_files

    latest = max(truth)
    restored = ansible.run_task('vm_restore', {'repository': repo, 'vm': web_uuid, 'name': 'web back'})
    assert restored['power_state']['power_state'] == 'suspended'
    vm = control.record('VM', restored['vm']['uuid'])
    assert vm['power_state'] == 'Suspended'
    assert control.vdi_sha256(restored['power_state']['suspend_vdi_uuid']) == truth[latest]['Suspend image']
    assert {disk['name_label']: control.vdi_sha256(disk['vdi_uuid']) for disk in restored['disks']} == {
        name: digest for name, digest in truth[latest].items() if name != 'Suspend image'}
    with XenApi(pool) as api:
        ref = api.VM.get_by_uuid(restored['vm']['uuid'])
        api.VM.resume(ref, False, False)
        assert api.VM.get_power_state(ref) == 'Running' and api.VM.get_suspend_VDI(ref) == 'OpaqueRef:NULL'
        # the disks and the VIF were attached as in the checkpoint, so the resumed domain has them
        assert all(api.VBD.get_currently_attached(vbd) for vbd in api.VM.get_VBDs(ref))
        assert [api.VIF.get_currently_attached(vif) for vif in api.VM.get_VIFs(ref)] == [True]

    # the restore role: resumed instead of started
    stats, _output = ansible.play_collection('restore', {'restore_repository': repo, 'restore_vm': 'sleepy', 'restore_start': True,
                                                         'restore_name': 'sleepy back'})
    result = stats['xapi_delta_backup_restore']
    assert control.record('VM', result['vm']['uuid'])['power_state'] == 'Running'

    sleepy_back = ansible.run_task('vm_restore', {'repository': repo, 'vm': sleepy_uuid, 'name': 'sleepy again'})
    assert control.vdi_sha256(sleepy_back['power_state']['suspend_vdi_uuid']) == sleepy_image_sha

    halted = ansible.run_task('vm_restore', {'repository': repo, 'vm': web_uuid, 'name': 'web cold', 'power_state': 'halted'})
    vm = control.record('VM', halted['vm']['uuid'])
    assert vm['power_state'] == 'Halted' and vm['suspend_VDI'] == 'OpaqueRef:NULL'
    assert halted['power_state'] == {'power_state': 'halted', 'suspend_vdi_uuid': None,
                                     'reason': 'power_state: halted asked: the memory image is not restored'}
    assert {disk['name_label']: control.vdi_sha256(disk['vdi_uuid']) for disk in halted['disks']} == {
        name: digest for name, digest in truth[latest].items() if name != 'Suspend image'}


def test_suspended_restore_refused_on_another_cpu_and_without_image(ansible, pool, tmp_path):
    control = pool.control
    control.load_config(POOL)
    repo = str(tmp_path / 'repo')
    os.mkdir(repo)
    backup_run(ansible, repo, memory=False)
    web_uuid = control.record('VM', 'web')['uuid']
    # a plain snapshot of a running VM holds no memory image
    refused = ansible.run_task('vm_restore', {'repository': repo, 'vm': web_uuid, 'power_state': 'suspended'}, expect_failure=True)
    assert 'holds no memory image' in refused['msg'] and 'power_state: halted' in refused['msg']
    assert refused['error_code'] == 'suspended_restore_refused'
    plain = ansible.run_task('vm_restore', {'repository': repo, 'vm': web_uuid, 'name': 'web plain'})
    assert plain['power_state']['power_state'] == 'halted'

    control.set_host_cpu(vendor='AuthenticAMD')
    with XenApi(pool) as api:
        before = (len(api.VM.get_all()), len(api.VDI.get_all()))
    refused = ansible.run_task('vm_restore', {'repository': repo, 'vm': control.record('VM', 'sleepy')['uuid']}, expect_failure=True)
    assert 'cannot resume' in refused['msg'] and 'AuthenticAMD' in refused['msg'] and 'power_state: halted' in refused['msg']
    with XenApi(pool) as api:
        assert (len(api.VM.get_all()), len(api.VDI.get_all())) == before
    # check mode says how it would come back
    checked = ansible.run_task('vm_restore', {'repository': repo, 'vm': control.record('VM', 'sleepy')['uuid'], 'power_state': 'halted'},
                               check=True)
    assert checked['power_state']['power_state'] == 'halted'
