# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Tests of _xapi/http.py: endpoints, TLS and CA bundles, transport errors, raw VDI exports and imports, redirects.

Over real HTTP(S) against ``MiniXapi`` (xapi_stub.py), and against the XAPI simulator.
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import socket
import ssl
import subprocess
import time
import xmlrpc.client
from urllib.parse import parse_qs, urlsplit

import pytest

XenAPI = pytest.importorskip('XenAPI')

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi import http as http_mod  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import (  # noqa: E402
    CertificateVerifyError, TaskDestroyedError, TaskTimeoutError, TransferCutError, TransferError, TransferTooLongError, XapiError,
    XapiTransportError,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.http import (  # noqa: E402
    NULL_REF, TRANSFER_CHUNK_SIZE, HostEndpoint, build_ssl_context, describe_transport_error, parse_hostname,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection  # noqa: E402
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._xapi.xapi_stub import PASSWORD, Handler, serve, sim_connect  # noqa: E402


# -- endpoints -------------------------------------------------------------------------------------


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


@pytest.mark.parametrize('endpoint, netloc, url', [
    (HostEndpoint('https', 'pool.example', 443), 'pool.example:443', 'https://pool.example:443/'),
    (HostEndpoint('http', '10.0.0.1', 80), '10.0.0.1:80', 'http://10.0.0.1:80/'),
    (HostEndpoint('https', 'fe80::1', 444), '[fe80::1]:444', 'https://[fe80::1]:444/'),
])
def test_host_endpoint_netloc_and_url(endpoint, netloc, url):
    assert endpoint.netloc == netloc and endpoint.url == url
    assert parse_hostname(url) == endpoint


def test_parse_hostname_defaults_of_a_redirect():
    # HOST_IS_SLAVE names the coordinator by address only: keep the scheme and port in use.
    assert parse_hostname('10.0.0.2', default_scheme='http', default_port=8080) == HostEndpoint('http', '10.0.0.2', 8080)
    assert parse_hostname('10.0.0.2:81', default_scheme='http', default_port=8080) == HostEndpoint('http', '10.0.0.2', 81)
    assert parse_hostname('https://10.0.0.2', default_scheme='http', default_port=8080) == HostEndpoint('https', '10.0.0.2', 8080)


@pytest.mark.parametrize('value', ['https://', 'https://:443'])
def test_parse_hostname_without_a_host(value):
    with pytest.raises(XapiError, match='hostname %s: no host name found' % value) as caught:
        parse_hostname(value)
    assert caught.value.option == 'hostname'


# -- TLS and transport errors ----------------------------------------------------------------------


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


def make_ca(folder, name):
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', name + '.key', '-out', name + '.pem', '-days', '2',
                    '-subj', '/CN=%s' % name], cwd=str(folder), check=True, capture_output=True)
    return folder / (name + '.pem')


def test_a_pem_bundle_as_ca_path_trusts_each_of_its_certificates(connect, https_server, pki, tmp_path):
    other = make_ca(tmp_path, 'other-ca').read_text()
    pool_ca = open(pki['ca'], encoding='ascii').read()
    (tmp_path / 'bundle.pem').write_text(other + pool_ca)
    with connect(ca_path=str(tmp_path / 'bundle.pem')) as xapi:
        assert xapi.logged_in
    with pytest.raises(CertificateVerifyError, match='certificate verify failed for host 127.0.0.1') as caught:
        with connect(ca_path=str(tmp_path / 'other-ca.pem')):
            pass
    assert caught.value.host == '127.0.0.1' and caught.value.error_code == 'certificate_verify_failed'
    assert https_server.xapi.logins == 1


