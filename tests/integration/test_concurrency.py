# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Concurrency and load: real concurrent ansible-playbook processes against one simulated pool.

- two runs on the same VM and repository: the second refuses at once, naming the holder;
- 20 VMs with tiny disks, forks 5, two jobs sharing one repository, two rounds (fulls then deltas):
  every run succeeds, every session is logged out, backup_info verify is clean and both jobs'
  chains restore byte for byte.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import yaml

from faults import failed, ok, play_file, run_play
from lifecycle import MIB, assert_point_matches_truth, backup, guest_write
from oracles import backup_points

VMS = 20


def test_second_run_on_the_same_vm_and_repository_refuses_at_once_naming_the_holder(app):
    _snap, full = backup(app)
    repo = app['repo']
    lock = os.path.join(repo, 'xo-vm-backups', full['vm']['uuid'] + '.lock')
    guest_write(app, 'app01-root', 0, MIB, 3)
    snap = ok(run_play(app['ansible'], [('vm_snapshot', {'vm': 'app01', 'job': 'nightly'}, False)])[0])
    # The first run's export streams start 8 s late: it holds the lock meanwhile.
    app['sim'].control.delay(8, 'export_raw_vdi')
    path, results = play_file(app['ansible'], [('delta_export', {'vm': 'app01', 'job': 'nightly', 'repositories': [repo],
                                                                 'snapshot': snap['snapshot']['uuid']}, False)])
    first = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', path],
                             env=app['ansible'].env, cwd=app['ansible'].workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(lock, 'owner.json')):
            assert first.poll() is None and time.monotonic() < deadline, 'the first run never took the lock'
            time.sleep(0.05)
        with open(os.path.join(lock, 'owner.json'), encoding='utf-8') as handle:
            holder = json.load(handle)
        # the second run, a whole one (snapshot, then export): its export must stop at the lock, before any transfer
        began = time.monotonic()
        second = run_play(app['ansible'], [('vm_snapshot', {'vm': 'app01', 'job': 'nightly'}, False),
                                           ('delta_export', {'vm': 'app01', 'job': 'nightly', 'repositories': [repo],
                                                             'snapshot': '{{ result_0.snapshot.uuid }}'}, True)])
        ok(second[0])
        msg = failed(second[1])
        refused_after = time.monotonic() - began
        assert first.poll() is None, 'the first run finished before the second was refused (%.1f s): the test proves nothing' % refused_after
        assert ("locked by job 'nightly' (pid %d on host %s" % (holder['pid'], socket.gethostname())) in msg, msg
        assert 'another backup of this VM is running' in msg
        first.wait(timeout=120)
    finally:
        app['sim'].control.delay(0, 'export_raw_vdi')
        if first.poll() is None:
            first.kill()
            first.wait()
    with open(results, encoding='utf-8') as handle:
        exported = ok(json.load(handle)[0])
    # the second run's refusal left the first's backup alone
    assert exported['mode'] == 'delta'
    assert_point_matches_truth(app, repo, exported)
    assert not os.path.exists(lock)
    sessions = app['sim'].control.sessions()
    assert sessions['count'] == 0 and sessions['logins'] == sessions['logouts'], sessions


def load_pool() -> str:
    vms = []
    for number in range(1, VMS + 1):
        vms.append({'name': 'vm%02d' % number, 'power_state': 'Running',
                    'disks': [{'name': 'vm%02d-root' % number, 'size': '8MiB', 'data': [{'offset': 0, 'length': '1MiB', 'seed': number}]},
                              {'name': 'vm%02d-data' % number, 'size': '4MiB', 'data': [{'offset': '2MiB', 'length': '512KiB',
                                                                                         'seed': 100 + number}]}]})
    return yaml.safe_dump({'pool': {'name': 'load-pool'}, 'hosts': [{'name': 'host1', 'address': '127.0.0.1'}],
                           'users': [{'name': 'root', 'password': 'secret'}],
                           'srs': [{'name': 'Local storage', 'size': '20GiB', 'default': True}], 'vms': vms})


