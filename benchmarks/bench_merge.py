# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of backup_merge in O(changed): a 64 MiB delta merged into fulls holding more and more data.

    .venv/bin/python benchmarks/bench_merge.py [--data-gib 1 4 16] [--delta-mib 64] [--repeat 3] [--workdir DIR] [--keep]

For each size in ``--data-gib``, a repository holds two backups of one disk: a full whose every
2 MiB block holds data (real blocks, not a sparse file) and a delta of ``--delta-mib`` of whole
blocks over blocks of the full, both with their block checksum sidecars (built with bench_vhd's
builder).  ``apply_retention(keep=1)`` (the whole of what backup_merge runs: lock, interrupted
merge check, plan, O(changed) integrity check of the chain, metadata, merge, sidecar and metadata
updates) runs in a child process.  The baseline, in the same run, is ``cp`` + fsync of the delta
file (best of ``--repeat``).

Each size runs ``--repeat`` rounds of continuous merging: round n writes a new delta over the full
that round n-1 left and merges it; the best merge and the best baseline are compared.

* merge total / cp+fsync of the delta, for each size                    (goal <= 3)
* largest merge total / smallest merge total                            (goal <= 1.5)
* peak RSS of the merging process                                       (goal <= 100 MiB)

Nothing is evicted from the page cache: the full was just written, so it is mostly cached; the
share of the full in page cache (``fincore``) is printed, as is the one-time cost of building.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_vhd  # noqa: E402  pylint: disable=wrong-import-position

GIB = 1024 ** 3
MIB = 1024 ** 2
VM = '5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d'
LIVE = '0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b'
SCHEDULE = '2f0c6b1e-6a8a-4d8e-a3a4-0c4f1b9d7e10'
JOB_NAME = 'bench-merge'
VM_RECORD = {'uuid': VM, 'name_label': 'bench', 'memory_static_max': str(GIB), 'memory_dynamic_max': str(GIB),
             'memory_dynamic_min': str(GIB), 'memory_static_min': str(GIB), 'VCPUs_max': '1', 'VCPUs_at_startup': '1'}


def _build(directory, data_gib, delta_mib):
    """A repository with a full holding ``data_gib`` of data and a delta of ``delta_mib``, sidecars and metadata included."""
    # pylint: disable=import-error,import-outside-toplevel
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository

    started = time.perf_counter()
    repo = open_repository(directory, create=True)
    job = job_id_for(JOB_NAME)
    folder = repo.vdi_dir(VM, job, LIVE)
    os.makedirs(folder)
    # Every block of the full holds data (base = size).  bench_vhd's builder lays half of the changed
    # blocks over the full's blocks and half over blocks it lacks; here none is lacking, so it is asked
    # for twice the delta: all of the delta's blocks lie over the full's.
    built = bench_vhd._build(argparse.Namespace(size_gib=data_gib, base_gib=data_gib, changed_gib=2 * delta_mib / 1024), folder)
    for number, path in enumerate((built['full'], built['delta'])):
        _record(repo, job, path, number, data_gib)
    # Written back before the merge is timed: otherwise the merge's first fsync of the full would also
    # write the build's dirty pages (cost of the build, not of the merge).  The pages stay cached.
    for path in (built['full'], built['delta']):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return dict(built, seconds=time.perf_counter() - started)


def _record(repo, job, path, number, data_gib):
    """Sidecar and metadata of backup number ``number`` (0: the full) whose VHD is ``path``."""
    # pylint: disable=import-error,import-outside-toplevel
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
    from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
    from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import compute_sums, sidecar_name

    size = int(data_gib * GIB)
    with VhdFile(path) as vhd:
        compute_sums(vhd).save(repo.storage, os.path.relpath(sidecar_name(path), repo.root))
    ref = 'OpaqueRef:bench-vdi-%d' % number
    relative = os.path.relpath(path, repo.vm_dir(VM))
    vdi = {'uuid': str(uuid.uuid4()), 'name_label': 'bench disk', 'name_description': '', 'virtual_size': str(size),
           '$snapshot_of$uuid': LIVE}
    vbd = {'VDI': ref, 'userdevice': '0', 'bootable': True, 'mode': 'RW', 'type': 'Disk'}
    metadata = build_metadata(job, SCHEDULE, 1767225600000 + number * 86400000, VM_RECORD, {'uuid': str(uuid.uuid4())},
                              {'OpaqueRef:bench-vbd-%d' % number: vbd}, {}, {ref: vdi}, {ref: relative}, {ref: number > 0},
                              size=os.path.getsize(path), block_checksums={relative: 'sha256'}, virtual_sizes={ref: size})
    repo.write_metadata(VM, os.path.basename(path)[:-4], metadata)


