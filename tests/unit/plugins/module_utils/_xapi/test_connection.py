# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Connection tests over real HTTP(S) with the real XenAPI client.

A small in-file XAPI stand-in (``MiniXapi``) covers exactly the calls the connection makes, so
these tests do not depend on the shared simulator's progress; the tests at the end run against
``xapisim`` when its ``testing`` entry point is available.
"""

from __future__ import annotations

import http.server
import io
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
import xmlrpc.client
from urllib.parse import parse_qs, urlsplit

import pytest

XenAPI = pytest.importorskip('XenAPI')

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # noqa: E402

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi import http as http_mod  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi import tasks as tasks_mod  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import (  # noqa: E402
    CertificateVerifyError, TaskDestroyedError, TaskTimeoutError, TransferCutError, TransferTooLongError, XapiError, xapi_error_from_failure,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.http import HostEndpoint, build_ssl_context, parse_hostname  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.tasks import decode_task_result  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import connection_argument_spec, failure_result  # noqa: E402

PASSWORD = 'secret'


# -- a minimal XAPI over HTTP(S) -----------------------------------------------------------------


class Fail(Exception):
    def __init__(self, *details):
        super().__init__(details)
        self.details = [str(d) for d in details]


class MiniXapi:
    """State of the stand-in: sessions, tasks, a disk, behaviour switches for the tests."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sessions = {}
        self.logins = 0
        self.logouts = 0
        self.coordinator = None  # 'host:port' makes this host answer HOST_IS_SLAVE
        self.tasks = {}
        self.snapshot_behaviour = 'succeed'  # or 'hang', 'fail'
        self.disk = os.urandom(3 * 1024 * 1024 + 123)
        self.export_mode = 'ok'  # or 'cut' (task fails) or 'cut-pending' (task never finishes) or 'http-500' or 'silent'
        self.imported = None
        self.import_headers = None
        self.import_mode = 'ok'  # or 'fail'
        self.import_answers_first = True  # as XAPI: 200 before reading the body
        self.originators = []
        self.destroyed = []
        self.cancelled = []

    def new_task(self, label):
        ref = 'OpaqueRef:%s' % uuid.uuid4()
        self.tasks[ref] = {'status': 'pending', 'result': '', 'error_info': [], 'label': label}
        return ref

    def finish(self, ref, result=None, error=None):
        task = self.tasks.get(ref)
        if task is None or task['status'] != 'pending':
            return
        if error:
            task.update(status='failure', error_info=list(error))
        else:
            task.update(status='success', result=result or '')

    def check_session(self, ref):
        if ref not in self.sessions:
            raise Fail('SESSION_INVALID', ref)

    def task(self, ref):
        if ref not in self.tasks:
            raise Fail('HANDLE_INVALID', 'task', ref)
        return self.tasks[ref]

    def call(self, method, params):  # pylint: disable=too-many-return-statements,too-many-branches
        if method == 'session.login_with_password':
            user, password, dummy, originator = (list(params) + ['', '', '', ''])[:4]
            if self.coordinator:
                raise Fail('HOST_IS_SLAVE', self.coordinator)
            if user != 'root' or password != PASSWORD:
                raise Fail('SESSION_AUTHENTICATION_FAILED', user, 'Authentication failure')
            ref = 'OpaqueRef:%s' % uuid.uuid4()
            self.sessions[ref] = user
            self.logins += 1
            self.originators.append(originator)
            return ref
        session, args = params[0], params[1:]
        if method == 'session.logout':
            if self.sessions.pop(session, None):
                self.logouts += 1
            return ''
        self.check_session(session)
        if method == 'task.create':
            return self.new_task(args[0])
        if method == 'task.get_status':
            return self.task(args[0])['status']
        if method == 'task.get_result':
            return self.task(args[0])['result']
        if method == 'task.get_error_info':
            return self.task(args[0])['error_info']
        if method == 'task.cancel':
            self.cancelled.append(args[0])
            task = self.task(args[0])
            if task['status'] == 'pending':
                task.update(status='cancelled', error_info=['TASK_CANCELLED', args[0]])
            return ''
        if method == 'task.destroy':
            self.task(args[0])
            del self.tasks[args[0]]
            self.destroyed.append(args[0])
            return ''
        if method == 'event.from':
            time.sleep(min(float(args[2]), 0.05))
            return {'events': [], 'valid_ref_counts': {}, 'token': '%020d,%020d' % (len(self.tasks), 0)}
        if method == 'VM.get_record':
            raise Fail('HANDLE_INVALID', 'VM', args[0])
        if method == 'Async.VM.snapshot':
            if len(args) == 3:
                raise Fail('MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '3')
            ref = self.new_task('Async.VM.snapshot')
            if self.snapshot_behaviour == 'succeed':
                threading.Timer(0.2, self.finish, (ref, '<value>OpaqueRef:snap</value>')).start()
            elif self.snapshot_behaviour == 'fail':
                self.finish(ref, error=['SR_BACKEND_FAILURE_109', '', 'chain too long', ''])
            return ref
        raise Fail('MESSAGE_METHOD_UNKNOWN', method)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):  # keep pytest output quiet
        pass

    @property
    def xapi(self) -> MiniXapi:
        return self.server.xapi

    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        params, method = xmlrpc.client.loads(body)
        with self.xapi.lock:
            try:
                envelope = {'Status': 'Success', 'Value': self.xapi.call(method, params)}
            except Fail as failure:
                envelope = {'Status': 'Failure', 'ErrorDescription': failure.details}
        reply = xmlrpc.client.dumps((envelope,), methodresponse=True, allow_none=True).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/xml')
        self.send_header('Content-Length', str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def _query(self):
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        with self.xapi.lock:
            if query.get('session_id') not in self.xapi.sessions:
                self.send_error(401)
                return None
        return query

    def do_GET(self):
        query = self._query()
        if query is None:
            return
        task, mode = query.get('task_id'), self.xapi.export_mode
        if mode == 'silent':  # attaching the disk takes longer than the client waits
            time.sleep(1.5)
            self.close_connection = True
            return
        if mode == 'http-500':
            with self.xapi.lock:
                self.xapi.finish(task, error=['VDI_MISSING', 'sr', query.get('vdi')])
            self.send_response(500)
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        self.send_response(200)
        self.send_header('Connection', 'close')
        self.send_header('Content-Type', 'application/vhd')
        self.end_headers()
        data = self.xapi.disk if mode == 'ok' else self.xapi.disk[:1024 * 1024 + 7]
        self.wfile.write(data)
        self.wfile.flush()
        with self.xapi.lock:
            if mode == 'ok':
                self.xapi.finish(task)
            elif mode == 'cut':
                self.xapi.finish(task, error=['VDI_IO_ERROR', 'Device I/O errors'])
        self.close_connection = True

    def do_PUT(self):
        query = self._query()
        if query is None:
            return
        self.xapi.import_headers = dict(self.headers)
        if 'Transfer-Encoding' in self.headers:
            self.send_error(404)
            return
        if self.xapi.import_answers_first:
            self.send_response(200)
            self.send_header('Content-Length', '0')
            self.end_headers()
            self.wfile.flush()
        length = int(self.headers['Content-Length'])
        data = b''
        while len(data) < length:
            chunk = self.rfile.read(min(65536, length - len(data)))
            if not chunk:
                break
            data += chunk
        if not self.xapi.import_answers_first:
            self.send_response(200)
            self.send_header('Content-Length', '0')
            self.end_headers()
            self.wfile.flush()
        with self.xapi.lock:
            if len(data) < length:
                self.xapi.finish(query['task_id'], error=['VDI_IO_ERROR', 'short upload'])
            elif self.xapi.import_mode == 'fail':
                self.xapi.finish(query['task_id'], error=['VDI_IO_ERROR', 'bad VHD'])
            else:
                self.xapi.imported = data
                self.xapi.finish(query['task_id'], '<value>%s</value>' % query['vdi'])
        self.close_connection = True


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(context=None, address='127.0.0.1'):
    server = Server((address, 0), Handler)
    server.xapi = MiniXapi()
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope='session')
def pki(tmp_path_factory):
    """A CA and a server certificate for localhost/127.0.0.1, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp('pki')

    def run(*args):
        subprocess.run(['openssl'] + list(args), cwd=str(folder), check=True, capture_output=True)
    run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=pool test CA')
    run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'host.key', '-out', 'host.csr', '-subj', '/CN=localhost')
    (folder / 'ext.cnf').write_text('subjectAltName=DNS:localhost,IP:127.0.0.1\n')
    run('x509', '-req', '-in', 'host.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'host.pem', '-days', '2',
        '-extfile', 'ext.cnf')
    return {'ca': str(folder / 'ca.pem'), 'cert': str(folder / 'host.pem'), 'key': str(folder / 'host.key')}


@pytest.fixture
def server_context(pki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki['cert'], pki['key'])
    return context


@pytest.fixture
def https_server(server_context):
    server = serve(server_context)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def connect(https_server, pki):
    def factory(**overrides):
        options = dict(hostname='127.0.0.1:%d' % https_server.server_address[1], username='root', password=PASSWORD, ca_path=pki['ca'], timeout=5)
        options.update(overrides)
        return XapiConnection(**options)
    return factory


# -- options and parsing -----------------------------------------------------------------------------


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


def test_export_from_a_silent_host_names_the_transfer_timeout(connect, https_server):
    https_server.xapi.export_mode = 'silent'
    with connect(transfer_read_timeout=0.5) as xapi:
        with pytest.raises(XapiError, match='no answer from .* within 0.5 seconds: check the network or raise transfer_read_timeout'):
            with xapi.open_export('OpaqueRef:vdi') as stream:
                stream.read()
        assert not [t for t in https_server.xapi.tasks.values() if t['status'] == 'pending']


def test_argument_spec_task_value_beats_env(monkeypatch):
    monkeypatch.setenv('XENSERVER_HOST', 'env.example')
    params = ArgumentSpecValidator(connection_argument_spec()).validate({'pool': 'task.example'}).validated_parameters
    assert params['hostname'] == 'task.example' and params['username'] == 'root' and params['validate_certs'] is True


@pytest.mark.parametrize('value, expected', [
    ('pool.example', HostEndpoint('https', 'pool.example', 443)),
    ('https://pool.example:8443/', HostEndpoint('https', 'pool.example', 8443)),
    ('http://10.0.0.1', HostEndpoint('http', '10.0.0.1', 80)),
    ('HTTP://10.0.0.1:8080', HostEndpoint('http', '10.0.0.1', 8080)),
    ('fe80::1', HostEndpoint('https', 'fe80::1', 443)),
    ('[fe80::1]:444', HostEndpoint('https', 'fe80::1', 444)),
    (' pool.example ', HostEndpoint('https', 'pool.example', 443)),
])
def test_parse_hostname(value, expected):
    assert parse_hostname(value) == expected


@pytest.mark.parametrize('value, message', [
    ('', 'set hostname or the XENSERVER_HOST'),
    ('   ', 'set hostname or the XENSERVER_HOST'),
    (None, 'set hostname or the XENSERVER_HOST'),
    ('ftp://pool', 'unsupported scheme ftp'),
    ('https://pool/path', 'give only a host name'),
    ('pool:99999', 'invalid port'),
    ('https://user:pw@pool', 'give only a host name'),
])
def test_parse_hostname_rejects(value, message):
    with pytest.raises(XapiError, match=message):
        parse_hostname(value)


def test_blank_survey_values_count_as_unset(pki):
    connection = XapiConnection('pool.example', username='', password=None, ca_path='', timeout=None)
    assert connection.username == 'root' and connection.password == '' and connection.ca_path is None and connection.timeout == 60


def test_validate_certs_false_really_disables_verification():
    context = build_ssl_context(validate_certs=False)
    assert context.verify_mode == ssl.CERT_NONE and context.check_hostname is False
    assert build_ssl_context().verify_mode == ssl.CERT_REQUIRED


def test_missing_ca_path(tmp_path):
    with pytest.raises(XapiError, match='ca_path .* does not exist'):
        build_ssl_context(ca_path=str(tmp_path / 'nope.pem'))
    (tmp_path / 'bad.pem').write_text('not a certificate')
    with pytest.raises(XapiError, match='could not be loaded'):
        build_ssl_context(ca_path=str(tmp_path / 'bad.pem'))


@pytest.mark.parametrize('text, expected', [
    ('<value>OpaqueRef:abc</value>', 'OpaqueRef:abc'),
    ('<value><array><data><value>OpaqueRef:a</value><value>OpaqueRef:b</value></data></array></value>', ['OpaqueRef:a', 'OpaqueRef:b']),
    ('', ''),
    (None, ''),
    ('OpaqueRef:bare', 'OpaqueRef:bare'),
])
def test_decode_task_result(text, expected):
    assert decode_task_result(text) == expected


def test_decode_task_result_garbage():
    with pytest.raises(XapiError, match='cannot decode the task result'):
        decode_task_result('<value><struct>')


@pytest.mark.parametrize('details, method, fragments', [
    (['SESSION_AUTHENTICATION_FAILED', 'root', 'x'], None, ['login failed for user root']),
    (['HANDLE_INVALID', 'VM', 'OpaqueRef:1'], None, ['VM OpaqueRef:1 does not exist']),
    (['UUID_INVALID', 'VM', 'abc'], None, ['no VM with uuid abc exists']),
    (['VM_BAD_POWER_STATE', 'OpaqueRef:1', 'halted', 'running'], None, ['is running but must be halted']),
    (['SR_FULL', '100', '50'], None, ['out of space']),
    (['SR_BACKEND_FAILURE_44', '', 'no space', ''], None, ['out of space']),
    (['SR_BACKEND_FAILURE_109', '', 'chain', ''], None, ['chain is too long', 'coalesce']),
    (['VDI_IN_USE', 'OpaqueRef:v', 'destroy'], None, ['in use (destroy)', 'retry later']),
    (['OTHER_OPERATION_IN_PROGRESS', 'VM', 'OpaqueRef:1', 'clean_shutdown'], None, ['busy', 'clean_shutdown', 'retry later']),
    (['VDI_IO_ERROR', 'Device I/O errors'], None, ['transfer failed', 'Device I/O errors']),
    (['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '3'], 'Async.VM.snapshot', ['too old', 'ignore_vdis']),
    (['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.start', '3', '2'], None, ['expected 3 parameters for VM.start but got 2']),
    (['WEIRD_CODE', 'a', 'b'], None, ['XAPI error WEIRD_CODE (a, b)']),
    ([], None, ['INTERNAL_ERROR']),
])
def test_error_mapping(details, method, fragments):
    error = xapi_error_from_failure(details, what='doing it', method=method)
    assert error.message.startswith('doing it failed: ')
    for fragment in fragments:
        assert fragment in error.message
    if details:
        assert error.code == details[0] and error.params == details[1:]
        assert error.as_result() == {'code': details[0], 'params': details[1:]}


def test_failure_result_keeps_xapi_code_and_params():
    result = failure_result(XapiError('boom', 'VDI_IN_USE', ['a', 'b']))
    assert result == {'msg': 'boom', 'error_code': 'xapi_error', 'xapi_error': {'code': 'VDI_IN_USE', 'params': ['a', 'b']}}


def test_failure_result_of_an_error_xapi_never_sent_has_no_xapi_error():
    result = failure_result(TaskTimeoutError('VM.start on OpaqueRef:vm did not finish within 1 seconds', 'OpaqueRef:task'))
    assert result == {'msg': 'VM.start on OpaqueRef:vm did not finish within 1 seconds', 'error_code': 'task_timeout'}


# -- sessions over real HTTPS --------------------------------------------------------------------


def test_login_with_ca_verification_and_logout(connect, https_server):
    with connect() as xapi:
        assert xapi.logged_in and xapi.session_ref.startswith('OpaqueRef:')
        assert len(https_server.xapi.sessions) == 1
    assert https_server.xapi.sessions == {} and https_server.xapi.logouts == 1
    assert https_server.xapi.originators == ['xapi.delta_backup']


def test_logout_even_when_the_body_fails(connect, https_server):
    with pytest.raises(XapiError) as caught:
        with connect() as xapi:
            xapi.call('VM.get_record', 'OpaqueRef:gone')
    assert caught.value.code == 'HANDLE_INVALID' and 'VM.get_record on OpaqueRef:gone failed: VM OpaqueRef:gone does not exist' in str(caught.value)
    with pytest.raises(RuntimeError):
        with connect():
            raise RuntimeError('module bug')
    assert https_server.xapi.sessions == {} and https_server.xapi.logouts == 2


def test_wrong_password(connect):
    with pytest.raises(XapiError, match='login failed for user root on host 127.0.0.1: check username and password') as caught:
        with connect(password='wrong'):
            pass
    assert caught.value.code == 'SESSION_AUTHENTICATION_FAILED'


def test_untrusted_certificate_gives_clear_advice(connect):
    with pytest.raises(XapiError, match="certificate verify failed for host 127.0.0.1 .*set ca_path to the pool's CA or validate_certs: false"):
        with connect(ca_path=None):
            pass


def test_validate_certs_false_connects_without_ca(connect, https_server):
    with connect(ca_path=None, validate_certs=False) as xapi:
        assert xapi.logged_in
    assert https_server.xapi.logouts == 1


def test_hostname_mismatch_is_a_certificate_error(connect, server_context):
    # The certificate names localhost and 127.0.0.1, not 127.0.0.2 (also loopback on Linux).
    other = serve(server_context, address='127.0.0.2')
    try:
        with pytest.raises(XapiError, match='certificate verify failed for host 127.0.0.2'):
            with connect(hostname='127.0.0.2:%d' % other.server_address[1]):
                pass
        assert other.xapi.logins == 0
    finally:
        other.shutdown()
        other.server_close()


def test_http_only_when_asked():
    server = serve()
    try:
        with XapiConnection('http://127.0.0.1:%d' % server.server_address[1], password=PASSWORD, timeout=5) as xapi:
            assert xapi.endpoint.scheme == 'http'
        with pytest.raises(XapiError, match='TLS error|cannot talk|bad HTTP'):
            with XapiConnection('127.0.0.1:%d' % server.server_address[1], password=PASSWORD, timeout=5):
                pass
    finally:
        server.shutdown()
        server.server_close()


def test_connection_refused():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    with pytest.raises(XapiError, match='connection refused by 127.0.0.1:%d' % port):
        with XapiConnection('127.0.0.1:%d' % port, password=PASSWORD, timeout=2):
            pass


def test_unknown_host():
    with pytest.raises(XapiError, match='cannot resolve host no-such-pool.invalid'):
        with XapiConnection('no-such-pool.invalid', password=PASSWORD, timeout=2):
            pass


def test_silent_server_times_out():
    with socket.socket() as silent:
        silent.bind(('127.0.0.1', 0))
        silent.listen(1)
        started = time.monotonic()
        with pytest.raises(XapiError, match='no answer from 127.0.0.1:%d within 0.5 seconds' % silent.getsockname()[1]):
            with XapiConnection('http://127.0.0.1:%d' % silent.getsockname()[1], password=PASSWORD, timeout=0.5):
                pass
        assert time.monotonic() - started < 5


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


def test_call_requires_login(connect):
    with pytest.raises(XapiError, match='not logged in'):
        connect().call('VM.get_all')


# -- tasks ----------------------------------------------------------------------------------------


def test_async_call_returns_decoded_result_and_destroys_task(connect, https_server):
    with connect() as xapi:
        assert xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=5) == 'OpaqueRef:snap'
    assert https_server.xapi.tasks == {} and len(https_server.xapi.destroyed) == 1


def test_async_failure_raises_from_error_info(connect, https_server):
    https_server.xapi.snapshot_behaviour = 'fail'
    with connect() as xapi:
        with pytest.raises(XapiError, match='VM.snapshot failed: the VDI snapshot chain is too long') as caught:
            xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=5)
    assert caught.value.code == 'SR_BACKEND_FAILURE_109' and https_server.xapi.tasks == {}


def test_async_arity_error_is_synchronous_and_explained(connect):
    with connect() as xapi:
        with pytest.raises(XapiError, match='too old for VM.snapshot with ignore_vdis'):
            xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', ['OpaqueRef:vdi'], timeout=5)


def test_task_timeout_cancels_then_destroys(connect, https_server):
    https_server.xapi.snapshot_behaviour = 'hang'
    started = time.monotonic()
    with connect() as xapi:
        with pytest.raises(XapiError, match='did not finish within 0.3 seconds; the task was cancelled') as caught:
            xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=0.3)
    assert isinstance(caught.value, TaskTimeoutError) and caught.value.error_code == 'task_timeout'
    assert caught.value.code is None and caught.value.as_result() is None  # XAPI sent no error: nothing to show as xapi_error
    assert time.monotonic() - started < 5
    task = caught.value.task_ref
    assert https_server.xapi.cancelled == [task] and https_server.xapi.destroyed == [task]


def test_wait_falls_back_to_polling_without_events(connect, https_server, monkeypatch):
    original = MiniXapi.call

    def no_events(self, method, params):
        if method == 'event.from':
            raise Fail('PERMISSION_DENIED', 'event.from')
        return original(self, method, params)
    monkeypatch.setattr(MiniXapi, 'call', no_events)
    monkeypatch.setattr(tasks_mod, 'TASK_POLL_INTERVAL', 0.05)
    with connect() as xapi:
        assert xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=5) == 'OpaqueRef:snap'


# -- streaming transfers --------------------------------------------------------------------------


def test_export_streams_to_eof_and_checks_the_task(connect, https_server):
    with connect() as xapi:
        with xapi.open_export('OpaqueRef:vdi', base_ref='OpaqueRef:base') as stream:
            chunks = list(stream.iter_chunks(1024 * 1024))
        assert stream.verified and stream.bytes_read == len(https_server.xapi.disk)
    assert b''.join(chunks) == https_server.xapi.disk
    assert max(len(c) for c in chunks) <= 1024 * 1024
    assert https_server.xapi.tasks == {}


def test_cut_export_never_passes_as_success(connect, https_server):
    https_server.xapi.export_mode = 'cut'
    with connect() as xapi:
        stream = xapi.open_export('OpaqueRef:vdi')
        with pytest.raises(XapiError, match=r'disk transfer failed on the host \(Device I/O errors\).*after 1048583 bytes') as caught:
            stream.read()
        stream.close()
    assert caught.value.code == 'VDI_IO_ERROR' and https_server.xapi.tasks == {}


def test_cut_export_with_a_task_that_never_ends_times_out(connect, https_server):
    https_server.xapi.export_mode = 'cut-pending'
    with connect() as xapi:
        with xapi.open_export('OpaqueRef:vdi', timeout=0.3) as stream:
            with pytest.raises(XapiError, match='did not finish within 0.3 seconds'):
                stream.read()
    assert https_server.xapi.tasks == {} and len(https_server.xapi.cancelled) == 1


def test_export_http_error_reports_the_task_error(connect, https_server):
    https_server.xapi.export_mode = 'http-500'
    with connect() as xapi:
        with pytest.raises(XapiError) as caught:
            xapi.open_export('OpaqueRef:vdi')
    assert caught.value.code == 'VDI_MISSING' and https_server.xapi.tasks == {}


def test_export_follows_a_redirect_to_another_host(connect, https_server, server_context):
    member = serve(server_context)
    member.xapi = https_server.xapi  # same pool state, another host
    original = Handler.do_GET

    def redirect(handler):
        if handler.server is https_server:
            handler.send_response(302)
            handler.send_header('Location', 'https://127.0.0.1:%d%s' % (member.server_address[1], handler.path))
            handler.send_header('Content-Length', '0')
            handler.end_headers()
            return
        original(handler)
    Handler.do_GET = redirect
    try:
        with connect() as xapi:
            with xapi.open_export('OpaqueRef:vdi') as stream:
                assert stream.read() == https_server.xapi.disk
    finally:
        Handler.do_GET = original
        member.shutdown()
        member.server_close()


def test_call_label_names_the_action(connect):
    with connect() as xapi:
        with pytest.raises(XapiError, match='^removal of snapshot x failed: VM OpaqueRef:gone does not exist'):
            xapi.call('VM.get_record', 'OpaqueRef:gone', what='removal of snapshot x')


def test_export_closed_early_cancels_and_destroys(connect, https_server):
    with connect() as xapi:
        with xapi.open_export('OpaqueRef:vdi') as stream:
            assert len(stream.read(4096)) == 4096
    assert https_server.xapi.tasks == {}


def test_import_sends_exact_length_without_transfer_encoding(connect, https_server):
    payload = os.urandom(5 * 1024 * 1024 + 17)
    with connect() as xapi:
        assert xapi.import_stream('OpaqueRef:target', io.BytesIO(payload), len(payload)) == 'OpaqueRef:target'
        assert xapi.import_stream('OpaqueRef:again', iter([payload[:10], payload[10:]]), len(payload)) == 'OpaqueRef:again'
    headers = {k.lower(): v for k, v in https_server.xapi.import_headers.items()}
    assert headers['content-length'] == str(len(payload)) and 'transfer-encoding' not in headers
    assert https_server.xapi.imported == payload and https_server.xapi.tasks == {}


@pytest.mark.parametrize('source, length, error_class', [
    (b'x' * 100, 101, TransferCutError),
    (b'x' * 100, 99, TransferTooLongError),
])
def test_import_source_of_wrong_length_fails(connect, https_server, source, length, error_class):
    with connect() as xapi:
        with pytest.raises(XapiError) as caught:
            xapi.import_stream('OpaqueRef:target', source, length)
    assert isinstance(caught.value, error_class) or caught.value.code == 'VDI_IO_ERROR', caught.value
    assert https_server.xapi.imported is None and https_server.xapi.tasks == {}


def test_import_to_a_server_that_answers_after_the_body(connect, https_server, monkeypatch):
    monkeypatch.setattr(http_mod, 'EARLY_RESPONSE_WAIT', 0.2)
    https_server.xapi.import_answers_first = False
    payload = os.urandom(3 * 1024 * 1024)
    with connect() as xapi:
        assert xapi.import_stream('OpaqueRef:late', payload, len(payload)) == 'OpaqueRef:late'
    assert https_server.xapi.imported == payload


def test_import_follows_a_redirect_before_sending_the_body(connect, https_server, server_context):
    member = serve(server_context)
    member.xapi = https_server.xapi
    original = Handler.do_PUT
    redirected = []

    def redirect(handler):
        if handler.server is https_server:
            redirected.append(handler.path)
            handler.send_response(302)
            handler.send_header('Location', 'https://127.0.0.1:%d%s' % (member.server_address[1], handler.path))
            handler.send_header('Content-Length', '0')
            handler.send_header('Connection', 'close')
            handler.end_headers()
            handler.close_connection = True
            return
        original(handler)
    Handler.do_PUT = redirect
    payload = os.urandom(9 * 1024 * 1024)
    try:
        with connect() as xapi:
            assert xapi.import_stream('OpaqueRef:moved', payload, len(payload)) == 'OpaqueRef:moved'
    finally:
        Handler.do_PUT = original
        member.shutdown()
        member.server_close()
    assert len(redirected) == 1 and https_server.xapi.imported == payload and https_server.xapi.tasks == {}


def test_import_failure_in_task(connect, https_server):
    https_server.xapi.import_mode = 'fail'
    with connect() as xapi:
        with pytest.raises(XapiError, match='import into VDI OpaqueRef:t failed: the disk transfer failed on the host \\(bad VHD\\)'):
            xapi.import_stream('OpaqueRef:t', b'abc', 3)
    assert https_server.xapi.tasks == {}


# -- against the shared XAPI simulator (tests/xapisim) -------------------------------------------


TESTS_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


@pytest.fixture(scope='module')
def simulator():
    # ansible-test units does not put tests/ on sys.path; the simulator lives there.
    if os.path.isdir(os.path.join(TESTS_DIR, 'xapisim')) and TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    testing = pytest.importorskip('xapisim.testing')
    with testing.start_server(https=True) as running:
        yield running


@pytest.fixture
def sim(simulator):
    simulator.control.clear_faults()
    yield simulator
    simulator.control.clear_faults()


def sim_connect(sim, url=None, **overrides):
    options = dict(hostname=url or sim.url, username='root', password='secret', ca_path=sim.ca_path, timeout=10)
    options.update(overrides)
    return XapiConnection(**options)


def test_sim_login_verified_and_logged_out(sim):
    before = sim.control.sessions()
    with sim_connect(sim) as xapi:
        assert xapi.call('VM.get_by_name_label', 'web01')
        assert sim.control.session_count() == before['count'] + 1
    after = sim.control.sessions()
    assert after['count'] == before['count'] and after['logouts'] == before['logouts'] + 1


def test_sim_logout_after_a_failure(sim):
    count = sim.control.session_count()
    with pytest.raises(XapiError) as caught:
        with sim_connect(sim) as xapi:
            xapi.call('VM.get_by_uuid', '00000000-0000-4000-8000-000000000000')
    assert caught.value.code == 'UUID_INVALID' and 'no VM with uuid 00000000-0000-4000-8000-000000000000 exists' in str(caught.value)
    assert sim.control.session_count() == count


def test_sim_wrong_password(sim):
    with pytest.raises(XapiError, match='login failed for user root on host 127.0.0.1') as caught:
        with sim_connect(sim, password='wrong'):
            pass
    assert caught.value.code == 'SESSION_AUTHENTICATION_FAILED'


def test_sim_untrusted_certificate(sim):
    with pytest.raises(XapiError, match="certificate verify failed for host 127.0.0.1 .*set ca_path to the pool's CA or validate_certs: false"):
        with sim_connect(sim, ca_path=None):
            pass


def test_sim_host_is_slave_redirect(sim):
    assert sim.slave_url, 'the simulator should offer a pool member listener'
    count = sim.control.session_count()
    # The member has its own certificate: the bundle of every host's certificate trusts both.
    with sim_connect(sim, url=sim.slave_url, ca_path=sim.ca_bundle_path) as xapi:
        assert xapi.endpoint.url == sim.url.rstrip('/') + '/'
        assert xapi.call('VM.get_by_name_label', 'db01')
    assert sim.control.session_count() == count


def test_sim_async_snapshot_and_task_cleanup(sim):
    with sim_connect(sim) as xapi:
        vm = xapi.call('VM.get_by_name_label', 'db01')[0]
        snapshot = xapi.call_async('VM.snapshot', vm, 'connection-test', timeout=30)
        assert snapshot.startswith('OpaqueRef:') and xapi.call('VM.get_is_a_snapshot', snapshot) is True
        assert not [t for t in xapi.call('task.get_all_records').values() if t['name_label'] == 'Async.VM.snapshot']
        assert xapi.call('VM.get_snapshot_of', snapshot) == vm


def test_sim_task_timeout_cancels_and_destroys(sim):
    sim.control.delay(1.5, method='VM.snapshot')
    with sim_connect(sim) as xapi:
        vm = xapi.call('VM.get_by_name_label', 'db01')[0]
        with pytest.raises(XapiError, match='did not finish within 0.3 seconds; the task was cancelled') as caught:
            xapi.call_async('VM.snapshot', vm, 'too-slow', timeout=0.3)
        task = caught.value.task_ref
        assert task not in xapi.call('task.get_all')


def test_sim_export_streams_a_vhd_and_import_restores_it(sim):
    # Imported over another VM's disk of the module's private simulator: only allocated sectors are written.
    with sim_connect(sim, timeout=30) as xapi:
        source = xapi.call('VDI.get_by_name_label', 'db01-root')[0]
        target = xapi.call('VDI.get_by_name_label', 'web01-root')[0]
        with xapi.open_export(source) as stream:
            chunks = list(stream.iter_chunks())
        vhd = b''.join(chunks)
        assert vhd[:8] == b'conectix' and stream.verified and stream.bytes_read == len(vhd)
        assert xapi.import_stream(target, iter(chunks), len(vhd)) == target
    six_mib = 6 * 1024 * 1024
    assert sim.control.read_vdi(target, 0, six_mib) == sim.control.read_vdi(source, 0, six_mib)


def test_sim_cut_export_is_detected(sim):
    with sim_connect(sim, timeout=30) as xapi:
        source = xapi.call('VDI.get_by_name_label', 'db01-root')[0]
        sim.control.cut_export(100000, vdi=source)
        with pytest.raises(XapiError) as caught:
            with xapi.open_export(source) as stream:
                stream.read()
        assert caught.value.code is not None or isinstance(caught.value, TransferCutError), caught.value
        assert not isinstance(caught.value, TaskTimeoutError)
        assert 'after' in str(caught.value)


def test_sim_cut_import_is_detected(sim):
    with sim_connect(sim, timeout=30) as xapi:
        source = xapi.call('VDI.get_by_name_label', 'db01-root')[0]
        target = xapi.call('VDI.get_by_name_label', 'web01-root')[0]
        with xapi.open_export(source) as stream:
            vhd = stream.read()
        sim.control.cut_import(65536, vdi=target)
        with pytest.raises(XapiError):
            xapi.import_stream(target, vhd, len(vhd))
        assert not [t for t in xapi.call('task.get_all_records').values() if 'import' in t['name_label']]


# -- long operations, expiring tasks and sessions, pool members with their own certificates ------------


def test_sim_long_call_goes_through_its_task_and_a_timeout_cancels_it(sim):
    sim.control.delay(3, method='VM.start')
    with sim_connect(sim, operation_timeout=0.5) as xapi:
        vm = xapi.call('VM.get_by_name_label', 'db01')[0]
        began = time.monotonic()
        with pytest.raises(XapiError, match='VM.start on .* did not finish within 0.5 seconds; the task was cancelled') as caught:
            xapi.call('VM.start', vm, False, False)
        assert time.monotonic() - began < 2.5
        assert isinstance(caught.value, TaskTimeoutError)
        assert caught.value.task_ref not in xapi.call('task.get_all')
        assert xapi.call('VM.get_power_state', vm) == 'Halted'


def test_sim_timeout_of_an_operation_xapi_cannot_cancel_says_so(sim):
    with sim_connect(sim, operation_timeout=0.3) as xapi:
        vdi = xapi.call('VDI.create', {'name_label': 'scratch', 'SR': xapi.call('SR.get_by_name_label', 'Small SR')[0],
                                       'virtual_size': 2 << 20, 'type': 'user', 'sharable': False, 'read_only': False, 'other_config': {}})
        sim.control.delay(1.0, method='VDI.destroy')
        with pytest.raises(XapiError, match='XAPI cannot cancel this operation, so it may still complete'):
            xapi.call('VDI.destroy', vdi)
        deadline = time.monotonic() + 10
        while vdi in xapi.call('VDI.get_all') and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vdi not in xapi.call('VDI.get_all')


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


def test_sim_export_whose_task_xapi_destroyed_points_to_the_seed_procedure(sim):
    sim.control.lifetimes(task_lifetime=0.2, gc_interval=3600)
    try:
        with sim_connect(sim, timeout=30) as xapi:
            # Earlier tests snapshot db01: its snapshot disks share the name.
            source = [v for v in xapi.call('VDI.get_by_name_label', 'db01-root') if not xapi.call('VDI.get_is_a_snapshot', v)][0]
            sim.control.write_vdi(source, 0, seed=31, length=64 << 20)
            with pytest.raises(XapiError) as caught:
                with xapi.open_export(source) as stream:
                    stream.read(1 << 20)
                    time.sleep(0.3)  # a slow link: the reader stalls, the export's progress stops
                    sim.control.collect_garbage()
                    assert sim.control.collect_garbage()['tasks'] == [stream.task_ref]
                    while stream.read(1 << 20):
                        pass
            assert isinstance(caught.value, TaskDestroyedError) and caught.value.error_code == 'task_destroyed'
            assert 'XAPI destroyed the task before the transfer finished' in caught.value.message
            assert 'seed' in caught.value.message
    finally:
        sim.control.lifetimes(task_lifetime=86400, gc_interval=30)


@pytest.fixture
def member_pool(sim):
    """A local SR on the pool member xcp-host2 holding the disk of VM app02; the example pool afterwards."""
    testing = sys.modules['xapisim.testing']
    with open(testing.EXAMPLE_CONFIG, encoding='utf-8') as handle:
        example = handle.read()
    import yaml  # pylint: disable=import-outside-toplevel
    pool = yaml.safe_load(example)
    pool['srs'].append({'name': 'Local storage xcp-host2', 'size': '10GiB', 'host': 'xcp-host2'})
    pool['vms'].append({'name': 'app02', 'disks': [{'name': 'app02-root', 'size': '64MiB', 'sr': 'Local storage xcp-host2',
                                                    'data': [{'offset': 0, 'length': '4MiB', 'seed': 11}]}]})
    sim.control.load_config(pool)
    yield sim
    sim.control.load_config(example)


def test_sim_transfers_follow_the_redirect_to_the_member_with_a_bundle(member_pool):
    sim = member_pool
    with sim_connect(sim, ca_path=sim.ca_bundle_path, timeout=30) as xapi:
        vdi = xapi.call('VDI.get_by_name_label', 'app02-root')[0]
        with xapi.open_export(vdi, 'raw') as stream:
            data = stream.read()
        assert stream.verified and data == sim.control.read_vdi('app02-root')
        new = bytes(range(256)) * 8192
        assert xapi.import_stream(vdi, new, len(new), fmt='raw') == vdi
    assert sim.control.read_vdi('app02-root', 0, len(new)) == new


@pytest.mark.parametrize('direction', ['export', 'import'])
def test_sim_member_certificate_missing_from_ca_path_names_the_member(member_pool, direction):
    sim = member_pool
    member = urlsplit(sim.slave_url).netloc
    with sim_connect(sim, ca_path=sim.ca_path, timeout=30) as xapi:
        vdi = xapi.call('VDI.get_by_name_label', 'app02-root')[0]
        with pytest.raises(XapiError) as caught:
            if direction == 'export':
                with xapi.open_export(vdi, 'raw') as stream:
                    stream.read()
            else:
                xapi.import_stream(vdi, b'\0' * 512, 512, fmt='raw')
        assert not [t for t in xapi.call('task.get_all_records').values() if t['name_label'].startswith('xapi.delta_backup')]
    assert isinstance(caught.value, CertificateVerifyError) and caught.value.host == urlsplit(sim.slave_url).hostname
    assert 'certificate verify failed for pool member %s' % member in caught.value.message
    assert 'PEM bundle' in caught.value.message and 'ca_path' in caught.value.message


def test_sim_import_whose_task_xapi_destroyed_points_to_the_seed_procedure(sim):
    sim.control.lifetimes(task_lifetime=0.2, gc_interval=3600)
    length = 64 << 20

    def slow_link():
        yield b'\1' * (1 << 20)
        time.sleep(0.3)  # the upload stalls: the task's progress stops
        sim.control.collect_garbage()
        removed = sim.control.collect_garbage()['tasks']
        assert len(removed) == 1
        for _num in range(63):
            yield b'\2' * (1 << 20)

    try:
        with sim_connect(sim, timeout=30) as xapi:
            sr = xapi.call('SR.get_by_name_label', 'Local storage')[0]
            vdi = xapi.call('VDI.create', {'name_label': 'upload', 'SR': sr, 'virtual_size': length, 'type': 'user', 'sharable': False,
                                           'read_only': False, 'other_config': {}})
            with pytest.raises(XapiError) as caught:
                xapi.import_stream(vdi, slow_link(), length, fmt='raw')
            xapi.call('VDI.destroy', vdi)
        assert isinstance(caught.value, TaskDestroyedError), caught.value.message
        assert 'XAPI destroyed the task before the transfer finished' in caught.value.message and 'seed' in caught.value.message
    finally:
        sim.control.lifetimes(task_lifetime=86400, gc_interval=30)
