# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wire layer: a threaded HTTP(S) server carrying XML-RPC at ``/`` and
``/RPC2``, XAPI's raw VDI HTTP handlers and the ``/_sim/`` test-control
endpoints.  All state lives in ``api.Simulator``."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import control, vhd_sr, wire
from .model import NULL_REF, XapiError
from .storage import BLOCK_SIZE, ZERO_BLOCK, StoreFull
from .vhd_stream import BITMAP_FULL, ExportLayout, VhdError, import_vhd

CHUNK = 4 * 1024 * 1024
# -- vTPM (issue 13): XAPI reads at most 300 KiB of an API request (ocaml/xapi-consts/constants.ml
# http_limit_max_rpc_size, checked against Content-Length by ocaml/libs/http-lib/http_svr.ml read_body from
# ocaml/xapi/api_server.ml callback), which bounds what VTPM.set_contents can take.
MAX_RPC_BODY = 300 * 1024


# XAPI's gencert makes each host's certificate on first boot (ocaml/gencert/selfcert.ml ``host``):
# self-signed, CN = the host name, subjectAltName = its DNS names and IP addresses, RSA 2048,
# no CA extensions. Pool members do not share it, so a client needs every host's certificate.
_MINIMAL_OPENSSL_CONFIG = '[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n'


