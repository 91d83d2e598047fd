# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for test suites: start a real simulator process (or an
in-process one) and get clients for it.

    with start_server('pool.yml', https=True) as sim:
        session = sim.xenapi_session()          # XenAPI.Session, CA verified
        session.login_with_password('root', 'secret', '1.0', 'tests')
        sim.control.write_vdi('web01-disk0', 0, seed=1, length=4 << 20)
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client

import yaml

from .api import Simulator
from .config import build, load
from .control import SimulatorControl
from .server import SimServer

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'examples', 'pool.yml')


class RunningSimulator:
    """Addresses and clients of a started simulator."""

    def __init__(self, url, slave_url=None, ca_path=None, pid=None, data_dir=None, server=None, ca_bundle_path=None):
        self.url = url
        self.slave_url = slave_url
        # ca_path trusts the coordinator only; ca_bundle_path holds every host's own certificate.
        self.ca_path = ca_path
        self.ca_bundle_path = ca_bundle_path
        self.pid = pid
        self.data_dir = data_dir
        self.server = server
        self.control = SimulatorControl(url, cafile=ca_path)

    @property
    def https(self):
        """True when served over TLS."""
        return self.url.startswith('https')

    def ssl_context(self):
        """An SSL context trusting every simulated host's certificate (None for HTTP)."""
        return ssl.create_default_context(cafile=self.ca_bundle_path or self.ca_path) if self.https else None

    def transport(self):
        """An xmlrpc transport that verifies the simulator's certificate."""
        if self.https:
            return xmlrpc.client.SafeTransport(context=self.ssl_context())
        return xmlrpc.client.Transport()

    def env(self, user='root', password='secret'):
        """Environment variables in the modules' fallback names (see toolchain.md section 8)."""
        out = {'XENSERVER_HOST': self.url, 'XENSERVER_USER': user, 'XENSERVER_PASSWORD': password,
               'XENSERVER_VALIDATE_CERTS': 'true' if self.https else 'false'}
        if self.ca_path:
            out['XENSERVER_CA_PATH'] = self.ca_path
        return out

    def xenapi_session(self, url=None):
        """A ``XenAPI.Session`` (not logged in) with certificate verification."""
        import XenAPI  # pylint: disable=import-outside-toplevel,import-error
        return XenAPI.Session(url or self.url, transport=self.transport())


def _config_path(config, directory):
    if config is None:
        return EXAMPLE_CONFIG
    if isinstance(config, dict):
        path = os.path.join(directory, 'pool.yml')
        with open(path, 'w', encoding='utf-8') as handle:
            yaml.safe_dump(config, handle)
        return path
    if '\n' in str(config):
        path = os.path.join(directory, 'pool.yml')
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write(config)
        return path
    return str(config)


@contextlib.contextmanager
def start_server(config=None, https=True, data_dir=None, timeout=10.0, extra_args=()):
    """Run ``python -m xapisim`` as a subprocess; yields a RunningSimulator.

    ``config`` is a path, YAML text, a dict or None (the example pool)."""
    with tempfile.TemporaryDirectory(prefix='xapisim-run-') as tmp:
        path = _config_path(config, tmp)
        cmd = [sys.executable, '-m', 'xapisim', '--config', path, '--port', '0',
               '--data-dir', data_dir or os.path.join(tmp, 'data'), '--cert-dir', os.path.join(tmp, 'tls'),
               '--parent-pid', str(os.getpid())]
        if not https:
            cmd.append('--http')
        cmd.extend(extra_args)
        env = dict(os.environ)
        env['PYTHONPATH'] = TESTS_DIR + os.pathsep + env.get('PYTHONPATH', '')
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)  # pylint: disable=consider-using-with
        info = {}
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError('xapisim exited early with %s' % proc.wait())
                words = line.split()
                if len(words) >= 3 and words[0] == 'XAPISIM':
                    info[words[1]] = words[2]
                    if words[1] == 'READY':
                        break
            else:
                raise RuntimeError('xapisim not ready in %s s' % timeout)
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            yield RunningSimulator(info['READY'], info.get('SLAVE'), info.get('CA'), proc.pid, data_dir,
                                   ca_bundle_path=info.get('BUNDLE'))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def start_in_process(config=None, https=False, data_dir=None):
    """Run the simulator in this process (threads); yields a RunningSimulator
    whose ``server.sim`` is the live ``Simulator``."""
    sim = Simulator(data_dir)
    if config is None:
        config = EXAMPLE_CONFIG
    if isinstance(config, str) and '\n' not in config:
        with open(config, encoding='utf-8') as handle:
            config = handle.read()
    build(sim, load(config))
    server = SimServer(sim, https=https).start()
    try:
        yield RunningSimulator(server.url, server.slave_url, server.ca_path, os.getpid(), sim.data_dir, server,
                               ca_bundle_path=server.ca_bundle_path)
    finally:
        server.stop()
        sim.close()
