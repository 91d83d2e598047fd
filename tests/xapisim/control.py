# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test control, outside XAPI's namespace.

Server side: ``dispatch(sim, op, args)`` behind ``/_sim/<op>`` (JSON in,
``{"ok": true, "result": ...}`` out).  Client side: ``SimulatorControl``.
The same operations are plain functions usable in-process."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request

import uuid as uuidlib

from . import config as configmod
from . import vhd_sr
from . import vtpm
from .api import new_faults
from .model import XapiError
from .storage import StoreFull, pattern


def find_ref(sim, cls, ident):
    """A ref from a ref, a uuid or a unique name_label."""
    with sim.lock:
        if sim.store.exists(cls, ident):
            return ident
        hit = sim.store.by_uuid.get(ident)
        if hit and hit[0] == cls:
            return hit[1]
        refs = [r for r, o in sim.store.objects[cls].items() if o.get('name_label') == ident]
        if len(refs) == 1:
            return refs[0]
    raise XapiError('HANDLE_INVALID', cls, ident)


def write_vdi(sim, vdi, offset=0, data=None, length=None, seed=None):
    """Write guest data as a running VM would: given bytes or ``pattern(seed, length)``."""
    ref = find_ref(sim, 'VDI', vdi)
    if data is None:
        data = pattern(seed if seed is not None else 0, int(length))
    disk = sim.disk(ref)
    try:
        disk.write(int(offset), data)
    except StoreFull as exc:
        raise XapiError('SR_FULL', exc.requested, exc.maximum) from None
    except ValueError as exc:
        raise XapiError('VDI_IO_ERROR', str(exc)) from None
    with sim.lock:
        sr = sim.store.raw('VDI', ref)['SR']
        sim.store.set('VDI', ref, 'physical_utilisation', disk.allocated)
        sim.sr_refresh(sr)
    return {'vdi': ref, 'offset': int(offset), 'length': len(data), 'sha256': hashlib.sha256(data).hexdigest()}


def read_vdi(sim, vdi, offset=0, length=None):
    """Bytes of a VDI (ground truth)."""
    disk = sim.disk(find_ref(sim, 'VDI', vdi))
    if length is None:
        length = disk.size - offset
    return disk.read(int(offset), int(length))


def _op_info(sim, server=None):
    out = server.info() if server is not None else {'data_dir': sim.data_dir}
    with sim.lock:
        out['counts'] = {cls: len(objs) for cls, objs in sim.store.objects.items()}
        out['sessions'] = len(sim.sessions)
        out['stats'] = dict(sim.stats)
    return out


def _op_reset(sim, config=None):
    sim.reset()
    if config is not None:
        return configmod.build(sim, config)
    return None


def _op_load_config(sim, config):
    sim.reset()
    return configmod.build(sim, config)


def _op_sessions(sim):
    with sim.lock:
        return {'count': len(sim.sessions),
                'sessions': [{'ref': s.ref, 'user': s.user, 'originator': s.originator}
                             for s in sorted(sim.sessions.values(), key=lambda s: s.seq)],
                'logins': sim.stats['logins'], 'logouts': sim.stats['logouts']}


def _op_write_vdi(sim, vdi, offset=0, length=None, seed=None, data_b64=None):
    data = base64.b64decode(data_b64) if data_b64 is not None else None
    return write_vdi(sim, vdi, offset, data, length, seed)


def _op_vdi_sha256(sim, vdi):
    return sim.disk(find_ref(sim, 'VDI', vdi)).sha256()


def _op_vdi_fingerprint(sim, vdi):
    return sim.disk(find_ref(sim, 'VDI', vdi)).fingerprint()


def _op_vdi_blocks(sim, vdi):
    return sorted(sim.disk(find_ref(sim, 'VDI', vdi)).blocks)


def _op_fail_next(sim, method, error, count=1):
    with sim.lock:
        sim.faults['fail'].setdefault(method, []).append((list(error), int(count)))


def _op_cut_export(sim, after_bytes, vdi=None):
    with sim.lock:
        sim.faults['cut_export'].append((find_ref(sim, 'VDI', vdi) if vdi else None, int(after_bytes)))


def _op_cut_import(sim, after_bytes, vdi=None):
    with sim.lock:
        sim.faults['cut_import'].append((find_ref(sim, 'VDI', vdi) if vdi else None, int(after_bytes)))


def _op_delay(sim, seconds, method='*'):
    with sim.lock:
        if float(seconds) > 0:
            sim.faults['delay'][method] = float(seconds)
        else:
            sim.faults['delay'].pop(method, None)


