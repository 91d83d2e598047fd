# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of vm_restore and backup_merge against plain copies of the same bytes.

    .venv/bin/python benchmarks/bench_restore_merge.py [--sizes 20 100] [--changed-gib 1] [--restore-gib 1] [--repeat 2] [--http]

Restore: a full plus a delta in a repository (``--restore-gib`` of data each, in a 4 GiB disk) is
restored by ``restore.restore`` (the code behind vm_restore) to the simulator, and the same VHD
stream is uploaded to the same simulator with a plain HTTP PUT (``sendfile`` of a file in page cache).

* restore throughput / plain upload throughput                          (goal >= 0.8)

Merge: for each disk size in ``--sizes``, a full (1 GiB of data) and a delta with ``--changed-gib``
of changes (built by bench_vhd's builder) sit in a repository as two backups; ``apply_retention``
(the code behind backup_merge) keeps one. The baseline is ``cp`` + fsync of the changed bytes.

* merge time / cp time, for each disk size                              (goal <= 1.5, flat across sizes)

The whole backup_merge run also checks the sha256 of every file before merging and hashes the
merged full afterwards; that time is printed too, separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))

import bench_simulator  # noqa: E402  pylint: disable=wrong-import-position
import bench_vhd  # noqa: E402  pylint: disable=wrong-import-position
from xapisim.testing import start_server  # noqa: E402  pylint: disable=wrong-import-position

GIB = 1024 ** 3
MIB = 1024 ** 2
VM = '5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d'
LIVE = '0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b'
SCHEDULE = '2f0c6b1e-6a8a-4d8e-a3a4-0c4f1b9d7e10'
VM_RECORD = {'uuid': VM, 'name_label': 'bench', 'memory_static_max': str(GIB), 'memory_dynamic_max': str(GIB),
             'memory_dynamic_min': str(GIB), 'memory_static_min': str(GIB), 'VCPUs_max': '1', 'VCPUs_at_startup': '1'}


def _repository(directory, size_gib, base_gib, changed_gib):
    """A repository holding two backups of one disk: the full and a delta, with our checksums."""
    # pylint: disable=import-error,import-outside-toplevel
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import sha256_file
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
    from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import split_local_path

    os.makedirs(directory)
    repo = open_repository(directory, create=True)
    job = job_id_for('bench')
    folder = repo.vdi_dir(VM, job, LIVE)
    os.makedirs(folder)
    built = bench_vhd._build(argparse.Namespace(size_gib=size_gib, base_gib=base_gib, changed_gib=changed_gib), folder)
    size = int(size_gib * GIB)
    for number, path in enumerate((built['full'], built['delta'])):
        ref = 'OpaqueRef:bench-vdi-%d' % number
        relative = os.path.relpath(path, repo.vm_dir(VM))
        vdi = {'uuid': str(uuid.uuid4()), 'name_label': 'bench disk', 'name_description': '', 'virtual_size': str(size),
               '$snapshot_of$uuid': LIVE}
        vbd = {'VDI': ref, 'userdevice': '0', 'bootable': True, 'mode': 'RW', 'type': 'Disk'}
        metadata = build_metadata(job, SCHEDULE, 1767225600000 + number * 86400000, VM_RECORD, {'uuid': str(uuid.uuid4())},
                                  {'OpaqueRef:bench-vbd': vbd}, {}, {ref: vdi}, {ref: relative}, {ref: number == 1},
                                  size=os.path.getsize(path), sha256={relative: sha256_file(*split_local_path(path))}, virtual_sizes={ref: size})
        repo.write_metadata(VM, os.path.basename(path)[:-4], metadata)
    return repo, job, built


def bench_merge(args, workdir):
    from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.retention import apply_retention  # pylint: disable=import-error

    rows = []
    for size_gib in args.sizes:
        merges, totals, verifies, copies = [], [], [], []
        for number in range(args.repeat):
            directory = os.path.join(workdir, 'merge-%g-%d' % (size_gib, number))
            repo, job, built = _repository(directory, size_gib, 1.0, args.changed_gib)
            subprocess.run(['sync', '-f', built['delta']], check=True)
            copies.append(bench_vhd.cp_fsync_seconds(built['delta'], workdir))
            started = time.perf_counter()
            report = apply_retention(repo, VM, job, 1)
            totals.append(time.perf_counter() - started)
            merges.append(report['merge_seconds'])
            verifies.append(report['verify_seconds'])
            changed = built['changed_bytes']
            shutil.rmtree(directory)
        rows.append({'size_gib': size_gib, 'changed': changed, 'cp': min(copies), 'merge': min(merges), 'verify': min(verifies),
                     'total': min(totals)})
    return rows


