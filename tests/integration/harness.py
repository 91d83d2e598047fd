# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the collection's modules and playbooks through real ansible-playbook against the simulator.

Every task runs in a fresh ansible-playbook process, exactly as a user runs it: the module is
packaged by Ansible, connects over HTTPS with certificate verification and reads its connection
from the XENSERVER_* environment variables, as an AWX credential would inject them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTION_DIR = os.path.dirname(os.path.dirname(HERE))


def collections_root() -> str:
    """The folder holding ansible_collections/ (the collection must sit at ansible_collections/xapi/delta_backup)."""
    parts = COLLECTION_DIR.split(os.sep)
    if parts[-3:-1] != ['ansible_collections', 'xapi'] or parts[-1] != 'delta_backup':
        raise RuntimeError('run the integration tests from the collection laid out under ansible_collections/xapi/delta_backup '
                           '(make test does this), not from %s' % COLLECTION_DIR)
    return os.sep.join(parts[:-3])


class XenApi:
    """A logged-in XenAPI session to a simulator, for reading ground truth (``with XenApi(sim) as api``)."""

    def __init__(self, sim):
        self.session = sim.xenapi_session()
        self.session.login_with_password('root', 'secret', '1.0', 'integration-tests')

    def __enter__(self):
        return self.session.xenapi

    def __exit__(self, *exc):
        self.session.xenapi.session.logout()


class TaskFailed(AssertionError):
    """A task failed that the test expected to succeed."""


class AnsibleRunner:
    """Runs single tasks or whole playbooks against one simulator."""

    def __init__(self, sim, workdir: str, username: str = 'root', password: str = 'secret'):
        self.sim = sim
        self.workdir = workdir
        self.env = dict(os.environ)
        self.env.update({
            'ANSIBLE_COLLECTIONS_PATH': collections_root(),
            'ANSIBLE_COLLECTIONS_SCAN_SYS_PATH': 'false',
            'ANSIBLE_LOCALHOST_WARNING': 'false',
            'ANSIBLE_INVENTORY_UNPARSED_WARNING': 'false',
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_RETRY_FILES_ENABLED': 'false',
            'XENSERVER_HOST': sim.url,
            'XENSERVER_USER': username,
            'XENSERVER_PASSWORD': password,
        })
        if sim.ca_path:
            self.env['XENSERVER_CA_PATH'] = sim.ca_path
        self.last_output = ''

    def _playbook(self, tasks: list, name: str) -> str:
        fd, path = tempfile.mkstemp(prefix=name + '-', suffix='.yml', dir=self.workdir)
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False,
                             'vars': {'ansible_python_interpreter': sys.executable}, 'tasks': tasks}], handle)
        return path

    def run_playbook(self, path: str, extra_vars: dict | None = None, check: bool = False, timeout: float = 900,
                     env: dict | None = None) -> subprocess.CompletedProcess:
        command = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', path]
        if extra_vars:
            command += ['-e', json.dumps(extra_vars)]
        if check:
            command.append('--check')
        completed = subprocess.run(command, env=dict(self.env, **(env or {})), cwd=self.workdir, capture_output=True, text=True,
                                   timeout=timeout, check=False)
        self.last_output = completed.stdout + completed.stderr
        return completed

    def play_collection(self, name: str, extra_vars: dict, check: bool = False, expect_rc: int = 0) -> tuple[dict, str]:
        """Run the collection playbook ``xapi.delta_backup.<name>``; return (custom stats, output).

        The roles publish their results with set_stats; ANSIBLE_SHOW_CUSTOM_STATS prints them as one JSON line.
        """
        extra = dict(extra_vars, ansible_python_interpreter=sys.executable)
        completed = self.run_playbook('xapi.delta_backup.%s' % name, extra, check=check, env={'ANSIBLE_SHOW_CUSTOM_STATS': 'true'})
        output = completed.stdout + completed.stderr
        if expect_rc == 0:
            assert completed.returncode == 0, output[-6000:]
        else:
            assert completed.returncode != 0, output[-6000:]
        stats = {}
        for line in completed.stdout.splitlines():
            if line.strip().startswith('RUN:'):
                stats = json.loads(line.strip()[len('RUN:'):])
        return stats, output

    def run_tasks(self, steps: list, check: bool = False, expect_failure: bool = False, env: dict | None = None) -> list:
        """Run several module tasks in one playbook (one ansible start-up), in order, stopping at the first failure.

        ``steps`` is a list of (module, args); a later step may use ``{{ result_N }}`` of an earlier one.
        Returns the registered results, None for steps that did not run. With ``expect_failure`` the last
        step that ran must have failed.
        """
        result_path = os.path.join(self.workdir, 'results-%s.json' % os.urandom(4).hex())
        tasks = []
        for index, (module, args) in enumerate(steps):
            task = {'name': 'step %d' % index, 'xapi.delta_backup.%s' % module: args, 'register': 'result_%d' % index}
            if check:
                task['check_mode'] = True
            tasks.append(task)
        collected = '{{ [%s] | to_json }}' % ', '.join('result_%d | default(None)' % index for index in range(len(steps)))
        save = {'name': 'save the results', 'ansible.builtin.copy': {'content': collected, 'dest': result_path}}
        completed = self.run_playbook(self._playbook([{'block': tasks, 'always': [save]}], 'steps'), env=env)
        if not os.path.exists(result_path):
            raise TaskFailed('ansible-playbook did not run the tasks (rc %s):\n%s' % (completed.returncode, self.last_output[-4000:]))
        with open(result_path, encoding='utf-8') as handle:
            results = json.load(handle)
        ran = [result for result in results if result is not None]
        failed = [result for result in ran if result.get('failed')]
        if expect_failure != bool(failed) or (failed and failed[-1] is not ran[-1]):
            raise TaskFailed('%s: %s' % ('no step failed' if expect_failure else 'a step failed',
                                         json.dumps([{k: v for k, v in result.items() if k != 'invocation'} for result in ran],
                                                    indent=1)[:6000]))
        return results

    def run_task(self, module: str, args: dict, check: bool = False, expect_failure: bool = False, env: dict | None = None) -> dict:
        """Run one module task; return its registered result. Fails the test on an unexpected outcome."""
        result_path = os.path.join(self.workdir, 'result-%s.json' % os.urandom(4).hex())
        task = {'name': 'task under test', 'xapi.delta_backup.%s' % module: args, 'register': 'result', 'ignore_errors': True}
        if check:
            task['check_mode'] = True
        save = {'name': 'save the result', 'ansible.builtin.copy': {'content': '{{ result | to_json }}', 'dest': result_path}}
        completed = self.run_playbook(self._playbook([task, save], module), env=env)
        if not os.path.exists(result_path):
            raise TaskFailed('ansible-playbook did not run the task (rc %s):\n%s' % (completed.returncode, self.last_output[-4000:]))
        with open(result_path, encoding='utf-8') as handle:
            result = json.load(handle)
        if bool(result.get('failed')) != expect_failure:
            raise TaskFailed('%s %s: %s' % (module, 'succeeded unexpectedly' if expect_failure else 'failed',
                                            json.dumps({k: v for k, v in result.items() if k != 'invocation'}, indent=1)[:4000]))
        return result
