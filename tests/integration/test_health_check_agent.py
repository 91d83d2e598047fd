# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health_check role with guest agents, through the collection's playbooks against the simulator.

The simulator's guest agent runs when the VM's disk holds its marker (tests/xapisim/guest_agent.py), so a
restored copy of a backed-up disk brings the agent up exactly when the backed-up OS had one. The command runs
through ansible.builtin.raw on the address the agent reports (127.0.0.1 here, with a local connection).
Every test compares the pool's VMs and VDIs before and after: the check leaves nothing and removes nothing else.
"""

from __future__ import annotations

import sys

import pytest

from xapisim import guest_agent

JOB = 'health-agent'
POOL = """
pool: {name: health-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 20GiB, default: true}]
networks: [{name: Network 0, bridge: xenbr0}]
guest_agents: {delay: 0.5}
vms:
  - name: agent-vm
    power_state: Running
    disks: [{name: agent-vm-root, size: 64MiB, data: [{offset: 1MiB, length: 2MiB, seed: 5}]}]
    vifs: [{network: Network 0}]
    guest_agent: {os: Debian GNU/Linux 12.4, pv_drivers: 9.3.3, ip: 127.0.0.1}
  - name: broken-vm
    power_state: Running
    disks: [{name: broken-vm-root, size: 64MiB, data: [{offset: 1MiB, length: 2MiB, seed: 6}]}]
    vifs: [{network: Network 0}]
    guest_agent: {os: Rocky Linux 9.3, pv_drivers: 8.2.1, ip: 127.0.0.1}
  - name: plain-vm
    power_state: Running
    disks: [{name: plain-vm-root, size: 64MiB, data: [{offset: 0, length: 2MiB, seed: 7}]}]
    vifs: [{network: Network 0}]
"""
# The temporary VM is reached with a local connection: the simulated guest's address is the controller's.
HOST_VARS = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}


@pytest.fixture
def lab(ansible, pool, tmp_path):
    pool.control.load_config(POOL)
    return {'ansible': ansible, 'sim': pool, 'repository': str(tmp_path / 'repository')}


def backup(lab, vms):
    stats, _output = lab['ansible'].play_collection('backup', {'backup_job': JOB, 'backup_repositories': lab['repository'], 'backup_vms': vms})
    assert [result['status'] for result in stats['xapi_delta_backup_backup']['results']] == ['ok'] * len(vms)


def pool_objects(lab) -> dict:
    """Every VM and VDI of the pool by uuid, with the name: what a health check must leave as it found it."""
    session = lab['sim'].xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'health-check-test')
    try:
        vms = {record['uuid']: record['name_label'] for record in session.xenapi.VM.get_all_records().values()}
        vdis = {record['uuid']: record['name_label'] for record in session.xenapi.VDI.get_all_records().values()}
        metrics = len(session.xenapi.VM_guest_metrics.get_all())
    finally:
        session.xenapi.session.logout()
    return {'VM': vms, 'VDI': vdis, 'VM_guest_metrics': metrics}


def health_check(lab, extra, expect_rc=0):
    variables = {'health_check_repository': lab['repository'], 'health_check_job': JOB, 'health_check_agent_timeout': 30}
    variables.update(extra)
    stats, output = lab['ansible'].play_collection('health_check', variables, expect_rc=expect_rc)
    return stats.get('xapi_delta_backup_health_check'), output


def test_agent_seen_and_command_run_at_its_address(lab):
    backup(lab, ['agent-vm'])
    before = pool_objects(lab)
    health, output = health_check(lab, {'health_check_vms': ['agent-vm'], 'health_check_networks': 'mapped',
                                        'health_check_command': 'echo health-ok-$((6 * 7)); uname -s',
                                        'health_check_host_vars': HOST_VARS})
    assert health['failed'] == [], output[-4000:]
    result = health['results'][0]
    assert result['status'] == 'ok' and result['error'] == ''
    assert result['agent_expected'] is True and result['agent_seen'] is True
    assert result['address'] == '127.0.0.1'
    assert result['os_version']['name'] == 'Debian GNU/Linux 12.4'
    assert result['command_rc'] == 0 and 'health-ok-42' in result['command_stdout']
    assert 'guest agent up at 127.0.0.1, command exited 0, then destroyed' in result['line']
    assert len(result['destroyed_vdis']) == 1
    assert pool_objects(lab) == before


def test_default_no_network_agent_awaited_and_vm_without_agent_not_awaited(lab):
    backup(lab, ['agent-vm', 'plain-vm'])
    before = pool_objects(lab)
    health, output = health_check(lab, {'health_check_vms': ['agent-vm', 'plain-vm']})
    assert health['failed'] == [], output[-4000:]
    with_agent, without = health['results']
    assert with_agent['agent_expected'] is True and with_agent['agent_seen'] is True
    # No VIF by default: the agent reports no address, as a guest without network interfaces has none.
    assert with_agent['address'] is None and with_agent['command_rc'] is None
    assert without['status'] == 'ok' and without['agent_expected'] is False and without['agent_seen'] is False
    assert 'guest agent' not in without['line'] and 'restored, started and running, then destroyed' in without['line']
    assert pool_objects(lab) == before


def test_agent_that_never_comes_fails_naming_the_vm(lab):
    # The running VM's agent reported, then its OS lost the agent: the backup records an agent, its disk has none.
    lab['sim'].control.write_vdi('broken-vm-root', guest_agent.MARKER_OFFSET, data=bytes(guest_agent.MARKER_SIZE))
    backup(lab, ['broken-vm', 'agent-vm'])
    before = pool_objects(lab)
    health, output = health_check(lab, {'health_check_vms': ['broken-vm', 'agent-vm'], 'health_check_agent_timeout': 3}, expect_rc=2)
    assert health['failed'] == ['broken-vm']
    broken, fine = health['results']
    assert broken['status'] == 'failed' and broken['agent_expected'] is True and broken['agent_seen'] is False
    assert 'did not report within 3 s' in broken['error'] and 'broken-vm [health check ' in broken['error']
    assert broken['temporary_vm'] in broken['error'] and len(broken['destroyed_vdis']) == 1
    assert fine['status'] == 'ok' and fine['agent_seen'] is True  # the next VM is still checked
    assert 'Health check failed for broken-vm' in output
    assert pool_objects(lab) == before


def test_failing_command_fails_the_check(lab):
    backup(lab, ['agent-vm'])
    before = pool_objects(lab)
    health, output = health_check(lab, {'health_check_vms': ['agent-vm'], 'health_check_networks': 'mapped',
                                        'health_check_command': 'echo service-down >&2; exit 3',
                                        'health_check_host_vars': HOST_VARS}, expect_rc=2)
    assert health['failed'] == ['agent-vm'], output[-4000:]
    result = health['results'][0]
    assert result['agent_seen'] is True and result['command_rc'] == 3
    assert 'the command exited with 3' in result['error'] and 'service-down' in result['error']
    assert pool_objects(lab) == before


def test_command_without_network_is_refused_before_anything_is_created(lab):
    backup(lab, ['agent-vm'])
    before = pool_objects(lab)
    health, output = health_check(lab, {'health_check_vms': ['agent-vm'], 'health_check_command': 'true'}, expect_rc=2)
    assert health is None
    assert 'health_check_command needs the temporary VM on a network' in output
    assert pool_objects(lab) == before


TASKS_FILE = """
- name: The role gives the temporary VM's address and inventory name
  ansible.builtin.assert:
    that:
      - health_check_address == '127.0.0.1'
      - health_check_host == 'health-check-' ~ health_check_vm_uuid
      - health_check_backed_up_vm == 'agent-vm'
