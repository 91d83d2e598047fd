# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""XAPI classes and messages over the state model: dispatch, sessions,
tasks, events, VM/VDI/VBD/VIF operations, CBT.  Transport-agnostic: the
wire layer calls ``Simulator.call(method, params)``."""

from __future__ import annotations

import base64
import hashlib
import inspect
import os
import re
import shutil
import tempfile
import threading
import time

from . import datamodel
from . import guest_agent
from . import suspend as suspendmod
from . import unmarshal
from . import vhd_sr
from . import vtpm
from . import vm_record
from .model import (FIELDS, MODELED, NULL_REF, RW, SRO, DRO, Expr, Store, XapiError, class_name, new_ref,
                    new_uuid, xapi_date)
from .storage import BLOCK_SIZE, CBT_BLOCK, BlockStore, Disk, StoreFull
from .wire import I4, encode_value

MAX_VDI_SIZE = 2040 * 1024 ** 3
# ocaml/xapi/xapi_globs.ml mac_seed: the VM other_config key VIF MACs are derived from.
MAC_SEED_KEY = 'mac_seed'
# ocaml/xapi/helpers.ml is_valid_MAC: six pairs of hex digits separated by colons.
MAC_PATTERN = re.compile(r'[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}')
# ocaml/xapi/xapi_vlan.ml vlan_mac: the dummy MAC of a VLAN's untagged PIF.
VLAN_MAC = 'fe:ff:ff:ff:ff:ff'


def mac_from_seed(seed, device):
    """The MAC XAPI gives VIF ``device`` of a VM with other_config:mac_seed ``seed``.

    Same derivation as gen_mac in ocaml/xapi/xapi_vif_helpers.ml (written anew): MD5 applied
    2 * device + 1 times to the seed; the first four bytes of that digest and bytes 1 and 2 of
    its MD5 make the MAC, whose first byte gets the locally-administered bit set and the multicast
    bit cleared (mac_from_int_array in ocaml/xapi-cli-server/record_util.ml).
    """
    digest = seed.encode('utf-8')
    for _round in range(2 * device + 1):
        digest = hashlib.md5(digest).digest()
    second = hashlib.md5(digest).digest()
    octets = [(digest[0] | 0x02) & ~0x01, digest[1], digest[2], digest[3], second[1], second[2]]
    return ':'.join('%02x' % octet for octet in octets)


def random_nic_mac():
    """A MAC for a simulated physical NIC (locally administered, so it never looks like real hardware)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] | 0x02) & 0xFE
    return ':'.join('%02x' % octet for octet in raw)


BAD_POWER = 'VM_BAD_POWER_STATE'
# ocaml/xapi/server_helpers.ml sync_ty_and_maybe_remove_prefix: the only asynchronous prefix on the wire.
ASYNC_PREFIX = 'Async.'
# Answer for a message XAPI has but the simulator does not implement: a simulator gap, never an XAPI error
# (XAPI's own NOT_IMPLEMENTED is a different code).
SIM_GAP = 'XAPISIM_NOT_IMPLEMENTED'
# Operations whose task a client can cancel while they run (task allowed_operations = [cancel]).
# VM.start and the shutdowns run as xenopsd tasks bound through Xapi_xenops.sync_with_task, whose
# TaskHelper.register_task marks the task cancellable (ocaml/xapi/xapi_xenops.ml, taskHelper.ml);
# VM.snapshot and VM.clone call TaskHelper.set_cancellable (ocaml/xapi/xapi_vm.ml). VDI.destroy and
# VM.destroy never do: task.cancel only records the request (xapi_task.ml) and they end `success`.
CANCELLABLE_METHODS = frozenset({'VM.start', 'VM.hard_shutdown', 'VM.clean_shutdown', 'VM.shutdown',
                                 'VM.snapshot', 'VM.clone'})
# Defaults of ocaml/xapi/xapi_globs.ml (pending_task_timeout, completed_task_timeout,
# inactive_session_timeout) and the GC period of ocaml/xapi/db_gc.ml (db_GC_TIMER).
PENDING_TASK_TIMEOUT = 86400.0
COMPLETED_TASK_TIMEOUT = 3900.0
INACTIVE_SESSION_TIMEOUT = 86400.0
GC_INTERVAL = 30.0
COMPLETED_STATUSES = ('success', 'failure', 'cancelled')


def _wants_session(func):
    params = list(inspect.signature(func).parameters)
    return bool(params) and params[0] == 'session'


class Session:
    """A logged-in session."""

    def __init__(self, ref, user, originator, seq):
        self.ref = ref
        self.user = user
        self.originator = originator
        self.seq = seq
        self.uuid = new_uuid()
        # Session.last_active: refreshed by every API call (session_check.ml), read by the GC.
        self.last_active = time.time()


def new_faults():
    """No pending fault: failures, delays, stream cuts, error pages and left-behind export VBDs."""
    return {'fail': {}, 'delay': {}, 'cut_export': [], 'cut_import': [], 'export_error_page': [], 'leave_export_vbd': []}


