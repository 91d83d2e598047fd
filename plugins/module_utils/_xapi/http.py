# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Raw HTTP of XAPI hosts: endpoints, TLS (ca_path bundles), transport errors, and the streaming disk
transfers ``GET /export_raw_vdi`` and ``PUT /import_raw_vdi`` with their redirects to pool members.

``RawVdiTransfers`` (on top of ``tasks.XapiTasks``) is a base of ``session.XapiConnection``, which
provides the session. ``transfer.WriteBehind`` consumes what an export yields.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import select
import socket
import ssl
import struct
import time
import xmlrpc.client
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import (
    CertificateVerifyError, ConnectionOptionError, TransferCutError, TransferError, TransferTooLongError, XapiError,
    XapiTransportError, is_task_gone, task_destroyed_error, xapi_error_from_failure,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.tasks import XapiTasks

# 2 MiB matches the VHD block size, so one chunk is one block on the wire.
TRANSFER_CHUNK_SIZE = 2 * 1024 * 1024
TRANSFER_FORMATS = ('vhd', 'raw')
# XAPI's null reference: a delta's base when there is none.
NULL_REF = 'OpaqueRef:NULL'
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# XAPI answers an import's headers at once; a server that waits for the body just gets it after this.
EARLY_RESPONSE_WAIT = 5.0


@dataclass(frozen=True)
class HostEndpoint:
    """Where XAPI listens: scheme, host name or address, port."""

    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        host = '[%s]' % self.host if ':' in self.host else self.host
        return '%s:%d' % (host, self.port)

    @property
    def url(self) -> str:
        return '%s://%s/' % (self.scheme, self.netloc)


DEFAULT_PORTS = {'https': 443, 'http': 80}


def parse_hostname(value: str | None, default_scheme: str = 'https', default_port: int | None = None) -> HostEndpoint:
    """Turn the hostname option into an endpoint. https unless the value says ``http://``."""
    text = (value or '').strip()
    if not text:
        raise ConnectionOptionError('hostname', 'no pool to connect to: set hostname or the XENSERVER_HOST environment variable')
    if '://' not in text:
        # A bare IPv6 address has several colons and needs brackets in a URL.
        if text.count(':') > 1 and not text.startswith('['):
            text = '[%s]' % text
        text = '%s://%s' % (default_scheme, text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ConnectionOptionError('hostname', 'hostname %s: unsupported scheme %s, use https:// (default) or http://' % (value, scheme))
    if parts.path not in ('', '/') or parts.query or parts.fragment or parts.username or parts.password:
        raise ConnectionOptionError('hostname', 'hostname %s: give only a host name or address, optionally with scheme and port' % value)
    try:
        port = parts.port
    except ValueError:
        raise ConnectionOptionError('hostname', 'hostname %s: invalid port' % value) from None
    if not parts.hostname:
        raise ConnectionOptionError('hostname', 'hostname %s: no host name found' % value)
    return HostEndpoint(scheme, parts.hostname, port or default_port or DEFAULT_PORTS[scheme])


def build_ssl_context(validate_certs: bool = True, ca_path: str | None = None) -> ssl.SSLContext:
    """TLS context shared by XML-RPC and HTTP transfers: verify by default, honour ca_path."""
    if not validate_certs:
        # Explicit user choice (validate_certs: false): honour it, never drop it silently.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if not ca_path:
        return ssl.create_default_context()
    if not os.path.exists(ca_path):
        raise ConnectionOptionError('ca_path', 'ca_path %s does not exist: give the path of the pool CA certificate (PEM)' % ca_path)
    try:
        if os.path.isdir(ca_path):
            return ssl.create_default_context(capath=ca_path)
        return ssl.create_default_context(cafile=ca_path)
    except (ssl.SSLError, OSError) as exc:
        raise ConnectionOptionError('ca_path', 'ca_path %s could not be loaded as PEM certificates: %s' % (ca_path, exc)) from exc


def describe_transport_error(exc: BaseException, endpoint: HostEndpoint, timeout: float | None = None, option: str = 'timeout') -> XapiError:
    """Translate socket, TLS and HTTP errors into messages saying what to check (``option`` names the timeout that ran out)."""
    where = endpoint.netloc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CertificateVerifyError('certificate verify failed for host %s (%s): set ca_path to the pool\'s CA or validate_certs: false '
                                      '(each host has its own self-signed certificate unless you installed CA-signed ones: a PEM bundle of '
                                      'every host\'s certificate as ca_path works for all of them, see docs/connecting.md)'
                                      % (endpoint.host, exc.verify_message or exc.reason or exc), endpoint.host)
    if isinstance(exc, ssl.SSLError):
        return XapiTransportError('TLS error talking to %s: %s (is it really an https port?)' % (where, exc))
    if isinstance(exc, socket.gaierror):
        return XapiTransportError('cannot resolve host %s: %s; check hostname' % (endpoint.host, exc.strerror or exc))
    if isinstance(exc, ConnectionRefusedError):
        return XapiTransportError('connection refused by %s: check hostname and port and that XAPI runs there (port 80 may be closed: use https)' % where)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return XapiTransportError('no answer from %s within %s seconds: check the network or raise %s' % (where, timeout, option))
    if isinstance(exc, xmlrpc.client.ProtocolError):
        return XapiTransportError('HTTP error %s %s from %s: is this a XAPI host?' % (exc.errcode, exc.errmsg, where))
    if isinstance(exc, xmlrpc.client.Fault) and 'valid session' in str(exc.faultString):
        # XenAPI logs in again and repeats a call refused with SESSION_INVALID, three times.
        return XapiError('the XAPI session on %s kept expiring: XenAPI logged in again three times and was refused each time; '
                         'check the pool\'s session limits and that the account is still valid' % where,
                         code='SESSION_INVALID', params=[str(exc.faultCode), exc.faultString])
    if isinstance(exc, xmlrpc.client.Fault):
        return XapiTransportError('XML-RPC fault from %s: %s' % (where, exc.faultString))
    if isinstance(exc, (http.client.HTTPException, xmlrpc.client.ResponseError)):
        return XapiTransportError('bad HTTP answer from %s: %s' % (where, exc or type(exc).__name__))
    return XapiTransportError('cannot talk to %s: %s' % (where, exc))


TRANSPORT_ERRORS = (OSError, http.client.HTTPException, xmlrpc.client.Error, ssl.SSLError)


class RawVdiTransfers(XapiTasks):
    """Streaming disk transfers of a XAPI connection; ``session.XapiConnection`` provides the session."""

    endpoint: HostEndpoint
    ssl_context: ssl.SSLContext | None
    transfer_read_timeout: float

    @property
    def logged_in(self) -> bool:
        raise NotImplementedError

    @property
    def session_ref(self) -> str:
        raise NotImplementedError

    def _require_session(self) -> None:
        raise NotImplementedError

    def _http_connection(self, endpoint: HostEndpoint) -> http.client.HTTPConnection:
        if endpoint.scheme == 'https':
            return http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=self.transfer_read_timeout, context=self.ssl_context)
        return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=self.transfer_read_timeout)

    def _transfer_path(self, handler: str, query: dict) -> str:
        return '/%s?%s' % (handler, urlencode(query))

    def _redirect_target(self, response: http.client.HTTPResponse, path: str) -> tuple[HostEndpoint, str]:
        """XAPI answers 302 when another host serves the disk; keep our scheme and query."""
        location = response.getheader('Location') or ''
        parts = urlsplit(location)
        if not parts.hostname:
            raise TransferError('redirect from %s without a usable Location header (%r)' % (self.endpoint.netloc, location))
        endpoint = parse_hostname(parts.hostname if ':' not in parts.hostname else '[%s]' % parts.hostname,
                                  default_scheme=parts.scheme or self.endpoint.scheme, default_port=parts.port or self.endpoint.port)
        new_path = (parts.path or path.split('?', 1)[0]) + '?' + (parts.query or path.split('?', 1)[1])
        return endpoint, new_path

    def _failed_transfer(self, label: str, task_ref: str, response_status, reason: str) -> XapiError:
        """Prefer the task's error (it says why) over the bare HTTP status."""
        try:
            status = self.task_status(task_ref)
            if status == 'failure':
                return xapi_error_from_failure(self.call('task.get_error_info', task_ref), what=label)
        except XapiError as error:
            if is_task_gone(error):
                return task_destroyed_error(label, task_ref)
        return TransferError('%s failed: HTTP %s %s' % (label, response_status, reason), http_status=response_status)

    def _member_transport_error(self, exc: BaseException, endpoint: HostEndpoint, label: str) -> XapiError:
        """A transport error at the host a transfer was redirected to; a certificate failure says how to trust it."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return CertificateVerifyError('%s: certificate verify failed for pool member %s (%s). XAPI redirected the transfer there because '
                                          'only that host sees the disk\'s SR, and every host has its own self-signed certificate: fetch each '
                                          'host\'s certificate (for example openssl s_client -connect HOST:443 -showcerts), put them all in one '
                                          'PEM bundle and give it as ca_path (see docs/connecting.md)'
                                          % (label, endpoint.netloc, exc.verify_message or exc.reason or exc), endpoint.host)
        return describe_transport_error(exc, endpoint, self.transfer_read_timeout, 'transfer_read_timeout')

    def open_export(self, vdi_ref: str, fmt: str = 'vhd', base_ref: str | None = None, timeout: float | None = None) -> 'ExportStream':
        """Start ``GET /export_raw_vdi`` and return a readable stream; read it to EOF.

        Reaching EOF checks the XAPI task: a failed or cut export raises XapiError instead of a clean EOF.
        """
        self._require_session()
        if fmt not in TRANSFER_FORMATS:
            raise XapiError('unsupported export format %s (use one of %s)' % (fmt, ', '.join(TRANSFER_FORMATS)))
        label = 'export of VDI %s%s' % (vdi_ref, ' (delta from %s)' % base_ref if base_ref else '')
        task_ref = self.create_task('xapi.delta_backup export_raw_vdi', label)
        query = {'session_id': self.session_ref, 'task_id': task_ref, 'vdi': vdi_ref, 'format': fmt}
        if base_ref and base_ref != NULL_REF:
            query['base'] = base_ref
        path = self._transfer_path('export_raw_vdi', query)
        try:
            connection, response = self._start_export(path, label, task_ref)
        except BaseException:
            self.abandon_task(task_ref)
            raise
        return ExportStream(self, connection, response, task_ref, label, timeout)

    def _start_export(self, path: str, label: str, task_ref: str):
        endpoint = self.endpoint
        for attempt in range(2):
            connection = self._http_connection(endpoint)
            try:
                connection.request('GET', path, headers={'Accept': '*/*'})
                response = connection.getresponse()
            except TRANSPORT_ERRORS as exc:
                connection.close()
                if attempt:
                    raise self._member_transport_error(exc, endpoint, label) from exc
                raise describe_transport_error(exc, endpoint, self.transfer_read_timeout, 'transfer_read_timeout') from exc
            if response.status == 200:
                return connection, response
            reason = response.reason
            if response.status in REDIRECT_STATUSES and attempt == 0:
                endpoint, path = self._redirect_target(response, path)
                connection.close()
                continue
            connection.close()
            raise self._failed_transfer(label, task_ref, response.status, reason)
        raise TransferError('%s failed: redirected more than once' % label)

    def import_stream(self, vdi_ref: str, source, length: int, fmt: str = 'vhd', timeout: float | None = None):
        """``PUT /import_raw_vdi`` streaming exactly ``length`` bytes from ``source``; return the task result (VDI ref).

        ``source`` is bytes, a binary file object or an iterable of bytes chunks. XAPI needs an exact
        Content-Length and rejects Transfer-Encoding; a source that is shorter or longer raises XapiError.
        """
        self._require_session()
        if fmt not in TRANSFER_FORMATS:
            raise XapiError('unsupported import format %s (use one of %s)' % (fmt, ', '.join(TRANSFER_FORMATS)))
        if not isinstance(length, int) or length < 0:
            raise XapiError('import length must be a non-negative integer, got %r' % (length,))
        label = 'import into VDI %s' % vdi_ref
        task_ref = self.create_task('xapi.delta_backup import_raw_vdi', label)
        path = self._transfer_path('import_raw_vdi', {'session_id': self.session_ref, 'task_id': task_ref, 'vdi': vdi_ref, 'format': fmt})
        finished = False
        try:
            source_failure = []
            try:
                self._send_import(path, _chunks_of(source), length, label, task_ref, source_failure)
            except Exception as exc:
                if source_failure and exc is source_failure[0]:
                    # The upload was aborted short of its length, so the host fails the import; once its task
                    # has ended the caller may destroy the VDI. The source's own error says what was wrong.
                    self.cancel_task(task_ref)
                raise
            result = self.wait_for_task(task_ref, timeout=timeout, what=label, destroy=False)
            finished = True
            return result
        finally:
            if not finished and self.logged_in:
                self.abandon_task(task_ref)
            elif self.logged_in:
                self.destroy_task(task_ref)

    def _send_import(self, path: str, chunks, length: int, label: str, task_ref: str, source_failure: list) -> None:
        """Send headers, look for an early answer (XAPI answers 200 or 302 before reading the body), then the body.

        A failure of the source (not of the connection) is put in ``source_failure`` and raised as it is,
        once the connection is reset.
        """
        endpoint = self.endpoint
        for attempt in range(2):
            connection = self._http_connection(endpoint)
            try:
                connection.putrequest('PUT', path, skip_accept_encoding=True)
                connection.putheader('Content-Type', 'application/octet-stream')
                connection.putheader('Content-Length', str(length))
                connection.endheaders()
                response = self._early_response(connection)
                if response is not None and response.status in REDIRECT_STATUSES and attempt == 0:
                    # Nothing of the body is sent yet, so the source needs no rewinding.
                    endpoint, path = self._redirect_target(response, path)
                    continue
                if response is not None and response.status != 200:
                    raise self._failed_transfer(label, task_ref, response.status, response.reason)
                self._send_body(connection, chunks, length, label, source_failure)
                if response is None:
                    response = _read_response(connection)
                response.read()
                if response.status != 200:
                    raise self._failed_transfer(label, task_ref, response.status, response.reason)
                return
            except Exception as exc:
                if source_failure and exc is source_failure[0]:
                    _abort_connection(connection)
                    raise
                if isinstance(exc, ssl.SSLCertVerificationError):
                    if attempt:
                        raise self._member_transport_error(exc, endpoint, label) from exc
                    raise describe_transport_error(exc, endpoint, self.transfer_read_timeout, 'transfer_read_timeout') from exc
                if isinstance(exc, TRANSPORT_ERRORS):
                    raise self._import_broken(exc, connection, label, task_ref, endpoint) from exc
                raise
            finally:
                connection.close()
        raise TransferError('%s failed: redirected more than once' % label)

    def _early_response(self, connection):
        """The response if the server answered the headers within a short wait, else None.

        A readable TLS socket may only hold session tickets (TLS 1.3), so one byte is read
        without blocking to tell an answer from protocol housekeeping.
        """
        sock = connection.sock
        deadline = time.monotonic() + min(self.transfer_read_timeout, EARLY_RESPONSE_WAIT)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, dummy, dummy = select.select([sock], [], [], remaining)
            if not readable:
                return None
            sock.settimeout(0.0)
            try:
                first = sock.recv(1)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            finally:
                sock.settimeout(self.transfer_read_timeout)
            if not first:
                return None  # closed: sending the body fails and _import_broken says why
            return _read_response(connection, first)

    def _send_body(self, connection, chunks, length: int, label: str, source_failure: list) -> int:
        """Send the body; a failure of the source (a damaged block, an unreadable file) goes to ``source_failure``."""
        sent = 0
        chunks = iter(chunks)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except Exception as error:
                source_failure.append(error)
                raise
            if sent + len(chunk) > length:
                raise TransferTooLongError('%s failed: the source holds more than the announced %d bytes' % (label, length))
            connection.send(chunk)
            sent += len(chunk)
        if sent < length:
            raise TransferCutError('%s failed: the source ended after %d of %d bytes' % (label, sent, length))
        return sent

    def _import_broken(self, exc: BaseException, connection, label: str, task_ref: str, endpoint: HostEndpoint) -> XapiError:
        """The server closed the connection during the upload: its answer or task says why."""
        try:
            response = _read_response(connection)
            if response.status != 200:
                return self._failed_transfer(label, task_ref, response.status, response.reason)
        except TRANSPORT_ERRORS:
            pass
        error = self._failed_transfer(label, task_ref, 'none', '(connection broken: %s)' % exc)
        if not isinstance(error, TransferError):
            return error  # the task's XAPI error, or its destruction, says more than the broken connection
        return describe_transport_error(exc, endpoint, self.transfer_read_timeout, 'transfer_read_timeout')


def _abort_connection(connection) -> None:
    """Reset the connection (no orderly end, no TLS close_notify): the host sees an upload cut short and fails its import."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    connection.close()