- name: Reach the temporary VM
  ansible.builtin.command: echo reached-{{ health_check_backed_up_vm }}
  delegate_to: "{{ health_check_host }}"
  register: reached
  changed_when: false
- name: Leave a proof on the controller
  ansible.builtin.copy:
    content: "{{ reached.stdout }} {{ health_check_vm_uuid }}"
    dest: "{{ proof_path }}"
    mode: '0600'
  delegate_to: localhost
- name: Fail when asked to
  ansible.builtin.fail:
    msg: user check refused the VM
  when: fail_user_check | default(false) | bool
"""


def test_user_task_file_reaches_the_vm_and_can_fail_the_check(lab, tmp_path):
    backup(lab, ['agent-vm'])
    before = pool_objects(lab)
    tasks_file, proof = tmp_path / 'checks.yml', tmp_path / 'proof.txt'
    tasks_file.write_text(TASKS_FILE, encoding='utf-8')
    options = {'health_check_vms': ['agent-vm'], 'health_check_networks': 'mapped', 'health_check_tasks_file': str(tasks_file),
               'health_check_host_vars': HOST_VARS, 'proof_path': str(proof)}
    health, output = health_check(lab, options)
    assert health['failed'] == [], output[-4000:]
    result = health['results'][0]
    assert result['tasks_file_passed'] is True and result['command_rc'] is None and 'task file passed' in result['line']
    assert proof.read_text(encoding='utf-8') == 'reached-agent-vm %s' % result['temporary_vm']
    assert pool_objects(lab) == before

    health, output = health_check(lab, dict(options, fail_user_check=True), expect_rc=2)
    result = health['results'][0]
    assert health['failed'] == ['agent-vm'] and result['tasks_file_passed'] is False
    assert 'user check refused the VM' in result['error']
    assert pool_objects(lab) == before


def test_vm_guest_wait_module_in_check_mode_and_its_failures(lab):
    ansible = lab['ansible']
    seen = ansible.run_task('vm_guest_wait', {'vm': 'agent-vm', 'wait_timeout': 5, 'require_address': True}, check=True)
    assert seen['changed'] is False and seen['vm']['power_state'] == 'Running'
    assert seen['guest_agent']['seen'] is True and seen['guest_agent']['ip'] == '127.0.0.1'
    assert seen['guest_agent']['pv_drivers_version'] == {'major': '9', 'minor': '3', 'micro': '3'}
    late = ansible.run_task('vm_guest_wait', {'vm': 'plain-vm', 'wait_timeout': 1}, expect_failure=True)
    assert late['error_code'] == 'guest_agent_timeout' and 'plain-vm (' in late['msg'] and 'within 1 s' in late['msg']
    bad = ansible.run_task('vm_guest_wait', {'vm': 'agent-vm', 'wait_timeout': -1}, expect_failure=True)
    assert bad['error_code'] == 'invalid_input' and 'wait_timeout must be 0 or more' in bad['msg']
