# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""delta_export throughput against the fastest plain download of the same export, and its peak memory.

    python benchmarks/bench_export.py [--size-gib 20 --data-gib 2 --changed-mib 512 --repositories 1 --https]

A simulator (a separate process) holds one VM with a ``--size-gib`` disk of which ``--data-gib`` are
written. For a full export and then a delta (``--changed-mib`` rewritten), the same export is fetched
by each plain client, once before and once after ours, so that all meet the same cache state:

- ``curl``: ``curl -o file``, then fsync;
- ``python``: ``http.client`` with a 2 MiB ``readinto`` buffer, ``os.write`` of each buffer, then fsync;
- ``python+writeback``: the same, handing every 32 MiB written to the disk as it goes (what our
  atomic writer does), then fsync.

The fastest single download of the three is the limit of this machine for that export (HTTP
client, copy to disk, durable), and is named. ``export_vm`` (what the delta_export module runs) runs
in a child process: identity rewrite, block checksums as the bytes pass, atomic files, sidecars,
metadata; it reports its own peak RSS. It runs twice as well (the second time into hard-linked
copies of the repositories as they were, so with the same plan), and its best run counts.

It prints MB/s of ours and of the limit, the ratio (goal >= 0.9) and the peak RSS (goal <= 100 MiB
whatever the disk size), then the machine's load and its sha256 rate on one core (ours hashes
every byte, the plain clients do not).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import resource
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
#: The plain Python client's buffer, and how often its writeback variant hands pages to the disk.
PLAIN_BUFFER = 2 * MIB
PLAIN_WRITEBACK = 32 * MIB
GOAL_RATIO = 0.9
GOAL_RSS_MIB = 100