class Simulator:  # pylint: disable=too-many-public-methods,too-many-instance-attributes
    """The whole simulated pool: object store, disks, sessions, faults."""

    def __init__(self, data_dir=None):
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix='xapisim-')
        os.makedirs(self.data_dir, exist_ok=True)
        self.store = Store()
        self.lock = self.store.lock
        self.stores = {}
        self.disks = {}
        self.cbt = {}
        self.sessions = {}
        self.session_seq = 0
        self.session_limit = 400
        self.originator_limit = 500
        self.auth_delay = 0.05
        self.xapi_profile = self.xapi_version = self.api = None
        self.select_xapi()
        self.users = {}
        self.master_address = '127.0.0.1'
        self.member_address = None
        self.member_refs = []
        self.certificate_pems = ('', '')
        self.pool_ref = None
        self.master_ref = None
        self.faults = new_faults()
        self.stats = {'logins': 0, 'logouts': 0, 'calls': 0}
        self.coalescer = vhd_sr.Coalescer(self)
        self.guest_agents = guest_agent.GuestAgents(self)
        self._default_lifetimes()
        # task ref -> {'created', 'finished' (unix time or None), 'session'}: what the GC needs.
        self.task_meta = {}
        self._gc_probation = {}
        self._closed = threading.Event()
        self.methods = {}
        for name in dir(self):
            if name.startswith('m_'):
                cls, _sep, msg = name[2:].partition('__')
                self.methods['%s.%s' % (cls, msg)] = getattr(self, name)
        threading.Thread(target=self._gc_loop, daemon=True, name='xapisim-gc').start()

    def _default_lifetimes(self):
        self.task_lifetime = PENDING_TASK_TIMEOUT
        self.completed_task_lifetime = COMPLETED_TASK_TIMEOUT
        self.session_timeout = INACTIVE_SESSION_TIMEOUT
        self.gc_interval = GC_INTERVAL

    # ------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------
    def close(self):
        """Release backing files (and the data dir when we made it)."""
        self._closed.set()
        with self.lock:
            for store in self.stores.values():
                store.close()
            self.stores.clear()
            self.disks.clear()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def reset(self):
        """Forget every object, session and fault."""
        with self.lock:
            for store in self.stores.values():
                store.close()
            self.store.objects = {cls: {} for cls in FIELDS}
            self.store.by_uuid.clear()
            self.stores.clear()
            self.disks.clear()
            self.cbt.clear()
            self.sessions.clear()
            self.coalescer.reset()
            self.guest_agents.reset()
            self.task_meta.clear()
            self._gc_probation.clear()
            self._default_lifetimes()
            self.users.clear()
            self.pool_ref = self.master_ref = None
            self.member_refs = []
            self.faults = new_faults()
            self.stats = {'logins': 0, 'logouts': 0, 'calls': 0}
            self.session_limit = 400
            self.originator_limit = 500
            self.select_xapi()

    def select_xapi(self, profile=None, version=None):
        """Answer as XAPI ``version`` would, or as the named product profile (default: the supplement's
        default_profile).  ValueError for an unknown profile or a version that is not a release."""
        model = datamodel.load()
        if version is None:
            profile = profile or model.default_profile
            version = str(model.profile(profile)['xapi'])
        elif profile is not None:
            raise ValueError('xapi: give either profile or version, not both')
        self.api = model.view(str(version))
        self.xapi_profile, self.xapi_version = profile, str(version)

    def software_version(self):
        """host.software_version as a host of the selected XAPI reports it (keys: ocaml/xapi/xapi_globs.ml
        software_version, ocaml/xapi/create_misc.ml make_software_version; values: datamodel/supplement.yml)."""
        model = datamodel.load()
        spec = model.profiles.get(self.xapi_profile) or {}
        out = {str(k): str(v) for k, v in (spec.get('product') or {}).items()}
        parts = self.xapi_version.split('.')
        out['xapi'] = '.'.join(parts[:2])
        if self.api.published(model.supplement['xapi_build_key_since']):
            out['xapi_build'] = self.xapi_version
        if spec.get('db_schema'):
            out['db_schema'] = str(spec['db_schema'])
        return out

    def api_version(self):
        """(major, minor) of host.API_version_*: the profile's, else by release (supplement api_version_since)."""
        model = datamodel.load()
        spec = model.profiles.get(self.xapi_profile)
        if spec:
            return tuple(spec['api_version'])
        found = (2, 15)
        for release, major, minor in model.supplement['api_version_since']:
            if self.api.published(str(release)):
                found = (major, minor)
        return found

    # ------------------------------------------------------------------
    # dispatch
    # ------------------------------------------------------------------
    def _message(self, wire):
        """The MessageDef a wire name (``VM.snapshot`` or ``VM_snapshot``) calls in the selected version."""
        cls, dot, msg = wire.partition('.')
        if dot:
            return self.api.message(cls, msg)
        # DU.alternative_wire_name: class and message joined by "_"; class names may hold "_" themselves.
        for pos in [i for i, char in enumerate(wire) if char == '_']:
            found = self.api.message(wire[:pos], wire[pos + 1:])
            if found is not None:
                return found
        return None

    def call(self, method, params, slave=False):
        """Run one API call as XAPI's generated dispatcher does (ocaml/idl/ocaml_backend/gen_server.ml):
        message lookup, arity, parameter unmarshalling, session check, async mode, then the body.
        Returns the Python value or raises XapiError."""
        self.stats['calls'] += 1
        is_async = method.startswith(ASYNC_PREFIX)
        wire = method[len(ASYNC_PREFIX):] if is_async else method
        params = list(params)
        msg = self._message(wire)
        if msg is None:
            # Unknown name: with a session it is tried as a host extension, which checks the session and then
            # finds no extension (server_helpers.ml forward_extension, xapi_extensions.ml find_extension).
            if params:
                self._check_session(params[0])
            raise XapiError('MESSAGE_METHOD_UNKNOWN', wire)
        name = '%s.%s' % (msg.cls, msg.name)
        values = self._unmarshal(name, msg, params)
        session = values.pop(0) if msg.has_session else None
        if name in ('session.login_with_password', 'session.slave_local_login_with_password'):
            self._delay(name)
            if is_async:
                raise XapiError('Fault', 'No async mode for this operation (rpc: %s)' % name)
            if slave:
                raise XapiError('HOST_IS_SLAVE', self.master_address)
            return self._run(name, self.m_session__login_with_password, values, None)
        if msg.has_session:
            self._check_session(session)
        if self.api.removed(msg):
            raise XapiError('MESSAGE_REMOVED')
        if is_async and not msg.has_async:
            raise XapiError('Fault', 'No async mode for this operation (rpc: %s)' % name)
        func = self._resolve(msg)
        if is_async:
            if _wants_session(func):
                values = [session] + values
            return self._start_task('Async.' + name, func, values, session)
        self._delay(name)
        return self._run(name, func, values, session)

    def _check_session(self, session):
        if not isinstance(session, str):
            raise unmarshal.failure("Expected string, got '%s'" % unmarshal.rpc_text(session))
        self.touch_session(session)

    def _unmarshal(self, name, msg, params):
        """Arity as gen_server.ml checks it, then each parameter converted to its datamodel type (defaults
        filled in); the session, when the message has one, stays first."""
        required, most = self.api.arity(msg)
        has_session = 1 if msg.has_session else 0
        got = len(params) - has_session
        if got < required or (most is not None and got > most):
            # gen_server.ml: received = parameters given minus one for the session (so -1 for none at all).
            raise XapiError('MESSAGE_PARAMETER_COUNT_MISMATCH', name, required, got)
        enums = self.api.model.enums
        values = []
        if has_session:
            values.append(params[0])
        for num, (pname, ptype) in enumerate(self.api.params(msg)):
            if has_session + num < len(params):
                raw = params[has_session + num]
            else:
                raw = msg.defaults[pname]
            if ptype.kind == 'record' and msg.name == 'create':
                values.append(unmarshal.constructor_record(self.api.fields(msg.cls), raw, enums))
            else:
                values.append(unmarshal.value_of(ptype, raw, enums))
        return values

    def _run(self, name, func, args, session):
        self._maybe_fail(name)
        if _wants_session(func):
            args = [session] + list(args)
        if name.startswith('event.'):
            return func(*args)
        with self.lock:
            return func(*args)

    def _delay(self, name, task=None):
        """Sleep the injected delay; with a cancellable ``task``, a cancel request ends it (TASK_CANCELLED)."""
        delays = self.faults['delay']
        seconds = delays.get(name, delays.get('*', 0))
        deadline = time.monotonic() + seconds
        while True:
            if task is not None and self.task_cancelled(task):
                raise XapiError('TASK_CANCELLED', task)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, 0.05))

    def touch_session(self, session):
        """SESSION_INVALID for an unknown session; else refresh its last_active (session_check.ml)."""
        with self.lock:
            live = self.sessions.get(session)
            if live is None:
                raise XapiError('SESSION_INVALID', session)
            live.last_active = time.time()

    def _maybe_fail(self, name):
        with self.lock:
            queue = self.faults['fail'].get(name)
            if queue:
                error, remaining = queue[0]
                if remaining <= 1:
                    queue.pop(0)
                else:
                    queue[0] = (error, remaining - 1)
                raise XapiError(*error)

    def faults_check_method(self, name):
        """Raise an injected error for an HTTP handler (``export_raw_vdi``, ``import_raw_vdi``)."""
        self._delay(name)
        self._maybe_fail(name)

    def take_cut(self, kind, vdi):
        """Consume a pending stream cut (``cut_export``/``cut_import``) for ``vdi``; bytes or None."""
        with self.lock:
            uuid = self.store.raw('VDI', vdi)['uuid'] if self.store.exists('VDI', vdi) else None
            for num, (target, after) in enumerate(self.faults[kind]):
                if target in (None, vdi, uuid):
                    del self.faults[kind][num]
                    return after
        return None

    def _resolve(self, msg):
        """The simulator's body for a message of the selected version: an ``m_<Class>__<msg>`` method, the
        class's create/destroy, or the generic implicit messages of a modelled class; else a simulator gap."""
        name = '%s.%s' % (msg.cls, msg.name)
        if name in self.methods:
            return self.methods[name]
        if msg.cls in MODELED:
            if msg.name in ('create', 'destroy'):
                func = getattr(self, '%s_%s' % (msg.name, msg.cls.lower()), None)
                if func is not None:
                    return func
            func = self._generic(msg.cls, msg.name)
            if func is not None:
                return func
        raise XapiError(SIM_GAP, name, 'the simulator does not implement this XAPI message (simulator gap)')

    def _generic(self, cls, msg):  # pylint: disable=too-many-return-statements
        """Implicit messages over the store (the datamodel decides which exist; this only implements them)."""
        fields = FIELDS[cls]
        if msg == 'get_all':
            return lambda: self.store.refs(cls)
        if msg == 'get_all_records':
            return lambda: {r: self.record(cls, r) for r in self.store.refs(cls)}
        if msg == 'get_all_records_where':
            return lambda expr: self._where(cls, expr)
        if msg == 'get_record':
            return lambda ref: self.record(cls, ref)
        if msg == 'get_by_uuid':
            return lambda value: self.store.ref_of_uuid(cls, value)
        if msg == 'get_by_name_label':
            return lambda label: [r for r, o in self.store.objects[cls].items() if o['name_label'] == label]
        for prefix in ('get_', 'set_', 'add_to_', 'remove_from_', 'add_', 'remove_'):
            field = fields.get(msg[len(prefix):]) if msg.startswith(prefix) else None
            if field is None:
                continue
            if prefix == 'get_':
                return lambda ref, f=field: self.store.get(cls, ref, f.name)
            if field.inverse:
                return None
            if prefix == 'set_':
                return lambda ref, value, f=field: self._set(cls, ref, f, value)
            if prefix == 'add_to_' and field.kind == 'map':
                return lambda ref, key, value, f=field: self._map_add(cls, ref, f, key, value)
            if prefix == 'remove_from_' and field.kind == 'map':
                return lambda ref, key, f=field: self._map_remove(cls, ref, f, key)
            if prefix in ('add_', 'remove_') and field.kind == 'set':
                return lambda ref, value, f=field, add=(prefix == 'add_'): self._set_edit(cls, ref, f, value, add)
        return None

    def record(self, cls, ref):
        """A record as the selected XAPI version returns it: exactly its fields for the class."""
        return self.store.record(cls, ref, names=self.api.fields(cls))

    def _where(self, cls, text):
        try:
            expr = Expr(text)
        except ValueError as exc:
            raise XapiError('INTERNAL_ERROR', 'bad expression: %s' % exc) from None
        out = {}
        for ref in self.store.refs(cls):
            rec = self.record(cls, ref)
            if expr.evaluate(rec):
                out[ref] = rec
        return out

    def _set(self, cls, ref, field, value):
        self.store.raw(cls, ref)
        self.store.set(cls, ref, field.name, value)
        return ''

    def _map_add(self, cls, ref, field, key, value):
        obj = self.store.raw(cls, ref)
        if key in obj[field.name]:
            raise XapiError('MAP_DUPLICATE_KEY', cls, field.name, obj['uuid'], key)
        new = dict(obj[field.name])
        new[str(key)] = str(value)
        self.store.set(cls, ref, field.name, new)
        return ''

    def _map_remove(self, cls, ref, field, key):
        obj = self.store.raw(cls, ref)
        new = dict(obj[field.name])
        new.pop(key, None)
        self.store.set(cls, ref, field.name, new)
        return ''

    def _set_edit(self, cls, ref, field, value, add):
        obj = self.store.raw(cls, ref)
        items = list(obj[field.name])
        if add and value not in items:
            items.append(value)
        elif not add and value in items:
            items.remove(value)
        self.store.set(cls, ref, field.name, items)
        return ''

    def _construct(self, cls, record, extra=None):
        """Stored values from a create record: on the wire already checked and completed with defaults by
        unmarshal.constructor_record; from the config loader a partial dict (the rest takes defaults)."""
        values = {}
        for name, value in record.items():
            field = FIELDS[cls].get(name)
            if field is None or field.qual == DRO or field.inverse:
                continue
            values[name] = value
        values.update(extra or {})
        return values

    # ------------------------------------------------------------------
    # tasks
    # ------------------------------------------------------------------
    def new_task(self, label, description='', session=None):
        """Create a pending task (owned by ``session`` when given); returns its ref."""
        ref = self.store.add('task', {'name_label': label, 'name_description': description, 'created': xapi_date(),
                                      'status': 'pending', 'resident_on': self.master_ref or NULL_REF,
                                      'type': '', 'progress': 0.0})
        with self.lock:
            self.task_meta[ref] = {'created': time.time(), 'finished': None, 'session': session}
        return ref

    def finish_task(self, task, result=None, error=None):
        """Complete a task with a value (stored as XML-RPC text) or an error list."""
        with self.lock:
            if not self.store.exists('task', task):
                return
            obj = self.store.raw('task', task)
            if obj['status'] not in ('pending', 'cancelling'):
                return
            # taskHelper.ml complete/failed/cancel_this: allowed_operations emptied at the end.
            if error is not None:
                status = 'cancelled' if error[0] == 'TASK_CANCELLED' else 'failure'
                self.store.update('task', task, status=status, error_info=[str(e) for e in error],
                                  finished=xapi_date(), progress=1.0, allowed_operations=[])
            else:
                self.store.update('task', task, status='success', progress=1.0, finished=xapi_date(),
                                  result='' if result in (None, '') else encode_value(result), allowed_operations=[])
            if task in self.task_meta:
                self.task_meta[task]['finished'] = time.time()

    def task_cancelled(self, task):
        """True when a cancel was requested: task.cancel puts ``cancel`` in current_operations (xapi_task.ml)."""
        with self.lock:
            return (self.store.exists('task', task)
                    and 'cancel' in self.store.raw('task', task)['current_operations'].values())

    def set_progress(self, task, value):
        """Update a task's progress; False when the task no longer exists (destroyed, e.g. by the GC)."""
        with self.lock:
            if not task or not self.store.exists('task', task):
                return False
            self.store.set('task', task, 'progress', float(value))
            return True

    def _start_task(self, label, func, args, session=None):
        task = self.new_task(label, session=session)
        name = label[6:]
        cancellable = name in CANCELLABLE_METHODS
        if cancellable:
            with self.lock:
                self.store.set('task', task, 'allowed_operations', ['cancel'])

        def run():
            try:
                # Only a cancellable operation notices a cancel request; the others run to their end.
                self._delay(name, task if cancellable else None)
                self._maybe_fail(name)
                with self.lock:
                    if cancellable and self.task_cancelled(task):
                        raise XapiError('TASK_CANCELLED', task)
                    value = func(*args)
                self.finish_task(task, result=value)
            except XapiError as exc:
                self.finish_task(task, error=exc.details)
            except Exception as exc:  # pylint: disable=broad-except
                self.finish_task(task, error=['INTERNAL_ERROR', repr(exc)])

        threading.Thread(target=run, daemon=True, name='task-%s' % name).start()
        return task

    def m_task__create(self, session, label, description):
        """task.create: the task belongs to the caller's session (a session with pending tasks is kept)."""
        return self.new_task(label, description, session=session)

    def m_task__cancel(self, task):
        """task.cancel: records the request in current_operations, status stays pending (xapi_task.ml cancel);
        whether the operation stops is up to it (see CANCELLABLE_METHODS)."""
        obj = self.store.raw('task', task)
        operations = dict(obj['current_operations'])
        operations[new_ref()] = 'cancel'
        self.store.set('task', task, 'current_operations', operations)
        return ''

    def m_task__destroy(self, task):
        """task.destroy: a finished task goes at once; an unfinished one is marked ``destroy`` and the GC
        removes it once it has finished (xapi_task.ml destroy, db_gc_util.ml timeout_tasks)."""
        obj = self.store.raw('task', task)
        if obj['status'] in COMPLETED_STATUSES:
            self.store.remove('task', task)
            self.task_meta.pop(task, None)
        else:
            operations = dict(obj['current_operations'])
            operations['task'] = 'destroy'
            self.store.set('task', task, 'current_operations', operations)
        return ''

    # ------------------------------------------------------------------
    # garbage collection of tasks and sessions (ocaml/xapi/db_gc.ml, db_gc_util.ml)
    # ------------------------------------------------------------------
    def _gc_loop(self):
        # Wakes often so that a shorter gc_interval set by a test takes effect at once.
        last = time.monotonic()
        while not self._closed.wait(min(0.5, max(0.02, self.gc_interval / 2))):
            if time.monotonic() - last < self.gc_interval:
                continue
            last = time.monotonic()
            try:
                self.collect_garbage()
            except Exception:  # pylint: disable=broad-except
                pass  # a reset racing the pass; the next pass sees a consistent store

    def collect_garbage(self):
        """One pass of XAPI's database GC; returns {'tasks': [...], 'sessions': [...]} removed.

        Tasks (timeout_tasks): a finished task marked ``destroy`` goes; a finished task goes
        completed_task_lifetime after it finished; a pending task older than task_lifetime
        (pending_task_timeout) goes when its progress has not moved since the previous pass
        (the probation table), whatever is still using it. Sessions (timeout_sessions_common): a
        session without pending tasks goes when its last_active is older than session_timeout.
        XAPI also trims completed tasks beyond max_tasks (200); not simulated.
        """
        now = time.time()
        removed = {'tasks': [], 'sessions': []}
        with self.lock:
            probation = {}
            for ref, obj in list(self.store.objects['task'].items()):
                meta = self.task_meta.get(ref) or {'created': now, 'finished': None}
                if obj['status'] in COMPLETED_STATUSES:
                    finished = meta['finished'] if meta['finished'] is not None else now
                    if 'destroy' in obj['current_operations'].values() or finished < now - self.completed_task_lifetime:
                        removed['tasks'].append(ref)
                elif meta['created'] < now - self.task_lifetime:
                    before = self._gc_probation.get(ref)
                    if before is not None and obj['progress'] - before <= 0:
                        removed['tasks'].append(ref)
                    else:
                        probation[ref] = obj['progress']
            self._gc_probation = probation
            for ref in removed['tasks']:
                self.store.remove('task', ref)
                self.task_meta.pop(ref, None)
            busy = {meta['session'] for ref, meta in self.task_meta.items()
                    if self.store.exists('task', ref) and self.store.raw('task', ref)['status'] not in COMPLETED_STATUSES}
            for ref, session in list(self.sessions.items()):
                if ref not in busy and session.last_active < now - self.session_timeout:
                    del self.sessions[ref]
                    removed['sessions'].append(ref)
            for ref in [r for r in self.task_meta if not self.store.exists('task', r)]:
                del self.task_meta[ref]
        return removed

    def m_task__set_status(self, task, value):
        """task.set_status"""
        self.store.raw('task', task)
        self.store.set('task', task, 'status', value)
        return ''

    def m_task__set_progress(self, task, value):
        """task.set_progress"""
        self.store.raw('task', task)
        self.store.set('task', task, 'progress', float(value))
        return ''

    # ------------------------------------------------------------------
    # sessions
    # ------------------------------------------------------------------
    def m_session__login_with_password(self, uname, pwd, version='', originator=''):
        """session.login_with_password"""
        del version
        if self.users.get(uname) != pwd:
            time.sleep(self.auth_delay)
            raise XapiError('SESSION_AUTHENTICATION_FAILED', uname, 'Authentication failure')
        with self.lock:
            self.session_seq += 1
            ref = new_ref()
            self.sessions[ref] = Session(ref, uname, originator, self.session_seq)
            self.stats['logins'] += 1
            same = sorted((s for s in self.sessions.values() if s.originator == originator), key=lambda s: s.seq)
            while len(same) > self.originator_limit:
                self.sessions.pop(same.pop(0).ref, None)
            while len(self.sessions) > self.session_limit:
                oldest = min(self.sessions.values(), key=lambda s: s.seq)
                del self.sessions[oldest.ref]
        return ref

    def m_session__logout(self, session):
        """session.logout"""
        with self.lock:
            if self.sessions.pop(session, None) is not None:
                self.stats['logouts'] += 1
        return ''

    def m_session__local_logout(self, session):
        """session.local_logout"""
        return self.m_session__logout(session)

    def m_session__get_this_host(self, session, target):
        """session.get_this_host(self)"""
        del session
        if target not in self.sessions:
            raise XapiError('HANDLE_INVALID', 'session', target)
        return self.master_ref

    def m_session__get_this_user(self, session, target):
        """session.get_this_user(self)"""
        del session
        if target not in self.sessions:
            raise XapiError('HANDLE_INVALID', 'session', target)
        return NULL_REF

    # ------------------------------------------------------------------
    # events
    # ------------------------------------------------------------------
    def m_event__get_current_id(self, session):
        """event.get_current_id"""
        del session
        return self.store.event_id

    def m_event__from(self, session, classes, token, timeout):
        """event.from: changes since ``token`` for the subscribed classes."""
        del session
        subs = []
        for item in classes:
            cls, _sep, ref = str(item).partition('/')
            if cls == '*':
                subs.append(('*', None))
                continue
            real = class_name(cls)
            if real is None:
                raise XapiError('EVENT_SUBSCRIPTION_PARSE_FAILURE', item)
            subs.append((real, ref or None))

        def wanted(cls, ref):
            return any((c == '*' or c == cls) and (r is None or r == ref) for c, r in subs)

        deadline = time.time() + float(timeout)
        with self.lock:
            if token == '':
                events = []
                for cls, objs in self.store.objects.items():
                    for ref in objs:
                        if wanted(cls, ref):
                            events.append(self._event(0, cls, 'add', ref))
                return self._event_result(events, subs)
            try:
                since = int(str(token).split(',', maxsplit=1)[0])
            except ValueError:
                raise XapiError('EVENT_FROM_TOKEN_PARSE_FAILURE', token) from None
            while True:
                latest = {}
                for ev_id, cls, op, ref, _snap in self.store.events:
                    if ev_id > since and wanted(cls, ref):
                        prev = latest.get((cls, ref))
                        if prev is not None and prev[1] == 'add' and op == 'mod':
                            op = 'add'
                        latest[(cls, ref)] = (ev_id, op)
                if latest:
                    events = [self._event(ev_id, cls, op, ref)
                              for (cls, ref), (ev_id, op) in sorted(latest.items(), key=lambda i: i[1][0])]
                    return self._event_result(events, subs)
                remaining = deadline - time.time()
                if remaining <= 0:
                    return self._event_result([], subs)
                self.store.changed.wait(remaining)

    def _event(self, ev_id, cls, op, ref):
        event = {'id': ev_id, 'timestamp': '0.0', 'class': cls.lower(), 'operation': op, 'ref': ref}
        if op != 'del' and self.store.exists(cls, ref):
            event['snapshot'] = self.record(cls, ref)
        elif op != 'del':
            event['operation'] = 'del'
        return event

    def _event_result(self, events, subs):
        classes = set(FIELDS) if any(c == '*' for c, _r in subs) else {c for c, _r in subs}
        counts = {cls.lower(): I4(len(self.store.objects[cls])) for cls in classes}
        token = '%020d,%020d' % (self.store.event_id, 0)
        return {'events': events, 'valid_ref_counts': counts, 'token': token}

    # ------------------------------------------------------------------
    # pool / host / SR
    # ------------------------------------------------------------------
    def m_host__get_server_certificate(self, host):
        """host.get_server_certificate: the PEM of the host's own TLS certificate (xapi_host.ml; '' over plain HTTP).
        Every pool member shares the member listener, hence its certificate."""
        self.store.raw('host', host)
        coordinator, member = self.certificate_pems
        return coordinator if host == self.master_ref else member

    def m_pool__get_master(self, pool):
        """pool.get_master"""
        return self.store.get('pool', pool, 'master')

    def add_sr(self, name, size, sr_type='ext', shared=False, description='', host=None):
        """Create an SR with a block store of ``size`` bytes, plugged on ``host`` only (a local SR of that
        pool member) or on the coordinator when None."""
        ref = new_ref()
        self.stores[ref] = BlockStore(os.path.join(self.data_dir, 'sr-%s.blocks' % ref[10:]), size)
        self.store.add('SR', {'name_label': name, 'name_description': description, 'physical_size': int(size),
                              'type': sr_type, 'shared': shared, 'content_type': 'user',
                              'sm_config': {'devserial': 'scsi-0'} if sr_type == 'lvm' else {},
                              'allowed_operations': ['vdi_create', 'vdi_destroy', 'vdi_snapshot', 'scan']},
                       ref=ref)
        if host or self.master_ref:
            self.store.add('PBD', {'host': host or self.master_ref, 'SR': ref, 'device_config': {'location': '/dev/sim'},
                                   'currently_attached': True})
        return ref

    def hosts_seeing_sr(self, sr):
        """Hosts with a plugged PBD of the SR: where XAPI serves its disks (importexport.ml check_sr_availability)."""
        with self.lock:
            return [o['host'] for o in self.store.objects['PBD'].values() if o['SR'] == sr and o['currently_attached']]

    def host_address(self, host):
        """Where a host's HTTP handlers answer in the simulator: the coordinator's or the member listener's
        ``127.0.0.1:PORT`` (XAPI puts Host.address there, port 443 implied)."""
        if host == self.master_ref:
            return self.master_address
        return self.member_address

    def sr_refresh(self, sr):
        """Recompute an SR's utilisation fields."""
        store = self.stores.get(sr)
        if store is None:
            return
        virtual = sum(self.store.raw('VDI', r)['virtual_size'] for r, o in self.store.objects['VDI'].items()
                      if o['SR'] == sr)
        self.store.update('SR', sr, physical_utilisation=store.utilisation, virtual_allocation=virtual)

    def m_SR__scan(self, sr):
        """SR.scan"""
        self.store.raw('SR', sr)
        self.sr_refresh(sr)
        return ''

    def m_SR__set_physical_size(self, sr, size):
        """SR.set_physical_size"""
        self.store.raw('SR', sr)
        self.stores[sr].capacity = int(size)
        self.store.set('SR', sr, 'physical_size', int(size))
        return ''

    # ------------------------------------------------------------------
    # VDI
    # ------------------------------------------------------------------
    def disk(self, vdi):
        """The Disk of a VDI (VDI_MISSING when it has no data)."""
        self.store.raw('VDI', vdi)
        disk = self.disks.get(vdi)
        if disk is None:
            obj = self.store.raw('VDI', vdi)
            raise XapiError('VDI_MISSING', obj['SR'], vdi)
        return disk

    def resolve_vdi(self, value):
        """A VDI ref from a ref or a uuid (HTTP handlers accept both)."""
        with self.lock:
            if self.store.exists('VDI', value):
                return value
            hit = self.store.by_uuid.get(value)
            if hit and hit[0] == 'VDI':
                return hit[1]
        raise XapiError('HANDLE_INVALID', 'VDI', value)

    @staticmethod
    def round_size(size):
        """Round a virtual size up to 2 MiB (minimum 2 MiB)."""
        size = max(int(size), 1)
        return (size + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE

    def create_vdi(self, record):
        """VDI.create"""
        values = self._construct('VDI', record)
        sr = values['SR']
        self.store.raw('SR', sr)
        if sr not in self.stores:
            raise XapiError('OPERATION_NOT_ALLOWED', 'SR has no storage')
        size = self.round_size(values['virtual_size'])
        if int(values['virtual_size']) < 0:
            raise XapiError('INTERNAL_ERROR', 'negative size')
        if size > MAX_VDI_SIZE:
            raise XapiError('VDI_TOO_LARGE', NULL_REF, MAX_VDI_SIZE)
        values['virtual_size'] = size
        sm_config = dict(values.get('sm_config', {}))
        sm_config.setdefault('vdi_type', 'vhd')
        values['sm_config'] = sm_config
        uuid = new_uuid()
        values.update(uuid=uuid, location=uuid, managed=True)
        ref = new_ref()
        self.disks[ref] = Disk(self.stores[sr], size)
        self.store.add('VDI', values, ref=ref)
        self.sr_refresh(sr)
        return ref

    def _vdi_attached(self, vdi):
        return any(o['VDI'] == vdi and o['currently_attached'] for o in self.store.objects['VBD'].values())

    def destroy_vdi(self, vdi):
        """VDI.destroy"""
        obj = self.store.raw('VDI', vdi)
        if not obj['managed']:
            raise XapiError('OPERATION_NOT_ALLOWED', 'VDI is not managed')
        if self._vdi_attached(vdi):
            raise XapiError('VDI_IN_USE', vdi, 'destroy')
        for vbd in [r for r, o in self.store.objects['VBD'].items() if o['VDI'] == vdi]:
            self.store.remove('VBD', vbd)
        disk = self.disks.pop(vdi, None)
        if disk is not None:
            disk.destroy()
        self.cbt.pop(vdi, None)
        self.store.remove('VDI', vdi)
        self._gc(obj['SR'])
        self.sr_refresh(obj['SR'])
        return ''

    def _gc(self, sr):
        """A VDI went: the SR's garbage collector coalesces now or after its delay (vhd_sr.Coalescer)."""
        self.coalescer.garbage_appeared(sr)

    def coalesce(self, sr):
        """Coalesce hidden base copies with fewer than two children; return the uuids removed."""
        removed = []
        changed = True
        while changed:
            changed = False
            vdis = self.store.objects['VDI']
            for ref, obj in list(vdis.items()):
                if obj['managed'] or obj['SR'] != sr:
                    continue
                children = [r for r, o in vdis.items() if o['sm_config'].get('vhd-parent') == obj['uuid']]
                if len(children) >= 2:
                    continue
                parent = obj['sm_config'].get('vhd-parent')
                for child in children:
                    sm_config = dict(vdis[child]['sm_config'])
                    if parent:
                        sm_config['vhd-parent'] = parent
                    else:
                        sm_config.pop('vhd-parent', None)
                    self.store.set('VDI', child, 'sm_config', sm_config)
                self.store.remove('VDI', ref)
                removed.append(obj['uuid'])
                changed = True
                break
        return removed

    def _copy_vdi(self, vdi, snapshot, name=None):
        obj = self.store.raw('VDI', vdi)
        if obj['type'] == 'cbt_metadata':
            raise XapiError('VDI_INCOMPATIBLE_TYPE', vdi, 'cbt_metadata')
        if snapshot and obj['sharable']:
            raise XapiError('OPERATION_NOT_ALLOWED', 'VDI is sharable')
        disk = self.disk(vdi)
        sr = obj['SR']
        store = self.stores[sr]
        vhd_sr.check_snapshot_depth(self, vdi)
        try:
            store.check_room(1)
        except StoreFull as exc:
            raise XapiError('SR_FULL', exc.requested, exc.maximum) from None
        values = {k: obj[k] for k in ('name_label', 'name_description', 'SR', 'virtual_size', 'type', 'read_only',
                                      'other_config', 'tags', 'xenstore_data', 'on_boot', 'allow_caching')}
        if name is not None:
            values['name_label'] = name
        sm_config = {k: v for k, v in obj['sm_config'].items() if not k.startswith('host_')}
        uuid = new_uuid()
        values.update(uuid=uuid, location=uuid, managed=True, sharable=False, sm_config=sm_config,
                      cbt_enabled=obj['cbt_enabled'] if snapshot else False,
                      physical_utilisation=disk.allocated)
        if snapshot:
            values.update(is_a_snapshot=True, snapshot_of=vdi, snapshot_time=xapi_date())
        # A VHD SR inserts a hidden base copy as parent of both leaves.
        base_values = {'name_label': 'base copy', 'SR': sr, 'virtual_size': obj['virtual_size'],
                       'managed': False, 'read_only': True, 'type': obj['type'],
                       'physical_utilisation': disk.allocated,
                       'sm_config': {k: v for k, v in sm_config.items() if k in ('vdi_type', 'vhd-parent')}}
        base_uuid = new_uuid()
        base_values.update(uuid=base_uuid, location=base_uuid)
        self.store.add('VDI', base_values)
        leaf_sm = dict(obj['sm_config'])
        leaf_sm['vhd-parent'] = base_uuid
        disk.new_leaf()
        self.store.set('VDI', vdi, 'sm_config', leaf_sm)
        values['sm_config'] = dict(sm_config, **{'vhd-parent': base_uuid})
        ref = new_ref()
        with disk.lock:
            # Clone and switch the CBT segment atomically with respect to guest writes.
            self.disks[ref] = disk.clone()
            if snapshot and obj['cbt_enabled']:
                log = self.cbt.setdefault(vdi, [])
                if log:
                    seg_id, changed = log[-1]
                    log[-1] = (seg_id, frozenset(changed))
                self.cbt[ref] = list(log)
                log.append((new_uuid(), set()))
        self.store.add('VDI', values, ref=ref)
        self.sr_refresh(sr)
        return ref

    def m_VDI__snapshot(self, vdi, driver_params=None):
        """VDI.snapshot"""
        del driver_params
        return self._copy_vdi(vdi, True)

    def m_VDI__clone(self, vdi, driver_params=None):
        """VDI.clone"""
        del driver_params
        return self._copy_vdi(vdi, False)

    def _resize(self, vdi, size, online):
        obj = self.store.raw('VDI', vdi)
        size = int(size)
        if size < obj['virtual_size']:
            raise XapiError('SR_BACKEND_FAILURE_79', '', 'VDI Invalid size', 'shrinking not allowed')
        running = [self.store.raw('VM', o['VM']) for o in self.store.objects['VBD'].values()
                   if o['VDI'] == vdi and o['currently_attached']]
        vbds = [o for o in self.store.objects['VBD'].values() if o['VDI'] == vdi]
        if online:
            if not running:
                vm = vbds[0]['VM'] if vbds else NULL_REF
                state = self.store.raw('VM', vm)['power_state'].lower() if vbds else 'halted'
                raise XapiError(BAD_POWER, vm, 'running', state)
        elif running:
            raise XapiError('VDI_IN_USE', vdi, 'resize')
        new = self.round_size(size)
        if new > MAX_VDI_SIZE:
            raise XapiError('VDI_TOO_LARGE', vdi, MAX_VDI_SIZE)
        self.disk(vdi).resize(new)
        self.store.set('VDI', vdi, 'virtual_size', new)
        self.sr_refresh(obj['SR'])
        return ''

    def m_VDI__resize(self, vdi, size):
        """VDI.resize (detached disk, grow only)"""
        return self._resize(vdi, size, False)

    def m_VDI__resize_online(self, vdi, size):
        """VDI.resize_online (attached to a running VM, grow only)"""
        return self._resize(vdi, size, True)

    def m_VDI__get_nbd_info(self, vdi):
        """VDI.get_nbd_info: no NBD network in the simulator."""
        self.store.raw('VDI', vdi)
        return []

    def _cbt_check(self, vdi):
        obj = self.store.raw('VDI', vdi)
        if obj['is_a_snapshot']:
            raise XapiError('OPERATION_NOT_ALLOWED', 'CBT cannot be changed on a snapshot')
        if obj['type'] not in ('user', 'system'):
            raise XapiError('VDI_INCOMPATIBLE_TYPE', vdi, obj['type'])
        return obj

    def m_VDI__enable_cbt(self, vdi):
        """VDI.enable_cbt (idempotent)"""
        obj = self._cbt_check(vdi)
        if not obj['cbt_enabled']:
            self.cbt[vdi] = [(new_uuid(), set())]
            self.disk(vdi).on_write = self._cbt_hook(vdi)
            self.store.set('VDI', vdi, 'cbt_enabled', True)
        return ''

    def m_VDI__disable_cbt(self, vdi):
        """VDI.disable_cbt (idempotent)"""
        obj = self._cbt_check(vdi)
        if obj['cbt_enabled']:
            self.cbt.pop(vdi, None)
            self.disk(vdi).on_write = None
            self.store.set('VDI', vdi, 'cbt_enabled', False)
        return ''

    def _cbt_hook(self, vdi):
        def mark(pos, count):
            log = self.cbt.get(vdi)
            if log:
                log[-1][1].update(range(pos // CBT_BLOCK, (pos + count - 1) // CBT_BLOCK + 1))
        return mark

    def m_VDI__list_changed_blocks(self, vdi_from, vdi_to):
        """VDI.list_changed_blocks: base64 bitmap, one bit per 64 KiB, MSB first."""
        self.store.raw('VDI', vdi_from)
        to_obj = self.store.raw('VDI', vdi_to)
        old, new = self.cbt.get(vdi_from), self.cbt.get(vdi_to)
        if not old or not new or len(old) > len(new) or old[-1][0] != new[len(old) - 1][0]:
            raise XapiError('SR_BACKEND_FAILURE_460', '', 'Failed to calculate changed blocks for given VDIs.', '')
        changed = set()
        for _seg, blocks in new[len(old):]:
            changed.update(blocks)
        nbits = (to_obj['virtual_size'] + CBT_BLOCK - 1) // CBT_BLOCK
        bitmap = bytearray((nbits + 7) // 8)
        for bit in changed:
            if bit < nbits:
                bitmap[bit >> 3] |= 0x80 >> (bit & 7)
        return base64.b64encode(bytes(bitmap)).decode('ascii')

    def m_VDI__data_destroy(self, vdi):
        """VDI.data_destroy: keep the CBT log, drop the data."""
        obj = self.store.raw('VDI', vdi)
        if not obj['cbt_enabled']:
            raise XapiError('VDI_NO_CBT_METADATA', vdi)
        if not obj['is_a_snapshot']:
            raise XapiError('VDI_INCOMPATIBLE_TYPE', vdi, obj['type'])
        if self._vdi_attached(vdi):
            raise XapiError('VDI_IN_USE', vdi, 'data_destroy')
        for vbd in [r for r, o in self.store.objects['VBD'].items() if o['VDI'] == vdi]:
            self.store.remove('VBD', vbd)
        disk = self.disks.pop(vdi, None)
        if disk is not None:
            disk.destroy()
        self.store.update('VDI', vdi, type='cbt_metadata', physical_utilisation=0)
        self.sr_refresh(obj['SR'])
        return ''

    # ------------------------------------------------------------------
    # VBD / VIF / network
    # ------------------------------------------------------------------
    def create_vbd(self, record):
        """VBD.create"""
        values = self._construct('VBD', record)
        vm = self.store.raw('VM', values['VM'])
        vdi = values.get('VDI', NULL_REF)
        if not values.get('empty'):
            vdi_obj = self.store.raw('VDI', vdi)
            if vdi_obj['read_only'] and values.get('mode') == 'RW':
                raise XapiError('VDI_READONLY', vdi)
            if vdi_obj['type'] == 'cbt_metadata':
                raise XapiError('VDI_INCOMPATIBLE_TYPE', vdi, 'cbt_metadata')
        used = {o['userdevice'] for o in self.store.objects['VBD'].values() if o['VM'] == values['VM']}
        dev = values.get('userdevice', 'autodetect')
        if dev == 'autodetect':
            dev = str(next(i for i in range(64) if str(i) not in used))
        elif dev in used:
            raise XapiError('DEVICE_ALREADY_EXISTS', dev)
        values['userdevice'] = dev
        given_device = values.get('device') or ''
        values['device'] = 'xvd' + chr(ord('a') + int(dev)) if dev.isdigit() and int(dev) < 26 else ''
        values['currently_attached'] = False
        if vm['power_state'] == 'Suspended':
            # ocaml/xapi/xapi_vbd.ml create: a suspended VM's VBD keeps the device and currently_attached given (issue 13)
            values['device'] = given_device or values['device']
            values['currently_attached'] = bool(record.get('currently_attached', False))
        return self.store.add('VBD', values)

    def destroy_vbd(self, vbd):
        """VBD.destroy"""
        obj = self.store.raw('VBD', vbd)
        if obj['currently_attached']:
            raise XapiError('OPERATION_NOT_ALLOWED', 'VBD is attached')
        self.store.remove('VBD', vbd)
        return ''

    def m_VBD__plug(self, vbd):
        """VBD.plug"""
        obj = self.store.raw('VBD', vbd)
        state = self.store.raw('VM', obj['VM'])['power_state']
        if state != 'Running':
            raise XapiError(BAD_POWER, obj['VM'], 'running', state.lower())
        if obj['currently_attached']:
            raise XapiError('DEVICE_ALREADY_ATTACHED', vbd)
        self.store.set('VBD', vbd, 'currently_attached', True)
        return ''

    def m_VBD__unplug(self, vbd):
        """VBD.unplug"""
        obj = self.store.raw('VBD', vbd)
        if not obj['currently_attached']:
            raise XapiError('DEVICE_ALREADY_DETACHED', vbd)
        self.store.set('VBD', vbd, 'currently_attached', False)
        return ''

    def m_VBD__unplug_force(self, vbd):
        """VBD.unplug_force"""
        return self.m_VBD__unplug(vbd)

    def create_vif(self, record):
        """VIF.create"""
        values = self._construct('VIF', record)
        # ocaml/xapi/xapi_vif.ml create: currently_attached is kept only for a suspended VM (issue 13)
        values['currently_attached'] = self.store.raw('VM', values['VM'])['power_state'] == 'Suspended' \
            and bool(record.get('currently_attached', False))
        self.store.raw('network', values['network'])
        if any(o['VM'] == values['VM'] and o['device'] == values['device'] for o in self.store.objects['VIF'].values()):
            raise XapiError('DEVICE_ALREADY_EXISTS', values['device'])
        values['MAC'], values['MAC_autogenerated'] = self._vif_mac(values['VM'], values['device'], values.get('MAC', ''))
        return self.store.add('VIF', values)

    def _vif_mac(self, vm, device, mac):
        """(MAC, MAC_autogenerated) as ocaml/xapi/xapi_vif_helpers.ml create: ``""`` on a VM with
        other_config:mac_seed derives the MAC from the seed and the device; without a seed ``""``
        stays and fails the format check (MAC_INVALID), as does a malformed explicit MAC."""
        if not device.isdigit():
            raise XapiError('INVALID_DEVICE', device)
        seed = self.store.raw('VM', vm)['other_config'].get(MAC_SEED_KEY)
        autogenerated = seed is not None and mac == ''
        if autogenerated:
            mac = mac_from_seed(seed, int(device))
        if not MAC_PATTERN.fullmatch(mac):
            raise XapiError('MAC_INVALID', mac)
        return mac, autogenerated

    def destroy_vif(self, vif):
        """VIF.destroy"""
        self.store.raw('VIF', vif)
        self.store.remove('VIF', vif)
        return ''

    def create_network(self, record):
        """network.create"""
        values = self._construct('network', record)
        values.setdefault('bridge', 'xapi%d' % len(self.store.objects['network']))
        return self.store.add('network', values)

    def destroy_network(self, network):
        """network.destroy"""
        self.store.raw('network', network)
        if any(o['network'] == network for o in self.store.objects['VIF'].values()):
            raise XapiError('NETWORK_CONTAINS_VIF', network)
        self.store.remove('network', network)
        return ''

    # ------------------------------------------------------------------
    # VM
    # ------------------------------------------------------------------
    def create_vm(self, record):
        """VM.create"""
        values = self._construct('VM', record)
        # ocaml/xapi/xapi_vm.ml create: blocked_operations is taken but ignored (stored empty: set it
        # afterwards), and a random other_config:mac_seed (a uuid) is added unless one is given.
        values['blocked_operations'] = {}
        values['other_config'] = dict(values.get('other_config') or {})
        values['other_config'].setdefault(MAC_SEED_KEY, new_uuid())
        values.update(power_state='Halted', domid=-1, resident_on=NULL_REF,
                      allowed_operations=['start', 'clone', 'copy', 'snapshot', 'export', 'destroy'])
        values.update(self._created_power_state(record))
        return self.store.add('VM', vm_record.on_create(values))

    def _vm(self, vm):
        obj = self.store.raw('VM', vm)
        if obj['is_control_domain']:
            raise XapiError('OPERATION_NOT_ALLOWED', 'This operation is not allowed on the control domain')
        return obj

    def destroy_vm(self, vm):
        """VM.destroy: VBDs and VIFs go, VDIs stay."""
        obj = self._vm(vm)
        if obj['power_state'] not in ('Halted', 'Suspended'):
            raise XapiError(BAD_POWER, vm, 'halted, suspended', obj['power_state'].lower())
        vtpm.destroy_all(self, vm)
        for cls in ('VBD', 'VIF'):
            for ref in [r for r, o in self.store.objects[cls].items() if o['VM'] == vm]:
                self.store.remove(cls, ref)
        self.guest_agents.delete(vm)  # xapi_vm_helpers.ml destroy
        self.store.remove('VM', vm)
        return ''

    def m_VM__snapshot(self, vm, new_name, ignore_vdis=None):
        """VM.snapshot(vm, new_name[, ignore_vdis])"""
        obj = self._vm(vm)
        if obj['is_a_snapshot']:
            raise XapiError('OPERATION_NOT_ALLOWED', 'VM is a snapshot')
        if obj['power_state'] not in ('Halted', 'Running', 'Paused', 'Suspended'):
            raise XapiError(BAD_POWER, vm, 'halted, running', obj['power_state'].lower())
        ignore = set(ignore_vdis or [])
        vbds = [(r, o) for r, o in self.store.objects['VBD'].items() if o['VM'] == vm]
        disks = [o['VDI'] for _r, o in vbds if o['type'] == 'Disk' and not o['empty'] and o['VDI'] not in ignore]
        for vdi in disks:
            sr = self.store.raw('VDI', vdi)['SR']
            vhd_sr.check_snapshot_depth(self, vdi)
            try:
                self.stores[sr].check_room(1)
            except StoreFull as exc:
                raise XapiError('SR_FULL', exc.requested, exc.maximum) from None
        values = {}
        for name, field in FIELDS['VM'].items():
            if field.qual in (RW, SRO) and not field.inverse:
                values[name] = obj[name]
        # other_config (mac_seed included) and VIF MACs stay as they are: ocaml/xapi/xapi_vm_clone.ml
        # keeps the seed for snapshots and copies VIFs with preserve_mac_address.
        values.update(name_label=new_name, is_a_snapshot=True, is_a_template=True, snapshot_of=vm,
                      snapshot_time=xapi_date(), power_state='Halted', domid=-1, resident_on=NULL_REF,
                      suspend_VDI=NULL_REF,  # xapi_vm_clone.ml clone: a plain snapshot never gets the suspend VDI
                      snapshot_info={'power-state-at-snapshot': obj['power_state'],
                                     'disk-snapshot-type': 'crash_consistent'},
                      transportable_snapshot_id=new_uuid(), parent=NULL_REF,
                      allowed_operations=['clone', 'copy', 'destroy', 'export', 'revert'],
                      guest_metrics=self.guest_agents.copy(vm))  # xapi_vm_clone.ml copy_guest_metrics
        snap = self.store.add('VM', values)
        try:
            for _ref, vbd in vbds:
                vdi = vbd['VDI']
                if vbd['type'] == 'Disk' and not vbd['empty']:
                    if vdi in ignore:
                        continue
                    vdi = self._copy_vdi(vdi, True)
                copy_vbd = {k: vbd[k] for k in ('userdevice', 'bootable', 'mode', 'type', 'unpluggable', 'empty',
                                                'other_config', 'qos_algorithm_type', 'qos_algorithm_params',
                                                'device')}
                copy_vbd.update(VM=snap, VDI=vdi, currently_attached=False)
                self.store.add('VBD', copy_vbd)
            # ocaml/xapi/xapi_vif_helpers.ml copy: the locking rules (locking_mode, ipv4/ipv6_allowed) come along.
            for vif in [o for o in self.store.objects['VIF'].values() if o['VM'] == vm]:
                copy_vif = {k: vif[k] for k in ('device', 'network', 'MAC', 'MTU', 'other_config',
                                                'qos_algorithm_type', 'qos_algorithm_params', 'locking_mode',
                                                'ipv4_allowed', 'ipv6_allowed')}
                copy_vif.update(VM=snap, currently_attached=False)
                self.store.add('VIF', copy_vif)
            vtpm.copy_all(self, vm, snap)
        except XapiError:
            for cls in ('VBD', 'VIF', 'VTPM'):
                for ref in [r for r, o in self.store.objects[cls].items() if o['VM'] == snap]:
                    self.store.remove(cls, ref)
            self.store.remove('VM', snap)
            raise
        return snap

    def _power(self, vm, expected, new_state, attach):
        obj = self._vm(vm)
        if obj['power_state'] not in expected:
            raise XapiError(BAD_POWER, vm, ', '.join(s.lower() for s in expected), obj['power_state'].lower())
        running = new_state in ('Running', 'Paused')
        vm_record.on_power(self.store, vm, obj['power_state'], new_state)
        domid = obj['domid'] if obj['domid'] > 0 and running else (self._next_domid() if running else -1)
        self.store.update('VM', vm, power_state=new_state, domid=domid,
                          resident_on=self.master_ref if running else NULL_REF)
        if attach is not None:
            key = 'host_%s' % self.master_ref
            for ref, vbd in list(self.store.objects['VBD'].items()):
                if vbd['VM'] == vm and not vbd['empty']:
                    self.store.set('VBD', ref, 'currently_attached', attach)
                    if self.store.exists('VDI', vbd['VDI']):
                        sm_config = dict(self.store.raw('VDI', vbd['VDI'])['sm_config'])
                        if attach:
                            sm_config[key] = vbd['mode']
                        else:
                            sm_config.pop(key, None)
                        self.store.set('VDI', vbd['VDI'], 'sm_config', sm_config)
            for ref, vif in list(self.store.objects['VIF'].items()):
                if vif['VM'] == vm:
                    self.store.set('VIF', ref, 'currently_attached', attach)
        vtpm.refresh_allowed_operations(self, vm)
        return ''

    def _next_domid(self):
        used = [o['domid'] for o in self.store.objects['VM'].values()]
        return max(used + [0]) + 1

    def m_VM__start(self, vm, start_paused=False, force=False):
        """VM.start"""
        del force
        obj = self._vm(vm)
        if obj['is_a_template'] or obj['is_a_snapshot']:
            raise XapiError('VM_IS_TEMPLATE', vm)
        result = self._power(vm, ('Halted',), 'Paused' if start_paused else 'Running', True)
        self._record_boot_cpu(vm)
        self.guest_agents.on_start(vm)
        return result

    def m_VM__clean_shutdown(self, vm):
        """VM.clean_shutdown"""
        return self._power(vm, ('Running',), 'Halted', False)

    def m_VM__hard_shutdown(self, vm):
        """VM.hard_shutdown (a suspended VM loses its suspend VDI: _drop_suspend_vdi)"""
        if self._vm(vm)['power_state'] == 'Suspended':
            self._drop_suspend_vdi(vm)
        return self._power(vm, ('Running', 'Paused', 'Suspended'), 'Halted', False)

    def m_VM__shutdown(self, vm):
        """VM.shutdown"""
        return self._power(vm, ('Running',), 'Halted', False)

    def m_VM__pause(self, vm):
        """VM.pause"""
        return self._power(vm, ('Running',), 'Paused', None)

    def m_VM__unpause(self, vm):
        """VM.unpause"""
        return self._power(vm, ('Paused',), 'Running', None)

    def m_VM__suspend(self, vm):
        """VM.suspend: writes a suspend VDI (see _suspend)"""
        return self._suspend(vm)

    def m_VM__resume(self, vm, start_paused=False, force=False):
        """VM.resume: reads and then destroys the suspend VDI (see _resume)"""
        result = self._resume(vm, start_paused, force)
        self.guest_agents.on_resume(vm)
        return result

    def m_VM__clean_reboot(self, vm):
        """VM.clean_reboot"""
        return self._power(vm, ('Running',), 'Running', None)

    def m_VM__hard_reboot(self, vm):
        """VM.hard_reboot"""
        return self._power(vm, ('Running', 'Paused'), 'Running', None)

    def m_VM__add_to_other_config(self, vm, key, value):
        """VM.add_to_other_config (custom in XAPI)"""
        return self._map_add('VM', vm, FIELDS['VM']['other_config'], key, value)

    def m_VM__remove_from_other_config(self, vm, key):
        """VM.remove_from_other_config (custom in XAPI)"""
        return self._map_remove('VM', vm, FIELDS['VM']['other_config'], key)

    # -- VM record setters (issue 13): XAPI's custom setters, logic in vm_record.py
    def m_VM__set_bios_strings(self, vm, value):
        """VM.set_bios_strings (custom in XAPI, since inverness)"""
        self._vm(vm)
        return vm_record.set_bios_strings(self.store, vm, value)

    def m_VM__set_has_vendor_device(self, vm, value):
        """VM.set_has_vendor_device (custom in XAPI, since dundee)"""
        self._vm(vm)
        return vm_record.set_has_vendor_device(self.store, vm, value, BAD_POWER)

    def m_VM__set_ha_restart_priority(self, vm, value):
        """VM.set_ha_restart_priority (custom in XAPI)"""
        self._vm(vm)
        return vm_record.set_ha_restart_priority(self.store, vm, value)

    def m_VM__set_ha_always_run(self, vm, value):
        """VM.set_ha_always_run (deprecated, custom in XAPI)"""
        self._vm(vm)
        return vm_record.set_ha_always_run(self.store, vm, value)

    def m_VM__set_NVRAM(self, vm, value):
        """VM.set_NVRAM (custom in XAPI, since naples: a halted VM only)"""
        self._vm(vm)
        vm_record.assert_halted_for_nvram(self.store, vm, BAD_POWER)
        return self._set('VM', vm, FIELDS['VM']['NVRAM'], dict(value))

    def m_VM__add_to_NVRAM(self, vm, key, value):
        """VM.add_to_NVRAM (custom in XAPI, since naples: a halted VM only)"""
        self._vm(vm)
        vm_record.assert_halted_for_nvram(self.store, vm, BAD_POWER)
        return self._map_add('VM', vm, FIELDS['VM']['NVRAM'], key, value)

    def m_VM__remove_from_NVRAM(self, vm, key):
        """VM.remove_from_NVRAM (custom in XAPI, since naples: a halted VM only)"""
        self._vm(vm)
        vm_record.assert_halted_for_nvram(self.store, vm, BAD_POWER)
        return self._map_remove('VM', vm, FIELDS['VM']['NVRAM'], key)

    def m_VM__set_memory_limits(self, vm, static_min, static_max, dynamic_min, dynamic_max):
        """VM.set_memory_limits"""
        self.store.update('VM', vm, memory_static_min=int(static_min), memory_static_max=int(static_max),
                          memory_dynamic_min=int(dynamic_min), memory_dynamic_max=int(dynamic_max))
        return ''

    def m_VM__get_allowed_VBD_devices(self, vm):
        """VM.get_allowed_VBD_devices"""
        self.store.raw('VM', vm)
        used = {o['userdevice'] for o in self.store.objects['VBD'].values() if o['VM'] == vm}
        return [str(i) for i in range(16) if str(i) not in used]

    def m_VM__provision(self, vm):
        """VM.provision: nothing to do for templates without disks."""
        self.store.raw('VM', vm)
        return ''

    def _assert_not_blocked(self, vm, obj, op):
        # ocaml/xapi/xapi_vm_lifecycle.ml check_operation_error: a blocked operation is refused first,
        # before the power state, with OPERATION_BLOCKED [vm ref; the value stored in blocked_operations].
        reason = (obj.get('blocked_operations') or {}).get(op)
        if reason is not None:
            raise XapiError('OPERATION_BLOCKED', vm, reason)

    def m_VM__pool_migrate(self, vm, host, options):
        """VM.pool_migrate: blocked_operations honoured; otherwise the VM just lands on ``host`` (no real move)."""
        del options
        obj = self._vm(vm)
        self._assert_not_blocked(vm, obj, 'pool_migrate')
        self.store.raw('host', host)
        if obj['power_state'] != 'Running':
            raise XapiError(BAD_POWER, vm, 'running', obj['power_state'].lower())
        self.store.set('VM', vm, 'resident_on', host)
        return ''

    def m_VM__migrate_send(self, vm, dest, live, vdi_map, vif_map, options, vgpu_map):
        """VM.migrate_send: blocked_operations honoured; otherwise a no-op returning the VM (one simulated pool)."""
        del dest, live, vdi_map, vif_map, options, vgpu_map
        obj = self._vm(vm)
        self._assert_not_blocked(vm, obj, 'migrate_send')
        return vm

    def m_VM__clone(self, vm, new_name):
        """VM.clone: a copy of the VM with cloned disks (Halted)."""
        obj = self._vm(vm)
        if obj['power_state'] != 'Halted':
            raise XapiError(BAD_POWER, vm, 'halted', obj['power_state'].lower())
        values = {n: obj[n] for n, f in FIELDS['VM'].items() if f.qual in (RW, SRO) and not f.inverse}
        # ocaml/xapi/xapi_vm_clone.ml: a clone gets a fresh mac_seed (a snapshot keeps it, see VM.snapshot)
        # and its VIFs are copied with MAC "" (xapi_vif_helpers.ml copy), so they get new MACs from it.
        values.update(name_label=new_name, is_a_template=obj['is_a_template'] and not obj['is_a_snapshot'],
                      other_config=dict(obj['other_config'], **{MAC_SEED_KEY: new_uuid()}),
                      guest_metrics=self.guest_agents.copy(vm))  # xapi_vm_clone.ml copy_guest_metrics
        clone = self.store.add('VM', values)
        for vif in [o for o in list(self.store.objects['VIF'].values()) if o['VM'] == vm]:
            copy_vif = {k: vif[k] for k in ('device', 'network', 'MTU', 'other_config', 'qos_algorithm_type',
                                            'qos_algorithm_params', 'locking_mode', 'ipv4_allowed', 'ipv6_allowed')}
            copy_vif['MAC'], copy_vif['MAC_autogenerated'] = self._vif_mac(clone, vif['device'], '')
            copy_vif['VM'] = clone
            self.store.add('VIF', copy_vif)
        for vbd in [o for o in list(self.store.objects['VBD'].values()) if o['VM'] == vm]:
            vdi = vbd['VDI']
            if vbd['type'] == 'Disk' and not vbd['empty']:
                vdi = self._copy_vdi(vdi, False)
            values = {k: vbd[k] for k in ('userdevice', 'bootable', 'mode', 'type', 'unpluggable', 'empty',
                                          'other_config', 'device')}
            values.update(VM=clone, VDI=vdi)
            self.store.add('VBD', values)
        vtpm.copy_all(self, vm, clone)
        return clone

    # -- vTPM (issue 13): bodies in vtpm.py, sources cited there
    def m_VTPM__create(self, vm, is_unique):
        """VTPM.create(vM, is_unique)"""
        return vtpm.create(self, vm, is_unique)

    def m_VTPM__destroy(self, ref):
        """VTPM.destroy"""
        return vtpm.destroy(self, ref)

    def m_VTPM__get_contents(self, ref):
        """VTPM.get_contents (hidden from XAPI's docs)"""
        return vtpm.get_contents(self, ref)

    def m_VTPM__set_contents(self, ref, contents):
        """VTPM.set_contents (hidden from XAPI's docs)"""
        return vtpm.set_contents(self, ref, contents)

    # -- suspended VMs and checkpoints (issue 13)
    # Rules and sizes in tests/xapisim/suspend.py; each method cites the XAPI function it copies.
    def _host_cpu_info(self, host):
        return dict(self.store.raw('host', host).get('cpu_info') or {})

    def _record_boot_cpu(self, vm):
        """ocaml/xapi/xapi_xenops.ml update_vm: a running VM's last_boot_CPU_flags = [vendor; featureset]."""
        obj = self.store.raw('VM', vm)
        host = obj['resident_on'] if obj['resident_on'] != NULL_REF else self.master_ref
        self.store.set('VM', vm, 'last_boot_CPU_flags', suspendmod.boot_cpu_flags(obj, self._host_cpu_info(host)))

    @staticmethod
    def _created_power_state(record):
        """ocaml/xapi/xapi_vm.ml create: power_state Suspended is kept (with suspend_VDI, last_booted_record and
        last_boot_CPU_flags) only when all three are given, else VM_BAD_POWER_STATE [new ref; halted; suspended];
        any other power_state becomes Halted and those three fields are dropped."""
        if record.get('power_state') != 'Suspended':
            return {'suspend_VDI': NULL_REF, 'last_booted_record': '', 'last_boot_CPU_flags': {}}
        if not record.get('last_boot_CPU_flags') or not record.get('last_booted_record') \
                or record.get('suspend_VDI', NULL_REF) in (NULL_REF, ''):
            raise XapiError(BAD_POWER, new_ref(), 'halted', 'suspended')
        return {'power_state': 'Suspended', 'allowed_operations': ['resume', 'hard_shutdown', 'clone', 'copy', 'snapshot', 'checkpoint',
                                                                   'export', 'destroy']}

    def _suspend_sr(self, vm, obj):
        """ocaml/xapi/helpers.ml choose_suspend_sr: VM.suspend_SR, else pool.suspend_image_SR, else the resident
        host's suspend_image_sr, each only if the host sees it; else VM_NO_SUSPEND_SR [vm]."""
        host = obj['resident_on']
        pool = self.store.raw('pool', self.pool_ref)
        host_sr = self.store.raw('host', host).get('suspend_image_sr', NULL_REF) if self.store.exists('host', host) else NULL_REF
        for sr in (obj.get('suspend_SR', NULL_REF), pool.get('suspend_image_SR', NULL_REF), host_sr):
            if sr not in (None, '', NULL_REF) and self.store.exists('SR', sr) and sr in self.stores \
                    and host in self.hosts_seeing_sr(sr):
                return sr
        raise XapiError('VM_NO_SUSPEND_SR', vm)

    def _suspend(self, vm):
        """ocaml/xapi/xapi_vm.ml suspend + xapi_xenops.ml suspend: ha_always_run false, a VDI of type suspend
        ("Suspend image", memory-sized) on the suspend SR becomes suspend_VDI and receives the memory image,
        last_booted_record takes xenopsd's metadata; the VM is Suspended, detached, resident nowhere."""
        obj = self._vm(vm)
        if obj['is_a_template']:
            raise XapiError('VM_IS_TEMPLATE', vm)
        if obj['power_state'] != 'Running':
            raise XapiError(BAD_POWER, vm, 'running', obj['power_state'].lower())
        sr = self._suspend_sr(vm, obj)
        vdi = self.create_vdi(suspendmod.suspend_vdi_record(obj, sr, obj['domid']))
        disk = self.disk(vdi)
        try:
            for offset, data in suspendmod.image_writes(obj['uuid'], new_uuid()):
                disk.write(offset, data)
        except StoreFull as exc:
            self.destroy_vdi(vdi)
            raise XapiError('SR_SUSPEND_SPACE_INSUFFICIENT', sr) from exc
        self.store.set('VDI', vdi, 'physical_utilisation', disk.allocated)
        self.store.update('VM', vm, suspend_VDI=vdi, ha_always_run=False, last_booted_record=suspendmod.last_booted_record(obj))
        # VBDs and VIFs stay currently_attached: xenopsd reports a suspended VM's devices active (xapi_xenops.ml
        # update_vbd: plugged || active), and only a Halted state detaches them (xapi_vm_lifecycle.ml force_state_reset).
        return self._power(vm, ('Running',), 'Suspended', None)

    def _resume(self, vm, start_paused, force):
        """ocaml/xapi/xapi_vm.ml resume + xapi_xenops.ml resume: unless ``force``, the VM's last_boot_CPU_flags must
        fit this host's CPU (cpuid_helpers.ml assert_vm_is_compatible, VM_INCOMPATIBLE_WITH_THIS_HOST); without a
        suspend VDI the VM is reset to Halted and VM_HAS_NO_SUSPEND_VDI raised; after the resume suspend_VDI is
        NULL and the suspend VDI destroyed."""
        obj = self._vm(vm)
        if obj['is_a_template'] or obj['is_a_snapshot']:
            raise XapiError('VM_IS_TEMPLATE', vm)
        if obj['power_state'] != 'Suspended':
            raise XapiError(BAD_POWER, vm, 'suspended', obj['power_state'].lower())
        if obj.get('ha_restart_priority') == 'restart':
            self.store.set('VM', vm, 'ha_always_run', True)
        if not force:
            why = suspendmod.incompatibility(obj, self._host_cpu_info(self.master_ref))
            if why:
                raise XapiError('VM_INCOMPATIBLE_WITH_THIS_HOST', vm, self.master_ref, why)
        vdi = obj['suspend_VDI']
        if vdi in (NULL_REF, '') or not self.store.exists('VDI', vdi):
            self.store.update('VM', vm, power_state='Halted', suspend_VDI=NULL_REF)
            raise XapiError('VM_HAS_NO_SUSPEND_VDI', 'VM', vm)
        # xenopsd gets only the VBDs and VIFs that are currently_attached (xapi_xenops.ml create_metadata): the others
        # stay detached in the resumed VM.
        self._power(vm, ('Suspended',), 'Paused' if start_paused else 'Running', None)
        self.store.set('VM', vm, 'suspend_VDI', NULL_REF)
        self.destroy_vdi(vdi)
        return ''

    def _drop_suspend_vdi(self, vm):
        """ocaml/xapi/xapi_vm.ml hard_shutdown of a Suspended VM: destroy the suspend VDI (errors only logged), forget it."""
        vdi = self.store.raw('VM', vm)['suspend_VDI']
        if vdi not in (NULL_REF, '') and self.store.exists('VDI', vdi):
            try:
                self.destroy_vdi(vdi)
            except XapiError:
                pass  # XAPI logs and continues
        self.store.set('VM', vm, 'suspend_VDI', NULL_REF)

    def m_VM__checkpoint(self, vm, new_name):
        """VM.checkpoint (ocaml/xapi/xapi_vm_snapshot.ml checkpoint, xapi_vm_clone.ml clone Disk_op_checkpoint): a
        Running VM is suspended, its disks and suspend VDI are snapshotted (VDI.snapshot), then it is resumed; the
        snapshot is Suspended with its own suspend VDI. No ignore_vdis: every disk is in it."""
        obj = self._vm(vm)
        state = obj['power_state']
        if obj['is_a_snapshot'] or obj['is_a_template']:
            raise XapiError('VM_IS_TEMPLATE', vm)
        if state not in ('Halted', 'Running', 'Suspended'):
            raise XapiError(BAD_POWER, vm, 'halted, running, suspended', state.lower())
        if state == 'Running':
            self._suspend(vm)
        try:
            snap = self.m_VM__snapshot(vm, new_name)
            live_suspend = self.store.raw('VM', vm)['suspend_VDI']
            info = {'power-state-at-snapshot': state, 'disk-snapshot-type': 'crash_consistent'}
            if state in ('Running', 'Suspended') and live_suspend != NULL_REF:
                try:
                    copy = self._copy_vdi(live_suspend, True)
                except XapiError:
                    self.destroy_vm(snap)
                    raise
                self.store.update('VM', snap, power_state='Suspended', suspend_VDI=copy, snapshot_info=info)
                # xapi_vbd_helpers.ml / xapi_vif_helpers.ml copy keep currently_attached; a Suspended clone keeps them
                self._copy_attachment(vm, snap)
            else:
                self.store.update('VM', snap, snapshot_info=info)
        finally:
            if state == 'Running':
                self._resume(vm, False, True)  # "Performing a slow resume" (checkpoint resumes with force:false,
                # but the CPU cannot have changed while the VM was suspended a moment ago)
        return snap

    def _copy_attachment(self, source, target):
        """currently_attached of the source's VBDs (by userdevice) and VIFs (by device) onto the target's."""
        for cls, key in (('VBD', 'userdevice'), ('VIF', 'device')):
            attached = {o[key]: o['currently_attached'] for o in self.store.objects[cls].values() if o['VM'] == source}
            for ref, obj in list(self.store.objects[cls].items()):
                if obj['VM'] == target and obj[key] in attached:
                    self.store.set(cls, ref, 'currently_attached', attached[obj[key]])

    def m_VM__set_suspend_VDI(self, vm, value):
        """VM.set_suspend_VDI (ocaml/xapi/xapi_vm.ml set_suspend_VDI): only while Suspended; not a cbt_metadata VDI;
        a different VDI must hold the same content (VDI.checksum of both; here the content hash), else
        SUSPEND_VDI_REPLACEMENT_IS_NOT_IDENTICAL."""
        obj = self._vm(vm)
        if obj['power_state'] != 'Suspended':
            raise XapiError(BAD_POWER, vm, 'suspended', obj['power_state'].lower())
        target = self.store.raw('VDI', value)
        if target['type'] == 'cbt_metadata':
            raise XapiError('VDI_INCOMPATIBLE_TYPE', vm, 'cbt_metadata')
        current = obj['suspend_VDI']
        if current != value:
            sums = [(self.store.raw('VDI', ref)['uuid'], self.disk(ref).sha256()) for ref in (current, value)]
            if sums[0][1] != sums[1][1]:
                raise XapiError('SUSPEND_VDI_REPLACEMENT_IS_NOT_IDENTICAL', *['%s : %s' % item for item in sums])
            self.store.set('VM', vm, 'suspend_VDI', value)
        return ''

    # ------------------------------------------------------------------
    # creation of the static pool objects (config loader helpers)
    # ------------------------------------------------------------------
    def add_pool(self, name, host_name, address):
        """Create pool, master host and the control domain."""
        host = new_ref()
        dom0 = new_ref()
        self.master_ref = host
        major, minor = self.api_version()
        self.store.add('host', {'name_label': host_name, 'hostname': host_name, 'address': address,
                                'software_version': self.software_version(), 'API_version_major': major,
                                'API_version_minor': minor, 'control_domain': dom0,
                                'cpu_info': dict(suspendmod.DEFAULT_CPU_INFO)}, ref=host)
        self.store.add('VM', {'name_label': 'Control domain on host: %s' % host_name, 'is_control_domain': True,
                              'power_state': 'Running', 'domid': 0, 'resident_on': host,
                              'memory_static_max': 4 << 30, 'memory_dynamic_max': 4 << 30,
                              'memory_dynamic_min': 4 << 30, 'memory_static_min': 4 << 30,
                              'memory_target': 4 << 30, 'VCPUs_max': 2, 'VCPUs_at_startup': 2,
                              'actions_after_shutdown': 'destroy', 'actions_after_reboot': 'restart',
                              'actions_after_crash': 'restart'}, ref=dom0)
        self.pool_ref = self.store.add('pool', {'name_label': name, 'master': host,
                                                'restrictions': vtpm.default_restrictions(self)})
        return self.pool_ref

    def add_physical_pif(self, host, network, device, mtu=1500):
        """A physical NIC of ``host`` on ``network`` (VLAN -1), as XAPI introduces it at host start."""
        return self.store.add('PIF', {'device': device, 'network': network, 'host': host, 'MTU': mtu, 'VLAN': -1,
                                      'physical': True, 'currently_attached': True, 'MAC': random_nic_mac()})

    def add_vlan(self, host, tagged_pif, network, tag):
        """A VLAN on ``tagged_pif`` as ocaml/xapi/xapi_vlan.ml create_internal makes it: an untagged PIF
        on ``network`` (same device, VLAN = tag, MAC fe:ff:ff:ff:ff:ff, not physical, MTU of the
        tagged PIF) that is VLAN_master_of the new VLAN object."""
        tagged = self.store.raw('PIF', tagged_pif)
        untagged = self.store.add('PIF', {'device': tagged['device'], 'network': network, 'host': host, 'MAC': VLAN_MAC,
                                          'MTU': tagged['MTU'], 'VLAN': tag, 'physical': False, 'currently_attached': True})
        vlan = self.store.add('VLAN', {'tagged_PIF': tagged_pif, 'untagged_PIF': untagged, 'tag': tag})
        self.store.set('PIF', untagged, 'VLAN_master_of', vlan)
        return vlan

    def add_slave_host(self, host_name, address):
        """Create a pool member (not the coordinator). The first one is served by the member listener."""
        major, minor = self.api_version()
        ref = self.store.add('host', {'name_label': host_name, 'hostname': host_name, 'address': address,
                                      'software_version': self.software_version(), 'API_version_major': major,
                                      'API_version_minor': minor, 'cpu_info': dict(suspendmod.DEFAULT_CPU_INFO)})
        self.member_refs.append(ref)
        return ref
