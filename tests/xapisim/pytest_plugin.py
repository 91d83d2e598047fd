# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ready-made pytest fixtures for other suites.

In a conftest.py (with ``tests/`` on sys.path)::

    pytest_plugins = ['xapisim.pytest_plugin']

Fixtures: ``xapisim_server`` (session scope, HTTPS subprocess with the
example pool), ``xapisim`` (the same, reset to the example pool before the
test) and ``xapisim_session`` (a logged-in XenAPI session, logged out after).
Override ``xapisim_config`` to use another pool description.
"""

import pytest

from .testing import EXAMPLE_CONFIG, start_server


@pytest.fixture(scope='session')
def xapisim_config():
    """Pool description used by the fixtures (path, YAML text or dict)."""
    with open(EXAMPLE_CONFIG, encoding='utf-8') as handle:
        return handle.read()


@pytest.fixture(scope='session')
def xapisim_server(xapisim_config):  # pylint: disable=redefined-outer-name
    """A real HTTPS simulator process for the whole session."""
    with start_server(xapisim_config, https=True) as running:
        yield running


@pytest.fixture
def xapisim(xapisim_server, xapisim_config):  # pylint: disable=redefined-outer-name
    """The session's simulator, reset to ``xapisim_config``."""
    xapisim_server.control.load_config(xapisim_config)
    return xapisim_server


@pytest.fixture
def xapisim_session(xapisim):  # pylint: disable=redefined-outer-name
    """A logged-in ``XenAPI.Session`` (root/secret), logged out afterwards."""
    session = xapisim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'xapisim-pytest')
    yield session
    try:
        session.xenapi.session.logout()
    except Exception:  # pylint: disable=broad-except
        pass
