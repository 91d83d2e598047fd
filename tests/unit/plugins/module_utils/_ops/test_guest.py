# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Guest agents: what a backup records of the VM's agent, and waiting for an agent after a start.

The simulator's agents come from a marker on the VM's disk (tests/xapisim/guest_agent.py), reported
a configurable delay after VM.start, as XAPI's guest metrics appear when the booted OS's agent reports.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import guest
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import manage_job_snapshots
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

POOL = """
pool: {name: agent-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
networks: [{name: Network 0, bridge: xenbr0}]
guest_agents: {delay: 0.4}
vms:
  - name: web
    power_state: Running
    disks: [{name: web-root, size: 4MiB, data: [{offset: 0, length: 1MiB, seed: 1}]}]
    guest_agent: {os: Debian GNU/Linux 12.4, pv_drivers: 9.3.3, ip: 192.0.2.10}
    vifs: [{network: Network 0}]
  - name: quiet
    power_state: Running
    disks: [{name: quiet-root, size: 4MiB, data: [{offset: 0, length: 1MiB, seed: 2}]}]
  - name: no-address
    disks: [{name: no-address-root, size: 4MiB}]
    guest_agent: {os: Alpine Linux 3.20, pv_drivers: 8.4.0}
  - name: stopped
    disks: [{name: stopped-root, size: 4MiB}]
    guest_agent: {os: Debian 12, pv_drivers: 9.3.3, ip: 192.0.2.11}
    vifs: [{network: Network 0}]
"""


@pytest.fixture
def pool():
    with running_pool(POOL) as sim:
        with connect(sim) as xapi:
            yield sim, xapi


def vm_ref(xapi, name):
    return xapi.call('VM.get_by_name_label', name)[0]


# --- pure helpers ----------------------------------------------------------

def test_addresses_in_vif_order_without_duplicates():
    networks = {'1/ip': '10.0.0.2', '0/ip': '10.0.0.1', '0/ipv4/0': '10.0.0.1', '10/ip': '10.0.0.3', '0/ipv6/0': 'fe80::1', '2/ip': ''}
    assert guest.addresses(networks) == ['10.0.0.1', '10.0.0.2', '10.0.0.3']


def test_describe_agent_and_what_counts_as_reported():
    metrics = {'live': True, 'PV_drivers_detected': True, 'PV_drivers_version': {'major': '9'}, 'os_version': {'name': 'Debian'},
               'networks': {'0/ip': '192.0.2.10'}}
    described = guest.describe_agent(metrics)
    assert described == {'seen': True, 'os_version': {'name': 'Debian'}, 'pv_drivers_version': {'major': '9'}, 'pv_drivers_detected': True,
                         'networks': {'0/ip': '192.0.2.10'}, 'addresses': ['192.0.2.10'], 'ip': '192.0.2.10'}
    assert guest.describe_agent(None)['seen'] is False and guest.describe_agent(None)['ip'] is None
    assert not guest.agent_reported(dict(metrics, live=False))
    assert not guest.agent_reported({'live': True, 'PV_drivers_detected': False, 'PV_drivers_version': {}})


def test_backed_up_agent_distinguishes_unrecorded_from_absent():
    assert guest.backed_up_agent({'name_label': 'from Xen Orchestra'}) is None
    assert guest.backed_up_agent({guest.GUEST_METRICS_KEY: None}) == guest.describe_agent(None)
    assert guest.backed_up_agent({guest.GUEST_METRICS_KEY: {'live': True, 'PV_drivers_detected': True}})['seen'] is True


# --- what a backup records ---------------------------------------------------

def backed_up_vm_record(xapi, tmp_path, name) -> dict:
    root = str(tmp_path / name)
    os.makedirs(root)
    manage_job_snapshots(xapi, name, Job('nightly'), take=True)
    export_vm(xapi, [root], name, Job('nightly'))
    uuid = xapi.call('VM.get_uuid', vm_ref(xapi, name))
    point = open_repository(root).list_backups(uuid)[-1]
    return point.metadata['vm']


def test_export_records_the_agent_of_the_snapshot(pool, tmp_path):
    _sim, xapi = pool
    record = backed_up_vm_record(xapi, tmp_path, 'web')
    recorded = record[guest.GUEST_METRICS_KEY]
    assert recorded['PV_drivers_version'] == {'major': '9', 'minor': '3', 'micro': '3'}
    assert recorded['networks']['0/ip'] == '192.0.2.10'
    assert recorded['live'] is True and isinstance(recorded['last_updated'], str)
    json.dumps(recorded)  # the metadata is JSON
    assert guest.backed_up_agent(record)['seen'] is True


def test_export_of_a_vm_without_agent_records_none(pool, tmp_path):
    _sim, xapi = pool
    record = backed_up_vm_record(xapi, tmp_path, 'quiet')
    assert guest.GUEST_METRICS_KEY in record and record[guest.GUEST_METRICS_KEY] is None
    assert guest.backed_up_agent(record)['seen'] is False


# --- waiting -------------------------------------------------------------------

