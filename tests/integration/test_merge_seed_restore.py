# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_merge, seed_copy and vm_restore through ansible-playbook against the simulator.

Ground truth: the content of each backup's snapshot VDIs (control.vdi_sha256), recorded right after
its export (older snapshots are pruned by vm_snapshot). A restored VDI must hash the same.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys

import pytest

from faults import killed_by_sigkill
from harness import TaskFailed

MIB = 1024 * 1024
IN_PROGRESS_KEY = 'xapi_delta_backup:restore_in_progress'
KILL_ENV = 'XAPI_DELTA_BACKUP_VHD_MERGE_KILL_AFTER'
POOL = """
pool: {name: restore-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs:
  - {name: Local storage, size: 40GiB, default: true}
  - {name: Restore SR, size: 40GiB}
networks:
  - {name: Network 0, bridge: xenbr0}
  - {name: Isolated, bridge: xenbr9}
vms:
  - name: app01
    power_state: Running
    memory: 1GiB
    vcpus: 2
    disks:
      - name: app01-root
        size: 2GiB
        data:
          - {offset: 0, length: 6MiB, seed: 11}
          - {offset: 1GiB, length: 2MiB, seed: 12}
      - name: app01-data
        size: 1GiB
        data:
          - {offset: 4MiB, length: 4MiB, seed: 13}
    vifs: [{network: Network 0, mac: "02:16:3e:00:00:07"}]
    cdrom: true
"""


class History:
    """Backups of app01 with random guest writes, and the ground truth of each point."""

    def __init__(self, ansible, sim, repository, seed=0):
        self.ansible = ansible
        self.sim = sim
        self.repository = repository
        self.rng = random.Random(seed)
        self.live = {name: sim.control.record('VDI', name)['uuid'] for name in ('app01-root', 'app01-data')}
        self.sizes = {'app01-root': 2 << 30, 'app01-data': 1 << 30}
        self.truth = {}   # timestamp -> {live vdi uuid: sha256}
        self.vm_uuid = None

    def guest_writes(self, count=3):
        for _number in range(count):
            name = self.rng.choice(sorted(self.live))
            length = self.rng.choice([MIB, 2 * MIB, 3 * MIB])
            offset = self.rng.randrange(0, self.sizes[name] - length, 512)
            self.sim.control.write_vdi(self.live[name], offset, length=length, seed=self.rng.randrange(1 << 30))

    def backup(self, repositories=None):
        """vm_snapshot then delta_export, in one playbook run (one ansible start-up per backup)."""
        result_path = os.path.join(self.ansible.workdir, 'export-%s.json' % os.urandom(4).hex())
        tasks = [{'xapi.delta_backup.vm_snapshot': {'vm': 'app01', 'job': 'nightly'}, 'register': 'snap'},
                 {'xapi.delta_backup.delta_export': {'vm': 'app01', 'job': 'nightly', 'repositories': repositories or [self.repository],
                                                     'snapshot': '{{ snap.snapshot.uuid }}'}, 'register': 'export'},
                 {'ansible.builtin.copy': {'content': '{{ export | to_json }}', 'dest': result_path}}]
        completed = self.ansible.run_playbook(self.ansible._playbook(tasks, 'backup'))  # pylint: disable=protected-access
        if completed.returncode or not os.path.exists(result_path):
            raise TaskFailed('backup failed:\n%s' % self.ansible.last_output[-4000:])
        with open(result_path, encoding='utf-8') as handle:
            export = json.load(handle)
        self.vm_uuid = export['vm']['uuid']
        timestamp = os.path.basename(export['disks'][0]['path'])[:-len('.vhd')]
        self.truth[timestamp] = {disk['vdi_uuid']: self.sim.control.vdi_sha256(disk['snapshot_vdi_uuid']) for disk in export['disks']}
        return export

    def build(self, points):
        for number in range(points):
            if number:
                self.guest_writes()
            self.backup()
        return sorted(self.truth)

    def assert_restored(self, result, timestamp):
        assert result['backup']['timestamp'] == timestamp
        for disk in result['disks']:
            assert self.sim.control.vdi_sha256(disk['vdi_uuid']) == self.truth[timestamp][disk['source_vdi_uuid']], (timestamp, disk)


