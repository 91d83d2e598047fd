# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""delta_export throughput against a plain download of the same export, and its peak memory.

    python benchmarks/bench_export.py [--size-gib 20 --data-gib 2 --changed-mib 512 --https]

A simulator (a separate process) holds one VM with a ``--size-gib`` disk of which ``--data-gib`` are
written. For a full export and then a delta (``--changed-mib`` rewritten), the same export is fetched
twice, measured in the same run:

- by curl, writing the stream to a file on the same file system, then fsync, once before and once
  after ours: the faster of the two is the physical limit of this machine for that export (HTTP
  client, copy to disk);
- by ``export_vm`` (what the delta_export module runs) in a child process: identity rewrite, sha256
  as written, atomic file, metadata; its peak RSS is read from the child's rusage.

It prints MB/s of both and the ratio (goal >= 0.9), and the peak RSS (goal <= 100 MiB whatever the
disk size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))

from xapisim.testing import start_server  # noqa: E402  pylint: disable=wrong-import-position

GIB = 1024 ** 3
MIB = 1024 ** 2
JOB = 'bench-export'

# Runs in child processes so that the export's peak RSS is its own: first the job snapshot is taken,
# then (after curl's first download of the same export) it is exported.
CHILD = r'''
import json, sys, time
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import manage_job_snapshots
step, url, ca, repository, job, snapshot_uuid = sys.argv[1:7]
with XapiConnection(url, 'root', 'secret', ca_path=ca or None, validate_certs=bool(ca)) as xapi:
    if step == 'snapshot':
        taken = manage_job_snapshots(xapi, 'bench', job_id_for(job), job, take=True)
        print(json.dumps({'snapshot': taken['snapshot']}))
        sys.exit(0)
    started = time.perf_counter()
    result = export_vm(xapi, [repository], 'bench', job, job_id_for(job), snapshot_uuid=snapshot_uuid)
    elapsed = time.perf_counter() - started
print(json.dumps({'mode': result['mode'], 'bytes': result['bytes_transferred'], 'seconds': elapsed,
                  'base': (result['base_snapshot'] or {}).get('disks')}))
'''


def collection_root(workdir: str) -> str:
    """A folder holding ansible_collections/xapi/delta_backup -> this checkout."""
    root = os.path.join(workdir, 'collections')
    os.makedirs(os.path.join(root, 'ansible_collections', 'xapi'))
    os.symlink(REPO, os.path.join(root, 'ansible_collections', 'xapi', 'delta_backup'))
    return root


def pool_config(size_gib: float) -> str:
    return ('pool: {name: bench}\nhosts: [{name: h1, address: 127.0.0.1}]\nusers: [{name: root, password: secret}]\n'
            'srs: [{name: Local storage, size: 4TiB, default: true}]\nvms:\n  - name: bench\n    power_state: Running\n'
            '    disks:\n      - {name: bench-disk, size: %dMiB}\n' % int(size_gib * 1024))


