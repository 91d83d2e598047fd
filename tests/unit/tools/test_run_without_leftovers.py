# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""tools/run_without_leftovers.py, the check that `make test` leaves no process running.

Each case runs the tool on a small shell command, as the Makefile does, and checks its exit status,
what it reports, and that the process it reported is really gone afterwards.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

TOOL = pathlib.Path(__file__).resolve().parents[3] / 'tools' / 'run_without_leftovers.py'


def run_tool(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), '--', 'bash', '-c', script],
                          capture_output=True, text=True, timeout=60, check=False)


def reported_pids(stderr: str) -> list[int]:
    return [int(pid) for pid in re.findall(r'^  pid (\d+): ', stderr, re.MULTILINE)]


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_clean_command_keeps_its_status():
    assert run_tool('exit 0').returncode == 0
    failed = run_tool('exit 7')
    assert failed.returncode == 7
    assert failed.stderr == ''


def test_an_orphan_fails_the_run_and_is_ended():
    # The subshell exits at once, so its sleep is orphaned (re-parented), as a leaked simulator would be.
    result = run_tool('(sleep 600 &); exit 0')
    assert result.returncode == 3
    assert 'processes left running by `bash -c (sleep 600 &); exit 0` (now ended):' in result.stderr
    pids = reported_pids(result.stderr)
    assert len(pids) == 1 and 'sleep 600' in result.stderr
    assert not is_running(pids[0])


def test_a_process_in_a_session_of_its_own_is_caught_too():
    # start_new_session / setsid moves it out of the run's session: the subreaper still gets it.
    result = run_tool('setsid sleep 600 & exit 0')
    assert result.returncode == 3
    pids = reported_pids(result.stderr)
    assert len(pids) == 1
    assert not is_running(pids[0])


def test_a_failing_command_keeps_its_own_status_with_leftovers():
    result = run_tool('(sleep 600 &); exit 5')
    assert result.returncode == 5
    assert len(reported_pids(result.stderr)) == 1


def test_a_process_that_ignores_sigterm_is_killed():
    result = run_tool("(trap '' TERM; exec sleep 600) & exit 0")
    assert result.returncode == 3
    pids = reported_pids(result.stderr)
    assert len(pids) == 1
    assert not is_running(pids[0])
