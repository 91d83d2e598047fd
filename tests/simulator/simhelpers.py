# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers shared by the simulator tests: raw HTTP, task waits, VHD oracles."""

import http.client
import subprocess
import time
import urllib.parse
import xmlrpc.client

import pytest
import XenAPI

QEMU_IMG = '/usr/bin/qemu-img'


def connection(running, timeout=60):
    """An http.client connection to the simulator (CA verified for HTTPS)."""
    url = urllib.parse.urlsplit(running.url)
    if url.scheme == 'https':
        return http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout, context=running.ssl_context())
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def xapi_failure(call, *args):
    """The details of the XenAPI.Failure that ``call(*args)`` must raise; callers assert on them whole."""
    with pytest.raises(XenAPI.Failure) as err:
        call(*args)
    return err.value.details


def raw_call(running, method, *params):
    """An XML-RPC call without XenAPI (returns the raw envelope)."""
    proxy = xmlrpc.client.ServerProxy(running.url + '/', transport=running.transport(), allow_none=True)
    return getattr(proxy, method)(*params)


def export(running, session, vdi, fmt='vhd', base=None, task=None):
    """GET /export_raw_vdi; returns (status, headers, body read to EOF)."""
    query = {'session_id': session, 'vdi': vdi, 'format': fmt}
    if base:
        query['base'] = base
    if task:
        query['task_id'] = task
    conn = connection(running)
    conn.request('GET', '/export_raw_vdi?' + urllib.parse.urlencode(query))
    resp = conn.getresponse()
    chunks = []
    try:
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except (http.client.IncompleteRead, ConnectionError):
        pass
    conn.close()
    return resp.status, resp.headers, b''.join(chunks)


def import_(running, session, vdi, data, fmt='vhd', task=None, headers=None):
    """PUT /import_raw_vdi with Content-Length; returns the status (or the exception)."""
    query = {'session_id': session, 'vdi': vdi, 'format': fmt}
    if task:
        query['task_id'] = task
    conn = connection(running)
    try:
        conn.request('PUT', '/import_raw_vdi?' + urllib.parse.urlencode(query), body=data, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        return exc
    finally:
        conn.close()


def wait_task(api, task, timeout=30):
    """Poll until the task leaves pending; returns its record."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = api.task.get_record(task)
        if rec['status'] not in ('pending', 'cancelling'):
            return rec
        time.sleep(0.02)
    raise AssertionError('task still pending')


def task_value(rec):
    """Decode a task's XML-RPC result text."""
    if not rec['result']:
        return ''
    params, _method = xmlrpc.client.loads('<params><param>%s</param></params>' % rec['result'])
    return params[0]


def qemu_raw(path, out):
    """qemu-img convert a vpc file to raw with current_size semantics."""
    subprocess.run([QEMU_IMG, 'convert', '-O', 'raw', '--image-opts',
                    'driver=vpc,force_size_calc=current_size,file.filename=%s' % path, str(out)],
                   check=True, capture_output=True)
    with open(out, 'rb') as handle:
        return handle.read()


def vhdi_read(path, size, parent=None):
    """Read a VHD with libvhdi (following one parent when given)."""
    import pyvhdi  # pylint: disable=import-error,import-outside-toplevel
    handle = pyvhdi.file()
    handle.open(str(path))
    parent_handle = None
    if parent is not None:
        parent_handle = pyvhdi.file()
        parent_handle.open(str(parent))
        handle.set_parent(parent_handle)
    data = handle.read_buffer_at_offset(size, 0)
    handle.close()
    if parent_handle is not None:
        parent_handle.close()
    return data


def with_parent_id(vhd, parent_id):
    """A VHD stream whose dynamic header names ``parent_id`` as parent (header checksum recomputed)."""
    header = bytearray(vhd[512:1536])
    header[40:56] = parent_id
    header[36:40] = bytes(4)
    header[36:40] = ((~sum(header)) & 0xFFFFFFFF).to_bytes(4, 'big')
    return vhd[:512] + bytes(header) + vhd[1536:]