def make_host_certificate(directory, name):
    """Create (once) the self-signed certificate of host ``name`` for 127.0.0.1/localhost with the
    openssl CLI.  Returns (cert_path, key_path)."""
    os.makedirs(directory, exist_ok=True)
    safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)
    cert = os.path.join(directory, 'host-%s.pem' % safe)
    key = os.path.join(directory, 'host-%s.key' % safe)
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    config = os.path.join(directory, 'openssl-minimal.cnf')
    with open(config, 'w', encoding='ascii') as handle:
        handle.write(_MINIMAL_OPENSSL_CONFIG)
    subprocess.run(['openssl', 'req', '-x509', '-config', config, '-newkey', 'rsa:2048', '-nodes', '-days', '3650',
                    '-subj', '/CN=%s' % name, '-keyout', key, '-out', cert,
                    '-addext', 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1' % name],
                   check=True, capture_output=True)
    return cert, key


def write_bundle(path, cert_paths):
    """Concatenate PEM certificates into one CA bundle file; returns ``path``."""
    with open(path, 'w', encoding='ascii') as out:
        for cert in cert_paths:
            with open(cert, encoding='ascii') as handle:
                out.write(handle.read().rstrip('\n') + '\n')
    return path


class StreamCut(Exception):
    """The injected cut point of a stream was reached."""


class _Body:
    """Writes a response body to the raw socket, with sendfile when possible
    and an optional cut after ``limit`` bytes."""

    def __init__(self, sock, limit=None):
        self.sock = sock
        self.limit = limit
        self.sent = 0
        self.plain = not isinstance(sock, ssl.SSLSocket)
        self.buf = memoryview(bytearray(BLOCK_SIZE + 512))

    def _room(self, count):
        if self.limit is None:
            return count
        return max(0, min(count, self.limit - self.sent))

    def write(self, data):
        """Send bytes (raises StreamCut at the cut point)."""
        view = memoryview(data)
        room = self._room(len(view))
        if room:
            self.sock.sendall(view[:room])
            self.sent += room
        if room < len(view):
            raise StreamCut()

    def write_block(self, prefix, store, slot):
        """Send ``prefix`` (a bitmap) then a whole block slot, in one TLS record stream when not plain."""
        if self.plain or self.limit is not None:
            self.write(prefix)
            self.write_slot(store, slot, BLOCK_SIZE)
            return
        size = len(prefix)
        self.buf[:size] = prefix
        store.readinto(slot, 0, self.buf[size:size + BLOCK_SIZE])
        self.sock.sendall(self.buf[:size + BLOCK_SIZE])
        self.sent += size + BLOCK_SIZE

    def write_slot(self, store, slot, count):
        """Send ``count`` bytes of a block slot."""
        room = self._room(count)
        if self.plain and room:
            offset = store.file_offset(slot)
            left = room
            while left:
                done = os.sendfile(self.sock.fileno(), store.fd, offset, left)
                if not done:
                    raise OSError('sendfile sent nothing')
                offset += done
                left -= done
            self.sent += room
        elif room:
            store.readinto(slot, 0, self.buf[:room])
            self.sock.sendall(self.buf[:room])
            self.sent += room
        if room < count:
            raise StreamCut()


class _LimitedReader:
    """``readinto`` over the request body, bounded by Content-Length and an
    optional cut point; ``progress(fraction)`` is called at each new percent and
    returns False when the task is gone, which ends the upload."""

    def __init__(self, rfile, length, cut=None, progress=None):
        self.rfile = rfile
        self.length = length
        self.left = length
        self.cut = cut
        self.got = 0
        self.progress = progress
        self.percent = 0

    def readinto(self, view):
        """Read into ``view``; 0 at the end."""
        count = min(len(view), self.left)
        if self.cut is not None:
            if self.got >= self.cut:
                raise StreamCut()
            count = min(count, self.cut - self.got)
        if count <= 0:
            return 0
        done = self.rfile.readinto(view[:count])
        self.left -= done
        self.got += done
        percent = self.got * 100 // max(1, self.length)
        if self.progress is not None and percent != self.percent:
            self.percent = percent
            if not self.progress(percent / 100.0):
                raise StreamCut()
        return done


class Handler(BaseHTTPRequestHandler):
    """One connection: XML-RPC, raw VDI handlers, test control."""

    protocol_version = 'HTTP/1.1'
    server_version = 'xapi/24.19'
    sys_version = ''

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        if self.server.verbose:
            super().log_message(format, *args)

    @property
    def sim(self):
        """The simulator behind this server."""
        return self.server.sim

    def _split(self):
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        return url.path, query

    def _reply(self, code, body=b'', ctype='text/plain', headers=None, close=False):
        self.send_response(code)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header('Connection', 'close')
            self.close_connection = True
        self.end_headers()
        if body and self.command != 'HEAD':
            self.wfile.write(body)

    def _read_body(self):
        length = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(length) if length else b''

    # --- verbs ---------------------------------------------------------
    def do_POST(self):  # pylint: disable=invalid-name
        """XML-RPC and control."""
        path, query = self._split()
        if path in ('/', '/RPC2'):
            self._rpc()
        elif path.startswith('/_sim/'):
            self._control(path[6:], query)
        else:
            self._reply(404, b'Not found\n', close=True)

    def do_GET(self):  # pylint: disable=invalid-name
        """Exports and control reads."""
        path, query = self._split()
        if path == '/export_raw_vdi':
            self._export(query)
        elif path.startswith('/_sim/'):
            self._control(path[6:], query)
        else:
            self._reply(404, b'Not found\n', close=True)

    def do_PUT(self):  # pylint: disable=invalid-name
        """Imports."""
        path, query = self._split()
        if path == '/import_raw_vdi':
            self._import(query)
        else:
            self._reply(404, b'Not found\n', close=True)

    # --- XML-RPC ----------------------------------------------------------
    def _rpc(self):
        if int(self.headers.get('Content-Length') or 0) > MAX_RPC_BODY:
            # read_body raises Client_requested_size_over_limit before reading; the handler's catch-all answers
            # response_internal_error and closes (http_svr.ml). Deviation: the body is drained first, so that the
            # client reliably reads the 500 page instead of a reset that depends on socket buffer sizes.
            self._read_body()
            page = ('<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; please wait a while and '
                    'try again. If the problem persists, please contact your support representative.<h1> Additional '
                    'information </h1>Http_svr.Client_requested_size_over_limit</body></html>').encode()
            self._reply(500, page, 'text/html', close=True)
            return
        body = self._read_body()
        try:
            method, params = wire.decode_request(body)
        except ValueError as exc:
            page = ('<html><body><h1>HTTP 500 internal server error</h1>%s</body></html>'
                    % type(exc).__name__).encode()
            self._reply(500, page, 'text/html', close=True)
            return
        try:
            value = self.sim.call(method, params, slave=self.server.slave)
            out = wire.success(value)
        except XapiError as exc:
            out = wire.failure(exc.details)
        except Exception as exc:  # pylint: disable=broad-except
            out = wire.failure(['INTERNAL_ERROR', repr(exc)])
        self._reply(200, out, 'text/xml')

    # --- control ----------------------------------------------------------
    def _control(self, op, query):
        try:
            if op == 'vdi/read':
                data = control.read_vdi(self.sim, query['vdi'], int(query.get('offset', 0)),
                                        int(query['length']) if 'length' in query else None)
                self._reply(200, data, 'application/octet-stream')
                return
            if op == 'vdi/write' and self.command == 'POST' and 'json' not in self.headers.get('Content-Type', ''):
                result = control.write_vdi(self.sim, query['vdi'], int(query.get('offset', 0)), data=self._read_body())
            else:
                body = self._read_body() if self.command == 'POST' else b''
                args = json.loads(body) if body else {}
                args.update({k: v for k, v in query.items() if k not in args})
                result = control.dispatch(self.sim, op, args, server=self.server.owner)
            self._reply(200, json.dumps({'ok': True, 'result': result}).encode(), 'application/json')
        except XapiError as exc:
            self._reply(400, json.dumps({'ok': False, 'error': exc.details}).encode(), 'application/json')
        except (KeyError, ValueError, TypeError) as exc:
            self._reply(400, json.dumps({'ok': False, 'error': ['BAD_REQUEST', repr(exc)]}).encode(),
                        'application/json')

    # --- HTTP handler helpers ------------------------------------------------
    def _auth(self, query):
        """Session from query, cookie or Basic auth; None when refused."""
        session = query.get('session_id')
        if not session:
            cookies = self.headers.get('Cookie', '')
            for part in cookies.split(';'):
                key, _sep, value = part.strip().partition('=')
                if key == 'session_id':
                    session = value
        if session:
            with self.sim.lock:
                return session if session in self.sim.sessions else None
        auth = self.headers.get('Authorization', '')
        if auth.startswith('Basic '):
            try:
                user, _sep, pwd = base64.b64decode(auth[6:]).decode().partition(':')
            except ValueError:
                return None
            if self.sim.users.get(user) == pwd:
                return 'basic:' + user
        return None

    def _handler_task(self, query, label):
        """(task ref, owned?) for an HTTP handler: the given task_id or a new one."""
        task = query.get('task_id')
        if task:
            with self.sim.lock:
                if self.sim.store.exists('task', task):
                    return task, False
        return self.sim.new_task(label), True

    def _fail(self, task, owned, code, error, body=b''):
        self.sim.finish_task(task, error=error)
        if owned:
            self._drop_task(task)
        self._reply(code, body, close=True)

    def _drop_task(self, task):
        with self.sim.lock:
            if self.sim.store.exists('task', task):
                self.sim.store.remove('task', task)

    def _serving_host(self):
        """The host this listener stands for: the coordinator, or the first pool member (None if the pool has none)."""
        if not self.server.slave:
            return self.sim.master_ref
        return self.sim.member_refs[0] if self.sim.member_refs else None

    def _redirect_to_sr_host(self, query, task, owned):
        """Answer 302 when this host cannot see the VDI's SR; True when it did.

        As export_raw_vdi.ml/import_raw_vdi.ml: after the credentials check, a host without a PBD of
        the SR redirects to one that has it, Location = https://<Host.address><same path and query>
        (importexport.ml return_302_redirect); the client's task stays pending for that host.
        Deviation: the address carries the listener's port (all listeners are on 127.0.0.1)."""
        try:
            vdi = self.sim.resolve_vdi(query.get('vdi', ''))
            with self.sim.lock:
                sr = self.sim.store.raw('VDI', vdi)['SR']
        except XapiError:
            return False  # the handler reports the bad VDI itself
        hosts = self.sim.hosts_seeing_sr(sr)
        if not hosts or self._serving_host() in hosts:
            return False
        address = self.sim.host_address(hosts[0])
        if address is None:
            return False
        if owned:
            self._drop_task(task)
        scheme = 'https' if self.server.owner.https else 'http'
        self._reply(302, b'', headers={'Location': '%s://%s%s' % (scheme, address, self.path)}, close=True)
        return True

    def _progress_or_cut(self, task, fraction):
        """Set the task's progress as vhd-tool's percentages do (vhd_tool_wrapper.ml update_task_progress);
        a task destroyed meanwhile makes that write fail in XAPI and the handler drops the connection."""
        if not self.sim.set_progress(task, fraction):
            raise StreamCut()

    def _start_stream(self, task, ctype):
        self.send_response(200)
        self.send_header('Connection', 'close')
        self.send_header('task-id', task)
        self.send_header('Content-Type', ctype)
        self.end_headers()
        self.close_connection = True
        self.wfile.flush()

    def _abort_connection(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- /export_raw_vdi --------------------------------------------------
    def _export(self, query):  # pylint: disable=too-many-branches,too-many-statements
        task, owned = self._handler_task(query, 'VDI export')
        if self._auth(query) is None:
            self._fail(task, owned, 401, ['SESSION_INVALID', query.get('session_id', '')], b'Unauthorised\n')
            return
        if self._redirect_to_sr_host(query, task, owned):
            return
        fmt = query.get('format', 'raw')
        if fmt not in ('raw', 'vhd'):
            self._fail(task, owned, 404, ['INTERNAL_ERROR', 'unsupported format %s' % fmt])
            return
        try:
            self.sim.faults_check_method('export_raw_vdi')
            vdi = self.sim.resolve_vdi(query.get('vdi', ''))
            base_ref = self.sim.resolve_vdi(query['base']) if query.get('base') else None
            with self.sim.lock:
                disk = self.sim.disk(vdi)
                base = self.sim.disk(base_ref) if base_ref else None
                if fmt == 'vhd' and base is not None:
                    wanted = disk.differing_blocks(base)
                    base_obj = self.sim.store.raw('VDI', base_ref)
                    # The parent is the base's file on the host: its own VHD id, not the VDI uuid
                    # (ocaml-vhd vhd_format/f.ml Vhd_input.vhd: parent_unique_id = from's footer uid).
                    parent = (base.vhd_id, '/var/run/sr-mount/%s/%s.vhd' % (
                        self.sim.store.raw('SR', base_obj['SR'])['uuid'], base_obj['uuid']))
                else:
                    wanted = sorted(disk.blocks)
                    parent = None
                pinned = disk.pin()
                cut = self.sim.take_cut('cut_export', vdi)
                error_page = self.sim.take_cut('export_error_page', vdi)
                leave_vbds = self.sim.take_cut('leave_export_vbd', vdi)
        except XapiError as exc:
            self._fail(task, owned, 500, exc.details)
            return
        body = None
        vbds = []
        try:
            # export_raw_vdi.ml sends the 200 OK headers first, then attaches the VDI(s) to dom0.
            self._start_stream(task, 'application/vhd' if fmt == 'vhd' else 'application/octet-stream')
            if error_page:
                self._send_error_page(task, error_page)
                return
            with self.sim.lock:
                vbds = [vhd_sr.attach_to_control_domain(self.sim, ref) for ref in ([vdi, base_ref] if base_ref else [vdi])]
            body = _Body(self.connection, cut)
            store = disk.store
            size = disk.size
            if fmt == 'vhd':
                # A fresh random footer id on every export (ocaml-vhd vhd_format/f.ml Footer.create:
                # uid defaults to a new V4 uuid), so two exports of one VDI never share an id.
                layout = ExportLayout(size, wanted, parent[0] if parent else None, parent[1] if parent else '')
                body.write(layout.head)
                percent = 0
                for num, idx in enumerate(wanted):
                    slot = pinned.get(idx)
                    if slot is None:
                        body.write(BITMAP_FULL)
                        body.write(ZERO_BLOCK)
                    else:
                        body.write_block(BITMAP_FULL, store, slot)
                    if (num + 1) * 100 // len(wanted) != percent:
                        percent = (num + 1) * 100 // len(wanted)
                        self._progress_or_cut(task, percent / 100.0)
                body.write(layout.footer)
            else:
                blocks = (size + BLOCK_SIZE - 1) // BLOCK_SIZE
                percent = 0
                for idx in range(blocks):
                    count = min(BLOCK_SIZE, size - idx * BLOCK_SIZE)
                    slot = pinned.get(idx)
                    if slot is None:
                        body.write(memoryview(ZERO_BLOCK)[:count])
                    else:
                        body.write_slot(store, slot, count)
                    if (idx + 1) * 100 // blocks != percent:
                        percent = (idx + 1) * 100 // blocks
                        self._progress_or_cut(task, percent / 100.0)
            self.sim.finish_task(task, result='')
        except StreamCut:
            self.sim.finish_task(task, error=['VDI_IO_ERROR', 'Stream cut by fault injection'])
            self._abort_connection()
        except OSError as exc:
            self.sim.finish_task(task, error=['VDI_IO_ERROR', 'Connection lost: %s' % exc])
            self._abort_connection()
        finally:
            disk.unpin(pinned)
            if not leave_vbds:
                with self.sim.lock:
                    vhd_sr.detach_from_control_domain(self.sim, vbds)
            if owned:
                self._drop_task(task)

    def _send_error_page(self, task, error):
        """What XAPI sends when the storage fails after the 200 OK headers (xen-api issue #4603): a whole
        HTTP 500 response as the body (ocaml/libs/http-lib/http_svr.ml response_internal_error); the task fails."""
        html = ('<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; please wait a while and try '
                'again. If the problem persists, please contact your support representative.<h1> Additional information </h1>'
                '%s: [ %s ]</body></html>' % (error[0], '; '.join(str(item) for item in error[1:]))).encode()
        page = (b'HTTP/1.1 500 Internal Error\r\ncontent-length: %d\r\ncontent-type:text/html\r\nconnection:close\r\n'
                b'cache-control:no-cache, no-store\r\n\r\n' % len(html)) + html
        self.sim.finish_task(task, error=list(error))
        try:
            self.connection.sendall(page)
        except OSError:
            pass
        self._abort_connection()

    # --- /import_raw_vdi ---------------------------------------------------
    def _import(self, query):  # pylint: disable=too-many-branches,too-many-statements
        task, owned = self._handler_task(query, 'VDI import')
        if 'Transfer-Encoding' in self.headers:
            self._fail(task, owned, 404, ['INTERNAL_ERROR', 'Transfer-Encoding not supported'])
            return
        if self._auth(query) is None:
            self._fail(task, owned, 401, ['SESSION_INVALID', query.get('session_id', '')], b'Unauthorised\n')
            return
        if self._redirect_to_sr_host(query, task, owned):
            return
        fmt = query.get('format', 'raw')
        if fmt not in ('raw', 'vhd'):
            self._fail(task, owned, 404, ['INTERNAL_ERROR', 'unsupported format %s' % fmt])
            return
        if not query.get('vdi'):
            self._fail(task, owned, 400, ['VDI_MISSING', NULL_REF, ''])
            return
        length = self.headers.get('Content-Length')
        if length is None or not length.isdigit():
            self._fail(task, owned, 400, ['INTERNAL_ERROR', 'Content-Length required'])
            return
        length = int(length)
        try:
            self.sim.faults_check_method('import_raw_vdi')
            vdi = self.sim.resolve_vdi(query['vdi'])
            with self.sim.lock:
                disk = self.sim.disk(vdi)
                sr = self.sim.store.raw('VDI', vdi)['SR']
                cut = self.sim.take_cut('cut_import', vdi)
        except XapiError as exc:
            self._fail(task, owned, 500, exc.details)
            return
        self._start_stream(task, 'text/plain')
        reader = _LimitedReader(self.rfile, length, cut, progress=lambda fraction: self.sim.set_progress(task, fraction))
        try:
            if fmt == 'vhd':
                import_vhd(reader.readinto, length, disk.size, disk.write)
            else:
                if length > disk.size:
                    raise VhdError('raw stream of %d bytes larger than the VDI (%d)' % (length, disk.size))
                buf = memoryview(bytearray(CHUNK))
                pos = 0
                while pos < length:
                    want = min(CHUNK, length - pos)
                    got = 0
                    while got < want:
                        done = reader.readinto(buf[got:want])
                        if not done:
                            raise VhdError('unexpected end of stream')
                        got += done
                    disk.write(pos, buf[:got], skip_zero_blocks=True)
                    pos += got
            with self.sim.lock:
                self.sim.sr_refresh(sr)
                self.sim.store.set('VDI', vdi, 'physical_utilisation', disk.allocated)
            self.sim.finish_task(task, result=vdi)
        except StreamCut:
            self.sim.finish_task(task, error=['VDI_IO_ERROR', 'Stream cut by fault injection'])
            self._abort_connection()
        except VhdError as exc:
            self.sim.finish_task(task, error=['VDI_IO_ERROR', str(exc)])
            self._abort_connection()
        except StoreFull:
            self.sim.finish_task(task, error=['VDI_IO_ERROR', 'No space left on device'])
            self._abort_connection()
        except (OSError, ValueError) as exc:
            self.sim.finish_task(task, error=['VDI_IO_ERROR', str(exc)])
            self._abort_connection()
        finally:
            with self.sim.lock:
                self.sim.sr_refresh(sr)
            if owned:
                self._drop_task(task)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, sim, owner, slave=False, context=None, verbose=False):
        super().__init__(address, Handler)
        self.sim = sim
        self.owner = owner
        self.slave = slave
        self.context = context
        self.verbose = verbose

    def process_request_thread(self, request, client_address):
        """TLS handshake in the worker thread, not the accept loop."""
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.context is not None:
            try:
                request.settimeout(30)
                request = self.context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ssl.SSLError):
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class SimServer:
    """A running simulator: master listener, optional pool-member listener."""

    def __init__(self, sim, port=0, https=True, slave_port=0, cert_dir=None, verbose=False):
        self.sim = sim
        self.https = https
        # ca_path: the coordinator's own certificate (enough for the API and its disks);
        # ca_bundle_path: every host's certificate, needed once a disk transfer is redirected to a member.
        self.ca_path = self.cert_path = self.ca_bundle_path = self.member_cert_path = None
        master_context = member_context = None
        if https:
            directory = cert_dir or os.path.join(sim.data_dir, 'tls')
            self.cert_path, key = make_host_certificate(directory, self._host_name(sim.master_ref, 'xcp-host1'))
            self.ca_path = self.cert_path
            master_context = self._server_context(self.cert_path, key)
            certs = [self.cert_path]
            if slave_port is not None:
                member = sim.member_refs[0] if sim.member_refs else None
                self.member_cert_path, member_key = make_host_certificate(directory, self._host_name(member, 'xcp-host2'))
                member_context = self._server_context(self.member_cert_path, member_key)
                certs.append(self.member_cert_path)
            self.ca_bundle_path = write_bundle(os.path.join(directory, 'pool-bundle.pem'), certs)
            self._publish_certificates()
        self.master = _HTTPServer(('127.0.0.1', port), sim, self, context=master_context, verbose=verbose)
        self.slave = None
        if slave_port is not None:
            self.slave = _HTTPServer(('127.0.0.1', slave_port), sim, self, slave=True, context=member_context,
                                     verbose=verbose)
        scheme = 'https' if https else 'http'
        self.port = self.master.server_address[1]
        self.url = '%s://127.0.0.1:%d' % (scheme, self.port)
        self.slave_url = '%s://127.0.0.1:%d' % (scheme, self.slave.server_address[1]) if self.slave else None
        sim.master_address = '127.0.0.1:%d' % self.port
        sim.member_address = '127.0.0.1:%d' % self.slave.server_address[1] if self.slave else None
        self.threads = []

    def _publish_certificates(self):
        """host.get_server_certificate answers with these (the member's PEM for every non-coordinator host)."""
        with open(self.cert_path, encoding='ascii') as handle:
            coordinator = handle.read()
        member = coordinator
        if self.member_cert_path:
            with open(self.member_cert_path, encoding='ascii') as handle:
                member = handle.read()
        self.sim.certificate_pems = (coordinator, member)

    def _host_name(self, ref, default):
        with self.sim.lock:
            if ref and self.sim.store.exists('host', ref):
                return self.sim.store.raw('host', ref)['name_label'] or default
        return default

    @staticmethod
    def _server_context(cert, key):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context

    def start(self):
        """Serve in background threads."""
        for srv in (self.master, self.slave):
            if srv is not None:
                thread = threading.Thread(target=srv.serve_forever, kwargs={'poll_interval': 0.2}, daemon=True)
                thread.start()
                self.threads.append(thread)
        return self

    def stop(self):
        """Stop listening and wait for the accept loops."""
        for srv in (self.master, self.slave):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for thread in self.threads:
            thread.join(5)

    def info(self):
        """Addresses for clients."""
        return {'url': self.url, 'slave_url': self.slave_url, 'ca_path': self.ca_path, 'ca_bundle_path': self.ca_bundle_path,
                'member_cert_path': self.member_cert_path, 'https': self.https,
                'master_address': self.sim.master_address, 'data_dir': self.sim.data_dir}
