# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wire format, dispatch and transport."""

import re
import ssl
import threading
import time
import xmlrpc.client

import pytest
import XenAPI

import simhelpers as h


def _post(running, body, path='/'):
    conn = h.connection(running)
    conn.request('POST', path, body=body, headers={'Content-Type': 'text/xml'})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.headers, data


def _login_raw(running, path='/'):
    body = xmlrpc.client.dumps(('root', 'secret', '1.0', 'tests'), 'session.login_with_password')
    status, _headers, data = _post(running, body.encode(), path)
    assert status == 200
    return xmlrpc.client.loads(data)[0][0]


@pytest.mark.parametrize('path', ['/', '/RPC2'])
def test_envelope_on_both_paths(sim, path):
    env = _login_raw(sim, path)
    assert env['Status'] == 'Success'
    assert env['Value'].startswith('OpaqueRef:')
    h.raw_call(sim, 'session.logout', env['Value'])


def test_ints_are_strings_dates_and_null_refs(sim):
    session = _login_raw(sim)['Value']
    vms = h.raw_call(sim, 'VM.get_all_records', session)['Value']
    dom0 = [v for v in vms.values() if v['is_control_domain']][0]
    assert dom0['memory_static_max'] == str(4 << 30)
    assert isinstance(dom0['domid'], str)
    assert dom0['snapshot_of'] == 'OpaqueRef:NULL'
    assert dom0['snapshot_time'].value == '19700101T00:00:00Z'
    assert isinstance(dom0['is_a_template'], bool)
    body = xmlrpc.client.dumps((session,), 'VM.get_all').encode()
    _status, _headers, data = _post(sim, body)
    assert b'<value>OpaqueRef:' in data and b'<string>' not in data
    body = xmlrpc.client.dumps((session, list(vms)[0]), 'VM.get_snapshot_time').encode()
    data = _post(sim, body)[2]
    assert re.search(rb'<dateTime.iso8601>\d{8}T\d\d:\d\d:\d\dZ</dateTime.iso8601>', data)
    h.raw_call(sim, 'session.logout', session)


def test_failure_envelope_and_unknown_method(sim):
    session = _login_raw(sim)['Value']
    env = h.raw_call(sim, 'VM.frobnicate', session)
    assert env == {'Status': 'Failure', 'ErrorDescription': ['MESSAGE_METHOD_UNKNOWN', 'VM.frobnicate']}
    env = h.raw_call(sim, 'VM.get_record', session)
    assert env['ErrorDescription'] == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.get_record', '1', '0']
    env = h.raw_call(sim, 'VM.snapshot', session, 'OpaqueRef:NULL')
    assert env['ErrorDescription'] == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '1']
    # gen_server.ml: a message with defaulted parameters reads them from what follows the required ones and
    # ignores any surplus, so a fourth argument is no arity error (the call gets as far as the VM handle).
    env = h.raw_call(sim, 'VM.snapshot', session, 'OpaqueRef:NULL', 'a', [], 'x')
    assert env['ErrorDescription'] == ['HANDLE_INVALID', 'VM', 'OpaqueRef:NULL']
    h.raw_call(sim, 'session.logout', session)


def test_bad_xml_is_http_500(sim):
    status, headers, data = _post(sim, b'<methodCall><not-closed>')
    assert status == 500
    assert 'html' in headers['Content-Type'] and b'<html>' in data


def test_underscore_forms_and_no_async_for_getters(xapi):
    assert xapi.xenapi.VM_get_all() == xapi.xenapi.VM.get_all()
    with pytest.raises(XenAPI.Failure, match=r"^\['Fault', ") as err:
        xapi.xenapi.Async.VM.get_all()
    assert err.value.details[0] == 'Fault'
    with pytest.raises(XenAPI.Failure, match=r'No async mode for this operation \(rpc: session.get_this_host\)'):
        xapi.xenapi.Async.session.get_this_host(xapi.handle)


def test_https_verification_fails_when_untrusted(sim):
    session = XenAPI.Session(sim.url)
    with pytest.raises(ssl.SSLError, match='CERTIFICATE_VERIFY_FAILED'):
        session.login_with_password('root', 'secret', '1.0', 'tests')
    unverified = XenAPI.Session(sim.url, ignore_ssl=True)
    unverified.login_with_password('root', 'secret', '1.0', 'tests')
    unverified.xenapi.session.logout()


def test_plain_http_client(hxapi):
    assert len(hxapi.xenapi.pool.get_all()) == 1


def test_concurrent_requests(sim):
    sim.control.delay(0.5, 'VM.get_all')
    results = []

    def worker():
        session = sim.xenapi_session()
        session.login_with_password('root', 'secret', '1.0', 'tests')
        results.append(len(session.xenapi.VM.get_all()))
        session.xenapi.session.logout()

    threads = [threading.Thread(target=worker) for _num in range(8)]
    start = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sim.control.delay(0, 'VM.get_all')
    assert results == [5] * 8
    assert time.time() - start < 3.0  # one at a time would take 4 s
    assert sim.control.session_count() == 0
