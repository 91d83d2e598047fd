# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Simulated guest agents: VM_guest_metrics come from the OS on the VM's disks (xapisim/guest_agent.py)."""

import time

import pytest

from xapisim import guest_agent

NULL = 'OpaqueRef:NULL'

POOL = """
pool: {name: agents}
srs: [{name: Local storage, size: 20GiB, default: true}]
networks: [{name: Pool-wide network associated with eth0, bridge: xenbr0}]
guest_agents: {delay: 0.3}
vms:
  - name: with-agent
    disks: [{name: with-agent-root, size: 64MiB, data: [{offset: 0, length: 2MiB, seed: 3}]}]
    vifs: [{network: Pool-wide network associated with eth0}]
    guest_agent: {os: Debian GNU/Linux 12.4, pv_drivers: 9.3.3-12, ip: 192.0.2.10}
  - name: running-agent
    power_state: Running
    disks: [{name: running-agent-root, size: 64MiB}]
    vifs: [{network: Pool-wide network associated with eth0, device: 2}]
    guest_agent: {os: Rocky Linux 9.3, pv_drivers: 8.2.1}
  - name: no-agent
    disks: [{name: no-agent-root, size: 64MiB, data: [{offset: 0, length: 2MiB, seed: 4}]}]
"""


@pytest.fixture
def agents(server):
    """The simulator reset to POOL; yields (running simulator, logged-in XenAPI proxy)."""
    server.control.load_config(POOL)
    session = server.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'guest-metrics-tests')
    yield server, session.xenapi
    session.xenapi.session.logout()


def _vm(api, name):
    return api.VM.get_by_name_label(name)[0]