def test_a_hashed_certificate_directory_as_ca_path(connect, pki, tmp_path):
    subject_hash = subprocess.run(['openssl', 'x509', '-hash', '-noout', '-in', pki['ca']], check=True, capture_output=True, text=True).stdout.strip()
    folder = tmp_path / 'certs'
    folder.mkdir()
    shutil.copy(pki['ca'], str(folder / ('%s.0' % subject_hash)))
    assert build_ssl_context(ca_path=str(folder)).verify_mode == ssl.CERT_REQUIRED
    with connect(ca_path=str(folder)) as xapi:
        assert xapi.logged_in
    with pytest.raises(CertificateVerifyError, match='certificate verify failed for host 127.0.0.1'):
        with connect(ca_path=str(tmp_path)):  # a directory without the pool's CA
            pass


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


ENDPOINT = HostEndpoint('https', 'pool.example', 443)


def certificate_error():
    error = ssl.SSLCertVerificationError(1, 'certificate verify failed')
    error.verify_message = 'self-signed certificate'
    return error


@pytest.mark.parametrize('exc, cls, message', [
    (certificate_error(), CertificateVerifyError,
     "^certificate verify failed for host pool.example \\(self-signed certificate\\): set ca_path to the pool's CA or validate_certs: false"),
    (ssl.SSLError(1, 'wrong version number'), XapiTransportError, r'^TLS error talking to pool.example:443: .*\(is it really an https port\?\)$'),
    (socket.gaierror(-2, 'Name or service not known'), XapiTransportError, '^cannot resolve host pool.example: Name or service not known; check hostname$'),
    (ConnectionRefusedError(111, 'refused'), XapiTransportError, '^connection refused by pool.example:443: check hostname and port'),
    (socket.timeout('timed out'), XapiTransportError, '^no answer from pool.example:443 within 9 seconds: check the network or raise timeout$'),
    (TimeoutError('timed out'), XapiTransportError, '^no answer from pool.example:443 within 9 seconds'),
    (xmlrpc.client.ProtocolError('pool.example/', 404, 'Not Found', {}), XapiTransportError,
     '^HTTP error 404 Not Found from pool.example:443: is this a XAPI host\\?$'),
    (xmlrpc.client.Fault(1, 'boom'), XapiTransportError, '^XML-RPC fault from pool.example:443: boom$'),
    (http.client.RemoteDisconnected('Remote end closed connection'), XapiTransportError,
     '^bad HTTP answer from pool.example:443: Remote end closed connection$'),
    (http.client.BadStatusLine(''), XapiTransportError, '^bad HTTP answer from pool.example:443: '),
    (OSError(113, 'No route to host'), XapiTransportError, '^cannot talk to pool.example:443: .*No route to host$'),
])
def test_describe_transport_error(exc, cls, message):
    error = describe_transport_error(exc, ENDPOINT, 9)
    assert error.__class__ is cls and error.code is None and error.as_result() is None
    with pytest.raises(cls, match=message):
        raise error


def test_describe_transport_error_names_the_timeout_option():
    error = describe_transport_error(socket.timeout('timed out'), ENDPOINT, 300.0, 'transfer_read_timeout')
    assert error.message == 'no answer from pool.example:443 within 300.0 seconds: check the network or raise transfer_read_timeout'


def test_describe_transport_error_of_a_session_that_kept_expiring():
    error = describe_transport_error(xmlrpc.client.Fault(1, 'Failed to get a valid session after 3 attempts'), ENDPOINT)
    assert error.__class__ is XapiError and error.code == 'SESSION_INVALID'
    assert error.params == ['1', 'Failed to get a valid session after 3 attempts']
    assert error.message.startswith('the XAPI session on pool.example:443 kept expiring: XenAPI logged in again three times')


# -- streaming transfers ---------------------------------------------------------------------------


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


def test_export_from_a_silent_host_names_the_transfer_timeout(connect, https_server):
    https_server.xapi.export_mode = 'silent'
    with connect(transfer_read_timeout=0.5) as xapi:
        with pytest.raises(XapiError, match='no answer from .* within 0.5 seconds: check the network or raise transfer_read_timeout'):
            with xapi.open_export('OpaqueRef:vdi') as stream:
                stream.read()
        assert not [t for t in https_server.xapi.tasks.values() if t['status'] == 'pending']