def bench_restore(args, workdir):
    # pylint: disable=import-error,import-outside-toplevel
    from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection
    from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.restore import restore
    from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdChain, stream_disk

    repo, _job, built = _repository(os.path.join(workdir, 'restore'), 4, args.restore_gib, args.restore_gib)
    stream_path = os.path.join(workdir, 'stream.vhd')
    with VhdChain.from_paths([built['delta'], built['full']]) as chain, open(stream_path, 'wb') as sink:
        for chunk in stream_disk(chain):
            sink.write(chunk)
    config = {'srs': [{'name': 'bench', 'size': '200GiB', 'default': True}], 'networks': [{'name': 'net0', 'bridge': 'xenbr0'}],
              'vms': [{'name': 'other', 'disks': [{'name': 'other-disk', 'size': '4GiB'}]}]}
    best_restore = best_upload = best_import = 0.0
    with start_server(config, https=not args.http, data_dir=os.path.join(workdir, 'sim')) as running:
        session = running.xenapi_session()
        session.login_with_password('root', 'secret', '1.0', 'bench')
        api = session.xenapi
        sr = api.SR.get_by_name_label('bench')[0]
        bench_simulator._page_cache_read([stream_path, built['full'], built['delta']])
        for _round in range(args.repeat):
            target = api.VDI.create({'name_label': 'upload', 'name_description': '', 'SR': sr, 'virtual_size': str(4 * GIB),
                                     'type': 'user', 'sharable': False, 'read_only': False, 'other_config': {}})
            started = time.perf_counter()
            nbytes = bench_simulator._import(running, session.handle, target, stream_path)
            best_upload = max(best_upload, nbytes / (time.perf_counter() - started))
            api.VDI.destroy(target)
            with XapiConnection(running.url, 'root', 'secret', ca_path=running.ca_path, timeout=600) as xapi:
                started = time.perf_counter()
                result = restore(xapi, repo, VM, sr='bench')
                elapsed = time.perf_counter() - started
            assert result['bytes_transferred'] == nbytes, (result['bytes_transferred'], nbytes)
            best_restore = max(best_restore, nbytes / elapsed)
            best_import = max(best_import, nbytes / sum(disk['duration'] for disk in result['disks']))
            vm = api.VM.get_by_uuid(result['vm']['uuid'])
            vdis = [api.VBD.get_VDI(vbd) for vbd in api.VM.get_VBDs(vm)]
            api.VM.destroy(vm)
            for vdi in vdis:
                api.VDI.destroy(vdi)
        api.session.logout()
    return {'bytes': nbytes, 'restore': best_restore, 'upload': best_upload, 'import': best_import}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--sizes', type=float, nargs='*', default=[20, 100], help='virtual disk sizes (GiB) for the merge')
    parser.add_argument('--changed-gib', type=float, default=1)
    parser.add_argument('--restore-gib', type=float, default=1, help='data in the full and in the delta restored')
    parser.add_argument('--repeat', type=int, default=2)
    parser.add_argument('--http', action='store_true', help='plain HTTP to the simulator (default: HTTPS, as the modules use)')
    parser.add_argument('--workdir', default=os.path.join(os.path.dirname(HERE), 'benchmarks', 'output'))
    args = parser.parse_args()
    collections = bench_vhd._importable()
    os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix='bench-rm-', dir=args.workdir)
    try:
        restored = bench_restore(args, workdir)
        rows = bench_merge(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(collections, ignore_errors=True)
    print()
    ratio = restored['restore'] / restored['upload']
    print('restore of %.2f GiB stream   %7.0f MiB/s' % (restored['bytes'] / GIB, restored['restore'] / MIB))
    print('  of which the imports      %7.0f MiB/s (the rest: checksum checks of the chain, VM creation)' % (restored['import'] / MIB))
    print('plain %s upload          %7.0f MiB/s' % ('HTTP ' if args.http else 'HTTPS', restored['upload'] / MIB))
    print('RESTORE / UPLOAD RATIO      %6.2f   (goal >= 0.8)  %s' % (ratio, 'OK' if ratio >= 0.8 else 'MISSED'))
    print()
    for row in rows:
        merge_ratio = row['merge'] / row['cp']
        print('disk %5g GiB, %.2f GiB changed: cp+fsync %.2f s, merge %.2f s, checksum checks %.2f s, whole backup_merge %.2f s'
              % (row['size_gib'], row['changed'] / GIB, row['cp'], row['merge'], row['verify'], row['total']))
        print('MERGE / CP RATIO (%5g GiB)  %6.2f   (goal <= 1.5)  %s;  whole run / cp %.2f'
              % (row['size_gib'], merge_ratio, 'OK' if merge_ratio <= 1.5 else 'MISSED', row['total'] / row['cp']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