def xenapi(sim):
    session = sim.xenapi_session()
    session.xenapi.login_with_password('root', 'secret', '1.0', 'integration-tests')
    return session


def pool_objects(sim):
    """Counts of VMs and VDIs, to prove that refused or check-mode restores create nothing."""
    session = xenapi(sim)
    try:
        return len(session.xenapi.VM.get_all()), len(session.xenapi.VDI.get_all())
    finally:
        session.xenapi.session.logout()


def repo_files(root):
    found = []
    for folder, _dirs, files in os.walk(root):
        found.extend((os.path.relpath(os.path.join(folder, name), root), os.path.getsize(os.path.join(folder, name))) for name in files)
    return sorted(found)


@pytest.fixture
def app(ansible, pool, tmp_path):
    pool.control.load_config(POOL)
    repository = tmp_path / 'repo'
    repository.mkdir()
    return History(ansible, pool, str(repository))


def merge(app, keep, check=False, expect_failure=False, env=None, repository=None):
    return app.ansible.run_task('backup_merge', {'repository': repository or app.repository, 'job': 'nightly', 'keep': keep},
                                check=check, expect_failure=expect_failure, env=env)


def restore(app, check=False, expect_failure=False, repository=None, **options):
    args = dict({'repository': repository or app.repository, 'vm': options.pop('vm', 'app01')}, **options)
    return app.ansible.run_task('vm_restore', args, check=check, expect_failure=expect_failure)


def test_retention_keeps_every_retained_point_restorable(app):
    stamps = app.build(4)
    before = repo_files(app.repository)
    planned = merge(app, 2, check=True)
    assert planned['changed'] is True and planned['removed_points'] == 2
    assert planned['vms'][0]['removed_points'] == stamps[:2]
    assert repo_files(app.repository) == before
    done = merge(app, 2)
    assert done['changed'] is True and done['merged_points'] == 2 and done['bytes_merged'] > 0
    assert done['vms'][0]['kept_points'] == stamps[2:]
    assert all(entry['result'].endswith(stamps[2] + '.vhd') for entry in done['vms'][0]['merged'])
    assert merge(app, 2)['changed'] is False
    # a restore in check mode creates nothing
    counts = pool_objects(app.sim)
    preview = restore(app, check=True, backup=stamps[2])
    assert preview['changed'] is True and preview['vm']['uuid'] is None and len(preview['disks']) == 2
    assert pool_objects(app.sim) == counts
    # every retained point, byte for byte, to another SR, under a new name, one started
    for index, timestamp in enumerate(stamps[2:]):
        result = restore(app, backup=timestamp, sr='Restore SR', name='restored %d' % index, start=index == 1,
                         network_map={'Network 0': 'Isolated'})
        app.assert_restored(result, timestamp)
        assert result['sr']['name_label'] == 'Restore SR' and result['bytes_transferred'] > 0 and result['throughput_mib_s'] > 0
        assert result['vm']['started'] is (index == 1)
        assert [vif['network_name_label'] for vif in result['vifs']] == ['Isolated']
        record = app.sim.control.record('VM', result['vm']['uuid'])
        assert record['name_label'] == 'restored %d' % index
        assert record['blocked_operations'] == {}
        assert record['power_state'] == ('Running' if index == 1 else 'Halted')
        # the CD drive comes back, empty, at its device
        assert result['cd_drives'] == [{'userdevice': '3', 'bootable': False, 'had_disc': False}]
        drives = [app.sim.control.record('VBD', ref) for ref in record['VBDs']]
        assert [(vbd['userdevice'], vbd['empty'], vbd['mode']) for vbd in drives if vbd['type'] == 'CD'] == [('3', True, 'RO')]
        assert sorted(vbd['userdevice'] for vbd in drives if vbd['type'] == 'Disk') == ['0', '1']
        assert sorted(app.sim.control.record('VDI', disk['vdi_uuid'])['virtual_size'] for disk in result['disks']) == [1 << 30, 2 << 30]
    # by index, and a single disk to a new unattached VDI
    single = restore(app, backup='-1', disk='app01-data', name='data copy')
    assert single['vm'] is None and [disk['name_label'] for disk in single['disks']] == ['data copy'] and single['cd_drives'] == []
    app.assert_restored(single, stamps[-1])