def _next_delta(directory, number, data_gib, delta_mib):
    """Backup ``number`` (2, 3, ...): a new delta of ``delta_mib`` of whole blocks over the full's, child of the newest file."""
    # pylint: disable=import-error,import-outside-toplevel
    import random
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
    from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import DISK_DIFFERENCING, ParentLink, VhdStream, write_stream

    repo = open_repository(directory)
    job = job_id_for(JOB_NAME)
    folder = repo.vdi_dir(VM, job, LIVE)
    newest = os.path.join(folder, sorted(name for name in os.listdir(folder) if name.endswith('.vhd'))[-1])
    path = os.path.join(folder, '202601%02dT000000Z.vhd' % (number + 1))
    blocks = int(data_gib * GIB) // bench_vhd.BLOCK
    changed = sorted(random.Random(number).sample(range(blocks), int(delta_mib * MIB) // bench_vhd.BLOCK))
    payload = bytearray(os.urandom(bench_vhd.BLOCK))

    def read_block(index):
        payload[:8] = index.to_bytes(8, 'big')
        return None, bytes(payload)

    write_stream(VhdStream(int(data_gib * GIB), changed, read_block, disk_type=DISK_DIFFERENCING,
                           parent=ParentLink.for_parent_file(newest, path)), path)
    _record(repo, job, path, number, data_gib)
    return {'delta': path}


def _retention(directory):
    """What backup_merge runs for one VM, timed from inside (no interpreter start-up)."""
    # pylint: disable=import-error,import-outside-toplevel
    from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.retention import apply_retention
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository

    started = time.perf_counter()
    report = apply_retention(open_repository(directory), VM, job_id_for(JOB_NAME), 1)
    seconds = time.perf_counter() - started
    assert len(report['merged']) == 1 and not report['migrated'], report
    return {'seconds': seconds, 'verify_seconds': report.get('verify_seconds'), 'merge_seconds': report.get('merge_seconds'),
            'bytes_merged': report['bytes_merged']}


def _cached_share(path):
    """Share of the file in page cache, from util-linux ``fincore`` (None when unavailable)."""
    try:
        out = subprocess.run(['fincore', '--bytes', '--noheadings', '--raw', '--output', 'RES,SIZE', path],
                             check=True, capture_output=True, text=True).stdout.split()
        return int(out[0]) / max(1, int(out[1]))
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def _child(action, *params):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', action] + [str(p) for p in params],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--data-gib', type=float, nargs='+', default=[1, 4, 16], help='data held by each full (GiB)')
    parser.add_argument('--delta-mib', type=float, default=64)
    parser.add_argument('--repeat', type=int, default=3, help='rounds of the cp + fsync baseline (best kept)')
    parser.add_argument('--workdir', default=os.path.join(bench_vhd.REPO, 'benchmarks', 'output'))
    parser.add_argument('--keep', action='store_true')
    parser.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
    args = parser.parse_args()
    col = bench_vhd._importable()
    try:
        if args.child:
            action, params = args.child[0], args.child[1:]
            if action == 'build':
                result = _build(params[0], float(params[1]), float(params[2]))
            elif action == 'delta':
                result = _next_delta(params[0], int(params[1]), float(params[2]), float(params[3]))
            else:
                result = _retention(params[0])
            result['maxrss_kib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(json.dumps(result))
            return 0
        os.makedirs(args.workdir, exist_ok=True)
        return _measure(args)
    finally:
        shutil.rmtree(col, ignore_errors=True)


def _measure(args):
    rows = []
    for data_gib in args.data_gib:
        directory = tempfile.mkdtemp(prefix='bench-merge-', dir=args.workdir)
        try:
            print('building: a full holding %g GiB of data, a %g MiB delta, sidecars ...' % (data_gib, args.delta_mib), flush=True)
            built = _child('build', directory, data_gib, args.delta_mib)
            cached = _cached_share(built['full'])
            # Rounds of continuous merging: each merges a fresh delta into the full the previous round left
            # (the same full, 64 MiB of it rewritten), interleaved with the baseline; the best of each is kept
            # (the machine is shared: best-of filters noise), the median is printed too.
            cps, merges = [], []
            for number in range(args.repeat):
                if number:
                    built['delta'] = _child('delta', directory, number + 1, data_gib, args.delta_mib)['delta']
                cps.append(bench_vhd.cp_fsync_seconds(built['delta'], directory))
                merges.append(_child('retention', directory))
            merge = min(merges, key=lambda m: m['seconds'])
            median = sorted(m['seconds'] for m in merges)[len(merges) // 2]
            rows.append(dict(merge, data_gib=data_gib, cp=min(cps), cached=cached, build=built['seconds'], median=median,
                             maxrss_kib=max(m['maxrss_kib'] for m in merges)))
            row = rows[-1]
            print('  built in %.1f s; full %s in page cache; best of %d: cp + fsync %.3f s; backup_merge %.3f s (check %.3f s, '
                  'merge %.3f s; median %.3f s); peak RSS %.1f MiB' % (
                      row['build'], 'n/a' if cached is None else '%.0f%%' % (100 * cached), args.repeat, row['cp'], row['seconds'],
                      row['verify_seconds'], row['merge_seconds'], median, row['maxrss_kib'] / 1024), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
    print()
    print('%10s %12s %12s %10s %10s %9s' % ('data GiB', 'cp+fsync s', 'merge s', 'ratio', 'RSS MiB', 'cached'))
    for row in rows:
        cached = 'n/a' if row['cached'] is None else '%.0f%%' % (100 * row['cached'])
        ratio = row['seconds'] / row['cp']
        print('%10g %12.3f %12.3f %10.2f %10.1f %9s' % (row['data_gib'], row['cp'], row['seconds'], ratio, row['maxrss_kib'] / 1024, cached))
    print()
    worst = max(row['seconds'] / row['cp'] for row in rows)
    spread = max(row['seconds'] for row in rows) / min(row['seconds'] for row in rows)
    peak = max(row['maxrss_kib'] for row in rows) / 1024
    print('MERGE / CP RATIO (worst)   %6.2f   (goal <= 3)    %s' % (worst, 'OK' if worst <= 3 else 'MISSED'))
    print('LARGEST / SMALLEST TOTAL   %6.2f   (goal <= 1.5)  %s' % (spread, 'OK' if spread <= 1.5 else 'MISSED'))
    print('PEAK RSS                   %6.1f MiB (goal <= 100) %s' % (peak, 'OK' if peak <= 100 else 'MISSED'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
