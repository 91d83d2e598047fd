# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a command and fail if any process it started is still running when it ends.

This process becomes a child subreaper (Linux prctl PR_SET_CHILD_SUBREAPER): a descendant whose parent
dies is re-parented here instead of to pid 1, even when it started a session of its own (setsid,
``start_new_session``). So once the command has exited, every process still running that it started
is a child of this one. Those are listed with their command lines, then ended (SIGTERM, then SIGKILL),
and the exit status is non-zero.

    python tools/run_without_leftovers.py -- make --keep-going sanity units
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
# Exit status when the command passed but left processes behind.
LEFTOVERS_STATUS = 3
TERM_GRACE_SECONDS = 5.0


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_CHILD_SUBREAPER) failed: this check needs Linux 3.4 or newer')


def descendants_of(root: int) -> list[int]:
    """Pids of every process below ``root``, read from /proc (no ps needed)."""
    parents = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry, encoding='utf-8', errors='replace') as stat:
                # The command name (2nd field) is in parentheses and may hold spaces: the ppid follows the last ')'.
                fields = stat.read().rsplit(')', 1)[1].split()
        except OSError:
            continue  # it exited while we looked
        parents[int(entry)] = int(fields[1])
    found: list[int] = []
    level = [root]
    while level:
        level = [pid for pid, parent in parents.items() if parent in level]
        found.extend(level)
    return sorted(found)


def command_line(pid: int) -> str:
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as cmdline:
            return cmdline.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip() or '?'
    except OSError:
        return '(exited)'


def reap_exited() -> None:
    """Collect re-parented children that have exited, so that they do not count as left over."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_descendants() -> None:
    """End every process still below this one: SIGTERM, a grace period, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in descendants_of(os.getpid()):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + TERM_GRACE_SECONDS
        while time.monotonic() < deadline:
            reap_exited()
            if not descendants_of(os.getpid()):
                return
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    if argv[:1] == ['--']:
        argv = argv[1:]
    if not argv:
        print('usage: run_without_leftovers.py -- COMMAND [ARG...]', file=sys.stderr)
        return 2
    become_subreaper()
    command = os.fork()
    if command == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print('cannot run %s: %s' % (argv[0], exc), file=sys.stderr)
        os._exit(127)
    # Ctrl-C reaches the whole foreground group anyway; a SIGTERM to this process is passed on.
    signal.signal(signal.SIGTERM, lambda signum, _frame: os.kill(command, signum))
    while True:
        pid, status = os.waitpid(-1, 0)  # also reaps re-parented orphans as they exit
        if pid == command:
            break
    code = os.waitstatus_to_exitcode(status)
    reap_exited()
    leftovers = descendants_of(os.getpid())
    if not leftovers:
        return code if code >= 0 else 128 - code
    print('\nprocesses left running by `%s` (now ended):' % ' '.join(argv), file=sys.stderr)
    for pid in leftovers:
        print('  pid %d: %s' % (pid, command_line(pid)), file=sys.stderr)
    end_descendants()
    return code if code > 0 else (128 - code if code < 0 else LEFTOVERS_STATUS)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
