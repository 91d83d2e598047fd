# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures: one simulator per test module (a fresh pool per test) and an ansible runner."""

from __future__ import annotations

import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (TESTS_DIR, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

from xapisim.testing import EXAMPLE_CONFIG, start_server  # noqa: E402  pylint: disable=wrong-import-position
from harness import AnsibleRunner  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope='module')
def simulator():
    with start_server(https=True) as sim:
        yield sim


@pytest.fixture
def pool(simulator):
    """The example pool, reset to its initial state for this test."""
    with open(EXAMPLE_CONFIG, encoding='utf-8') as config:
        simulator.control.load_config(config.read())
    yield simulator
    # Every module must log out whatever happened: no session may be left open.
    assert simulator.control.session_count() == 0, simulator.control.sessions()


@pytest.fixture
def ansible(pool, tmp_path):
    return AnsibleRunner(pool, str(tmp_path))


@pytest.fixture
def app(ansible, pool, tmp_path):
    """The small export pool (tests/integration/lifecycle.py) and one empty repository."""
    from lifecycle import load_app_pool  # pylint: disable=import-outside-toplevel
    return load_app_pool(ansible, pool, tmp_path)
