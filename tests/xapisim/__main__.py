# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``python -m xapisim --config pool.yml --port 0 [--http] [--data-dir DIR] [--pid-file F]``"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from . import config as configmod
from .api import Simulator
from .server import SimServer


def main(argv=None):
    """Run the simulator until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog='xapisim', description='XAPI simulator for tests')
    parser.add_argument('--config', help='pool description (YAML); defaults to a small empty pool')
    parser.add_argument('--port', type=int, default=0, help='coordinator port (0 = pick a free one)')
    parser.add_argument('--slave-port', type=int, default=0,
                        help='port of the second pool member: HOST_IS_SLAVE to logins, disk handlers for its SRs '
                             '(0 = free one, -1 = none)')
    parser.add_argument('--http', action='store_true', help='plain HTTP instead of HTTPS')
    parser.add_argument('--data-dir', help='where VDI data lives (default: a temporary directory)')
    parser.add_argument('--cert-dir', help='where to keep/generate the CA and server certificate')
    parser.add_argument('--pid-file', help='write the process id here')
    parser.add_argument('--verbose', action='store_true', help='log every HTTP request on stderr')
    parser.add_argument('--parent-pid', type=int,
                        help='stop when this process is gone (a simulator dies with the test that started it, however that test ends)')
    args = parser.parse_args(argv)

    sim = Simulator(args.data_dir)
    text = None
    if args.config:
        with open(args.config, encoding='utf-8') as handle:
            text = handle.read()
    configmod.build(sim, configmod.load(text))
    server = SimServer(sim, port=args.port, https=not args.http,
                       slave_port=None if args.slave_port < 0 else args.slave_port,
                       cert_dir=args.cert_dir, verbose=args.verbose)
    server.start()
    if args.pid_file:
        with open(args.pid_file, 'w', encoding='utf-8') as handle:
            handle.write('%d\n' % os.getpid())
    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if server.ca_path:
        print('XAPISIM CA %s' % server.ca_path)
    if server.ca_bundle_path:
        print('XAPISIM BUNDLE %s' % server.ca_bundle_path)
    if server.slave_url:
        print('XAPISIM SLAVE %s' % server.slave_url)
    print('XAPISIM READY %s' % server.url, flush=True)
    while not stop.wait(0.5):
        # A parent killed outright never sends SIGTERM: its death re-parents us, and we stop too.
        if args.parent_pid and os.getppid() != args.parent_pid:
            print('XAPISIM PARENT %d GONE' % args.parent_pid, flush=True)
            break
    server.stop()
    sim.close()
    if args.pid_file:
        try:
            os.unlink(args.pid_file)
        except OSError:
            pass
    print('XAPISIM STOPPED', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
