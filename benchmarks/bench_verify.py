# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``backup_info verify`` throughput against the physical limit of this machine, and its peak memory.

    python benchmarks/bench_verify.py [--full-gib 2 --deltas 3 --delta-mib 128 --workdir DIR]

A repository is written with the collection's own writer (block checksum files included): one VM
whose full holds ``--full-gib`` of data, then ``--deltas`` deltas of ``--delta-mib`` each.  Measured
in the same run, with the page cache emptied of the repository's files before each read
(``posix_fadvise(DONTNEED)`` on every file after fsync, which evicts the clean pages of those files
without root and leaves other work's cache alone; ``--drop-caches`` empties the whole cache instead):

- (a) the disk's sequential read rate of the same files: the faster of ``dd bs=8M`` and Python
  ``readinto`` of 8 MiB (the faster of all is the limit);
- (b) the hash rate of every core: the checksum files' hash (BLAKE3, or SHA-256 without the blake3
  package) of block-sized spans of an in-memory buffer on one thread
  per core (``min(cores, MAX_HASH_THREADS)``);
- (c) ``describe_repository(verify=True)`` (what ``backup_info verify`` runs) in a child process,
  whose peak RSS is read from its rusage.

Each is measured ``--rounds`` times, interleaved, and the best of each kept (the machine may be shared).
It prints MB/s of each, the ratio (c) / min(a, b) (goal >= 0.8) and the peak RSS (goal <= 100 MiB).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COLLECTIONS = os.path.dirname(os.path.dirname(os.path.dirname(REPO)))  # .../ansible_collections/xapi/delta_backup -> its root
sys.path.insert(0, COLLECTIONS)

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import HASH_NAME, MAX_HASH_THREADS, block_digest  # noqa: E402
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import BLOCK, RepoBuilder  # noqa: E402

MIB = 1024 ** 2
GIB = 1024 ** 3
READ_CHUNK = 8 * MIB

CHILD = r'''
import json, sys, time
sys.path.insert(0, sys.argv[2])
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.catalog import describe_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
started = time.perf_counter()
result = describe_repository(open_repository(sys.argv[1]), verify=True)
elapsed = time.perf_counter() - started
print(json.dumps({'seconds': elapsed, 'files': result['files_verified'], 'problems': result['problems']}))
'''


def build(root: str, full_gib: float, deltas: int, delta_mib: int) -> None:
    blocks = int(full_gib * GIB) // BLOCK
    builder = RepoBuilder(root, size=blocks * BLOCK)
    builder.add_point(full=True, changed_blocks=blocks)
    for _number in range(deltas):
        builder.add_point(changed_blocks=max(1, delta_mib * MIB // BLOCK))


def repository_files(root: str) -> list:
    found = []
    for folder, _dirs, names in os.walk(os.path.join(root, 'xo-vm-backups')):
        found.extend(os.path.join(folder, name) for name in sorted(names))
    return sorted(found)


def evict(files: list, drop_caches: bool = False) -> str:
    """Empty the page cache of these files; returns how (the whole cache only when asked: other work on the machine keeps its own)."""
    if drop_caches:
        try:
            os.sync()
            with open('/proc/sys/vm/drop_caches', 'w') as handle:
                handle.write('3\n')
            return 'drop_caches'
        except OSError:
            pass
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return 'posix_fadvise(DONTNEED)'


def read_python(files: list) -> float:
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    started = time.perf_counter()
    for path in files:
        with open(path, 'rb', buffering=0) as handle:
            while handle.readinto(view):
                pass
    return time.perf_counter() - started


def read_dd(files: list) -> float | None:
    if shutil.which('dd') is None:
        return None
    started = time.perf_counter()
    for path in files:
        subprocess.run(['dd', 'if=%s' % path, 'of=/dev/null', 'bs=8M', 'status=none'], check=True)
    return time.perf_counter() - started


def hash_rate(total: int, threads: int) -> float:
    """Bytes per second of the checksum files' hash (HASH_NAME) over block-sized spans of memory, on ``threads`` threads."""
    span = BLOCK + 512
    data = os.urandom(span)
    count = max(threads, total // span)

    def run(number):
        for _index in range(number):
            block_digest(data)

    shares = [count // threads + (1 if worker < count % threads else 0) for worker in range(threads)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(run, shares))
    return count * span / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--full-gib', type=float, default=2.0)
    parser.add_argument('--deltas', type=int, default=3)
    parser.add_argument('--delta-mib', type=int, default=128)
    parser.add_argument('--rounds', type=int, default=3, help='measurements of each, interleaved; the best of each is kept')
    parser.add_argument('--drop-caches', action='store_true', help='empty the whole page cache (root) instead of only these files')
    parser.add_argument('--workdir', help='where to write the repository (default: a temporary folder, removed)')
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix='bench-verify-')
    root = os.path.join(workdir, 'repo')
    try:
        began = time.perf_counter()
        build(root, args.full_gib, args.deltas, args.delta_mib)
        files = repository_files(root)
        total = sum(os.path.getsize(path) for path in files)
        print('repository: %d files, %.0f MiB (written in %.1f s)' % (len(files), total / MIB, time.perf_counter() - began))
        threads = min(os.cpu_count() or 1, MAX_HASH_THREADS)

        reads, verifies, hashes = [], [], []
        how = evict(files, args.drop_caches)
        rss = 0.0
        for _round in range(args.rounds):  # interleaved, best of each: the machine is shared, its load comes and goes
            evict(files, args.drop_caches)
            reads.append(('python readinto 8 MiB', read_python(files)))
            evict(files, args.drop_caches)
            dd = read_dd(files)
            if dd is not None:
                reads.append(('dd bs=8M', dd))
            evict(files, args.drop_caches)
            child = subprocess.run([sys.executable, '-c', CHILD, root, COLLECTIONS], capture_output=True, text=True, check=True)
            verifies.append(json.loads(child.stdout.strip().splitlines()[-1]))
            rss = max(rss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)  # KiB on Linux; dd's is far smaller
            hashes.append(hash_rate(min(total, 2 * GIB), threads))
        verified = min(verifies, key=lambda item: item['seconds'])
        best_name, best_seconds = min(reads, key=lambda item: item[1])
        read_rate = total / best_seconds
        hashed = max(hashes)
        verify_rate = total / verified['seconds']
        limit = min(read_rate, hashed)
        print('page cache emptied by: %s' % how)
        for name, seconds in reads:
            print('  read %-32s %8.1f MB/s' % (name, total / seconds / 1e6))
        verify_rounds = ', '.join('%.0f' % (total / item['seconds'] / 1e6) for item in verifies)
        print('  verify rounds: %s MB/s; hash rounds: %s MB/s' % (verify_rounds, ', '.join('%.0f' % (rate / 1e6) for rate in hashes)))
        print('(a) sequential read (fastest: %s): %8.1f MB/s' % (best_name, read_rate / 1e6))
        print('(b) %-6s on %d thread(s):          %8.1f MB/s' % (HASH_NAME, threads, hashed / 1e6))
        print('(c) backup_info verify:              %8.1f MB/s (%.2f s, %d files, %d problems)'
              % (verify_rate / 1e6, verified['seconds'], verified['files'], len(verified['problems'])))
        print('limit = %s; ratio (c) / limit = %.2f (goal >= 0.8)' % ('read' if read_rate <= hashed else 'hash', verify_rate / limit))
        print('peak RSS of the verification: %.1f MiB (goal <= 100)' % rss)
        problems = [problem for item in verifies for problem in item['problems']]
        if problems:
            print('problems: %s' % problems[:5])
            return 1
        return 0
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
