# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of vm_restore (every block checked as it streams) against a plain upload of the same VHD stream.

    .venv/bin/python benchmarks/bench_restore.py [--full-gib 1] [--delta-gib 0.25] [--repeat 2] [--http]

A full (``--full-gib`` of data in a 4 GiB disk) and a delta (``--delta-gib``) sit in a repository as
two backups written with block checksum files. ``restore.restore`` (the code behind vm_restore) runs
in a child process (for its peak RSS) against the simulator and restores the newest point: it checks
every chain's checksum files, creates the VM, streams the chain as one VHD to ``/import_raw_vdi``
checking each block it reads, and creates the VBD. The baseline is the same VHD stream, written to a
file in page cache, uploaded to the same URL by the fastest plain client at hand, each measured in
the same run: ``curl -T`` (no ``Expect``), Python ``http.client`` with 4 MiB buffers and, over plain
HTTP, Python ``socket.sendfile``.

* restore throughput (whole call, verification included) / fastest plain upload   (goal >= 0.9)
* peak RSS of the restore process                                                 (goal <= 100 MiB)
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))

import bench_simulator  # noqa: E402  pylint: disable=wrong-import-position
import bench_vhd  # noqa: E402  pylint: disable=wrong-import-position
from xapisim.testing import start_server  # noqa: E402  pylint: disable=wrong-import-position

GIB = 1024 ** 3
MIB = 1024 ** 2
DISK_GIB = 4
UPLOAD_BUFFER = 4 * MIB
VM = '5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d'
LIVE = '0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b'
SCHEDULE = '2f0c6b1e-6a8a-4d8e-a3a4-0c4f1b9d7e10'
VM_RECORD = {'uuid': VM, 'name_label': 'bench', 'memory_static_max': str(GIB), 'memory_dynamic_max': str(GIB),
             'memory_dynamic_min': str(GIB), 'memory_static_min': str(GIB), 'VCPUs_max': '1', 'VCPUs_at_startup': '1',
             'user_version': '1', 'VCPUs_params': {}, 'actions_after_shutdown': 'destroy', 'actions_after_reboot': 'restart',
             'actions_after_crash': 'restart', 'PV_bootloader': '', 'PV_kernel': '', 'PV_ramdisk': '', 'PV_args': '', 'PV_bootloader_args': '',
             'PV_legacy_args': '', 'HVM_boot_policy': 'BIOS order', 'HVM_boot_params': {'order': 'cd'}, 'platform': {}, 'PCI_bus': '',
             'recommendations': ''}


def _repository(directory, full_gib, delta_gib):
    """A repository holding two backups of one disk, the full and a delta, each with its block checksum file."""
    # pylint: disable=import-error,import-outside-toplevel
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
    from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
    from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import compute_sums, sidecar_name
    from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import split_local_path

    os.makedirs(directory)
    repo = open_repository(directory, create=True)
    job = job_id_for('bench')
    folder = repo.vdi_dir(VM, job, LIVE)
    os.makedirs(folder)
    built = bench_vhd._build(argparse.Namespace(size_gib=DISK_GIB, base_gib=full_gib, changed_gib=delta_gib), folder)
    size = DISK_GIB * GIB
    for number, path in enumerate((built['full'], built['delta'])):
        with VhdFile.open(path) as vhd:
            compute_sums(vhd).save(*split_local_path(sidecar_name(path)))
        ref = 'OpaqueRef:bench-vdi-%d' % number
        relative = os.path.relpath(path, repo.vm_dir(VM))
        vdi = {'uuid': str(uuid.uuid4()), 'name_label': 'bench disk', 'name_description': '', 'virtual_size': str(size),
               '$snapshot_of$uuid': LIVE}
        vbd = {'VDI': ref, 'userdevice': '0', 'bootable': True, 'mode': 'RW', 'type': 'Disk'}
        metadata = build_metadata(job, SCHEDULE, 1767225600000 + number * 86400000, VM_RECORD, {'uuid': str(uuid.uuid4())},
                                  {'OpaqueRef:bench-vbd': vbd}, {}, {ref: vdi}, {ref: relative}, {ref: number == 1},
                                  size=os.path.getsize(path), block_checksums={relative: 'sha256'}, virtual_sizes={ref: size})
        repo.write_metadata(VM, os.path.basename(path)[:-4], metadata)
    return built