def _wait_metrics(api, vm, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ref = api.VM.get_guest_metrics(vm)
        if ref != NULL:
            return ref
        time.sleep(0.05)
    return NULL


def test_marker_round_trip_and_refusals():
    data = guest_agent.encode_marker({'os': 'Debian 12', 'ip': '10.0.0.1'})
    assert len(data) == guest_agent.MARKER_SIZE
    assert guest_agent.decode_marker(data) == {'os': 'Debian 12', 'ip': '10.0.0.1'}
    assert guest_agent.decode_marker(bytes(guest_agent.MARKER_SIZE)) is None
    with pytest.raises(ValueError, match='unknown key'):
        guest_agent.encode_marker({'os': 'x', 'kernel': 'y'})


def test_agent_reports_after_the_delay_with_the_marker_values(agents):
    server, api = agents
    vm = _vm(api, 'with-agent')
    assert api.VM.get_guest_metrics(vm) == NULL
    started = time.monotonic()
    api.VM.start(vm, False, False)
    assert api.VM.get_guest_metrics(vm) == NULL  # the agent has not reported yet
    gm = _wait_metrics(api, vm)
    assert gm != NULL
    assert time.monotonic() - started >= 0.25
    record = api.VM_guest_metrics.get_record(gm)
    assert record['live'] is True
    assert record['PV_drivers_detected'] is True and record['PV_drivers_up_to_date'] is True
    assert record['PV_drivers_version'] == {'major': '9', 'minor': '3', 'micro': '3', 'build': '12'}
    assert record['os_version'] == {'name': 'Debian GNU/Linux 12.4', 'distro': 'debian', 'major': '12', 'minor': '4'}
    assert record['networks'] == {'0/ip': '192.0.2.10', '0/ipv4/0': '192.0.2.10'}
    assert record['memory'] == {} and record['other_config'] == {}
    assert api.VM_guest_metrics.get_by_uuid(record['uuid']) == gm
    assert server.control.record('VM_guest_metrics', gm)['uuid'] == record['uuid']


def test_vm_without_marker_never_gets_metrics(agents):
    _server, api = agents
    vm = _vm(api, 'no-agent')
    api.VM.start(vm, False, False)
    time.sleep(0.8)
    assert api.VM.get_guest_metrics(vm) == NULL
    assert api.VM_guest_metrics.get_all() == [api.VM.get_guest_metrics(_vm(api, 'running-agent'))]


def test_running_vm_from_config_has_reported_and_default_ip(agents):
    server, api = agents
    vm = _vm(api, 'running-agent')
    gm = api.VM.get_guest_metrics(vm)
    record = api.VM_guest_metrics.get_record(gm)
    assert record['networks'] == {}  # no address in the marker, no default set
    assert record['PV_drivers_version'] == {'major': '8', 'minor': '2', 'micro': '1'}
    assert server.control.guest_agents(ip='127.0.0.1') == {'delay': 0.3, 'ip': '127.0.0.1'}
    api.VM.hard_shutdown(vm)
    api.VM.start(vm, False, False)
    gm2 = _wait_metrics(api, vm)
    assert gm2 not in (NULL, gm)
    assert api.VM_guest_metrics.get_networks(gm2) == {'2/ip': '127.0.0.1', '2/ipv4/0': '127.0.0.1'}  # its only VIF


def test_start_deletes_stale_metrics_and_shutdown_keeps_them(agents):
    _server, api = agents
    vm = _vm(api, 'with-agent')
    api.VM.start(vm, False, False)
    gm = _wait_metrics(api, vm)
    api.VM.clean_shutdown(vm)
    # xapi_xenops.ml: a shutdown leaves the record; only the power state says the agent is gone.
    assert api.VM.get_guest_metrics(vm) == gm
    assert api.VM_guest_metrics.get_live(gm) is True
    api.VM.start(vm, False, False)
    # xapi_vm.ml start deletes the old record before the boot.
    assert api.VM.get_guest_metrics(vm) == NULL
    assert gm not in api.VM_guest_metrics.get_all()
    assert _wait_metrics(api, vm) != NULL


def test_report_dropped_when_vm_stops_before_the_delay(agents):
    _server, api = agents
    vm = _vm(api, 'with-agent')
    api.VM.start(vm, False, False)
    api.VM.hard_shutdown(vm)
    time.sleep(0.6)
    assert api.VM.get_guest_metrics(vm) == NULL


def test_resume_keeps_and_creates_metrics(agents):
    _server, api = agents
    vm = _vm(api, 'with-agent')
    api.VM.start(vm, False, False)
    gm = _wait_metrics(api, vm)
    api.VM.suspend(vm)
    api.VM.resume(vm, False, False)
    assert api.VM.get_guest_metrics(vm) == gm  # resume keeps them (xapi_vm.ml resume)


def test_no_vif_no_address(agents):
    _server, api = agents
    vm = _vm(api, 'with-agent')
    for vif in api.VM.get_VIFs(vm):
        api.VIF.destroy(vif)
    api.VM.start(vm, False, False)
    gm = _wait_metrics(api, vm)
    assert api.VM_guest_metrics.get_networks(gm) == {}
    assert api.VM_guest_metrics.get_PV_drivers_detected(gm) is True


def test_snapshot_copies_destroy_removes_and_copied_disk_brings_agent(agents):
    server, api = agents
    vm = _vm(api, 'running-agent')
    gm = api.VM.get_guest_metrics(vm)
    snap = api.VM.snapshot(vm, 'snap')
    snap_gm = api.VM.get_guest_metrics(snap)
    assert snap_gm not in (NULL, gm)
    assert api.VM_guest_metrics.get_os_version(snap_gm) == api.VM_guest_metrics.get_os_version(gm)
    api.VM.destroy(snap)
    assert snap_gm not in api.VM_guest_metrics.get_all()
    # A new VM on a copy of the disk (as a restore makes) runs the same agent.
    clone = api.VM.clone(_vm(api, 'no-agent'), 'fresh')
    disk = api.VDI.get_by_name_label('running-agent-root')[0]
    copy = api.VDI.clone(disk, {})
    api.VBD.create({'VM': clone, 'VDI': copy, 'userdevice': '1', 'bootable': True, 'mode': 'RW', 'type': 'Disk',
                    'empty': False, 'other_config': {}, 'qos_algorithm_type': '', 'qos_algorithm_params': {}})
    assert server.control.read_vdi(copy, guest_agent.MARKER_OFFSET, len(guest_agent.MARKER_MAGIC)) == guest_agent.MARKER_MAGIC
    api.VM.start(clone, False, False)
    clone_gm = _wait_metrics(api, clone)
    assert api.VM_guest_metrics.get_os_version(clone_gm)['name'] == 'Rocky Linux 9.3'


def test_guest_metrics_have_no_create_or_destroy(agents):
    _server, api = agents
    with pytest.raises(Exception, match='MESSAGE_METHOD_UNKNOWN'):
        api.VM_guest_metrics.create({})
