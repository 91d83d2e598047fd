# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Tests of _xapi/session.py: the XapiConnection facade, its options, login (HOST_IS_SLAVE), calls and logout.

Over real HTTPS against ``MiniXapi`` (xapi_stub.py), and against the XAPI simulator.
"""

from __future__ import annotations

import os
import ssl
import time

import pytest

XenAPI = pytest.importorskip('XenAPI')

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # noqa: E402

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import ConnectionOptionError, XapiError  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.http import HostEndpoint  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import (  # noqa: E402
    DEFAULT_OPERATION_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_TRANSFER_READ_TIMEOUT, XapiConnection,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import connection_argument_spec  # noqa: E402
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._xapi.xapi_stub import PASSWORD, Fail, MiniXapi, serve, sim_connect  # noqa: E402


# -- connection options ----------------------------------------------------------------------------


def test_argument_spec_env_fallbacks_and_defaults(monkeypatch):
    monkeypatch.setenv('XENSERVER_HOST', 'pool.example')
    monkeypatch.setenv('XENSERVER_PASSWORD', 'pw')
    monkeypatch.setenv('XENSERVER_VALIDATE_CERTS', 'false')
    monkeypatch.setenv('XENSERVER_CA_PATH', '~/ca.pem')
    result = ArgumentSpecValidator(connection_argument_spec()).validate({'user': 'admin'})
    assert not result.error_messages
    params = result.validated_parameters
    assert params['hostname'] == 'pool.example' and params['username'] == 'admin' and params['password'] == 'pw'
    assert params['validate_certs'] is False and params['ca_path'] == os.path.expanduser('~/ca.pem') and params['timeout'] == 60
    assert 'pw' in result._no_log_values  # pylint: disable=protected-access


def test_doc_fragment_documents_every_connection_option_with_its_default():
    import yaml  # pylint: disable=import-outside-toplevel
    from ansible_collections.xapi.delta_backup.plugins.doc_fragments.connection import ModuleDocFragment  # pylint: disable=import-outside-toplevel
    documented = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)['options']
    spec = connection_argument_spec()
    assert set(documented) == set(spec)
    for name, option in spec.items():
        assert documented[name]['type'] == option['type'] and documented[name].get('default') == option.get('default'), name
    assert documented['operation_timeout']['version_added'] == documented['transfer_read_timeout']['version_added'] == '0.2.0'


def test_argument_spec_task_value_beats_env(monkeypatch):
    monkeypatch.setenv('XENSERVER_HOST', 'env.example')
    params = ArgumentSpecValidator(connection_argument_spec()).validate({'pool': 'task.example'}).validated_parameters
    assert params['hostname'] == 'task.example' and params['username'] == 'root' and params['validate_certs'] is True


def test_blank_survey_values_count_as_unset(pki):
    connection = XapiConnection('pool.example', username='', password=None, ca_path='', timeout=None)
    assert connection.username == 'root' and connection.password == '' and connection.ca_path is None and connection.timeout == 60


@pytest.mark.parametrize('option', ['timeout', 'operation_timeout', 'transfer_read_timeout'])
def test_negative_timeouts_are_refused(option):
    with pytest.raises(ConnectionOptionError, match='^%s must be a positive number of seconds, got -1$' % option) as caught:
        XapiConnection('pool.example', **{option: -1})
    assert caught.value.option == option and caught.value.error_code == 'invalid_connection_option'


def test_unset_timeouts_take_the_defaults():
    connection = XapiConnection('http://pool.example', timeout=0, operation_timeout=None, transfer_read_timeout=0)
    assert (connection.timeout, connection.operation_timeout, connection.transfer_read_timeout) == (
        DEFAULT_TIMEOUT, DEFAULT_OPERATION_TIMEOUT, DEFAULT_TRANSFER_READ_TIMEOUT) == (60.0, 600.0, 300.0)
    assert connection.ssl_context is None and not connection.logged_in  # plain http has no TLS context


def test_from_params_takes_the_module_options(pki):
    params = ArgumentSpecValidator(connection_argument_spec()).validate({
        'hostname': 'https://pool.example:8443', 'username': 'backup', 'password': 'pw', 'ca_path': pki['ca'], 'timeout': 7,
        'operation_timeout': 70, 'transfer_read_timeout': 700}).validated_parameters
    connection = XapiConnection.from_params(params)
    assert connection.endpoint == HostEndpoint('https', 'pool.example', 8443) and connection.username == 'backup' and connection.password == 'pw'
    assert connection.ca_path == pki['ca'] and connection.validate_certs is True and connection.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert (connection.timeout, connection.operation_timeout, connection.transfer_read_timeout) == (7.0, 70.0, 700.0)
    bare = XapiConnection.from_params({'hostname': 'pool.example'})
    assert bare.username == 'root' and bare.timeout == DEFAULT_TIMEOUT and bare.validate_certs is True


def test_from_params_without_a_hostname_says_how_to_set_it():
    with pytest.raises(ConnectionOptionError, match='no pool to connect to: set hostname or the XENSERVER_HOST environment variable'):
        XapiConnection.from_params({'hostname': None})


# -- sessions over real HTTPS ----------------------------------------------------------------------


def test_login_with_ca_verification_and_logout(connect, https_server):
    with connect() as xapi:
        assert xapi.logged_in and xapi.session_ref.startswith('OpaqueRef:')
        assert len(https_server.xapi.sessions) == 1
    assert https_server.xapi.sessions == {} and https_server.xapi.logouts == 1
    assert https_server.xapi.originators == ['xapi.delta_backup']


def test_logout_even_when_the_body_fails(connect, https_server):
    with pytest.raises(XapiError, match='^VM.get_record on OpaqueRef:gone failed: VM OpaqueRef:gone does not exist') as caught:
        with connect() as xapi:
            xapi.call('VM.get_record', 'OpaqueRef:gone')
    assert caught.value.code == 'HANDLE_INVALID' and 'VM.get_record on OpaqueRef:gone failed: VM OpaqueRef:gone does not exist' in str(caught.value)
    with pytest.raises(RuntimeError, match='^module bug$'):
        with connect():
            raise RuntimeError('module bug')
    assert https_server.xapi.sessions == {} and https_server.xapi.logouts == 2


def test_wrong_password(connect):
    with pytest.raises(XapiError, match='login failed for user root on host 127.0.0.1: check username and password') as caught:
        with connect(password='wrong'):
            pass
    assert caught.value.code == 'SESSION_AUTHENTICATION_FAILED'


def test_host_is_slave_is_followed_once(server_context, connect, https_server):
    member = serve(server_context)
    try:
        member.xapi.coordinator = '127.0.0.1:%d' % https_server.server_address[1]
        with connect(hostname='127.0.0.1:%d' % member.server_address[1]) as xapi:
            assert xapi.endpoint.port == https_server.server_address[1]
        assert https_server.xapi.logins == 1 and https_server.xapi.logouts == 1 and member.xapi.logins == 0
        # A coordinator that itself redirects is not followed a second time.
        https_server.xapi.coordinator = '127.0.0.1:%d' % member.server_address[1]
        with pytest.raises(XapiError, match='not the coordinator') as caught:
            with connect(hostname='127.0.0.1:%d' % member.server_address[1]):
                pass
        assert caught.value.code == 'HOST_IS_SLAVE'
    finally:
        member.shutdown()
        member.server_close()


def test_host_is_slave_over_plain_http_keeps_the_scheme():
    coordinator, member = serve(), serve()
    try:
        member.xapi.coordinator = '127.0.0.1:%d' % coordinator.server_address[1]
        with XapiConnection('http://127.0.0.1:%d' % member.server_address[1], password=PASSWORD, timeout=5) as xapi:
            assert xapi.endpoint == HostEndpoint('http', '127.0.0.1', coordinator.server_address[1]) and xapi.ssl_context is None
            assert xapi.call('task.create', 'on the coordinator', '') in coordinator.xapi.tasks
        assert coordinator.xapi.logins == coordinator.xapi.logouts == 1 and member.xapi.logins == 0
    finally:
        for server in (coordinator, member):
            server.shutdown()
            server.server_close()


def test_call_requires_login(connect):
    with pytest.raises(XapiError, match='not logged in'):
        connect().call('VM.get_all')


def test_call_label_names_the_action(connect):
    with connect() as xapi:
        with pytest.raises(XapiError, match='^removal of snapshot x failed: VM OpaqueRef:gone does not exist'):
            xapi.call('VM.get_record', 'OpaqueRef:gone', what='removal of snapshot x')


def test_login_and_logout_are_idempotent(connect, https_server):
    xapi = connect(originator='backup-tests')
    assert not xapi.logged_in
    with pytest.raises(XapiError, match='^not logged in to 127.0.0.1:%d: use the connection as a context manager' % https_server.server_address[1]):
        xapi.session_ref  # pylint: disable=pointless-statement  # noqa: B018 (the property raises)
    xapi.login()
    first = xapi.session_ref
    xapi.login()
    assert xapi.session_ref == first and https_server.xapi.logins == 1 and https_server.xapi.originators == ['backup-tests']
    xapi.logout()
    xapi.logout()
    assert not xapi.logged_in and https_server.xapi.logouts == 1 and https_server.xapi.sessions == {}
    with xapi:  # a connection can log in again after a logout
        assert xapi.session_ref != first
    assert https_server.xapi.logins == 2 and https_server.xapi.logouts == 2


def test_logout_never_raises(connect, https_server, monkeypatch):
    original = MiniXapi.call

    def refuse_logout(self, method, params):
        if method == 'session.logout':
            raise Fail('SESSION_INVALID', params[0])  # the host restarted and forgot the session
        return original(self, method, params)
    monkeypatch.setattr(MiniXapi, 'call', refuse_logout)
    with connect() as xapi:
        assert xapi.logged_in
    assert not xapi.logged_in and https_server.xapi.logouts == 0 and len(https_server.xapi.sessions) == 1


def test_call_without_a_string_argument_is_labelled_with_the_method(connect):
    with connect() as xapi:
        with pytest.raises(XapiError, match=r'^pool.get_all failed: XAPI error MESSAGE_METHOD_UNKNOWN \(pool.get_all\)$') as caught:
            xapi.call('pool.get_all')
        assert caught.value.code == 'MESSAGE_METHOD_UNKNOWN' and caught.value.params == ['pool.get_all']
        assert xapi.call('task.create', 'label', 'description').startswith('OpaqueRef:')


def test_expired_session_is_renewed_by_the_next_call(connect, https_server):
    with connect() as xapi:
        first = xapi.session_ref
        with https_server.xapi.lock:
            del https_server.xapi.sessions[first]  # XAPI's GC removed the idle session
        assert xapi.call('task.create', 'after expiry', '').startswith('OpaqueRef:')
        assert xapi.session_ref != first
    assert https_server.xapi.logins == 2 and https_server.xapi.sessions == {}


# -- against the XAPI simulator --------------------------------------------------------------------


def test_sim_login_verified_and_logged_out(sim):
    before = sim.control.sessions()
    with sim_connect(sim) as xapi:
        assert xapi.call('VM.get_by_name_label', 'web01')
        assert sim.control.session_count() == before['count'] + 1
    after = sim.control.sessions()
    assert after['count'] == before['count'] and after['logouts'] == before['logouts'] + 1


def test_sim_logout_after_a_failure(sim):
    count = sim.control.session_count()
    with pytest.raises(XapiError, match='no VM with uuid 00000000-0000-4000-8000-000000000000 exists') as caught:
        with sim_connect(sim) as xapi:
            xapi.call('VM.get_by_uuid', '00000000-0000-4000-8000-000000000000')
    assert caught.value.code == 'UUID_INVALID' and 'no VM with uuid 00000000-0000-4000-8000-000000000000 exists' in str(caught.value)
    assert sim.control.session_count() == count


def test_sim_wrong_password(sim):
    with pytest.raises(XapiError, match='login failed for user root on host 127.0.0.1') as caught:
        with sim_connect(sim, password='wrong'):
            pass
    assert caught.value.code == 'SESSION_AUTHENTICATION_FAILED'


def test_sim_host_is_slave_redirect(sim):
    assert sim.slave_url, 'the simulator should offer a pool member listener'
    count = sim.control.session_count()
    # The member has its own certificate: the bundle of every host's certificate trusts both.
    with sim_connect(sim, url=sim.slave_url, ca_path=sim.ca_bundle_path) as xapi:
        assert xapi.endpoint.url == sim.url.rstrip('/') + '/'
        assert xapi.call('VM.get_by_name_label', 'db01')
    assert sim.control.session_count() == count


def test_sim_expired_session_is_renewed_once(sim):
    sim.control.lifetimes(session_timeout=0.2, gc_interval=3600)
    try:
        before = sim.control.sessions()
        with sim_connect(sim) as xapi:
            first = xapi.session_ref
            time.sleep(0.3)
            assert first in sim.control.collect_garbage()['sessions']
            assert xapi.call('VM.get_by_name_label', 'db01')
            assert xapi.session_ref != first
        after = sim.control.sessions()
        assert after['logins'] == before['logins'] + 2 and after['count'] == before['count']
    finally:
        sim.control.lifetimes(session_timeout=86400, gc_interval=30)