# Runs in child processes so that the export's peak RSS is its own: first the job snapshot is taken,
# then (after the first plain downloads of the same export) it is exported.
CHILD = r'''
import json, resource, sys, time
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import manage_job_snapshots
step, url, ca, repositories, job, snapshot_uuid = sys.argv[1:7]
with XapiConnection(url, 'root', 'secret', ca_path=ca or None, validate_certs=bool(ca)) as xapi:
    if step == 'snapshot':
        taken = manage_job_snapshots(xapi, 'bench', Job(job), take=True)
        print(json.dumps({'snapshot': taken['snapshot']}))
        sys.exit(0)
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    result = export_vm(xapi, json.loads(repositories), 'bench', Job(job), snapshot_uuid=snapshot_uuid)
    elapsed, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({'mode': result['mode'], 'bytes': result['bytes_transferred'], 'seconds': elapsed,
                  'stream_seconds': sum(disk['duration'] for disk in result['disks']),
                  'base': (result['base_snapshot'] or {}).get('disks'), 'paths': [disk['path'] for disk in result['disks']],
                  'cpu': after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                  'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
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


def run_child(sim, root: str, repositories: list[str], step: str = 'export', snapshot_uuid: str = '') -> dict:
    env = dict(os.environ, PYTHONPATH=root)
    sim_cpu = process_cpu(sim.pid)
    completed = subprocess.run([sys.executable, '-c', CHILD, step, sim.url, sim.ca_path or '', json.dumps(repositories), JOB, snapshot_uuid],
                               env=env, capture_output=True, text=True, check=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result['sim_cpu'] = process_cpu(sim.pid) - sim_cpu  # includes the child's login and planning calls
    return result


def export_url(sim, session_ref: str, vdi_uuid: str, base_uuid: str | None) -> str:
    query = {'session_id': session_ref, 'vdi': vdi_uuid, 'format': 'vhd'}
    if base_uuid:
        query['base'] = base_uuid
    return '%s/export_raw_vdi?%s' % (sim.url, urllib.parse.urlencode(query))


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def curl_download(sim, url: str, target: str) -> int:
    command = ['curl', '-sS', '--fail', '-o', target, url]
    if sim.ca_path:
        command[1:1] = ['--cacert', sim.ca_path]
    subprocess.run(command, check=True)
    fsync_path(target)
    return os.path.getsize(target)


def python_download(sim, url: str, target: str, writeback: bool = False) -> int:
    """http.client into one large buffer, written with os.write, fsync at the end (optionally writeback as it goes)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == 'https':
        import ssl  # pylint: disable=import-outside-toplevel
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=ssl.create_default_context(cafile=sim.ca_path))
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port)
    connection.request('GET', '%s?%s' % (parts.path, parts.query))
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError('plain download: HTTP %s' % response.status)
    view = memoryview(bytearray(PLAIN_BUFFER))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    total = handed = dropped = 0
    try:
        while True:
            count = response.readinto(view)
            if not count:
                break
            piece = view[:count]
            while piece:
                piece = piece[os.write(fd, piece):]
            total += count
            if writeback and total - handed >= PLAIN_WRITEBACK:
                os.posix_fadvise(fd, dropped, total - dropped, os.POSIX_FADV_DONTNEED)
                dropped, handed = handed, total
        os.fsync(fd)
    finally:
        os.close(fd)
        connection.close()
    return total


PLAIN_CLIENTS = {
    'curl': curl_download,
    'python': python_download,
    'python+writeback': lambda sim, url, target: python_download(sim, url, target, writeback=True),
}


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process used so far, from /proc."""
    with open('/proc/%d/stat' % pid, encoding='ascii') as handle:
        fields = handle.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def own_cpu() -> float:
    """CPU seconds of this process and of its finished children (curl)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def plain_downloads(sim, url: str, target: str, times: dict, cpu: dict | None = None) -> int:
    """Each plain client once; ``times[client]`` collects seconds, ``cpu[client]`` (client CPU, simulator CPU).
    Returns the export's size."""
    sizes = set()
    for client, download in PLAIN_CLIENTS.items():
        started, client_cpu, sim_cpu = time.perf_counter(), own_cpu(), process_cpu(sim.pid)
        sizes.add(download(sim, url, target))
        times.setdefault(client, []).append(time.perf_counter() - started)
        if cpu is not None:
            cpu.setdefault(client, []).append((own_cpu() - client_cpu, process_cpu(sim.pid) - sim_cpu))
        os.unlink(target)
    if len(sizes) != 1:
        raise RuntimeError('the plain clients got different sizes: %s' % sorted(sizes))
    return sizes.pop()


def check_sidecars(repositories: list[str], paths: list[str]) -> None:
    """Every VHD the export wrote is in every repository with its block checksum file."""
    for repository in repositories:
        found = {os.path.relpath(os.path.join(folder, name), repository)
                 for folder, _dirs, names in os.walk(repository) for name in names if name.endswith('.vhd')}
        for path in paths:
            vhd = next((name for name in found if name.endswith(path)), None)
            assert vhd is not None, (repository, path)
            assert os.path.exists(os.path.join(repository, vhd + '.blocksums')), (repository, vhd)


def sha256_rate(total: int = 512 * MIB) -> float:
    chunk = os.urandom(MIB)
    digest = hashlib.sha256()
    started = time.perf_counter()
    for _number in range(total // MIB):
        digest.update(chunk)
    return total / (time.perf_counter() - started) / 1e6


def measure(args, workdir: str) -> list[dict]:
    root = collection_root(workdir)
    rows = []
    with start_server(pool_config(args.size_gib), https=args.https, data_dir=os.path.join(workdir, 'sr')) as sim:
        disk = sim.control.record('VDI', 'bench-disk')['uuid']
        for offset in range(0, int(args.data_gib * GIB), 256 * MIB):
            sim.control.write_vdi(disk, offset, length=256 * MIB, seed=offset // MIB)
        repositories = [os.path.join(workdir, 'repo%d' % number) for number in range(args.repositories)]
        for repository in repositories:
            os.makedirs(repository)
        session = sim.xenapi_session()
        session.xenapi.login_with_password('root', 'secret', '1.0', 'bench')
        previous_snapshot_vdi = None
        try:
            for round_name in ('full', 'delta'):
                if round_name == 'delta':
                    for offset in range(0, args.changed_mib * MIB, 64 * MIB):
                        sim.control.write_vdi(disk, offset * 3, length=64 * MIB, seed=7 + offset // MIB)
                snapshot = run_child(sim, root, repositories, 'snapshot')['snapshot']
                snapshot_vdi = snapshot['disks'][0]['vdi_uuid']
                url = export_url(sim, session._session, snapshot_vdi, previous_snapshot_vdi)
                target = os.path.join(workdir, 'plain.vhd')
                times: dict = {}
                cpu: dict = {}
                # Ours runs twice too, each after a round of plain downloads: into the repositories, then
                # into hard-linked copies of them as they were before (the same plan: a full, or a delta
                # on the same base). Each side keeps its best run.
                copies = [repository + '-again' for repository in repositories]
                for repository, copy in zip(repositories, copies, strict=True):
                    subprocess.run(['cp', '-al', repository, copy], check=True)
                size = plain_downloads(sim, url, target, times, cpu)
                ours = run_child(sim, root, repositories, 'export', snapshot['uuid'])
                assert plain_downloads(sim, url, target, times, cpu) == size == ours['bytes'], (size, ours['bytes'])
                again = run_child(sim, root, copies, 'export', snapshot['uuid'])
                for copy in copies:
                    shutil.rmtree(copy)
                for run in (ours, again):
                    base_vdi = run['base'][0]['vdi_uuid'] if run['base'] else None
                    assert base_vdi == previous_snapshot_vdi and run['bytes'] == size, (base_vdi, previous_snapshot_vdi, run['bytes'])
                check_sidecars(repositories, ours['paths'])
                best = {client: min(seconds) for client, seconds in times.items()}
                limit_client = min(best, key=best.get)
                rows.append({'round': round_name, 'mode': ours['mode'], 'bytes': size,
                             'ours': size / min(ours['seconds'], again['seconds']) / 1e6,
                             'ours_stream': size / min(ours['stream_seconds'], again['stream_seconds']) / 1e6,
                             'ours_runs': [size / run['seconds'] / 1e6 for run in (ours, again)],
                             'limit': size / best[limit_client] / 1e6, 'limit_client': limit_client,
                             'clients': {client: size / seconds / 1e6 for client, seconds in best.items()},
                             'peak_rss_mib': max(ours['peak_rss_mib'], again['peak_rss_mib']),
                             # CPU seconds per GB written: the client's, then the simulator's (same cores)
                             'cpu_per_gb': dict({client: tuple(sum(run[part] for run in runs) / len(runs) / (size / 1e9) for part in (0, 1))
                                                 for client, runs in cpu.items()},
                                                ours=tuple(min(run[part] for run in (ours, again)) / (size / 1e9) for part in ('cpu', 'sim_cpu')))})
                previous_snapshot_vdi = snapshot_vdi
        finally:
            session.xenapi.session.logout()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--size-gib', type=float, default=20.0)
    parser.add_argument('--data-gib', type=float, default=2.0)
    parser.add_argument('--changed-mib', type=int, default=512)
    parser.add_argument('--repositories', type=int, default=1, help='export to this many repositories at once (the limit is still one download)')
    parser.add_argument('--https', action='store_true', help='TLS as on a real pool (the default is plain HTTP, to measure our code)')
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix='bench-export-')
    try:
        rows = measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()[0]
    print('delta_export vs the fastest plain download of the same export, written and fsynced')
    print('(%s, %g GiB disk, %g GiB written, %d MiB changed, %d repositor%s)'
          % ('HTTPS' if args.https else 'HTTP', args.size_gib, args.data_gib, args.changed_mib, args.repositories,
             'y' if args.repositories == 1 else 'ies'))
    print('%-6s %12s %10s %10s  %-17s %6s %9s  %s' % ('round', 'bytes', 'ours MB/s', 'limit MB/s', 'limit client', 'ratio', 'RSS MiB', 'verdict'))
    passed = True
    for row in rows:
        ratio = row['ours'] / row['limit']
        ok = ratio >= GOAL_RATIO and row['peak_rss_mib'] <= GOAL_RSS_MIB
        passed = passed and ok
        print('%-6s %12d %10.0f %10.0f  %-17s %6.2f %9.1f  %s'
              % (row['round'], row['bytes'], row['ours'], row['limit'], row['limit_client'], ratio, row['peak_rss_mib'],
                 'ok' if ok else 'BELOW GOAL'))
    for row in rows:
        print('  %s, the disk stream alone (open to commit, without planning and metadata): %.0f MB/s, ratio %.2f'
              % (row['round'], row['ours_stream'], row['ours_stream'] / row['limit']))
        write_then_fsync = max(rate for client, rate in row['clients'].items() if client != 'python+writeback')
        print('  %s, against the clients that write then fsync (curl, python: %.0f MB/s): ratio %.2f'
              % (row['round'], write_then_fsync, row['ours'] / write_then_fsync))
        print('  %s, plain clients (best of 2, MB/s): %s; ours (2 runs, MB/s): %s'
              % (row['round'], ', '.join('%s %.0f' % item for item in row['clients'].items()), ', '.join('%.0f' % rate for rate in row['ours_runs'])))
    for row in rows:
        print('  %s, CPU seconds per GB (client + simulator, on the same %d cores): %s' % (
            row['round'], os.cpu_count() or 1, ', '.join('%s %.2f + %.2f' % (client, mine, sim) for client, (mine, sim) in row['cpu_per_gb'].items())))
    print('goals: ratio >= %.1f, peak RSS <= %d MiB' % (GOAL_RATIO, GOAL_RSS_MIB))
    # Context: ours also checksums every byte (the plain clients do not), and the simulator serving
    # the export runs on the same cores.
    print('machine: %d cores, load average %.2f before, %.2f after; sha256 on one core %.0f MB/s'
          % (os.cpu_count() or 1, load_before, load_after, sha256_rate()))
    print('RESULT: %s' % ('PASS' if passed else 'FAIL'))
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main())