def test_export_http_error_reports_the_task_error(connect, https_server):
    https_server.xapi.export_mode = 'http-500'
    with connect() as xapi:
        with pytest.raises(XapiError, match='^export of VDI OpaqueRef:vdi failed: XAPI error VDI_MISSING') as caught:
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
        with pytest.raises(XapiError, match='^import into VDI OpaqueRef:target failed: ') as caught:
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


def record_paths(monkeypatch, method):
    original, paths = getattr(Handler, method), []

    def recording(handler):
        paths.append(handler.path)
        original(handler)
    monkeypatch.setattr(Handler, method, recording)
    return paths


def test_export_query_names_format_and_base(connect, https_server, monkeypatch):
    paths = record_paths(monkeypatch, 'do_GET')
    with connect() as xapi:
        with xapi.open_export('OpaqueRef:vdi', fmt='raw', base_ref=NULL_REF) as stream:
            assert stream.read() == https_server.xapi.disk
        with xapi.open_export('OpaqueRef:vdi', base_ref='OpaqueRef:base') as stream:
            assert stream.label == 'export of VDI OpaqueRef:vdi (delta from OpaqueRef:base)'
            stream.read()
        assert stream.verified and stream.result == '' and stream.read() == b''
    first, second = ({k: v[0] for k, v in parse_qs(urlsplit(p).query).items()} for p in paths)
    assert urlsplit(paths[0]).path == '/export_raw_vdi' and first['format'] == 'raw' and first['vdi'] == 'OpaqueRef:vdi' and 'base' not in first
    assert second['format'] == 'vhd' and second['base'] == 'OpaqueRef:base' and second['task_id'] not in https_server.xapi.tasks
    assert https_server.xapi.tasks == {} and len(https_server.xapi.destroyed) == 2


def test_transfers_refuse_bad_arguments_before_making_a_task(connect, https_server):
    with connect() as xapi:
        with pytest.raises(XapiError, match='^unsupported export format qcow2 \\(use one of vhd, raw\\)$'):
            xapi.open_export('OpaqueRef:vdi', fmt='qcow2')
        with pytest.raises(XapiError, match='^unsupported import format qcow2 \\(use one of vhd, raw\\)$'):
            xapi.import_stream('OpaqueRef:vdi', b'', 0, fmt='qcow2')
        for length in (-1, 1.5, '3'):
            with pytest.raises(XapiError, match='^import length must be a non-negative integer, got '):
                xapi.import_stream('OpaqueRef:vdi', b'abc', length)
    assert https_server.xapi.tasks == {} and https_server.xapi.destroyed == []
    unconnected = connect()
    with pytest.raises(XapiError, match='^not logged in'):
        unconnected.open_export('OpaqueRef:vdi')
    with pytest.raises(XapiError, match='^not logged in'):
        unconnected.import_stream('OpaqueRef:vdi', b'', 0)


def test_import_of_an_empty_disk(connect, https_server):
    with connect() as xapi:
        assert xapi.import_stream('OpaqueRef:empty', b'', 0, fmt='raw') == 'OpaqueRef:empty'
    assert https_server.xapi.imported == b'' and https_server.xapi.tasks == {}


def test_redirect_without_a_location_fails_and_ends_the_task(connect, https_server, monkeypatch):
    def redirect_nowhere(handler):
        handler.send_response(302)
        handler.send_header('Content-Length', '0')
        handler.end_headers()
    monkeypatch.setattr(Handler, 'do_GET', redirect_nowhere)
    with connect() as xapi:
        with pytest.raises(TransferError, match="^redirect from 127.0.0.1:%d without a usable Location header \\(''\\)$" % https_server.server_address[1]):
            xapi.open_export('OpaqueRef:vdi')
    assert https_server.xapi.tasks == {} and len(https_server.xapi.cancelled) == 1