def _op_clear_faults(sim):
    with sim.lock:
        sim.faults = new_faults()


def _op_fill_sr(sim, sr, free_bytes=0):
    ref = find_ref(sim, 'SR', sr)
    with sim.lock:
        store = sim.stores[ref]
        store.reserved = max(0, store.capacity - store.used - int(free_bytes))
        sim.sr_refresh(ref)
        return {'physical_size': store.capacity, 'physical_utilisation': store.utilisation}


def _op_unfill_sr(sim, sr):
    ref = find_ref(sim, 'SR', sr)
    with sim.lock:
        sim.stores[ref].reserved = 0
        sim.sr_refresh(ref)


def _op_session_limit(sim, limit, per_originator=None):
    with sim.lock:
        sim.session_limit = int(limit)
        if per_originator is not None:
            sim.originator_limit = int(per_originator)


def _op_lifetimes(sim, task_lifetime=None, session_timeout=None, gc_interval=None, completed_task_lifetime=None):
    """Change the GC's task/session lifetimes and period (seconds); returns the values in force."""
    with sim.lock:
        for name, value in (('task_lifetime', task_lifetime), ('session_timeout', session_timeout),
                            ('gc_interval', gc_interval), ('completed_task_lifetime', completed_task_lifetime)):
            if value is not None:
                setattr(sim, name, float(value))
        return {'task_lifetime': sim.task_lifetime, 'session_timeout': sim.session_timeout,
                'gc_interval': sim.gc_interval, 'completed_task_lifetime': sim.completed_task_lifetime}


def _op_collect_garbage(sim):
    return sim.collect_garbage()


def _op_find(sim, cls, ident):
    return find_ref(sim, cls, ident)


def _op_record(sim, cls, ident):
    ref = find_ref(sim, cls, ident)
    with sim.lock:
        rec = sim.store.record(cls, ref)
    return json.loads(json.dumps(rec, default=lambda v: getattr(v, 'value', str(v))))


def _op_export_error_page(sim, vdi=None, error=None, count=1):
    # xen-api issue #4603: a storage failure after the 200 OK headers were sent makes XAPI write a whole
    # "HTTP/1.1 500" response (ocaml/libs/http-lib/http_svr.ml response_internal_error) as the body.
    error = list(error or ['SR_BACKEND_FAILURE_46', '', 'The VDI is not available [opterr=VDI not detached cleanly]', ''])
    with sim.lock:
        target = find_ref(sim, 'VDI', vdi) if vdi else None
        sim.faults['export_error_page'].extend([(target, error)] * int(count))


def _op_leave_export_vbd(sim, vdi=None):
    with sim.lock:
        sim.faults['leave_export_vbd'].append((find_ref(sim, 'VDI', vdi) if vdi else None, True))


def _srs(sim, sr):
    return [find_ref(sim, 'SR', sr)] if sr else sorted(sim.stores)


def _op_coalesce(sim, sr=None):
    with sim.lock:
        return sorted(uuid for ref in _srs(sim, sr) for uuid in sim.coalescer.run(ref))


def _op_hold_coalesce(sim, sr=None, held=True):
    with sim.lock:
        for ref in _srs(sim, sr):
            sim.coalescer.hold(ref, bool(held))


def _op_coalesce_delay(sim, seconds, sr=None):
    with sim.lock:
        for ref in _srs(sim, sr):
            sim.coalescer.set_delay(ref, seconds)


def _op_waiting_base_copies(sim, sr=None):
    with sim.lock:
        return sorted(uuid for ref in _srs(sim, sr) for uuid in vhd_sr.waiting_base_copies(sim, ref))


def _op_vdi_vhd_id(sim, vdi):
    with sim.lock:
        return str(uuidlib.UUID(bytes=sim.disk(find_ref(sim, 'VDI', vdi)).vhd_id))


def _op_vdi_chain_depth(sim, vdi):
    with sim.lock:
        return vhd_sr.chain_depth(sim, find_ref(sim, 'VDI', vdi))


def _op_set_power_state(sim, vm, state):
    ref = find_ref(sim, 'VM', vm)
    with sim.lock:
        sim.store.set('VM', ref, 'power_state', state)


def _op_vtpms(sim, vm):
    """Ground truth of a VM's VTPMs, contents included (issue 13)."""
    with sim.lock:
        return vtpm.ground_truth(sim, find_ref(sim, 'VM', vm))


