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


def make_certificates(directory):
    """Create (once) a CA and a server certificate for 127.0.0.1/localhost with
    the openssl CLI.  Returns (ca_path, cert_path, key_path)."""
    os.makedirs(directory, exist_ok=True)
    ca_path = os.path.join(directory, 'ca.pem')
    ca_key = os.path.join(directory, 'ca.key')
    cert = os.path.join(directory, 'server.pem')
    key = os.path.join(directory, 'server.key')
    if all(os.path.exists(p) for p in (ca_path, cert, key)):
        return ca_path, cert, key
    curve = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '3650']
    subprocess.run(['openssl', 'req', '-x509'] + curve + ['-subj', '/CN=xapisim test CA', '-keyout', ca_key,
                                                          '-out', ca_path, '-addext', 'basicConstraints=critical,CA:TRUE',
                                                          '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
                   check=True, capture_output=True)
    subprocess.run(['openssl', 'req', '-x509', '-CA', ca_path, '-CAkey', ca_key] + curve +
                   ['-subj', '/CN=127.0.0.1', '-keyout', key, '-out', cert,
                    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
                    '-addext', 'basicConstraints=critical,CA:FALSE'], check=True, capture_output=True)
    return ca_path, cert, key


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
    optional cut point."""

    def __init__(self, rfile, length, cut=None):
        self.rfile = rfile
        self.left = length
        self.cut = cut
        self.got = 0

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

    def _redirect(self):
        target = '%s%s' % (self.server.owner.url, self.path)
        self._reply(302, b'', headers={'Location': target}, close=True)

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
        if self.server.slave:
            self._redirect()
            return
        task, owned = self._handler_task(query, 'VDI export')
        if self._auth(query) is None:
            self._fail(task, owned, 401, ['SESSION_INVALID', query.get('session_id', '')], b'Unauthorised\n')
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
                for num, idx in enumerate(wanted):
                    slot = pinned.get(idx)
                    if slot is None:
                        body.write(BITMAP_FULL)
                        body.write(ZERO_BLOCK)
                    else:
                        body.write_block(BITMAP_FULL, store, slot)
                    if num % 64 == 0:
                        self.sim.set_progress(task, num / max(1, len(wanted)))
                body.write(layout.footer)
            else:
                for idx in range((size + BLOCK_SIZE - 1) // BLOCK_SIZE):
                    count = min(BLOCK_SIZE, size - idx * BLOCK_SIZE)
                    slot = pinned.get(idx)
                    if slot is None:
                        body.write(memoryview(ZERO_BLOCK)[:count])
                    else:
                        body.write_slot(store, slot, count)
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
        if self.server.slave:
            self._redirect()
            return
        task, owned = self._handler_task(query, 'VDI import')
        if 'Transfer-Encoding' in self.headers:
            self._fail(task, owned, 404, ['INTERNAL_ERROR', 'Transfer-Encoding not supported'])
            return
        if self._auth(query) is None:
            self._fail(task, owned, 401, ['SESSION_INVALID', query.get('session_id', '')], b'Unauthorised\n')
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
        reader = _LimitedReader(self.rfile, length, cut)
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
        self.ca_path = self.cert_path = None
        context = None
        if https:
            self.ca_path, self.cert_path, key = make_certificates(cert_dir or os.path.join(sim.data_dir, 'tls'))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert_path, key)
        self.master = _HTTPServer(('127.0.0.1', port), sim, self, context=context, verbose=verbose)
        self.slave = None
        if slave_port is not None:
            self.slave = _HTTPServer(('127.0.0.1', slave_port), sim, self, slave=True, context=context,
                                     verbose=verbose)
        scheme = 'https' if https else 'http'
        self.port = self.master.server_address[1]
        self.url = '%s://127.0.0.1:%d' % (scheme, self.port)
        self.slave_url = '%s://127.0.0.1:%d' % (scheme, self.slave.server_address[1]) if self.slave else None
        sim.master_address = '127.0.0.1:%d' % self.port
        self.threads = []

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
        return {'url': self.url, 'slave_url': self.slave_url, 'ca_path': self.ca_path, 'https': self.https,
                'master_address': self.sim.master_address, 'data_dir': self.sim.data_dir}
