# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fault injection helpers: playbooks run in a killable process group, small full file systems, the fault table.

Small file systems: a 64 MiB ext4 image on a loop device when ``mount -o loop`` works (it does as root in
the CI container), else a size-limited tmpfs; both give ENOSPC exactly like a full backup share. Filling
one leaves a chosen number of free bytes with a preallocated filler file.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client

import yaml

from harness import AnsibleRunner
from lifecycle import assert_point_matches_truth, ground_truth
from oracles import backup_points, visible_files

MIB = 1024 * 1024
TABLE_NAME = 'fault-matrix.jsonl'


# -- playbooks -----------------------------------------------------------------------------------


def play_file(ansible: AnsibleRunner, tasks: list, name: str = 'faults') -> tuple[str, str]:
    """A playbook of ``(module, args, ignore_errors)`` steps that saves every registered result; returns (playbook, results path)."""
    results = os.path.join(ansible.workdir, 'results-%s.json' % os.urandom(4).hex())
    body = []
    for index, (module, args, ignore) in enumerate(tasks):
        name_of = module if '.' in module else 'xapi.delta_backup.%s' % module
        body.append({'name': 'step %d' % index, name_of: args, 'register': 'result_%d' % index, 'ignore_errors': bool(ignore)})
    collected = '{{ [%s] | to_json }}' % ', '.join('result_%d | default(None)' % index for index in range(len(tasks)))
    save = {'name': 'save', 'ansible.builtin.copy': {'content': collected, 'dest': results}}
    fd, path = tempfile.mkstemp(prefix=name + '-', suffix='.yml', dir=ansible.workdir)
    with os.fdopen(fd, 'w', encoding='utf-8') as handle:
        yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'vars': {'ansible_python_interpreter': sys.executable},
                         'tasks': [{'block': body, 'always': [save]}]}], handle)
    return path, results


def run_play(ansible: AnsibleRunner, tasks: list, env: dict | None = None) -> list:
    """Run the steps in one ansible-playbook; return the registered results (None where a step did not run)."""
    path, results = play_file(ansible, tasks)
    completed = ansible.run_playbook(path, env=env)
    if not os.path.exists(results):
        raise AssertionError('playbook did not run (rc %s):\n%s' % (completed.returncode, ansible.last_output[-4000:]))
    with open(results, encoding='utf-8') as handle:
        return json.load(handle)


def ok(result: dict) -> dict:
    assert result is not None and not result.get('failed'), json.dumps(
        {k: v for k, v in (result or {}).items() if k != 'invocation'}, indent=1)[:3000]
    return result


def failed(result: dict) -> str:
    assert result is not None and result.get('failed'), 'the step should have failed: %s' % json.dumps(result)[:2000]
    return result.get('msg', '')


def killed_by_sigkill(result: dict | None) -> bool:
    """Whether a registered module result is that of a module process SIGKILLed mid-run (not one that finished or failed on its own)."""
    return result is not None and bool(result.get('failed')) and (
        result.get('rc') in (137, -9) or 'Killed' in (result.get('module_stderr') or ''))


def _parent_of(pid: int) -> int:
    with open('/proc/%d/stat' % pid, 'rb') as handle:
        stat = handle.read()
    return int(stat[stat.rindex(b')') + 2:].split()[1])


def group_processes(root: int, pattern: str) -> list[int]:
    """Pids of the python processes descending from ``root`` whose command line contains ``pattern``.

    Ansible's workers start sessions of their own, so ancestry (not the process group) tells our
    modules from another test's.
    """
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as handle:
                command = handle.read().replace(b'\0', b' ').decode('utf-8', 'replace')
            if pattern not in command or 'python' not in command.split(' ', 1)[0]:
                continue
            ancestor = pid
            while ancestor > 1 and ancestor != root:
                ancestor = _parent_of(ancestor)
        except (OSError, ValueError, IndexError):
            continue
        if ancestor == root:
            found.append(pid)
    return found