def _read_response(connection, first: bytes = b'') -> http.client.HTTPResponse:
    """Read status and headers from the connection's socket, whatever the request state.

    http.client only reads a response once the request is complete; XAPI's import answers
    before the body, and that answer decides whether to send the body at all. ``first`` holds
    bytes already taken from the socket.
    """
    if connection.sock is None:
        raise http.client.ResponseNotReady('not connected')
    response = connection.response_class(_PrefixedSocket(connection.sock, first), method='PUT')
    response.begin()
    return response


class _PrefixedSocket:
    """Just enough of a socket for HTTPResponse: makefile() yielding ``prefix`` then the socket's data."""

    def __init__(self, sock, prefix: bytes):
        self._sock = sock
        self._prefix = prefix

    def makefile(self, mode='rb'):
        return io.BufferedReader(_PrefixedReader(self._sock, self._prefix))


class _PrefixedReader(io.RawIOBase):
    def __init__(self, sock, prefix: bytes):
        super().__init__()
        self._sock = sock
        self._prefix = prefix

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        return self._sock.recv_into(buffer)


def _chunks_of(source):
    """Yield bytes chunks of at most TRANSFER_CHUNK_SIZE from bytes, a file object or an iterable."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        for start in range(0, len(view), TRANSFER_CHUNK_SIZE):
            yield bytes(view[start:start + TRANSFER_CHUNK_SIZE])
        return
    if hasattr(source, 'read'):
        while True:
            chunk = source.read(TRANSFER_CHUNK_SIZE)
            if not chunk:
                return
            yield chunk
        return
    for chunk in source:
        # Sent before the next chunk is asked for, so a bytes-like chunk needs no copy.
        if chunk:
            if isinstance(chunk, memoryview):
                yield chunk if chunk.itemsize == 1 else chunk.cast('B')
            else:
                yield chunk if isinstance(chunk, (bytes, bytearray)) else bytes(chunk)


class ExportStream(io.RawIOBase):
    """Body of ``GET /export_raw_vdi``, read without buffering the disk in memory.

    XAPI sends no Content-Length and only cuts the body short when the copy fails, so EOF alone
    proves nothing: at EOF the task is checked and a failure raises XapiError. Closing before EOF
    cancels the task. The task is destroyed in every case.
    """

    def __init__(self, xapi: RawVdiTransfers, connection, response, task_ref: str, label: str, timeout: float | None = None):
        super().__init__()
        self._xapi = xapi
        self._connection = connection
        self._response = response
        self.task_ref = task_ref
        self.label = label
        self.timeout = timeout
        self.bytes_read = 0
        self.verified = False
        self.result = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.verified:
            return 0
        try:
            count = self._response.readinto(buffer)
        except TRANSPORT_ERRORS as exc:
            task_ref, gone = self.task_ref, self._task_gone()
            self._abandon()
            if gone:
                raise task_destroyed_error(self.label, task_ref, after=' after %d bytes' % self.bytes_read) from exc
            raise TransferCutError('%s was cut after %d bytes: %s' % (self.label, self.bytes_read, exc)) from exc
        if count:
            self.bytes_read += count
            return count
        self._verify_at_eof()
        return 0

    def iter_chunks(self, chunk_size: int = TRANSFER_CHUNK_SIZE):
        """Yield chunks up to EOF (after which the task has been verified)."""
        while True:
            chunk = self.read(chunk_size)
            if not chunk:
                return
            yield chunk

    def _verify_at_eof(self) -> None:
        self._connection.close()
        task_ref, self.task_ref = self.task_ref, None
        if task_ref is None:
            raise TransferCutError('%s: the stream was already abandoned' % self.label)
        try:
            # wait_for_task destroys the task whatever the outcome.
            self.result = self._xapi.wait_for_task(task_ref, timeout=self.timeout, what=self.label)
        except XapiError as error:
            error.message = '%s (after %d bytes)' % (error.message, self.bytes_read)
            error.args = (error.message,)
            raise
        self.verified = True

    def _task_gone(self) -> bool:
        if not self.task_ref or not self._xapi.logged_in:
            return False
        try:
            self._xapi.task_status(self.task_ref)
        except XapiError as error:
            return is_task_gone(error)
        return False

    def _abandon(self) -> None:
        self._connection.close()
        if self._xapi.logged_in and self.task_ref:
            self._xapi.abandon_task(self.task_ref)
        self.task_ref = None

    def close(self) -> None:
        if not self.closed and not self.verified and self.task_ref:
            self._abandon()
        self._connection.close()
        super().close()