def _import_url(running, session, vdi):
    return running.url.rstrip('/') + '/import_raw_vdi?' + urllib.parse.urlencode({'session_id': session, 'vdi': vdi, 'format': 'vhd'})


def upload_curl(running, session, vdi, path):
    """``curl -T`` of the file (``Expect`` off: the host answers before the body, a 100-continue wait would only add a delay)."""
    command = ['curl', '-sS', '--fail', '-o', '/dev/null', '-H', 'Expect:', '-T', path, _import_url(running, session, vdi)]
    if running.ca_path and running.url.startswith('https'):
        command[1:1] = ['--cacert', running.ca_path]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def upload_python(running, session, vdi, path, use_sendfile):
    """``http.client`` PUT of the file: ``sendfile`` (plain HTTP only), or reads into one 4 MiB buffer and ``sendall``."""
    url = urllib.parse.urlsplit(_import_url(running, session, vdi))
    if url.scheme == 'https':
        conn = http.client.HTTPSConnection(url.hostname, url.port, context=ssl.create_default_context(cafile=running.ca_path), timeout=600)
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    started = time.perf_counter()
    conn.putrequest('PUT', url.path + '?' + url.query, skip_accept_encoding=True)
    conn.putheader('Content-Length', str(os.path.getsize(path)))
    conn.endheaders()
    with open(path, 'rb', buffering=0) as handle:
        if use_sendfile:
            conn.sock.sendfile(handle)
        else:
            buffer = bytearray(UPLOAD_BUFFER)
            view = memoryview(buffer)
            while True:
                got = handle.readinto(buffer)
                if not got:
                    break
                conn.sock.sendall(view[:got])
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError('plain upload answered %s' % response.status)
    return time.perf_counter() - started


