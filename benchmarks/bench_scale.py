# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scale benchmark: many VMs, many runs, retention, against one simulated pool.

    make layout   # once: the virtualenv (the collection itself is imported from this checkout)
    .venv/bin/python benchmarks/bench_scale.py [--vms 50 --disks 2 --runs 30 --keep 7] [--big-mib 512] [--no-ansible]

Bulk part: ``--vms`` VMs with ``--disks`` small disks each; every run makes 1 to 3 random guest writes per
VM, then for each VM takes the job snapshot (``manage_job_snapshots``, the code of vm_snapshot), exports
it (``export_vm``, delta_export) and applies retention ``--keep`` (``apply_retention``, backup_merge).
These run in this process, one VM after the other: 1500 ansible-playbook start-ups (about 3 s each)
would measure Ansible, not the collection. Reported: total wall time and per step, then the
repository's size on disk divided by the data it must hold, computed independently from the guest
writes (blocks allocated at the oldest kept point, plus the blocks each later kept point changed);
and a leak check (no temporary file, no lock, no VHD outside a kept chain, exactly ``--keep`` points).

Throughput part, on one bigger VM (``--big-mib`` of data in a 4 GiB disk), each against the physical
limit measured in the same run on the same machine:

* export  / plain ``http.client`` download of the same ``/export_raw_vdi`` (full, then delta)
* merge   / ``cp`` + fsync of the delta file merged
* restore / plain ``PUT /import_raw_vdi`` of the same VHD stream (sendfile)

Peak RSS: VmHWM of the module processes of three real ansible-playbook runs (delta_export, backup_merge,
vm_restore on the big VM), read from /proc while they run; and this process's own peak for the bulk part.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, 'tests'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))

import bench_simulator  # noqa: E402  pylint: disable=wrong-import-position
import bench_vhd  # noqa: E402  pylint: disable=wrong-import-position
from xapisim.testing import start_server  # noqa: E402  pylint: disable=wrong-import-position

MIB = 1 << 20
GIB = 1 << 30
BLOCK = 2 * MIB
JOB = 'scale'