OPS = {
    'vtpms': _op_vtpms,
    'info': _op_info, 'reset': _op_reset, 'load_config': _op_load_config, 'sessions': _op_sessions,
    'write_vdi': _op_write_vdi, 'vdi_sha256': _op_vdi_sha256, 'vdi_fingerprint': _op_vdi_fingerprint,
    'vdi_blocks': _op_vdi_blocks,
    'fail_next': _op_fail_next, 'cut_export': _op_cut_export, 'cut_import': _op_cut_import, 'delay': _op_delay,
    'clear_faults': _op_clear_faults, 'fill_sr': _op_fill_sr, 'unfill_sr': _op_unfill_sr,
    'session_limit': _op_session_limit, 'find': _op_find, 'record': _op_record,
    'set_power_state': _op_set_power_state, 'lifetimes': _op_lifetimes, 'collect_garbage': _op_collect_garbage,
    'export_error_page': _op_export_error_page, 'leave_export_vbd': _op_leave_export_vbd, 'coalesce': _op_coalesce,
    'hold_coalesce': _op_hold_coalesce, 'coalesce_delay': _op_coalesce_delay, 'waiting_base_copies': _op_waiting_base_copies,
    'vdi_vhd_id': _op_vdi_vhd_id, 'vdi_chain_depth': _op_vdi_chain_depth,
}


def dispatch(sim, op, args, server=None):
    """Run a control operation by name with keyword ``args``."""
    func = OPS.get(op)
    if func is None:
        raise XapiError('UNKNOWN_CONTROL_OP', op)
    if op == 'info':
        return func(sim, server=server)
    return func(sim, **args)


