# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Fixtures of the XAPI layer's tests: a test PKI, ``MiniXapi`` over HTTPS, and the XAPI simulator.

The helpers they use live in ``xapi_stub.py`` (importable by the test files, unlike this conftest).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._xapi.xapi_stub import PASSWORD, TESTS_DIR, serve


@pytest.fixture(scope='session')
def pki(tmp_path_factory):
    """A CA and a server certificate for localhost/127.0.0.1, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp('pki')

    def run(*args):
        subprocess.run(['openssl'] + list(args), cwd=str(folder), check=True, capture_output=True)
    run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=pool test CA')
    run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'host.key', '-out', 'host.csr', '-subj', '/CN=localhost')
    (folder / 'ext.cnf').write_text('subjectAltName=DNS:localhost,IP:127.0.0.1\n')
    run('x509', '-req', '-in', 'host.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'host.pem', '-days', '2',
        '-extfile', 'ext.cnf')
    return {'ca': str(folder / 'ca.pem'), 'cert': str(folder / 'host.pem'), 'key': str(folder / 'host.key')}


@pytest.fixture
def server_context(pki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki['cert'], pki['key'])
    return context


@pytest.fixture
def https_server(server_context):
    server = serve(server_context)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def connect(https_server, pki):
    def factory(**overrides):
        options = dict(hostname='127.0.0.1:%d' % https_server.server_address[1], username='root', password=PASSWORD, ca_path=pki['ca'], timeout=5)
        options.update(overrides)
        return XapiConnection(**options)
    return factory


@pytest.fixture(scope='session')
def simulator():
    """One simulator for the folder's test files, as when they were one file; each test restores what it changes."""
    # ansible-test units does not put tests/ on sys.path; the simulator lives there.
    if os.path.isdir(os.path.join(TESTS_DIR, 'xapisim')) and TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    testing = pytest.importorskip('xapisim.testing')
    with testing.start_server(https=True) as running:
        yield running


@pytest.fixture
def sim(simulator):
    simulator.control.clear_faults()
    yield simulator
    simulator.control.clear_faults()


@pytest.fixture
def member_pool(sim):
    """A local SR on the pool member xcp-host2 holding the disk of VM app02; the example pool afterwards."""
    testing = sys.modules['xapisim.testing']
    with open(testing.EXAMPLE_CONFIG, encoding='utf-8') as handle:
        example = handle.read()
    import yaml  # pylint: disable=import-outside-toplevel
    pool = yaml.safe_load(example)
    pool['srs'].append({'name': 'Local storage xcp-host2', 'size': '10GiB', 'host': 'xcp-host2'})
    pool['vms'].append({'name': 'app02', 'disks': [{'name': 'app02-root', 'size': '64MiB', 'sr': 'Local storage xcp-host2',
                                                    'data': [{'offset': 0, 'length': '4MiB', 'seed': 11}]}]})
    sim.control.load_config(pool)
    yield sim
    sim.control.load_config(example)