def test_wait_returns_once_the_agent_of_this_boot_reports(pool):
    _sim, xapi = pool
    ref = vm_ref(xapi, 'stopped')
    xapi.call('VM.start', ref, False, False)
    started = time.monotonic()
    result = guest.wait_for_guest_agent(xapi, 'stopped', 10, require_address=True)
    assert time.monotonic() - started >= 0.2  # it did wait for the report (0.4 s after the start)
    assert result['vm']['power_state'] == 'Running' and result['vm']['name_label'] == 'stopped'
    assert result['guest_agent']['ip'] == '192.0.2.11' and result['guest_agent']['seen'] is True
    assert result['guest_agent']['os_version']['name'] == 'Debian 12'
    assert result['waited'] > 0


def test_wait_polls_when_event_from_is_refused(pool):
    sim, xapi = pool
    ref = vm_ref(xapi, 'stopped')
    xapi.call('VM.start', ref, False, False)
    sim.control.fail_next('event.from', ['RBAC_PERMISSION_DENIED', 'event.from', 'no'], count=5)
    result = guest.wait_for_guest_agent(xapi, xapi.call('VM.get_uuid', ref), 10)
    assert result['guest_agent']['seen'] is True


def test_timeout_names_the_vm_and_what_was_seen(pool):
    _sim, xapi = pool
    uuid = xapi.call('VM.get_uuid', vm_ref(xapi, 'quiet'))
    started = time.monotonic()
    with pytest.raises(guest.GuestAgentTimeoutError) as caught:
        guest.wait_for_guest_agent(xapi, 'quiet', 1.5)
    assert 1.4 <= time.monotonic() - started < 12
    message = caught.value.message
    assert 'quiet (%s)' % uuid in message and 'within 1.5 s' in message and 'no guest agent has reported' in message
    assert caught.value.error_code == 'guest_agent_timeout'


def test_required_address_that_never_comes_times_out_saying_so(pool):
    _sim, xapi = pool
    xapi.call('VM.start', vm_ref(xapi, 'no-address'), False, False)
    assert guest.wait_for_guest_agent(xapi, 'no-address', 10)['guest_agent']['addresses'] == []
    with pytest.raises(guest.GuestAgentTimeoutError, match='no IPv4 address'):
        guest.wait_for_guest_agent(xapi, 'no-address', 0.5, require_address=True)


def test_a_halted_vm_is_refused_at_once(pool):
    _sim, xapi = pool
    started = time.monotonic()
    with pytest.raises(guest.VmNotRunningError, match='stopped .*Halted; start it first') as caught:
        guest.wait_for_guest_agent(xapi, 'stopped', 30)
    assert time.monotonic() - started < 5
    assert caught.value.error_code == 'vm_not_running'


def test_a_vm_stopping_while_waited_for_ends_the_wait(pool):
    sim, xapi = pool
    ref = vm_ref(xapi, 'quiet')

    def stop():
        with connect(sim) as other:  # a connection is not shared between threads
            other.call('VM.hard_shutdown', ref)

    stopper = threading.Timer(0.5, stop)
    stopper.start()
    started = time.monotonic()
    try:
        with pytest.raises(guest.VmNotRunningError, match='Halted'):
            guest.wait_for_guest_agent(xapi, 'quiet', 60)
    finally:
        stopper.join()
    assert time.monotonic() - started < 15


# --- a health check's restore ----------------------------------------------------

def test_restore_without_vifs_joins_no_network_and_its_agent_comes_up(pool, tmp_path):
    """What the health_check role does: restore without VIFs, start, wait for the agent the backup recorded."""
    sim, xapi = pool
    backed_up_vm_record(xapi, tmp_path, 'web')
    repository = open_repository(str(tmp_path / 'web'))
    uuid = xapi.call('VM.get_uuid', vm_ref(xapi, 'web'))
    # Another pool whose only network has no PIF: no network matches the backed-up one, and without VIFs none has to.
    sim.control.load_config(POOL.replace('{name: Network 0, bridge: xenbr0}', '{name: Isolated, bridge: xenbr0, private: true}')
                            .replace('network: Network 0', 'network: Isolated'))
    result = restore.restore(xapi, repository, uuid, name_label='web [health check]', start=True, restore_vifs=False)
    assert result['vifs'] == [] and result['backed_up_guest_agent']['seen'] is True
    assert result['backed_up_guest_agent']['ip'] == '192.0.2.10'
    new_vm = xapi.call('VM.get_by_uuid', result['vm']['uuid'])
    assert xapi.call('VM.get_VIFs', new_vm) == []
    waited = guest.wait_for_guest_agent(xapi, result['vm']['uuid'], 10)
    assert waited['guest_agent']['seen'] is True and waited['guest_agent']['addresses'] == []  # no VIF, no address
    assert waited['guest_agent']['os_version']['name'] == 'Debian GNU/Linux 12.4'
    # With VIFs, the backed-up network matches none of this pool's: strict refuses, naming it (issue 13's placement rules).
    with pytest.raises(restore.RestoreError, match='Network 0'):
        restore.restore(xapi, repository, uuid, name_label='web [with vifs]', start=False, strict=True)
