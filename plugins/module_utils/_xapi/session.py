# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""XAPI sessions: log in (following HOST_IS_SLAVE to the coordinator), call, always log out.

``XapiConnection`` is the facade the other layers use: this module's session and calls, with the
task handling of ``tasks.py`` and the raw disk transfers of ``http.py``. Errors live in ``errors.py``.
"""

from __future__ import annotations

import atexit
import ssl
import traceback
import xmlrpc.client

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import (
    ConnectionOptionError, XapiError, XenApiMissingError, error_param, xapi_error_from_failure,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.http import (
    NULL_REF, TRANSPORT_ERRORS, HostEndpoint, RawVdiTransfers, build_ssl_context, describe_transport_error, parse_hostname,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.tasks import LONG_OPERATIONS

try:
    import XenAPI
except ImportError:
    XenAPI = None
    HAS_XENAPI = False
    XENAPI_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_XENAPI = True
    XENAPI_IMPORT_ERROR = None

# NULL_REF and XapiError are part of this module's interface for the other layers.
__all__ = ['DEFAULT_OPERATION_TIMEOUT', 'DEFAULT_TIMEOUT', 'DEFAULT_TRANSFER_READ_TIMEOUT', 'HAS_XENAPI', 'NULL_REF', 'XENAPI_IMPORT_ERROR',
           'XapiConnection', 'XapiError']

ORIGINATOR = 'xapi.delta_backup'
XAPI_API_VERSION = '1.0'
DEFAULT_TIMEOUT = 60.0
DEFAULT_OPERATION_TIMEOUT = 600.0
# XAPI attaches the VDI (and its base) before the first byte of an export: minutes on a busy LVM SR.
DEFAULT_TRANSFER_READ_TIMEOUT = 300.0


class _TimeoutTransport(xmlrpc.client.Transport):
    """Plain-http XML-RPC transport with a socket timeout (only on explicit http://)."""

    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host):
        connection = super().make_connection(host)
        connection.timeout = self._timeout
        return connection


class _TimeoutSafeTransport(xmlrpc.client.SafeTransport):
    """https XML-RPC transport with our SSL context and a socket timeout (XenAPI has neither option)."""

    def __init__(self, timeout: float, context: ssl.SSLContext):
        super().__init__(context=context)
        self._timeout = timeout

    def make_connection(self, host):
        connection = super().make_connection(host)
        connection.timeout = self._timeout
        return connection