def test_a_second_redirect_is_not_followed(connect, https_server, monkeypatch):
    redirected = []

    def redirect_to_self(handler):
        redirected.append(handler.path)
        handler.send_response(302)
        handler.send_header('Location', 'https://127.0.0.1:%d%s' % (https_server.server_address[1], handler.path))
        handler.send_header('Content-Length', '0')
        handler.end_headers()
    monkeypatch.setattr(Handler, 'do_GET', redirect_to_self)
    with connect() as xapi:
        with pytest.raises(TransferError, match='^export of VDI OpaqueRef:vdi failed: HTTP 302 Found$') as caught:
            xapi.open_export('OpaqueRef:vdi')
    assert caught.value.http_status == 302 and len(redirected) == 2 and https_server.xapi.tasks == {}


def test_import_refused_at_the_headers_without_a_task_error(connect, https_server, monkeypatch):
    def refuse(handler):
        handler.send_response(500)
        handler.send_header('Content-Length', '0')
        handler.send_header('Connection', 'close')
        handler.end_headers()
        handler.close_connection = True
    monkeypatch.setattr(Handler, 'do_PUT', refuse)
    with connect() as xapi:
        with pytest.raises(TransferError, match='^import into VDI OpaqueRef:t failed: HTTP 500 Internal Server Error$') as caught:
            xapi.import_stream('OpaqueRef:t', b'abc', 3)
    assert caught.value.http_status == 500 and caught.value.error_code == 'transfer_failed'
    assert https_server.xapi.tasks == {} and len(https_server.xapi.cancelled) == 1


def test_chunks_of_every_kind_of_source():
    data = os.urandom(2 * TRANSFER_CHUNK_SIZE + 5)
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        chunks = list(http_mod._chunks_of(source))  # pylint: disable=protected-access
        assert [len(c) for c in chunks] == [TRANSFER_CHUNK_SIZE, TRANSFER_CHUNK_SIZE, 5] and b''.join(chunks) == data
        assert all(c.__class__ is bytes for c in chunks)
    assert list(http_mod._chunks_of(iter([b'a', b'', bytearray(b'bc')]))) == [b'a', b'bc']  # pylint: disable=protected-access
    assert list(http_mod._chunks_of(b'')) == []  # pylint: disable=protected-access


# -- against the XAPI simulator --------------------------------------------------------------------


def test_sim_untrusted_certificate(sim):
    with pytest.raises(XapiError, match="certificate verify failed for host 127.0.0.1 .*set ca_path to the pool's CA or validate_certs: false"):
        with sim_connect(sim, ca_path=None):
            pass


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
        with pytest.raises(XapiError, match=r'^export of VDI OpaqueRef:\S+ .*after \d+ bytes') as caught:
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
        with pytest.raises(XapiError, match='^import into VDI %s failed' % target):
            xapi.import_stream(target, vhd, len(vhd))
        assert not [t for t in xapi.call('task.get_all_records').values() if 'import' in t['name_label']]


def test_sim_export_whose_task_xapi_destroyed_points_to_the_seed_procedure(sim):
    sim.control.lifetimes(task_lifetime=0.2, gc_interval=3600)
    try:
        with sim_connect(sim, timeout=30) as xapi:
            # Earlier tests snapshot db01: its snapshot disks share the name.
            source = [v for v in xapi.call('VDI.get_by_name_label', 'db01-root') if not xapi.call('VDI.get_is_a_snapshot', v)][0]
            sim.control.write_vdi(source, 0, seed=31, length=64 << 20)
            destroyed = r'^export of VDI \S+ failed: XAPI destroyed the task before the transfer finished .*\(after \d+ bytes\)$'
            with pytest.raises(XapiError, match=destroyed) as caught:
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
        with pytest.raises(XapiError, match='certificate verify failed for pool member') as caught:
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
            with pytest.raises(XapiError, match='^import into VDI %s failed: XAPI destroyed the task before the transfer finished' % vdi) as caught:
                xapi.import_stream(vdi, slow_link(), length, fmt='raw')
            xapi.call('VDI.destroy', vdi)
        assert isinstance(caught.value, TaskDestroyedError), caught.value.message
        assert 'XAPI destroyed the task before the transfer finished' in caught.value.message and 'seed' in caught.value.message
    finally:
        sim.control.lifetimes(task_lifetime=86400, gc_interval=30)
