# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Long operations and cancellation, the task and session GC, per-host certificates and the
redirect of disk transfers to the pool member that sees the SR."""

import http.client
import socket
import ssl
import subprocess
import time
import urllib.parse

import pytest
import XenAPI
import yaml

import simhelpers as h
from xapisim.testing import EXAMPLE_CONFIG

# Not imported from conftest: pytest runs this suite with tests/integration, whose conftest has the same module name.
with open(EXAMPLE_CONFIG, encoding='utf-8') as _handle:
    EXAMPLE_TEXT = _handle.read()

MEMBER_POOL = yaml.safe_load(EXAMPLE_TEXT)
MEMBER_POOL['srs'].append({'name': 'Local storage xcp-host2', 'size': '10GiB', 'host': 'xcp-host2'})
MEMBER_POOL['vms'].append({'name': 'app02', 'disks': [{'name': 'app02-root', 'size': '64MiB', 'sr': 'Local storage xcp-host2',
                                                       'data': [{'offset': 0, 'length': '4MiB', 'seed': 11}]}]})


@pytest.fixture
def msim(sim):
    """The HTTPS simulator with a local SR on the pool member xcp-host2 and a VM whose disk lives there."""
    sim.control.load_config(MEMBER_POOL)
    return sim


def _wait(predicate, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# -- long operations and cancellation ----------------------------------------------------------------


def test_cancel_of_a_delayed_vm_start_ends_cancelled(sim, xapi):
    vm = xapi.xenapi.VM.get_by_name_label('db01')[0]
    sim.control.delay(5, 'VM.start')
    began = time.monotonic()
    task = xapi.xenapi.Async.VM.start(vm, False, False)
    assert xapi.xenapi.task.get_allowed_operations(task) == ['cancel']
    xapi.xenapi.task.cancel(task)
    # XAPI keeps the status pending and records the request (xapi_task.ml cancel).
    assert list(xapi.xenapi.task.get_current_operations(task).values()) == ['cancel']
    rec = h.wait_task(xapi.xenapi, task)
    assert time.monotonic() - began < 4
    assert rec['status'] == 'cancelled' and rec['error_info'][0] == 'TASK_CANCELLED'
    assert xapi.xenapi.VM.get_power_state(vm) == 'Halted'


def test_cancel_of_a_delayed_hard_shutdown_ends_cancelled(sim, xapi):
    vm = xapi.xenapi.VM.get_by_name_label('web01')[0]
    sim.control.delay(5, 'VM.hard_shutdown')
    task = xapi.xenapi.Async.VM.hard_shutdown(vm)
    xapi.xenapi.task.cancel(task)
    assert h.wait_task(xapi.xenapi, task)['status'] == 'cancelled'
    assert xapi.xenapi.VM.get_power_state(vm) == 'Running'


@pytest.mark.parametrize('method', ['VDI.destroy', 'VM.destroy'])
def test_destroys_cannot_be_cancelled(sim, xapi, method):
    vm = xapi.xenapi.VM.get_by_name_label('db01')[0]
    target = xapi.xenapi.VDI.get_by_name_label('db01-root')[0] if method == 'VDI.destroy' else vm
    if method == 'VDI.destroy':
        for vbd in xapi.xenapi.VDI.get_VBDs(target):
            xapi.xenapi.VBD.destroy(vbd)
    sim.control.delay(1, method)
    cls, name = method.split('.')
    task = getattr(getattr(xapi.xenapi.Async, cls), name)(target)
    assert xapi.xenapi.task.get_allowed_operations(task) == []
    xapi.xenapi.task.cancel(task)
    rec = h.wait_task(xapi.xenapi, task)
    assert rec['status'] == 'success'
    with pytest.raises(XenAPI.Failure, match=r"^\['HANDLE_INVALID', ") as err:
        getattr(xapi.xenapi, cls).get_record(target)
    assert err.value.details[0] == 'HANDLE_INVALID'


def test_sync_long_call_takes_the_delay(sim, xapi):
    vm = xapi.xenapi.VM.get_by_name_label('web01')[0]
    sim.control.delay(1.0, 'VM.hard_shutdown')
    began = time.monotonic()
    xapi.xenapi.VM.hard_shutdown(vm)
    assert time.monotonic() - began >= 1.0
    assert xapi.xenapi.VM.get_power_state(vm) == 'Halted'


# -- task destroy and the GC -----------------------------------------------------------------------------


def test_destroy_of_a_pending_task_waits_for_its_end(sim, xapi):
    vm = xapi.xenapi.VM.get_by_name_label('db01')[0]
    sim.control.lifetimes(gc_interval=3600)
    sim.control.delay(1, 'VM.destroy')
    task = xapi.xenapi.Async.VM.destroy(vm)
    xapi.xenapi.task.destroy(task)
    assert xapi.xenapi.task.get_current_operations(task) == {'task': 'destroy'}
    assert h.wait_task(xapi.xenapi, task)['status'] == 'success'
    assert task in sim.control.collect_garbage()['tasks']
    with pytest.raises(XenAPI.Failure, match=r"^\['HANDLE_INVALID', 'task'") as err:
        xapi.xenapi.task.get_status(task)
    assert err.value.details[:2] == ['HANDLE_INVALID', 'task']


def test_pending_task_past_its_lifetime_goes_when_its_progress_stalls(sim, xapi):
    sim.control.lifetimes(task_lifetime=0.2, gc_interval=3600)
    stalled = xapi.xenapi.task.create('stalled', '')
    moving = xapi.xenapi.task.create('moving', '')
    time.sleep(0.3)
    assert sim.control.collect_garbage()['tasks'] == []  # first pass: both on probation
    xapi.xenapi.task.set_progress(moving, 0.5)
    assert sim.control.collect_garbage()['tasks'] == [stalled]
    assert xapi.xenapi.task.get_status(moving) == 'pending'
    with pytest.raises(XenAPI.Failure, match=r"^\['HANDLE_INVALID', 'task', '%s'\]$" % stalled):
        xapi.xenapi.task.get_status(stalled)


def test_finished_tasks_go_after_their_lifetime(sim, xapi):
    sim.control.lifetimes(completed_task_lifetime=0.2, gc_interval=3600)
    task = xapi.xenapi.Async.VM.start(xapi.xenapi.VM.get_by_name_label('db01')[0], False, False)
    assert h.wait_task(xapi.xenapi, task)['status'] == 'success'
    assert task not in sim.control.collect_garbage()['tasks']
    time.sleep(0.3)
    assert task in sim.control.collect_garbage()['tasks']


def test_gc_runs_by_itself(sim, xapi):
    sim.control.lifetimes(task_lifetime=0.1, gc_interval=0.1)
    task = xapi.xenapi.task.create('left alone', '')
    assert _wait(lambda: task not in xapi.xenapi.task.get_all())


def test_lifetimes_from_the_pool_yaml(sim):
    pool = yaml.safe_load(EXAMPLE_TEXT)
    pool['limits'].update(task_lifetime=5, session_timeout=7, gc_interval=2)
    sim.control.load_config(pool)
    assert sim.control.lifetimes() == {'task_lifetime': 5.0, 'session_timeout': 7.0, 'gc_interval': 2.0,
                                       'completed_task_lifetime': 3900.0}
    sim.control.load_config(EXAMPLE_TEXT)
    assert sim.control.lifetimes()['task_lifetime'] == 86400.0


def test_inactive_session_expires_unless_it_has_a_pending_task(sim):
    sim.control.lifetimes(session_timeout=0.2, gc_interval=3600)
    idle = h.raw_call(sim, 'session.login_with_password', 'root', 'secret', '1.0', 'idle')['Value']
    busy = h.raw_call(sim, 'session.login_with_password', 'root', 'secret', '1.0', 'busy')['Value']
    h.raw_call(sim, 'task.create', busy, 'transfer', '')
    time.sleep(0.3)
    assert set(sim.control.collect_garbage()['sessions']) == {idle}
    assert h.raw_call(sim, 'VM.get_all', idle)['ErrorDescription'] == ['SESSION_INVALID', idle]
    assert h.raw_call(sim, 'VM.get_all', busy)['Status'] == 'Success'


def test_active_session_is_kept(sim):
    sim.control.lifetimes(session_timeout=0.4, gc_interval=3600)
    session = h.raw_call(sim, 'session.login_with_password', 'root', 'secret', '1.0', 'active')['Value']
    for _num in range(3):
        time.sleep(0.2)
        assert h.raw_call(sim, 'VM.get_all', session)['Status'] == 'Success'
        sim.control.collect_garbage()
    assert h.raw_call(sim, 'VM.get_all', session)['Status'] == 'Success'


def test_export_whose_task_is_destroyed_is_cut(sim, xapi):
    sim.control.write_vdi('db01-root', 0, seed=21, length=64 << 20)
    vdi = xapi.xenapi.VDI.get_by_name_label('db01-root')[0]
    sim.control.lifetimes(task_lifetime=0.2, gc_interval=3600)
    task = xapi.xenapi.task.create('export', '')
    conn = h.connection(sim)
    conn.request('GET', '/export_raw_vdi?' + urllib.parse.urlencode({'session_id': xapi.handle, 'vdi': vdi, 'format': 'raw',
                                                                     'task_id': task}))
    resp = conn.getresponse()
    assert resp.status == 200
    got = len(resp.read(1 << 20))
    time.sleep(0.3)  # the reader stalls: the server blocks, progress stops
    sim.control.collect_garbage()
    assert sim.control.collect_garbage()['tasks'] == [task]
    try:
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    except (http.client.IncompleteRead, ConnectionError):
        pass
    conn.close()
    assert got < 8 << 30  # the disk is 8 GiB raw: the body was cut
    with pytest.raises(XenAPI.Failure, match=r"^\['HANDLE_INVALID', 'task'") as err:
        xapi.xenapi.task.get_status(task)
    assert err.value.details[:2] == ['HANDLE_INVALID', 'task']


# -- per-host certificates and redirects -------------------------------------------------------------------


def _peer_certificate(url, cafile):
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            return tls.getpeercert()


def test_each_host_has_its_own_self_signed_certificate(sim):
    coordinator = _peer_certificate(sim.url, sim.ca_path)
    assert dict(x[0] for x in coordinator['subject'])['commonName'] == 'xcp-host1'
    assert coordinator['subject'] == coordinator['issuer']
    assert ('IP Address', '127.0.0.1') in coordinator['subjectAltName']
    member = _peer_certificate(sim.slave_url, sim.ca_bundle_path)
    assert dict(x[0] for x in member['subject'])['commonName'] == 'xcp-host2'
    assert member['serialNumber'] != coordinator['serialNumber']
    with pytest.raises(ssl.SSLCertVerificationError, match='certificate verify failed: self-signed certificate'):
        _peer_certificate(sim.slave_url, sim.ca_path)
    text = subprocess.run(['openssl', 'x509', '-noout', '-text', '-in', sim.ca_path], check=True, capture_output=True, text=True).stdout
    assert 'CA:TRUE' not in text


def test_member_still_refuses_logins(msim):
    session = XenAPI.Session(msim.slave_url, transport=msim.transport())
    with pytest.raises(XenAPI.Failure, match=r"^\['HOST_IS_SLAVE', ") as err:
        session.login_with_password('root', 'secret', '1.0', 'tests')
    assert err.value.details[0] == 'HOST_IS_SLAVE'


def _get(url, path, cafile):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=30, context=ssl.create_default_context(cafile=cafile))
    conn.request('GET', path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_export_at_the_coordinator_of_a_member_sr_redirects(msim, xapi):
    vdi = xapi.xenapi.VDI.get_by_name_label('app02-root')[0]
    task = xapi.xenapi.task.create('export', '')
    path = '/export_raw_vdi?' + urllib.parse.urlencode({'session_id': xapi.handle, 'task_id': task, 'vdi': vdi, 'format': 'raw'})
    resp, _body = _get(msim.url, path, msim.ca_path)
    assert resp.status == 302
    assert resp.getheader('Location') == msim.slave_url + path
    assert xapi.xenapi.task.get_status(task) == 'pending'
    resp, body = _get(msim.slave_url, path, msim.ca_bundle_path)
    assert resp.status == 200 and body == msim.control.read_vdi('app02-root')
    assert h.wait_task(xapi.xenapi, task)['status'] == 'success'


def test_export_at_the_member_of_a_coordinator_sr_redirects_back(msim, xapi):
    vdi = xapi.xenapi.VDI.get_by_name_label('db01-root')[0]
    path = '/export_raw_vdi?' + urllib.parse.urlencode({'session_id': xapi.handle, 'vdi': vdi, 'format': 'vhd'})
    resp, _body = _get(msim.slave_url, path, msim.ca_bundle_path)
    assert resp.status == 302 and resp.getheader('Location') == msim.url + path


def test_redirect_comes_after_the_credentials_check(msim, xapi):
    vdi = xapi.xenapi.VDI.get_by_name_label('app02-root')[0]
    resp, _body = _get(msim.url, '/export_raw_vdi?' + urllib.parse.urlencode({'session_id': 'OpaqueRef:bad', 'vdi': vdi}), msim.ca_path)
    assert resp.status == 401


def test_import_into_a_member_sr_redirects_before_the_body(msim, xapi):
    vdi = xapi.xenapi.VDI.get_by_name_label('app02-root')[0]
    data = bytes(range(256)) * 8192  # 2 MiB
    query = urllib.parse.urlencode({'session_id': xapi.handle, 'vdi': vdi, 'format': 'raw'})
    parts = urllib.parse.urlsplit(msim.url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=30, context=ssl.create_default_context(cafile=msim.ca_path))
    conn.putrequest('PUT', '/import_raw_vdi?' + query)
    conn.putheader('Content-Length', str(len(data)))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 302 and resp.getheader('Location') == '%s/import_raw_vdi?%s' % (msim.slave_url, query)
    conn.close()
    member = urllib.parse.urlsplit(msim.slave_url)
    conn = http.client.HTTPSConnection(member.hostname, member.port, timeout=30, context=ssl.create_default_context(cafile=msim.ca_bundle_path))
    conn.request('PUT', '/import_raw_vdi?' + query, body=data)
    assert conn.getresponse().status == 200
    conn.close()
    assert _wait(lambda: msim.control.read_vdi('app02-root', 0, len(data)) == data)


def test_sr_on_an_unknown_host_is_refused(sim):
    pool = yaml.safe_load(EXAMPLE_TEXT)
    pool['srs'].append({'name': 'lost', 'host': 'xcp-host9'})
    with pytest.raises(Exception, match='unknown host xcp-host9'):
        sim.control.load_config(pool)


def test_host_get_server_certificate_gives_each_host_its_own(msim, xapi, tmp_path):
    pems = {xapi.xenapi.host.get_name_label(host): xapi.xenapi.host.get_server_certificate(host) for host in xapi.xenapi.host.get_all()}
    assert set(pems) == {'xcp-host1', 'xcp-host2'} and pems['xcp-host1'] != pems['xcp-host2']
    with open(msim.ca_path, encoding='ascii') as handle:
        assert pems['xcp-host1'].strip() == handle.read().strip()
    bundle = tmp_path / 'bundle.pem'
    bundle.write_text(pems['xcp-host1'] + pems['xcp-host2'])
    assert _peer_certificate(msim.slave_url, str(bundle))['subject']


def test_import_whose_task_is_destroyed_is_dropped(sim, xapi):
    vdi = xapi.xenapi.VDI.get_by_name_label('db01-root')[0]
    sim.control.lifetimes(task_lifetime=0.2, gc_interval=3600)
    task = xapi.xenapi.task.create('import', '')
    length = 64 << 20
    conn = h.connection(sim)
    conn.putrequest('PUT', '/import_raw_vdi?' + urllib.parse.urlencode({'session_id': xapi.handle, 'vdi': vdi, 'format': 'raw',
                                                                       'task_id': task}))
    conn.putheader('Content-Length', str(length))
    conn.endheaders()
    conn.send(b'\1' * (1 << 20))
    time.sleep(0.3)  # the sender stalls: progress stops
    sim.control.collect_garbage()
    assert sim.control.collect_garbage()['tasks'] == [task]
    # the simulator closed the connection: how the send learns it depends on timing (TLS or TCP)
    with pytest.raises(OSError, match='EOF occurred in violation of protocol|Broken pipe|Connection reset by peer'):
        for _num in range(63):
            conn.send(b'\2' * (1 << 20))
    conn.close()
    with pytest.raises(XenAPI.Failure, match=r"^\['HANDLE_INVALID', 'task'") as err:
        xapi.xenapi.task.get_status(task)
    assert err.value.details[:2] == ['HANDLE_INVALID', 'task']
    assert sim.control.read_vdi('db01-root', 2 << 20, 4096) != b'\2' * 4096