def run_and_kill(ansible: AnsibleRunner, module: str, args: dict, rng: random.Random, kill_window: tuple[float, float],
                 on_start=None, timeout: float = 120, kill: bool = True) -> dict:
    """Run one module task in its own process group; SIGKILL the module's python process a random moment after it starts.

    ``on_start`` (if given) runs once the module's process exists, before the random delay (it may wait for a
    condition, or inject a fault). Returns {'killed': bool, 'delay': seconds, 'rc': rc, 'result': registered
    result or None}. ``killed`` is False when the module finished first. With ``kill=False`` nothing is killed.
    """
    path, results = play_file(ansible, [(module, args, False)], name='kill')
    command = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', path]
    process = subprocess.Popen(command, env=ansible.env, cwd=ansible.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    pids = []
    try:
        while not pids and process.poll() is None and time.monotonic() < deadline:
            pids = group_processes(process.pid, 'AnsiballZ_%s' % module)
            if not pids:
                time.sleep(0.02)
        delay = rng.uniform(*kill_window)
        if on_start is not None:
            on_start()
        time.sleep(delay)
        killed = False
        for pid in pids if kill else []:
            try:
                os.kill(pid, signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
        output, _unused = process.communicate(timeout=max(1, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output.decode('utf-8', 'replace')
    result = None
    if os.path.exists(results):
        with open(results, encoding='utf-8') as handle:
            result = json.load(handle)[0]
    return {'killed': killed and killed_by_sigkill(result), 'delay': round(delay, 3), 'rc': process.returncode, 'output': text, 'result': result}


def expire_orphan_sessions(sim, at_most: int) -> int:
    """Log out the sessions a SIGKILLed module could not close, as XAPI's session expiry would; return how many."""
    sessions = sim.control.sessions()['sessions']
    assert len(sessions) <= at_most, sessions
    proxy = xmlrpc.client.ServerProxy(sim.url, transport=sim.transport(), allow_none=True)
    for session in sessions:
        proxy.session.logout(session['ref'])
    return len(sessions)


# -- small file systems ---------------------------------------------------------------------------


class SmallFilesystem:
    """A small mounted file system for one test (ext4 on a loop device, else tmpfs); unmounted by ``close``."""

    def __init__(self, folder: str, size_mib: int = 64):
        self.path = os.path.join(folder, 'mnt')
        self.image = os.path.join(folder, 'fs.img')
        os.makedirs(self.path)
        self.kind = None
        self.filler = os.path.join(self.path, 'filler.bin')
        subprocess.run(['truncate', '-s', '%dM' % size_mib, self.image], check=True)
        attempts = [
            (['mkfs.ext4', '-q', '-F', '-m', '0', self.image], ['mount', '-o', 'loop', self.image, self.path], 'ext4 on loop'),
            (None, ['mount', '-t', 'tmpfs', '-o', 'size=%dm' % size_mib, 'tmpfs', self.path], 'tmpfs'),
        ]
        errors = []
        for prepare, mount, kind in attempts:
            if prepare and subprocess.run(prepare, capture_output=True, check=False).returncode:
                continue
            done = subprocess.run(mount, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                self.kind = kind
                break
            errors.append(done.stderr.strip())
        if self.kind is None:
            raise RuntimeError('cannot mount a small file system (run as root): %s' % errors)
        # The filler lives outside what the tests call the repository.
        self.repo = os.path.join(self.path, 'repo')
        os.makedirs(self.repo)

    def free(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int = 0) -> int:
        """Preallocate a filler so that about ``leave`` bytes stay free; returns the free bytes after."""
        self.unfill()
        size = self.free() - leave
        if size > 0:
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:
                pass
            finally:
                os.close(fd)
        return self.free()

    def unfill(self) -> None:
        if os.path.exists(self.filler):
            os.unlink(self.filler)

    def close(self) -> None:
        subprocess.run(['umount', '-l', self.path], capture_output=True, check=False)
        if os.path.exists(self.image):
            os.unlink(self.image)


# -- what every fault must leave behind --------------------------------------------------------------


class Points:
    """The restore points a test made and their ground truth."""

    def __init__(self, app, repo: str):
        self.app = app
        self.repo = repo
        self.entries = []   # (export result, truth)

    def record(self, export: dict) -> dict:
        self.entries.append((export, ground_truth(self.app, export)))
        return export

    @property
    def vm_uuid(self) -> str:
        return self.entries[0][0]['vm']['uuid']

    def names(self) -> list[str]:
        return [os.path.basename(point['_path']) for point in backup_points(self.repo, self.vm_uuid)]

    def assert_intact(self, repo: str | None = None, engine: bool = False) -> int:
        """Every recorded point still listed in the repository reads (libvhdi, or with ``engine`` our VHD engine, through its chain)
        as its snapshot did."""
        repo = repo or self.repo
        present = {os.path.basename(point['_path']) for point in backup_points(repo, self.vm_uuid)}
        checked = 0
        for export, truth in self.entries:
            if export['timestamp'] + '.json' in present:
                assert_point_matches_truth(self.app, repo, export, truth, engine=engine)
                checked += 1
        return checked


def real_files(repo: str) -> list[str]:
    """Files a listing shows: no dot-files (temporary), no lock folder."""
    return [path for path in visible_files(repo)
            if not any(part.startswith('.') or part.endswith('.lock') for part in path.split('/'))]


def strays(repo: str) -> list[str]:
    """Temporary files, locks and VHDs no backup point needs."""
    found = [path for path in visible_files(repo) if any(part.startswith('.') or part.endswith('.lock') for part in path.split('/'))]
    needed = set()
    for vm in os.listdir(os.path.join(repo, 'xo-vm-backups')):
        vm_dir = os.path.join(repo, 'xo-vm-backups', vm)
        if not os.path.isdir(vm_dir) or vm.endswith('.lock'):
            continue
        from oracles import chain_of  # pylint: disable=import-outside-toplevel
        for point in backup_points(repo, vm):
            for relative in point['vhds'].values():
                for path in chain_of(os.path.join(vm_dir, relative)):
                    needed.add(os.path.relpath(path, repo))
    found.extend(path for path in visible_files(repo) if path.endswith('.vhd') and path not in needed and path not in found)
    return sorted(found)


# -- the table --------------------------------------------------------------------------------------


def table_dir(tmp_path_factory) -> str:
    """A folder every xdist worker of this session shares."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base)


def record_outcome(folder: str, step: str, fault: str, outcome: str, count: int = 1) -> None:
    with open(os.path.join(folder, TABLE_NAME), 'a', encoding='utf-8') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps({'step': step, 'fault': fault, 'outcome': outcome, 'count': count}) + '\n')


STEPS = ['snapshot', 'export stream', 'metadata write', 'snapshot prune', 'merge', 'seed copy', 'restore import']
FAULTS = ['XAPI error', 'stream cut', 'kill -9', 'full repo fs', 'full SR']


def render_table(folder: str) -> str:
    cells: dict = {}
    path = os.path.join(folder, TABLE_NAME)
    if os.path.exists(path):
        with open(path, encoding='utf-8') as handle:
            for line in handle:
                row = json.loads(line)
                cell = cells.setdefault((row['step'], row['fault']), {})
                cell[row['outcome']] = cell.get(row['outcome'], 0) + row['count']
    width = 24
    lines = ['fault matrix: step x fault -> outcome (count of injections)',
             '%-15s|' % 'step' + '|'.join(' %-*s' % (width - 1, fault) for fault in FAULTS)]
    lines.append('-' * len(lines[1]))
    for step in STEPS:
        row = []
        for fault in FAULTS:
            cell = cells.get((step, fault))
            row.append(' %-*s' % (width - 1, ', '.join('%s x%d' % item for item in sorted(cell.items())) if cell else 'n/a'))
        lines.append('%-15s|' % step + '|'.join(row))
    total = sum(sum(cell.values()) for cell in cells.values())
    lines.append('%d injections; outcome "ok" = refused or failed cleanly, every earlier point byte-identical, '
                 'no visible partial backup, next run succeeded (a delta where the base survived)' % total)
    return '\n'.join(lines)


def mark_test_done(folder: str, nodeid: str) -> int:
    """Note that one test of the matrix finished (whatever its outcome); return how many have."""
    with open(os.path.join(folder, TABLE_NAME + '.done'), 'a+', encoding='utf-8') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(nodeid + '\n')
        handle.flush()
        handle.seek(0)
        return len(set(line for line in handle.read().splitlines() if line))


def table_if_complete(folder: str, total: int) -> str | None:
    """The whole table once every test of the matrix finished (on any worker), also saved as fault-matrix.txt."""
    path = os.path.join(folder, TABLE_NAME + '.done')
    if not os.path.exists(path):
        return None
    with open(path, encoding='utf-8') as handle:
        if len(set(line for line in handle.read().splitlines() if line)) < total:
            return None
    table = render_table(folder)
    with open(os.path.join(folder, 'fault-matrix.txt'), 'w', encoding='utf-8') as out:
        out.write(table + '\n')
    return table


def show(config, text: str) -> None:
    """Print past pytest's capture (also from an xdist worker, whose stderr is the terminal's)."""
    capture = config.pluginmanager.getplugin('capturemanager')
    with capture.global_and_fixture_disabled():
        sys.stderr.write('\n' + text + '\n')
        sys.stderr.flush()