def fleet_play(ansible, repo, outdir) -> str:
    """One play over the 20 VMs as inventory hosts (forks 5), both jobs in turn per VM, results saved per host and job."""
    tasks = []
    for job in ('nightly', 'hourly'):
        tasks += [
            {'name': '%s snapshot' % job, 'xapi.delta_backup.vm_snapshot': {'vm': '{{ inventory_hostname }}', 'job': job},
             'register': 'snap_%s' % job, 'delegate_to': 'localhost'},
            {'name': '%s export' % job, 'xapi.delta_backup.delta_export': {
                'vm': '{{ inventory_hostname }}', 'job': job, 'repositories': [repo],
                'snapshot': '{{ snap_%s.snapshot.uuid }}' % job}, 'register': 'export_%s' % job, 'delegate_to': 'localhost'},
            {'name': '%s result' % job, 'ansible.builtin.copy': {'content': '{{ export_%s | to_json }}' % job,
                                                                 'dest': '%s/{{ inventory_hostname }}-%s.json' % (outdir, job)},
             'delegate_to': 'localhost'},
        ]
    path = os.path.join(ansible.workdir, 'fleet.yml')
    with open(path, 'w', encoding='utf-8') as handle:
        yaml.safe_dump([{'hosts': 'fleet', 'gather_facts': False, 'vars': {'ansible_python_interpreter': sys.executable},
                         'tasks': tasks}], handle)
    inventory = os.path.join(ansible.workdir, 'fleet.ini')
    with open(inventory, 'w', encoding='utf-8') as handle:
        handle.write('[fleet]\n' + ''.join('vm%02d ansible_connection=local\n' % n for n in range(1, VMS + 1)))
    return path, inventory


def test_twenty_vms_two_jobs_forks_five_share_one_repository(ansible, pool, tmp_path):
    pool.control.load_config(load_pool())
    repo = tmp_path / 'repo'
    repo.mkdir()
    path, inventory = fleet_play(ansible, str(repo), str(tmp_path))
    command = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', inventory, '--forks', '5', path]
    truths = {}
    # snapshots copy disk names: guest writes address the live disks by uuid
    live = {number: pool.control.record('VDI', 'vm%02d-root' % number)['uuid'] for number in range(1, VMS + 1)}
    for round_number in range(2):
        if round_number:
            for number in range(1, VMS + 1):
                pool.control.write_vdi(live[number], number * 4096, length=64 * 1024, seed=1000 + number)
        started = time.monotonic()
        done = subprocess.run(command, env=ansible.env, cwd=ansible.workdir, capture_output=True, text=True, timeout=900, check=False)
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert 'failed=0' in done.stdout and 'ok=6' in done.stdout
        for number in range(1, VMS + 1):
            for job in ('nightly', 'hourly'):
                with open(tmp_path / ('vm%02d-%s.json' % (number, job)), encoding='utf-8') as handle:
                    export = ok(json.load(handle))
                assert export['mode'] == ('delta' if round_number else 'full'), export['reason']
                truths[(number, job, round_number)] = (export, {d['snapshot_vdi_uuid']: pool.control.vdi_sha256(d['snapshot_vdi_uuid'])
                                                                for d in export['disks']})
        sessions = pool.control.sessions()
        assert sessions['count'] == 0 and sessions['logins'] == sessions['logouts'], sessions
        print('round %d: %d VMs x 2 jobs in %.1f s with forks 5' % (round_number, VMS, elapsed))
    # one repository, two jobs: consistent, and every chain of both jobs reads as its snapshot did
    info = ok(run_play(ansible, [('backup_info', {'repository': str(repo), 'verify': True}, False)])[0])
    assert info['problems'] == [] and len(info['vms']) == VMS
    assert sorted(job['name'] for job in info['jobs']) == ['hourly', 'nightly']
    for (number, _job, _round), (export, truth) in truths.items():
        assert_point_matches_truth({'sim': pool}, str(repo), export, truth)
        assert len(backup_points(str(repo), export['vm']['uuid'])) == 4, number
    assert not [name for name in os.listdir(repo / 'xo-vm-backups') if name.endswith('.lock')]
    # restores through the module, one per job, byte for byte
    restores = run_play(ansible, [('vm_restore', {'repository': str(repo), 'vm': 'vm07', 'job': job, 'name': 'vm07 ' + job}, False)
                                  for job in ('nightly', 'hourly')])
    for result, job in zip(restores, ('nightly', 'hourly'), strict=True):
        export, truth = truths[(7, job, 1)]
        by_live = {disk['vdi_uuid']: truth[disk['snapshot_vdi_uuid']] for disk in export['disks']}
        for disk in ok(result)['disks']:
            assert pool.control.vdi_sha256(disk['vdi_uuid']) == by_live[disk['source_vdi_uuid']]