class XapiConnection(RawVdiTransfers):
    """One XAPI session, used as a context manager so it is always logged out.

    >>> with XapiConnection.from_params(module.params) as xapi:
    ...     vm = xapi.call('VM.get_by_uuid', uuid)
    """

    def __init__(self, hostname: str, username: str | None = 'root', password: str | None = '', validate_certs: bool = True,
                 ca_path: str | None = None, timeout: float | None = DEFAULT_TIMEOUT, originator: str = ORIGINATOR,
                 operation_timeout: float | None = DEFAULT_OPERATION_TIMEOUT,
                 transfer_read_timeout: float | None = DEFAULT_TRANSFER_READ_TIMEOUT):
        if not HAS_XENAPI:
            raise XenApiMissingError('the XenAPI Python library is required: install XenAPI on the controller or in the execution environment')
        self.endpoint = parse_hostname(hostname)
        # AWX surveys send '' for unset fields: treat blank as unset.
        self.username = (username or '').strip() or 'root'
        self.password = password or ''
        self.validate_certs = bool(validate_certs)
        self.ca_path = ca_path or None
        self.timeout = float(timeout) if timeout else DEFAULT_TIMEOUT
        if self.timeout <= 0:
            raise ConnectionOptionError('timeout', 'timeout must be a positive number of seconds, got %s' % timeout)
        self.operation_timeout = float(operation_timeout) if operation_timeout else DEFAULT_OPERATION_TIMEOUT
        if self.operation_timeout <= 0:
            raise ConnectionOptionError('operation_timeout', 'operation_timeout must be a positive number of seconds, got %s' % operation_timeout)
        self.transfer_read_timeout = float(transfer_read_timeout) if transfer_read_timeout else DEFAULT_TRANSFER_READ_TIMEOUT
        if self.transfer_read_timeout <= 0:
            raise ConnectionOptionError('transfer_read_timeout', 'transfer_read_timeout must be a positive number of seconds, got %s' % transfer_read_timeout)
        self.originator = originator
        self.ssl_context = build_ssl_context(self.validate_certs, self.ca_path) if self.endpoint.scheme == 'https' else None
        self._session = None
        self._atexit_registered = False

    @classmethod
    def from_params(cls, params: dict) -> 'XapiConnection':
        """Build from module params shaped like module_runner.connection_argument_spec()."""
        return cls(hostname=params.get('hostname'), username=params.get('username'), password=params.get('password'),
                   validate_certs=params.get('validate_certs', True), ca_path=params.get('ca_path'), timeout=params.get('timeout'),
                   operation_timeout=params.get('operation_timeout'), transfer_read_timeout=params.get('transfer_read_timeout'))

    # -- session lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> 'XapiConnection':
        self.login()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.logout()

    @property
    def logged_in(self) -> bool:
        return self._session is not None

    @property
    def session_ref(self) -> str:
        self._require_session()
        return self._session.handle

    def _new_transport(self):
        if self.endpoint.scheme == 'https':
            return _TimeoutSafeTransport(self.timeout, self.ssl_context)
        return _TimeoutTransport(self.timeout)

    def login(self) -> None:
        """Log in, following HOST_IS_SLAVE once to the coordinator."""
        if self._session is not None:
            return
        try:
            self._login_to(self.endpoint)
        except XapiError as error:
            if error.code != 'HOST_IS_SLAVE':
                raise
            self.endpoint = parse_hostname(error_param(error.params, 0, ''), default_scheme=self.endpoint.scheme, default_port=self.endpoint.port)
            self._login_to(self.endpoint)
        if not self._atexit_registered:
            # Last resort if a caller forgets the context manager: sessions are a scarce pool-wide resource.
            atexit.register(self.logout)
            self._atexit_registered = True

    def _login_to(self, endpoint: HostEndpoint) -> None:
        session = XenAPI.Session(endpoint.url, transport=self._new_transport())
        try:
            session.xenapi.login_with_password(self.username, self.password, XAPI_API_VERSION, self.originator)
        except XenAPI.Failure as failure:
            error = xapi_error_from_failure(failure.details, what='login to %s' % endpoint.netloc)
            if error.code == 'SESSION_AUTHENTICATION_FAILED':
                error = XapiError('login failed for user %s on host %s: check username and password' % (self.username, endpoint.host),
                                  code=error.code, params=error.params)
            raise error from failure
        except TRANSPORT_ERRORS as exc:
            raise describe_transport_error(exc, endpoint, self.timeout) from exc
        self._session = session

    def logout(self) -> None:
        """Log out; never raises (a failed logout must not hide the real result)."""
        session, self._session = self._session, None
        if self._atexit_registered:
            atexit.unregister(self.logout)
            self._atexit_registered = False
        if session is None:
            return
        try:
            session.xenapi.session.logout()
        except Exception:  # pylint: disable=broad-except
            # The session may already be gone (host restart); XAPI reaps it eventually.
            pass

    def _require_session(self) -> None:
        if self._session is None:
            raise XapiError('not logged in to %s: use the connection as a context manager or call login()' % self.endpoint.netloc)

    # -- calls ---------------------------------------------------------------------------------

    def call(self, method: str, *args, what: str | None = None):
        """Call ``Class.message`` (or ``Async.Class.message``) with the session; map errors to XapiError.

        A method of LONG_OPERATIONS runs as ``Async.`` and its task is awaited for operation_timeout
        (then cancelled and destroyed). A session that expired meanwhile is renewed by XenAPI, which
        logs in again and repeats the refused call: safe for every call, as XAPI checks the session
        before running anything.
        """
        if method in LONG_OPERATIONS:
            return self.call_async(method, *args, timeout=self.operation_timeout,
                                   what=what or (('%s on %s' % (method, args[0])) if args and isinstance(args[0], str) else method))
        return self._call(method, *args, what=what)

    def _call(self, method: str, *args, what: str | None = None):
        self._require_session()
        target = self._session.xenapi
        for part in method.split('.'):
            target = getattr(target, part)
        try:
            return target(*args)
        except XenAPI.Failure as failure:
            label = what or (('%s on %s' % (method, args[0])) if args and isinstance(args[0], str) else method)
            raise xapi_error_from_failure(failure.details, what=label, method=method) from failure
        except TRANSPORT_ERRORS as exc:
            raise describe_transport_error(exc, self.endpoint, self.timeout) from exc