def pool_config(args) -> dict:
    vms = []
    for number in range(args.vms):
        disks = []
        for disk in range(args.disks):
            size = 64 if disk == 0 else 32
            disks.append({'name': 'vm%03d-disk%d' % (number, disk), 'size': '%dMiB' % size,
                          'data': [{'offset': 0, 'length': '%dMiB' % (size // 8), 'seed': number * 10 + disk}]})
        vms.append({'name': 'vm%03d' % number, 'power_state': 'Running', 'disks': disks})
    vms.append({'name': 'big', 'disks': [{'name': 'big-disk', 'size': '4GiB',
                                          'data': [{'offset': 0, 'length': '%dMiB' % args.big_mib, 'seed': 99}]}]})
    return {'pool': {'name': 'scale-pool'}, 'hosts': [{'name': 'host1', 'address': '127.0.0.1'}],
            'users': [{'name': 'root', 'password': 'secret'}], 'srs': [{'name': 'Local storage', 'size': '400GiB', 'default': True}],
            'networks': [{'name': 'Network 0', 'bridge': 'xenbr0'}], 'vms': vms}


class Timer:
    def __init__(self):
        self.seconds = {}

    def add(self, name, began):
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began


def bulk(args, running, xapi, mods, repo_path) -> dict:
    """The many-VM, many-run part; returns timings, sizes and the leak check."""
    rng = random.Random(args.seed)
    control = running.control
    job = mods.Job(JOB)
    live = {}     # (vm, disk index) -> live VDI uuid
    allocated = {}  # (vm, disk) -> blocks allocated on the live disk now
    for number in range(args.vms):
        for disk in range(args.disks):
            uuid = control.record('VDI', 'vm%03d-disk%d' % (number, disk))['uuid']
            live[(number, disk)] = uuid
            allocated[(number, disk)] = set(control.vdi_blocks(uuid))
    history = {key: [] for key in live}  # per disk, per run: (blocks allocated then, blocks changed by the run)
    timer = Timer()
    vm_uuids = {}
    repo = None
    transferred = 0
    began_all = time.perf_counter()
    for run in range(args.runs):
        began_run = time.perf_counter()
        for number in range(args.vms):
            changed = {disk: set() for disk in range(args.disks)}
            if run:
                for _write in range(rng.randint(1, 3)):
                    disk = rng.randrange(args.disks)
                    size = (64 if disk == 0 else 32) * MIB
                    length = rng.choice([4096, 64 * 1024, 512 * 1024, MIB])
                    offset = rng.randrange(0, size - length, 512)
                    began = time.perf_counter()
                    control.write_vdi(live[(number, disk)], offset, length=length, seed=rng.randrange(1 << 30))
                    timer.add('guest writes (simulator)', began)
                    touched = set(range(offset // BLOCK, (offset + length - 1) // BLOCK + 1))
                    changed[disk] |= touched
                    allocated[(number, disk)] |= touched
            name = 'vm%03d' % number
            began = time.perf_counter()
            snap = mods.manage_job_snapshots(xapi, name, job, take=True)
            timer.add('snapshot (vm_snapshot)', began)
            began = time.perf_counter()
            result = mods.export_vm(xapi, [repo_path], name, job, snapshot_uuid=snap['snapshot']['uuid'])
            timer.add('export (delta_export)', began)
            transferred += result['bytes_transferred']
            if run and result['mode'] != 'delta':
                raise AssertionError('run %d of %s was a full: %s' % (run, name, result['reason']))
            vm_uuids[number] = result['vm']['uuid']
            for disk in range(args.disks):
                history[(number, disk)].append((set(allocated[(number, disk)]), changed[disk] if run else set(allocated[(number, disk)])))
            if repo is None:
                repo = mods.open_repository(repo_path)
            began = time.perf_counter()
            mods.apply_retention(repo, vm_uuids[number], job.id, args.keep)
            timer.add('retention (backup_merge)', began)
        if run in (0, args.runs - 1) or (run + 1) % 10 == 0:
            print('  run %2d/%d: %.1f s' % (run + 1, args.runs, time.perf_counter() - began_run), flush=True)
    wall = time.perf_counter() - began_all
    # what the repository must hold: per disk, the oldest kept point's allocated blocks, then each later kept run's changes
    must_hold = 0
    for runs in history.values():
        kept = runs[-args.keep:]
        must_hold += len(kept[0][0]) * BLOCK + sum(len(changed) * BLOCK for _alloc, changed in kept[1:])
    on_disk = apparent = 0
    strays = []
    for folder, dirs, files in os.walk(repo_path):
        strays.extend(os.path.join(folder, name) for name in dirs if name.endswith('.lock'))
        for name in files:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            on_disk += stat.st_blocks * 512
            apparent += stat.st_size
            if name.startswith('.'):
                strays.append(path)
    points_ok = True
    for vm_uuid in vm_uuids.values():
        points = repo.list_backups(vm_uuid)
        points_ok &= len(points) == min(args.keep, args.runs)
        leftovers = repo.cleanup_incomplete(vm_uuid, dry_run=True)
        strays.extend(leftovers['temporary_files'] + leftovers['unreferenced_vhds'])
        needed = set()
        for point in points:
            for disk in point.disks:
                needed.update(repo.local_path(path) for path in repo.vhd_chain(point, disk))
        for folder, _dirs, files in os.walk(repo.vm_dir(vm_uuid)):
            strays.extend(os.path.join(folder, name) for name in files if name.endswith('.vhd') and os.path.join(folder, name) not in needed)
    return {'wall': wall, 'steps': timer.seconds, 'must_hold': must_hold, 'on_disk': on_disk, 'apparent': apparent,
            'strays': sorted(set(strays)), 'points_ok': points_ok, 'transferred': transferred,
            'backups': args.vms * args.runs, 'rss_bulk_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def download_rate(running, session_ref, vdi_ref, base_ref=None, sink_path=None) -> tuple[int, float]:
    """Plain http.client download of /export_raw_vdi (format vhd, optional base): bytes, seconds.

    Into nothing, or with ``sink_path`` into that file, fsynced (the disk's share of the export's cost).
    """
    import urllib.parse  # pylint: disable=import-outside-toplevel
    conn = bench_simulator._conn(running)
    query = {'session_id': session_ref, 'vdi': vdi_ref, 'format': 'vhd'}
    if base_ref:
        query['base'] = base_ref
    began = time.perf_counter()
    conn.request('GET', '/export_raw_vdi?' + urllib.parse.urlencode(query))
    response = conn.getresponse()
    buffer = memoryview(bytearray(4 * MIB))
    total = 0
    sink = open(sink_path, 'wb') if sink_path else None  # pylint: disable=consider-using-with
    try:
        while True:
            got = response.readinto(buffer)
            if not got:
                break
            if sink is not None:
                sink.write(buffer[:got])
            total += got
        if sink is not None:
            sink.flush()
            os.fsync(sink.fileno())
    finally:
        if sink is not None:
            sink.close()
            os.unlink(sink_path)
    conn.close()
    return total, time.perf_counter() - began


def throughput(args, running, xapi, mods, workdir) -> dict:
    """export / download, merge / cp, restore / upload on the big VM, best of --repeat where it can be repeated."""
    control = running.control
    repo_path = os.path.join(workdir, 'big-repo')
    os.makedirs(repo_path)
    job = mods.Job(JOB)
    session = running.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'bench-scale')
    api = session.xenapi
    out = {}
    try:
        live = args.big_live
        # full: download first (page cache warm for both), then the module code
        snap = mods.manage_job_snapshots(xapi, 'big', job, take=True)
        snap_vdi = api.VDI.get_by_uuid(snap['snapshot']['disks'][0]['vdi_uuid'])
        nbytes, seconds = min((download_rate(running, session.handle, snap_vdi) for _number in range(args.repeat)), key=lambda item: item[1])
        sink = os.path.join(workdir, 'download.vhd')
        _nbytes, to_file = min((download_rate(running, session.handle, snap_vdi, sink_path=sink) for _number in range(args.repeat)),
                               key=lambda item: item[1])
        began = time.perf_counter()
        full = mods.export_vm(xapi, [repo_path], 'big', job, snapshot_uuid=snap['snapshot']['uuid'])
        export_seconds = time.perf_counter() - began
        out['full'] = {'bytes': full['bytes_transferred'], 'export': full['bytes_transferred'] / export_seconds,
                       'download': nbytes / seconds, 'download_file': nbytes / to_file}
        # delta of --big-mib / 2 of changes
        control.write_vdi(live, 1 * GIB, length=args.big_mib // 2 * MIB, seed=7)
        snap2 = mods.manage_job_snapshots(xapi, 'big', job, take=True)
        snap2_vdi = api.VDI.get_by_uuid(snap2['snapshot']['disks'][0]['vdi_uuid'])
        nbytes, seconds = min((download_rate(running, session.handle, snap2_vdi, snap_vdi) for _number in range(args.repeat)),
                              key=lambda item: item[1])
        _nbytes, to_file = min((download_rate(running, session.handle, snap2_vdi, snap_vdi, sink_path=sink) for _number in range(args.repeat)),
                               key=lambda item: item[1])
        began = time.perf_counter()
        delta = mods.export_vm(xapi, [repo_path], 'big', job, snapshot_uuid=snap2['snapshot']['uuid'])
        export_seconds = time.perf_counter() - began
        assert delta['mode'] == 'delta', delta['reason']
        out['delta'] = {'bytes': delta['bytes_transferred'], 'export': delta['bytes_transferred'] / export_seconds,
                        'download': nbytes / seconds, 'download_file': nbytes / to_file}
        truth = control.vdi_sha256(snap2['snapshot']['disks'][0]['vdi_uuid'])
        repo = mods.open_repository(repo_path)
        vm_uuid = delta['vm']['uuid']
        delta_file = os.path.join(repo.vm_dir(vm_uuid), delta['disks'][0]['path'])
        # restore of the two-file chain vs a plain upload of the same stream
        stream_path = os.path.join(workdir, 'stream.vhd')
        point = repo.list_backups(vm_uuid)[-1]
        with mods.VhdChain.from_paths([repo.local_path(path) for path in repo.vhd_chain(point, point.disks[0])]) as chain, \
                open(stream_path, 'wb') as sink:
            for chunk in mods.stream_disk(chain):
                sink.write(chunk)
        sr = api.SR.get_by_name_label('Local storage')[0]
        best_upload = best_restore = 0.0
        for _round in range(args.repeat):
            target = api.VDI.create({'name_label': 'upload', 'name_description': '', 'SR': sr, 'virtual_size': str(4 * GIB),
                                     'type': 'user', 'sharable': False, 'read_only': False, 'other_config': {}})
            began = time.perf_counter()
            uploaded = bench_simulator._import(running, session.handle, target, stream_path)
            best_upload = max(best_upload, uploaded / (time.perf_counter() - began))
            api.VDI.destroy(target)
            began = time.perf_counter()
            restored = mods.restore(xapi, repo, vm_uuid, name_label='big restored')
            best_restore = max(best_restore, restored['bytes_transferred'] / (time.perf_counter() - began))
            assert control.vdi_sha256(restored['disks'][0]['vdi_uuid']) == truth
        out['restore'] = {'bytes': uploaded, 'restore': best_restore, 'upload': best_upload}
        # merge (keep 1 folds the delta into the full) vs cp of the delta file
        subprocess.run(['sync'], check=True)
        copy = bench_vhd.cp_fsync_seconds(delta_file, workdir)
        delta_size = os.path.getsize(delta_file)
        report = mods.apply_retention(repo, vm_uuid, job.id, 1)
        out['merge'] = {'bytes': delta_size, 'merge': report['merge_seconds'], 'cp': copy,
                        'whole': report['duration']}
    finally:
        api.session.logout()
    return out


def module_peak_rss(running, workdir, big_live) -> dict:
    """VmHWM of the module process of three real ansible-playbook runs on the big VM (after the throughput part)."""
    from faults import group_processes  # pylint: disable=import-outside-toplevel
    collections = os.path.join(ROOT, '.build', 'collections')
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='false', ANSIBLE_NOCOLOR='1',
               ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_INVENTORY_UNPARSED_WARNING='false', XENSERVER_HOST=running.url,
               XENSERVER_USER='root', XENSERVER_PASSWORD='secret', XENSERVER_CA_PATH=running.ca_path)
    repo = os.path.join(workdir, 'rss-repo')
    os.makedirs(repo)
    running.control.write_vdi(big_live, 2 * GIB, length=64 * MIB, seed=8)
    steps = [
        ('delta_export', [{'xapi.delta_backup.vm_snapshot': {'vm': 'big', 'job': 'rss'}, 'register': 's'},
                          {'xapi.delta_backup.delta_export': {'vm': 'big', 'job': 'rss', 'repositories': [repo],
                                                              'snapshot': '{{ s.snapshot.uuid }}'}}]),
        ('backup_merge', [{'xapi.delta_backup.vm_snapshot': {'vm': 'big', 'job': 'rss'}, 'register': 's'},
                          {'xapi.delta_backup.delta_export': {'vm': 'big', 'job': 'rss', 'repositories': [repo],
                                                              'snapshot': '{{ s.snapshot.uuid }}'}},
                          {'xapi.delta_backup.backup_merge': {'repository': repo, 'job': 'rss', 'keep': 1}}]),
        ('vm_restore', [{'xapi.delta_backup.vm_restore': {'repository': repo, 'vm': 'big', 'name': 'rss restore'}}]),
    ]
    peaks = {}
    for module, tasks in steps:
        path = os.path.join(workdir, 'rss-%s.yml' % module)
        with open(path, 'w', encoding='utf-8') as handle:
            yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'vars': {'ansible_python_interpreter': sys.executable},
                             'tasks': tasks}], handle)
        if not os.path.isdir(collections):
            return {'error': 'run make layout first (needs .build/collections)'}
        process = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
                                    path], env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        peak = 0
        while process.poll() is None:
            for pid in group_processes(process.pid, 'AnsiballZ_%s' % module):
                try:
                    with open('/proc/%d/status' % pid, encoding='utf-8') as status:
                        for line in status:
                            if line.startswith('VmHWM:'):
                                peak = max(peak, int(line.split()[1]))
                except OSError:
                    pass
            time.sleep(0.01)
        output = process.stdout.read().decode('utf-8', 'replace')
        if process.returncode:
            raise RuntimeError('%s playbook failed:\n%s' % (module, output[-3000:]))
        peaks[module] = peak / 1024
    return peaks


class Modules:
    """The module_utils functions the benchmark drives, imported once the collection is importable."""

    def __init__(self):
        # pylint: disable=import-error,import-outside-toplevel
        from ansible_collections.xapi.delta_backup.plugins.module_utils import _vhd as vhd
        from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import export, job, restore, retention, snapshot
        from ansible_collections.xapi.delta_backup.plugins.module_utils._repo import store
        self.export_vm = export.export_vm
        self.open_repository = store.open_repository
        self.Job = job.Job  # pylint: disable=invalid-name
        self.apply_retention = retention.apply_retention
        self.manage_job_snapshots = snapshot.manage_job_snapshots
        self.restore = restore.restore
        self.VhdChain = vhd.VhdChain  # pylint: disable=invalid-name
        self.stream_disk = vhd.stream_disk


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--vms', type=int, default=50)
    parser.add_argument('--disks', type=int, default=2, choices=[1, 2])
    parser.add_argument('--runs', type=int, default=30)
    parser.add_argument('--keep', type=int, default=7)
    parser.add_argument('--big-mib', type=int, default=512, help='data in the big VM of the throughput part')
    parser.add_argument('--repeat', type=int, default=2)
    parser.add_argument('--seed', type=int, default=2026)
    parser.add_argument('--no-ansible', action='store_true', help='skip the peak RSS of real module processes')
    parser.add_argument('--throughput-only', action='store_true', help='skip the bulk part (many VMs, many runs)')
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'benchmarks', 'output'))
    parser.add_argument('--json', help='also write the figures to this file')
    args = parser.parse_args()
    collections = bench_vhd._importable()
    mods = Modules()
    from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection  # pylint: disable=import-error
    os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix='bench-scale-', dir=args.workdir)
    started = time.perf_counter()
    try:
        with start_server(pool_config(args), https=True, data_dir=os.path.join(workdir, 'sim'), timeout=180) as running:
            args.big_live = running.control.record('VDI', 'big-disk')['uuid']
            repo_path = os.path.join(workdir, 'repo')
            os.makedirs(repo_path)
            with XapiConnection(running.url, 'root', 'secret', ca_path=running.ca_path, timeout=600) as xapi:
                if not args.throughput_only:
                    print('bulk: %d VMs x %d disks, %d runs, keep %d' % (args.vms, args.disks, args.runs, args.keep), flush=True)
                figures = {} if args.throughput_only else bulk(args, running, xapi, mods, repo_path)
                print('throughput on the big VM (%d MiB of data)' % args.big_mib, flush=True)
                figures['throughput'] = throughput(args, running, xapi, mods, workdir)
            figures['rss_modules_mib'] = {} if args.no_ansible else module_peak_rss(running, workdir, args.big_live)
            sessions = running.control.sessions()
            figures['sessions_left'] = sessions['count']
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(collections, ignore_errors=True)
    figures['total_seconds'] = time.perf_counter() - started
    report(args, figures)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump(dict(figures, args=vars(args), date=datetime.datetime.now(datetime.timezone.utc).isoformat()), handle, indent=1)
    return 0 if not figures.get('strays') and figures.get('points_ok', True) and not figures['sessions_left'] else 1