def run_child(sim, root: str, repository: str, step: str = 'export', snapshot_uuid: str = '') -> dict:
    env = dict(os.environ, PYTHONPATH=root)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    completed = subprocess.run([sys.executable, '-c', CHILD, step, sim.url, sim.ca_path or '', repository, JOB, snapshot_uuid], env=env,
                               capture_output=True, text=True, check=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    # ru_maxrss of children is the largest of any child so far: report it only if this child raised it.
    result['peak_rss_mib'] = peak_kib / 1024 if peak_kib > before else None
    return result


def curl_seconds(sim, session_ref: str, vdi_uuid: str, base_uuid: str | None, target: str) -> tuple[float, int]:
    """Download the same export with curl into a file and fsync it."""
    query = {'session_id': session_ref, 'vdi': vdi_uuid, 'format': 'vhd'}
    if base_uuid:
        query['base'] = base_uuid
    command = ['curl', '-sS', '--fail', '-o', target, '%s/export_raw_vdi?%s' % (sim.url, urllib.parse.urlencode(query))]
    if sim.ca_path:
        command[1:1] = ['--cacert', sim.ca_path]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    fd = os.open(target, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    elapsed = time.perf_counter() - started
    size = os.path.getsize(target)
    os.unlink(target)
    return elapsed, size


def sha256_rate(total: int = 512 * MIB) -> float:
    chunk = os.urandom(MIB)
    digest = hashlib.sha256()
    started = time.perf_counter()
    for _number in range(total // MIB):
        digest.update(chunk)
    return total / (time.perf_counter() - started) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--size-gib', type=float, default=20.0)
    parser.add_argument('--data-gib', type=float, default=2.0)
    parser.add_argument('--changed-mib', type=int, default=512)
    parser.add_argument('--https', action='store_true', help='TLS as on a real pool (the default is plain HTTP, to measure our code)')
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix='bench-export-')
    try:
        root = collection_root(workdir)
        with start_server(pool_config(args.size_gib), https=args.https, data_dir=os.path.join(workdir, 'sr')) as sim:
            disk = sim.control.record('VDI', 'bench-disk')['uuid']
            for offset in range(0, int(args.data_gib * GIB), 256 * MIB):
                sim.control.write_vdi(disk, offset, length=256 * MIB, seed=offset // MIB)
            repository = os.path.join(workdir, 'repo')
            os.makedirs(repository)
            session = sim.xenapi_session()
            session.xenapi.login_with_password('root', 'secret', '1.0', 'bench')
            rows = []
            previous_snapshot_vdi = None
            try:
                for round_name in ('full', 'delta'):
                    if round_name == 'delta':
                        for offset in range(0, args.changed_mib * MIB, 64 * MIB):
                            sim.control.write_vdi(disk, offset * 3, length=64 * MIB, seed=7 + offset // MIB)
                    snapshot = run_child(sim, root, repository, 'snapshot')['snapshot']
                    snapshot_vdi = snapshot['disks'][0]['vdi_uuid']
                    # curl before and after ours, so that both meet the same cache state; the faster
                    # of the two is the limit (the harder comparison for us).
                    curl_path = os.path.join(workdir, 'curl.vhd')
                    first = curl_seconds(sim, session._session, snapshot_vdi, previous_snapshot_vdi, curl_path)
                    ours = run_child(sim, root, repository, 'export', snapshot['uuid'])
                    base_vdi = ours['base'][0]['vdi_uuid'] if ours['base'] else None
                    assert base_vdi == previous_snapshot_vdi, (base_vdi, previous_snapshot_vdi)
                    second = curl_seconds(sim, session._session, snapshot_vdi, base_vdi, curl_path)
                    assert first[1] == second[1] == ours['bytes'], (first, second, ours['bytes'])
                    rows.append((round_name, ours, min(first[0], second[0]), second[1]))
                    previous_snapshot_vdi = snapshot_vdi
            finally:
                session.xenapi.session.logout()
        print('delta_export vs curl of the same export (%s, %g GiB disk, %g GiB written)'
              % ('HTTPS' if args.https else 'HTTP', args.size_gib, args.data_gib))
        print('%-6s %-6s %12s %12s %12s %8s %14s' % ('round', 'mode', 'bytes', 'ours MB/s', 'curl MB/s', 'ratio', 'peak RSS MiB'))
        for round_name, ours, seconds, size in rows:
            ours_rate = ours['bytes'] / ours['seconds'] / 1e6
            curl_rate = size / seconds / 1e6
            rss = '%.1f' % ours['peak_rss_mib'] if ours['peak_rss_mib'] else '(<= above)'
            print('%-6s %-6s %12d %12.0f %12.0f %8.2f %14s'
                  % (round_name, ours['mode'], ours['bytes'], ours_rate, curl_rate, ours_rate / curl_rate, rss))
        print('goals: ratio >= 0.9, peak RSS <= 100 MiB')
        # Context: ours also hashes every byte (curl does not), and the simulator serving the export
        # runs on the same cores.
        print('sha256 on this machine: %.0f MB/s on one core; cores: %d' % (sha256_rate(), os.cpu_count() or 1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
