# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures: one real simulator process per worker (HTTPS and HTTP), the pool
reset to the example config before each test, logged-in XenAPI sessions."""

import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from xapisim.testing import EXAMPLE_CONFIG, start_server  # noqa: E402  pylint: disable=wrong-import-position

with open(EXAMPLE_CONFIG, encoding='utf-8') as _handle:
    EXAMPLE_TEXT = _handle.read()


@pytest.fixture(scope='session')
def server():
    """A real HTTPS simulator subprocess."""
    with start_server(EXAMPLE_CONFIG, https=True) as running:
        yield running


@pytest.fixture(scope='session')
def http_server():
    """A real plain-HTTP simulator subprocess."""
    with start_server(EXAMPLE_CONFIG, https=False) as running:
        yield running


@pytest.fixture
def sim(server):
    """The HTTPS simulator, reset to the example pool."""
    server.control.load_config(EXAMPLE_TEXT)
    return server


@pytest.fixture
def hsim(http_server):
    """The HTTP simulator, reset to the example pool."""
    http_server.control.load_config(EXAMPLE_TEXT)
    return http_server


def _login(running):
    session = running.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'xapisim-tests')
    return session


@pytest.fixture
def xapi(sim):
    """A logged-in XenAPI session over verified HTTPS (``.xenapi`` proxy)."""
    session = _login(sim)
    yield session
    try:
        session.xenapi.session.logout()
    except Exception:  # pylint: disable=broad-except
        pass


@pytest.fixture
def hxapi(hsim):
    """A logged-in XenAPI session over plain HTTP."""
    session = _login(hsim)
    yield session
    try:
        session.xenapi.session.logout()
    except Exception:  # pylint: disable=broad-except
        pass
