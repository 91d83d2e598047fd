# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Simulator throughput: /export_raw_vdi (vhd and raw) and /import_raw_vdi
on page-cached data, against a raw read of the same bytes from page cache.

    .venv/bin/python benchmarks/bench_simulator.py [--size-gib 2] [--https]
"""

import argparse
import glob
import http.client
import os
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))

from xapisim.testing import start_server  # noqa: E402  pylint: disable=wrong-import-position

MIB = 1 << 20
CHUNK = 4 * MIB


def _conn(running):
    url = urllib.parse.urlsplit(running.url)
    if url.scheme == 'https':
        return http.client.HTTPSConnection(url.hostname, url.port, context=running.ssl_context(), timeout=600)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=600)


def _export(running, session, vdi, fmt, sink=None):
    conn = _conn(running)
    query = urllib.parse.urlencode({'session_id': session, 'vdi': vdi, 'format': fmt})
    conn.request('GET', '/export_raw_vdi?' + query)
    resp = conn.getresponse()
    buf = memoryview(bytearray(CHUNK))
    total = 0
    while True:
        got = resp.readinto(buf)
        if not got:
            break
        if sink is not None:
            sink.write(buf[:got])
        total += got
    conn.close()
    return total


def _import(running, session, vdi, path):
    conn = _conn(running)
    conn.putrequest('PUT', '/import_raw_vdi?' + urllib.parse.urlencode({'session_id': session, 'vdi': vdi,
                                                                        'format': 'vhd'}))
    conn.putheader('Content-Length', str(os.path.getsize(path)))
    conn.endheaders()
    with open(path, 'rb') as handle:
        conn.sock.sendfile(handle)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return os.path.getsize(path)


def _page_cache_read(paths):
    buf = memoryview(bytearray(CHUNK))
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                got = os.readv(fd, [buf])
                if not got:
                    break
                total += got
        finally:
            os.close(fd)
    return total


def _rate(nbytes, seconds):
    return nbytes / seconds / 1e6


def main():
    """Run the benchmark and print MB/s figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--size-gib', type=float, default=2.0, help='data written into the disk')
    parser.add_argument('--https', action='store_true', help='also measure over TLS')
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args()
    data_bytes = int(args.size_gib * 1024) * MIB
    config = {'srs': [{'name': 'bench', 'size': '%dGiB' % (4 * args.size_gib + 8), 'default': True}],
              'vms': [{'name': 'bench', 'disks': [{'name': 'bench-disk', 'size': '%dGiB' % (args.size_gib + 1)}]}]}
    with tempfile.TemporaryDirectory(prefix='bench-xapisim-') as tmp:
        data_dir = os.path.join(tmp, 'data')
        modes = [False, True] if args.https else [False]
        for https in modes:
            with start_server(config, https=https, data_dir=data_dir) as running:
                ctl = running.control
                session = running.xenapi_session()
                session.login_with_password('root', 'secret', '1.0', 'bench')
                api = session.xenapi
                vdi = api.VDI.get_by_name_label('bench-disk')[0]
                block = os.urandom(64 * MIB)
                start = time.time()
                for offset in range(0, data_bytes, len(block)):
                    ctl.write_vdi(vdi, offset, data=block)
                label = 'https' if https else 'http'
                print('[%s] wrote %d MiB of guest data in %.1f s' % (label, data_bytes // MIB, time.time() - start))
                paths = glob.glob(os.path.join(data_dir, 'sr-*.blocks'))
                _page_cache_read(paths)
                best = {}
                for _round in range(args.repeat):
                    start = time.time()
                    nbytes = _page_cache_read(paths)
                    best['page cache read'] = max(best.get('page cache read', 0), _rate(nbytes, time.time() - start))
                    for fmt in ('vhd', 'raw'):
                        start = time.time()
                        nbytes = _export(running, session.handle, vdi, fmt)
                        key = 'export %s' % fmt
                        best[key] = max(best.get(key, 0), _rate(nbytes, time.time() - start))
                stream = os.path.join(tmp, 'stream.vhd')
                with open(stream, 'wb') as sink:
                    _export(running, session.handle, vdi, 'vhd', sink)
                sr = api.VDI.get_SR(vdi)
                for _round in range(args.repeat):
                    target = api.VDI.create({'name_label': 'target', 'name_description': '', 'SR': sr,
                                             'virtual_size': api.VDI.get_virtual_size(vdi), 'type': 'user',
                                             'sharable': False, 'read_only': False, 'other_config': {}})
                    start = time.time()
                    nbytes = _import(running, session.handle, target, stream)
                    best['import vhd'] = max(best.get('import vhd', 0), _rate(nbytes, time.time() - start))
                    api.VDI.destroy(target)
                os.unlink(stream)
                session.xenapi.session.logout()
                base = best['page cache read']
                for key in ('page cache read', 'export vhd', 'export raw', 'import vhd'):
                    print('[%s] %-16s %8.0f MB/s  ratio %.2f' % ('https' if https else 'http', key, best[key],
                                                                 best[key] / base))
    return 0


if __name__ == '__main__':
    sys.exit(main())
