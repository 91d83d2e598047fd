# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A simulated pool in this process, and a logged-in connection to it, for the operations' unit tests.

The operations talk to it over real HTTP with the real XenAPI client, as they talk to a pool.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection

TESTS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..'))
USER, PASSWORD = 'root', 'secret'


@contextlib.contextmanager
def running_pool(config: str):
    """Start the simulator on ``config`` (YAML text); yields its RunningSimulator."""
    # ansible-test units does not put tests/ on sys.path; the simulator lives there.
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    from xapisim.testing import start_in_process  # pylint: disable=import-outside-toplevel
    with start_in_process(config) as sim:
        yield sim


def connect(sim) -> XapiConnection:
    """A connection to the simulator, to use as a context manager (it logs in on entry)."""
    return XapiConnection(sim.url, username=USER, password=PASSWORD, timeout=30)