def sha256_rate(megabytes=256):
    """sha256 bytes per second on one core: the verification's cost per byte, which a plain upload does not pay."""
    data = os.urandom(2 * MIB)
    started = time.perf_counter()
    for _number in range(megabytes // 2):
        hashlib.sha256(data).digest()
    return megabytes * MIB / (time.perf_counter() - started)


def child_restore(spec):
    """In the child process: one restore; prints its figures as JSON (elapsed of the call, import time, peak RSS)."""
    # pylint: disable=import-error,import-outside-toplevel
    from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.restore import restore
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
    from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection

    repo = open_repository(spec['repository'])
    with XapiConnection(spec['url'], 'root', 'secret', ca_path=spec['ca_path'], timeout=600) as xapi:
        started = time.perf_counter()
        result = restore(xapi, repo, VM, sr='bench')
        elapsed = time.perf_counter() - started
    print(json.dumps({'elapsed': elapsed, 'bytes': result['bytes_transferred'], 'import': sum(disk['duration'] for disk in result['disks']),
                      'vm': result['vm']['uuid'], 'verified': len(result['checksums']['verified']),
                      'peak_rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def bench(args, workdir, collections):
    # pylint: disable=import-error,import-outside-toplevel
    from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdChain, stream_disk

    repository = os.path.join(workdir, 'repo')
    built = _repository(repository, args.full_gib, args.delta_gib)
    stream_path = os.path.join(workdir, 'stream.vhd')
    with VhdChain.from_paths([built['delta'], built['full']]) as chain, open(stream_path, 'wb') as sink:
        for chunk in stream_disk(chain):
            sink.write(chunk)
    nbytes = os.path.getsize(stream_path)
    config = {'srs': [{'name': 'bench', 'size': '200GiB', 'default': True}], 'networks': [{'name': 'net0', 'bridge': 'xenbr0'}],
              'vms': [{'name': 'other', 'disks': [{'name': 'other-disk', 'size': '4GiB'}]}]}
    rates = {}
    restores = []
    with start_server(config, https=not args.http, data_dir=os.path.join(workdir, 'sim')) as running:
        session = running.xenapi_session()
        session.login_with_password('root', 'secret', '1.0', 'bench')
        api = session.xenapi
        sr = api.SR.get_by_name_label('bench')[0]
        bench_simulator._page_cache_read([stream_path, built['full'], built['delta']])
        clients = [('curl -T', lambda vdi: upload_curl(running, session.handle, vdi, stream_path)),
                   ('python http.client, 4 MiB buffers', lambda vdi: upload_python(running, session.handle, vdi, stream_path, False))]
        if args.http:
            clients.append(('python socket.sendfile', lambda vdi: upload_python(running, session.handle, vdi, stream_path, True)))
        for _round in range(args.repeat):
            for name, upload in clients:
                target = api.VDI.create({'name_label': 'upload', 'name_description': '', 'SR': sr, 'virtual_size': str(DISK_GIB * GIB),
                                         'type': 'user', 'sharable': False, 'read_only': False, 'other_config': {}})
                rates[name] = max(rates.get(name, 0.0), nbytes / upload(target))
                api.VDI.destroy(target)
            spec = {'repository': repository, 'url': running.url, 'ca_path': running.ca_path}
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([collections, os.path.join(os.path.dirname(HERE), 'tests')]))
            child = subprocess.run([sys.executable, os.path.abspath(__file__), '--child-restore', json.dumps(spec)], check=False,
                                   capture_output=True, text=True, env=env)
            if child.returncode:
                raise RuntimeError('the restore failed:\n%s' % child.stderr)
            output = child.stdout
            figures = json.loads(output.strip().splitlines()[-1])
            assert figures['bytes'] == nbytes, (figures['bytes'], nbytes)
            restores.append(figures)
            vm = api.VM.get_by_uuid(figures['vm'])
            vdis = [api.VBD.get_VDI(vbd) for vbd in api.VM.get_VBDs(vm)]
            api.VM.destroy(vm)
            for vdi in vdis:
                api.VDI.destroy(vdi)
        api.session.logout()
    return {'bytes': nbytes, 'rates': rates, 'restores': restores}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--full-gib', type=float, default=1, help='data in the full')
    parser.add_argument('--delta-gib', type=float, default=0.25, help='data in the delta (half of it over blocks of the full)')
    parser.add_argument('--repeat', type=int, default=2)
    parser.add_argument('--http', action='store_true', help='plain HTTP to the simulator (default: HTTPS, as the modules use)')
    parser.add_argument('--workdir', default=os.path.join(os.path.dirname(HERE), 'benchmarks', 'output'))
    parser.add_argument('--child-restore', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_restore:
        child_restore(json.loads(args.child_restore))
        return 0
    collections = bench_vhd._importable()
    load = os.getloadavg()[0]
    hashing = sha256_rate()
    os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix='bench-restore-', dir=args.workdir)
    try:
        found = bench(args, workdir, collections)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(collections, ignore_errors=True)
    nbytes = found['bytes']
    best_name = max(found['rates'], key=found['rates'].get)
    best = found['rates'][best_name]
    restore_rate = max(nbytes / figures['elapsed'] for figures in found['restores'])
    import_rate = max(nbytes / figures['import'] for figures in found['restores'])
    peak = max(figures['peak_rss'] for figures in found['restores'])
    print()
    print('VHD stream of %.2f GiB (full %.2f GiB + delta %.2f GiB of data), %s, best of %d'
          % (nbytes / GIB, args.full_gib, args.delta_gib, 'HTTP' if args.http else 'HTTPS', args.repeat))
    for name, rate in sorted(found['rates'].items(), key=lambda item: -item[1]):
        print('  plain upload, %-34s %7.0f MiB/s' % (name, rate / MIB))
    print('  sha256 on one core (the check of every block)   %7.0f MiB/s;  %d cores, load average %.1f at the start'
          % (hashing / MIB, os.cpu_count() or 1, load))
    print('  vm_restore (whole call)                          %7.0f MiB/s  (its upload alone: %.0f MiB/s)' % (restore_rate / MIB, import_rate / MIB))
    ratio = restore_rate / best
    print('RESTORE / FASTEST PLAIN UPLOAD (%s)  %.2f   (goal >= 0.9)  %s' % (best_name, ratio, 'OK' if ratio >= 0.9 else 'MISSED'))
    print('PEAK RSS OF THE RESTORE PROCESS  %.0f MiB   (goal <= 100 MiB)  %s' % (peak / MIB, 'OK' if peak <= 100 * MIB else 'MISSED'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