def report(args, figures):
    print()
    if 'wall' in figures:
        report_bulk(args, figures)
    report_throughput(figures)


def report_bulk(args, figures):
    print('BULK: %d backups (%d VMs x %d runs, %d disks each, keep %d) in %.1f s wall, %.0f ms per backup run'
          % (figures['backups'], args.vms, args.runs, args.disks, args.keep, figures['wall'], figures['wall'] / figures['backups'] * 1000))
    for step, seconds in sorted(figures['steps'].items(), key=lambda item: -item[1]):
        print('  %-28s %7.1f s  %6.1f ms each' % (step, seconds, seconds / figures['backups'] * 1000))
    print('  exported %.1f MiB in total' % (figures['transferred'] / MIB))
    ratio = figures['on_disk'] / figures['must_hold']
    print('REPOSITORY: %.1f MiB on disk (%.1f MiB apparent) for %.1f MiB of live data it must hold: RATIO %.3f'
          % (figures['on_disk'] / MIB, figures['apparent'] / MIB, figures['must_hold'] / MIB, ratio))
    print('LEAKS: %d stray files/locks, points per VM %s, sessions left %d'
          % (len(figures['strays']), 'all = keep' if figures['points_ok'] else 'WRONG', figures['sessions_left']))
    for path in figures['strays'][:10]:
        print('  stray: %s' % path)