def test_killed_merges_leave_every_kept_point_restorable(app):
    stamps = app.build(3)
    rng = random.Random(4)
    killed = False
    for _attempt in range(3):
        try:
            refused = merge(app, 2, expect_failure=True, env={KILL_ENV: str(rng.randint(2, 25))})
        except TaskFailed:
            continue  # that run got through before its kill point: nothing left half done
        # it failed because the engine's SIGKILL landed, not for some other reason
        assert killed_by_sigkill(refused), refused
        killed = True
        # Straight after the kill (SIGKILL of the module process): the oldest kept point, whose chain was
        # being merged, restores exactly; vm_restore finishes the interrupted merge itself, under the VM lock.
        result = restore(app, backup=stamps[1])
        app.assert_restored(result, stamps[1])
        break
    assert killed
    done = merge(app, 2)
    assert done['vms'][0]['kept_points'] == stamps[1:]
    # The original VM and its disks are gone: the backup alone is enough.
    session = xenapi(app.sim)
    try:
        vm = session.xenapi.VM.get_by_name_label('app01')[0]
        disks = [session.xenapi.VBD.get_VDI(vbd) for vbd in session.xenapi.VM.get_VBDs(vm)
                 if session.xenapi.VBD.get_type(vbd) == 'Disk']
        session.xenapi.VM.hard_shutdown(vm)
        session.xenapi.VM.destroy(vm)
        for vdi in disks:
            session.xenapi.VDI.destroy(vdi)
    finally:
        session.xenapi.session.logout()
    result = restore(app, vm=app.vm_uuid, name='app01')
    app.assert_restored(result, stamps[-1])


def test_seed_copy_then_the_next_backup_is_a_delta(app, tmp_path):
    app.build(2)
    far = tmp_path / 'far'
    far.mkdir()
    args = {'source': app.repository, 'destination': str(far), 'vms': ['app01'], 'job': 'nightly'}
    planned = app.ansible.run_task('seed_copy', args, check=True)
    assert planned['changed'] is True and planned['copied_files'] == 4 and planned['copied_points'] == 2
    assert repo_files(str(far)) == []
    copied = app.ansible.run_task('seed_copy', args)
    assert copied['changed'] is True and copied['copied_files'] == 4 and copied['bytes_copied'] > 0
    again = app.ansible.run_task('seed_copy', args)
    assert again['changed'] is False and again['skipped_files'] == 4
    # the job is retargeted to the far repository only
    app.guest_writes()
    export = app.backup(repositories=[str(far)])
    assert export['mode'] == 'delta', export['reason']
    newest = sorted(app.truth)[-1]
    app.assert_restored(restore(app, repository=str(far), backup=newest), newest)


def flip_byte(path, offset):
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x5A]))