class SimulatorControl:
    """Client for the ``/_sim/`` endpoints of a running simulator.

    ``SimulatorControl(url, cafile=None)``; every method raises
    ``ControlError`` (with ``.details``) when the server refuses."""

    def __init__(self, url, cafile=None, timeout=60):
        self.url = url.rstrip('/')
        self.timeout = timeout
        self.context = None
        if self.url.startswith('https'):
            self.context = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()  # noqa: SLF001 pylint: disable=protected-access

    def _request(self, path, body=None, ctype='application/json', method=None):
        req = urllib.request.Request(self.url + '/_sim/' + path, data=body, method=method or ('POST' if body is not None else 'GET'),
                                     headers={'Content-Type': ctype})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                return resp.read(), resp.headers.get('Content-Type', '')
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                details = json.loads(payload)['error']
            except ValueError:
                details = ['HTTP_%d' % exc.code, payload.decode('utf-8', 'replace')]
            raise ControlError(details) from None

    def call(self, op, **args):
        """Generic JSON operation."""
        data, _ctype = self._request(op, json.dumps(args).encode())
        return json.loads(data)['result']

    def info(self):
        """Server addresses, object counts, session count, stats."""
        return self.call('info')

    def reset(self, config=None):
        """Forget everything; with ``config`` (dict or YAML text) rebuild the pool."""
        return self.call('reset', config=config)

    def load_config(self, config):
        """Replace the pool by ``config``; returns {kind: {name: ref}}."""
        return self.call('load_config', config=config)

    def sessions(self):
        """{'count', 'sessions', 'logins', 'logouts'}."""
        return self.call('sessions')

    def session_count(self):
        """Number of live sessions."""
        return self.sessions()['count']

    def write_vdi(self, vdi, offset=0, data=None, length=None, seed=None):
        """Write bytes (``data``) or ``pattern(seed, length)`` into a VDI at ``offset``."""
        if data is not None:
            query = urllib.parse.urlencode({'vdi': vdi, 'offset': offset})
            raw, _ctype = self._request('vdi/write?' + query, bytes(data), 'application/octet-stream')
            return json.loads(raw)['result']
        return self.call('write_vdi', vdi=vdi, offset=offset, length=length, seed=seed)

    def read_vdi(self, vdi, offset=0, length=None):
        """Bytes of a VDI."""
        query = {'vdi': vdi, 'offset': offset}
        if length is not None:
            query['length'] = length
        raw, _ctype = self._request('vdi/read?' + urllib.parse.urlencode(query))
        return raw

    def vdi_sha256(self, vdi):
        """sha256 hex digest of the whole VDI (hashes every byte: slow for 100 GiB disks)."""
        return self.call('vdi_sha256', vdi=vdi)

    def vdi_fingerprint(self, vdi):
        """Content identity costing only allocated data (use for huge disks)."""
        return self.call('vdi_fingerprint', vdi=vdi)

    def vdi_blocks(self, vdi):
        """Allocated 2 MiB block indexes."""
        return self.call('vdi_blocks', vdi=vdi)

    def fail_next(self, method, error, count=1):
        """The next ``count`` calls of ``method`` (e.g. ``VM.snapshot``, ``export_raw_vdi``) fail with ``error``."""
        return self.call('fail_next', method=method, error=list(error), count=count)

    def cut_export(self, after_bytes, vdi=None):
        """Cut the next export (of ``vdi``, or any) after ``after_bytes`` of body."""
        return self.call('cut_export', after_bytes=after_bytes, vdi=vdi)

    def cut_import(self, after_bytes, vdi=None):
        """Drop the next import connection after reading ``after_bytes`` of body."""
        return self.call('cut_import', after_bytes=after_bytes, vdi=vdi)

    def delay(self, seconds, method='*'):
        """Slow every call (or one method) by ``seconds``; 0 removes it."""
        return self.call('delay', seconds=seconds, method=method)

    def clear_faults(self):
        """Remove every pending fault."""
        return self.call('clear_faults')

    def fill_sr(self, sr, free_bytes=0):
        """Make an SR (ref, uuid or name) full, leaving ``free_bytes``."""
        return self.call('fill_sr', sr=sr, free_bytes=free_bytes)

    def unfill_sr(self, sr):
        """Undo ``fill_sr``."""
        return self.call('unfill_sr', sr=sr)

    def session_limit(self, limit, per_originator=None):
        """Change the session limits."""
        return self.call('session_limit', limit=limit, per_originator=per_originator)

    def lifetimes(self, task_lifetime=None, session_timeout=None, gc_interval=None, completed_task_lifetime=None):
        """Change the GC's lifetimes (pending task, inactive session, finished task) and period, in seconds."""
        return self.call('lifetimes', task_lifetime=task_lifetime, session_timeout=session_timeout,
                         gc_interval=gc_interval, completed_task_lifetime=completed_task_lifetime)

    def collect_garbage(self):
        """Run one GC pass now; returns {'tasks': [...], 'sessions': [...]} it removed."""
        return self.call('collect_garbage')

    def find(self, cls, ident):
        """Ref of an object by ref, uuid or unique name_label."""
        return self.call('find', cls=cls, ident=ident)

    def record(self, cls, ident):
        """A record as JSON (dates as text)."""
        return self.call('record', cls=cls, ident=ident)

    def vtpms(self, vm):
        """[{uuid, is_unique, contents}] of the VM's VTPMs, read from the simulator's store (ground truth)."""
        return self.call('vtpms', vm=vm)

    def set_power_state(self, vm, state):
        """Force a VM's power_state (no side effects)."""
        return self.call('set_power_state', vm=vm, state=state)

    def export_error_page(self, vdi=None, error=None, count=1):
        """The next ``count`` exports (of ``vdi``, or any) answer 200 OK with an HTTP 500 error page as body
        (xen-api issue #4603); their task fails with ``error`` (default SR_BACKEND_FAILURE_46)."""
        return self.call('export_error_page', vdi=vdi, error=error, count=count)

    def leave_export_vbd(self, vdi=None):
        """The next export (of ``vdi``, or any) leaves its control-domain VBDs plugged, as a crashed export would."""
        return self.call('leave_export_vbd', vdi=vdi)

    def coalesce(self, sr=None):
        """Run the garbage collector of ``sr`` (or every SR) now, held or not; uuids of base copies removed."""
        return self.call('coalesce', sr=sr)

    def hold_coalesce(self, sr=None, held=True):
        """Stop (``held``) or restart the garbage collector of ``sr`` (or every SR)."""
        return self.call('hold_coalesce', sr=sr, held=held)

    def coalesce_delay(self, seconds, sr=None):
        """Coalesce ``sr`` (or every SR) this many seconds after a VDI is destroyed (0: at once)."""
        return self.call('coalesce_delay', seconds=seconds, sr=sr)

    def waiting_base_copies(self, sr=None):
        """Uuids of base copies a GC pass would coalesce now."""
        return self.call('waiting_base_copies', sr=sr)

    def vdi_vhd_id(self, vdi):
        """The unique id of the VDI's VHD file on the host (not the VDI uuid)."""
        return self.call('vdi_vhd_id', vdi=vdi)

    def vdi_chain_depth(self, vdi):
        """Depth of the VDI's VHD chain on its SR (1 without parent)."""
        return self.call('vdi_chain_depth', vdi=vdi)


class ControlError(Exception):
    """A refused control request."""

    def __init__(self, details):
        super().__init__(details)
        self.details = details
