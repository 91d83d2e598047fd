# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Shared helpers of the XAPI layer's tests: a minimal XAPI over real HTTP(S) and the simulator's connection.

``MiniXapi`` is a small in-file XAPI stand-in covering exactly the calls the connection makes, so the
tests using it do not depend on the shared simulator's progress; ``sim_connect`` connects to ``xapisim``
(started by the ``simulator`` fixture of this folder's conftest.py).
"""

from __future__ import annotations

import http.server
import os
import threading
import time
import uuid
import xmlrpc.client
from urllib.parse import parse_qs, urlsplit

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection

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


# -- the shared XAPI simulator (tests/xapisim) ---------------------------------------------------


TESTS_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def sim_connect(sim, url=None, **overrides):
    options = dict(hostname=url or sim.url, username='root', password='secret', ca_path=sim.ca_path, timeout=10)
    options.update(overrides)
    return XapiConnection(**options)