def report_throughput(figures):
    put = figures['throughput']
    for kind in ('full', 'delta'):
        row = put[kind]
        print('EXPORT %-5s %7.1f MiB: export %6.0f MiB/s, plain download %6.0f MiB/s, RATIO %.2f; '
              'download to a file + fsync %6.0f MiB/s, RATIO %.2f'
              % (kind, row['bytes'] / MIB, row['export'] / MIB, row['download'] / MIB, row['export'] / row['download'],
                 row['download_file'] / MIB, row['export'] / row['download_file']))
    row = put['merge']
    print('MERGE %.1f MiB delta: merge %.2f s (whole backup_merge %.2f s), cp+fsync %.2f s, RATIO merge/cp %.2f'
          % (row['bytes'] / MIB, row['merge'], row['whole'], row['cp'], row['merge'] / row['cp']))
    row = put['restore']
    print('RESTORE %.1f MiB stream: restore %6.0f MiB/s, plain upload %6.0f MiB/s, RATIO %.2f'
          % (row['bytes'] / MIB, row['restore'] / MIB, row['upload'] / MIB, row['restore'] / row['upload']))
    modules = ', '.join('%s %.0f MiB' % item for item in sorted(figures['rss_modules_mib'].items())) or 'skipped'
    print('PEAK RSS: bulk benchmark process %.0f MiB; module processes %s'
          % (figures.get('rss_bulk_mib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), modules))
    print('TOTAL %.1f s' % figures['total_seconds'])


if __name__ == '__main__':
    sys.exit(main())
