# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""No secret leaks (issue 13): a VM with a vTPM is backed up and restored through the modules by ansible-playbook -vvv,
with a recognisable vTPM contents and connection password. Neither appears in any module result, in the whole output,
in Ansible's log file, or in any repository file but the backup's metadata JSON (which has the repository's file mode);
the restored vTPM holds the original contents, read from the simulator's own store."""

from __future__ import annotations

import glob
import json
import os
import secrets
import stat
import subprocess
import sys

import yaml

from harness import AnsibleRunner

FILE_MODE = '0640'


def _pool(password: str, contents: str) -> str:
    return """
pool: {name: secrets-pool}
users: [{name: root, password: "%s"}]
srs: [{name: Local storage, size: 2GiB, default: true}]
networks: [{name: Pool-wide network associated with eth0, bridge: xenbr0}]
vms:
  - name: tpm01
    power_state: Running
    vtpm: {contents: "%s"}
    disks: [{name: tpm01-root, size: 8MiB, data: [{offset: 0, length: 2MiB, seed: 9}]}]
    vifs: [{network: Pool-wide network associated with eth0}]
""" % (password, contents)


def _files_under(root: str) -> list[str]:
    return sorted(path for path in glob.glob(os.path.join(root, '**'), recursive=True) if os.path.isfile(path))


def _holds(path: str, needles: list[str]) -> list[str]:
    with open(path, 'rb') as handle:
        data = handle.read()
    return [needle for needle in needles if needle.encode('utf-8') in data]


def test_vtpm_contents_and_password_never_leak(simulator, tmp_path):
    # Recognisable and random: found only where they really were written.
    password = 'pw-%s' % secrets.token_hex(12)
    contents = 'VFBNLXNlY3JldC0%s== c2F2ZQ== dm9sYXRpbGU=' % secrets.token_hex(16)
    needles = [password, contents]
    simulator.control.load_config(_pool(password, contents))
    original = simulator.control.vtpms('tpm01')
    assert [entry['contents'] for entry in original] == [contents]
    workdir = tmp_path / 'work'
    repository = tmp_path / 'repo'
    workdir.mkdir()
    repository.mkdir()
    runner = AnsibleRunner(simulator, str(workdir), password=password)
    results_path = str(tmp_path / 'results.json')
    log_path = str(tmp_path / 'ansible.log')
    connection = {'password': '{{ xen_password }}'}  # through the module option (no_log) as well as the environment
    tasks = [
        {'name': 'snapshot', 'xapi.delta_backup.vm_snapshot': dict(connection, vm='tpm01', job='nightly'), 'register': 'snap'},
        {'name': 'export', 'xapi.delta_backup.delta_export': dict(connection, vm='tpm01', job='nightly', repositories=[str(repository)],
                                                                  snapshot='{{ snap.snapshot.uuid }}', file_mode=FILE_MODE),
         'register': 'export'},
        {'name': 'info', 'xapi.delta_backup.backup_info': {'repository': str(repository)}, 'register': 'info'},
        {'name': 'restore, check mode', 'check_mode': True, 'register': 'planned',
         'xapi.delta_backup.vm_restore': dict(connection, repository=str(repository), vm='tpm01', name='tpm01-planned')},
        {'name': 'restore', 'register': 'restored',
         'xapi.delta_backup.vm_restore': dict(connection, repository=str(repository), vm='tpm01', name='tpm01-restored', start=True)},
        {'name': 'save the results', 'ansible.builtin.copy': {
            'content': '{{ [snap, export, info, planned, restored] | to_json }}', 'dest': results_path}},
    ]
    playbook = str(tmp_path / 'playbook.yml')  # the user's own input: outside the files checked
    with open(playbook, 'w', encoding='utf-8') as handle:
        yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False,
                         'vars': {'ansible_python_interpreter': sys.executable, 'xen_password': password}, 'tasks': tasks}], handle)
    command = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-vvv', '-i', 'localhost,', '-c', 'local', playbook]
    completed = subprocess.run(command, env=dict(runner.env, ANSIBLE_LOG_PATH=log_path, ANSIBLE_KEEP_REMOTE_FILES='0'), cwd=str(workdir),
                               capture_output=True, text=True, timeout=900, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    assert 'ESTABLISH LOCAL CONNECTION' in output  # really -vvv
    with open(results_path, encoding='utf-8') as handle:
        snap, export, info, planned, restored = json.load(handle)

    # The restore did recreate the vTPM, with the original contents (the simulator's store, not our code, says so).
    assert [(entry['action'], entry['restored']) for entry in planned['vtpms']] == [('recreate', False)]
    [entry] = restored['vtpms']
    assert entry['action'] == 'recreate' and entry['restored'] is True
    assert simulator.control.vtpms(restored['vm']['uuid']) == [{'uuid': entry['uuid'], 'is_unique': False, 'contents': contents}]
    assert snap['changed'] and export['changed'] and info['vms']

    # Neither secret in any result, in the -vvv output, or in Ansible's log.
    for name, result in (('vm_snapshot', snap), ('delta_export', export), ('backup_info', info), ('vm_restore check', planned),
                         ('vm_restore', restored)):
        assert not [needle for needle in needles if needle in json.dumps(result)], name
    assert not [needle for needle in needles if needle in output]
    assert os.path.getsize(log_path) > 0 and not _holds(log_path, needles)
    for leftover in _files_under(str(workdir)):
        assert not _holds(leftover, needles), leftover

    # In the repository, only the metadata JSON holds the contents (never the password), with the repository's file mode.
    vm_folder = os.path.join(str(repository), 'xo-vm-backups', export['vm']['uuid'])
    [metadata_path] = glob.glob(os.path.join(vm_folder, '*.json'))
    assert _holds(metadata_path, needles) == [contents]
    assert stat.S_IMODE(os.stat(metadata_path).st_mode) == int(FILE_MODE, 8)
    others = [path for path in _files_under(str(repository)) if path != metadata_path]
    assert any(path.endswith('.vhd') for path in others)
    for path in others:
        assert not _holds(path, needles), path
    assert simulator.control.session_count() == 0, simulator.control.sessions()