def test_damaged_files_are_refused_by_name_and_nothing_is_created(app, tmp_path):
    stamps = app.build(2)
    vm_dir = os.path.join(app.repository, 'xo-vm-backups', app.vm_uuid)
    job_dir = os.path.join(vm_dir, 'vdis', os.listdir(os.path.join(vm_dir, 'vdis'))[0])
    folder = os.path.join(job_dir, app.live['app01-root'])
    full = os.path.join(folder, stamps[0] + '.vhd')
    # A data block the newest point reads from the full: restore and seed copy find it as they read it, and name it.
    flip_byte(full, os.path.getsize(full) // 2)
    counts = pool_objects(app.sim)
    refused = restore(app, expect_failure=True)
    assert full in refused['msg'] and 'does not match its recorded checksum' in refused['msg']
    assert pool_objects(app.sim) == counts
    far = tmp_path / 'far'
    far.mkdir()
    refused = app.ansible.run_task('seed_copy', {'source': app.repository, 'destination': str(far)}, expect_failure=True)
    assert full in refused['msg'] and 'does not match its recorded checksum' in refused['msg']
    assert not [name for name, _size in repo_files(str(far)) if name.endswith('.json')]
    flip_byte(full, os.path.getsize(full) // 2)  # repaired
    # A damaged footer: every reader refuses the file before reading a block (a merge too, which reads only changed blocks).
    flip_byte(full, os.path.getsize(full) - 100)
    refused = restore(app, expect_failure=True)
    assert full in refused['msg']
    assert pool_objects(app.sim) == counts
    refused = merge(app, 1, expect_failure=True)
    assert full in refused['msg']
    assert len([name for name in os.listdir(vm_dir) if name.endswith('.json')]) == 2
    flip_byte(full, os.path.getsize(full) - 100)  # repaired
    delta = os.path.join(folder, stamps[1] + '.vhd')
    with open(delta, 'r+b') as handle:
        handle.truncate(os.path.getsize(delta) - 1024)
    refused = restore(app, expect_failure=True)
    assert delta in refused['msg']
    assert pool_objects(app.sim) == counts
    # a point whose chain does not use the damaged file still restores
    app.assert_restored(restore(app, backup=stamps[0]), stamps[0])


def test_import_cut_midway_removes_what_was_created(app):
    stamps = app.build(1)
    counts = pool_objects(app.sim)
    app.sim.control.cut_import(3 * MIB)
    failed = restore(app, expect_failure=True)
    assert 'removed' in failed['msg']
    assert pool_objects(app.sim) == counts
    app.assert_restored(restore(app), stamps[0])


def test_leftovers_of_killed_restores_are_removed_by_the_next(app):
    """Only restores provably dead (this host, pid gone) lose their VM and disks; others are kept."""
    stamps = app.build(1)
    first, second, third = (restore(app, name='restored-%d' % number) for number in range(3))
    lone = restore(app, disk='app01-data', name='lone disk')
    finished = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)
    markers = {
        'dead': {'host': socket.gethostname(), 'pid': dead_pid},
        'elsewhere': {'host': 'other-control-node.example', 'pid': dead_pid},
        'alive': {'host': socket.gethostname(), 'pid': os.getpid()},
    }
    session = xenapi(app.sim)
    try:
        for result, marker in zip((first, second, third), markers.values(), strict=True):
            vm_ref = session.xenapi.VM.get_by_uuid(result['vm']['uuid'])
            session.xenapi.VM.add_to_other_config(vm_ref, IN_PROGRESS_KEY, json.dumps(marker))
        # a lone disk of a killed disk-only restore
        lone_ref = session.xenapi.VDI.get_by_uuid(lone['disks'][0]['vdi_uuid'])
        session.xenapi.VDI.add_to_other_config(lone_ref, IN_PROGRESS_KEY, json.dumps(markers['dead']))
    finally:
        session.xenapi.session.logout()
    counts = pool_objects(app.sim)
    dead_disks = sorted([disk['vdi_uuid'] for disk in first['disks']] + [lone['disks'][0]['vdi_uuid']])

    planned = restore(app, check=True)
    assert [vm['uuid'] for vm in planned['removed_leftovers']['vms']] == [first['vm']['uuid']]
    assert sorted(vdi['uuid'] for vdi in planned['removed_leftovers']['vdis']) == dead_disks
    assert pool_objects(app.sim) == counts   # check mode destroys nothing

    result = restore(app)
    app.assert_restored(result, stamps[0])
    removed = result['removed_leftovers']
    assert [vm['uuid'] for vm in removed['vms']] == [first['vm']['uuid']] and removed['problems'] == []
    assert removed['vms'][0]['restored_from'] == '%s@%s' % (app.vm_uuid, stamps[0])
    assert sorted(vdi['uuid'] for vdi in removed['vdis']) == dead_disks
    # one VM and two disks more, one VM and three disks fewer
    assert pool_objects(app.sim) == (counts[0] + 1 - 1, counts[1] + 2 - 3)
    session = xenapi(app.sim)
    try:
        remaining = {record['uuid'] for record in session.xenapi.VM.get_all_records().values()}
        assert second['vm']['uuid'] in remaining and third['vm']['uuid'] in remaining and first['vm']['uuid'] not in remaining
        # the new VM carries no in-progress marker once finished, and may start
        record = session.xenapi.VM.get_record(session.xenapi.VM.get_by_uuid(result['vm']['uuid']))
        assert IN_PROGRESS_KEY not in record['other_config'] and record['blocked_operations'] == {}
        for disk in result['disks']:
            assert IN_PROGRESS_KEY not in session.xenapi.VDI.get_other_config(session.xenapi.VDI.get_by_uuid(disk['vdi_uuid']))
    finally:
        session.xenapi.session.logout()


def test_restored_vm_destroy_touches_only_what_vm_restore_created(app):
    app.build(1)
    restored = restore(app, name='restore test', start=True)
    vm_uuid = restored['vm']['uuid']
    restored_disks = sorted(disk['vdi_uuid'] for disk in restored['disks'])
    # a disk the user attached by hand: detached with the VM, never destroyed
    session = xenapi(app.sim)
    try:
        vm_ref = session.xenapi.VM.get_by_uuid(vm_uuid)
        sr_ref = session.xenapi.SR.get_by_name_label('Local storage')[0]
        extra_ref = session.xenapi.VDI.create({
            'name_label': 'added by hand', 'name_description': '', 'SR': sr_ref, 'virtual_size': str(64 * MIB), 'type': 'user',
            'sharable': False, 'read_only': False, 'other_config': {}, 'sm_config': {}, 'xenstore_data': {}, 'tags': []})
        extra = session.xenapi.VDI.get_uuid(extra_ref)
        session.xenapi.VBD.create({'VM': vm_ref, 'VDI': extra_ref, 'userdevice': '5', 'bootable': False, 'mode': 'RW', 'type': 'Disk',
                                   'empty': False, 'other_config': {}, 'qos_algorithm_type': '', 'qos_algorithm_params': {}})
        production = session.xenapi.VM.get_uuid(session.xenapi.VM.get_by_name_label('app01')[0])
    finally:
        session.xenapi.session.logout()
    counts = pool_objects(app.sim)

    def destroy(check=False, expect_failure=False, **args):
        return app.ansible.run_task('restored_vm_destroy', args, check=check, expect_failure=expect_failure)

    # never a VM vm_restore did not create, nor one of another name
    refused = destroy(vm=production, expect_failure=True)
    assert 'not created by xapi.delta_backup.vm_restore' in refused['msg'], refused['msg']
    refused = destroy(vm=vm_uuid, name='something else', expect_failure=True)
    assert "named 'restore test', not 'something else'" in refused['msg'], refused['msg']
    assert "VM uuid 'not-a-uuid' is not a canonical lower-case uuid" in destroy(vm='not-a-uuid', expect_failure=True)['msg']
    preview = destroy(vm=vm_uuid, name='restore test', check=True)
    assert preview['changed'] is True and preview['vm']['power_state'] == 'Running'
    assert sorted(vdi['uuid'] for vdi in preview['destroyed_vdis']) == restored_disks
    assert [vdi['uuid'] for vdi in preview['kept_vdis']] == [extra]
    assert pool_objects(app.sim) == counts

    done = destroy(vm=vm_uuid, name='restore test')
    assert done['changed'] is True and done['vm']['restored_from'] == '%s@%s' % (app.vm_uuid, restored['backup']['timestamp'])
    assert pool_objects(app.sim) == (counts[0] - 1, counts[1] - 2)
    session = xenapi(app.sim)
    try:
        assert session.xenapi.VDI.get_name_label(session.xenapi.VDI.get_by_uuid(extra)) == 'added by hand'
        assert session.xenapi.VM.get_by_name_label('app01')
    finally:
        session.xenapi.session.logout()
    again = destroy(vm=vm_uuid, name='restore test')
    assert again['changed'] is False and again['vm'] == {'uuid': vm_uuid, 'existed': False}
