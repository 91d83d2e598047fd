# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""State model of the simulator: classes, fields with their qualifiers, the
object store, server-kept inverse fields, events and API errors.  Nothing in
here knows about XML-RPC or HTTP."""

from __future__ import annotations

import copy
import threading
import time
import uuid as uuidlib
import xmlrpc.client

from . import datamodel

NULL_REF = 'OpaqueRef:NULL'
RW, SRO, DRO = 'RW', 'StaticRO', 'DynamicRO'


class XapiError(Exception):
    """An API failure: ``details`` is XAPI's ErrorDescription."""

    def __init__(self, code, *params):
        super().__init__(code, *params)
        self.details = [str(code)] + [str(p) for p in params]

    def __str__(self):
        return repr(self.details)


def new_ref():
    """A fresh opaque reference."""
    return 'OpaqueRef:%s' % uuidlib.uuid4()


def new_uuid():
    """A fresh uuid string."""
    return str(uuidlib.uuid4())


def xapi_date(when=None):
    """A DateTime in XAPI's wire format ``YYYYMMDDTHH:MM:SSZ``."""
    if when is None:
        when = time.time()
    return xmlrpc.client.DateTime(time.strftime('%Y%m%dT%H:%M:%SZ', time.gmtime(when)))


NULL_DATE = xmlrpc.client.DateTime('19700101T00:00:00Z')


class Field:
    """One field: name, kind (str int float bool date enum ref set map), qualifier, default, the datamodel
    type, and for server-kept inverse fields the (class, field) pointing here."""

    __slots__ = ('name', 'kind', 'qual', 'default', 'target', 'inverse', 'type')

    def __init__(self, name, kind, qual, default, target=None, inverse=None, typ=None):
        self.name = name
        self.kind = kind
        self.qual = qual
        self.default = default
        self.target = target
        self.inverse = inverse
        self.type = typ

    def fresh_default(self):
        """A copy of the default (maps and sets are mutable)."""
        return copy.deepcopy(self.default)


# Classes whose objects the simulator keeps.  For each, the Ref-set fields XAPI keeps as the inverse of a
# reference held by other objects (ocaml/idl/datamodel.ml, all_relations): field -> (class, field pointing here).
MODELED = {
    'pool': {},
    'host': {'resident_VMs': ('VM', 'resident_on'), 'PBDs': ('PBD', 'host'), 'PIFs': ('PIF', 'host')},
    'SR': {'VDIs': ('VDI', 'SR'), 'PBDs': ('PBD', 'SR')},
    'PBD': {},
    'VM': {'snapshots': ('VM', 'snapshot_of'), 'children': ('VM', 'parent'), 'VBDs': ('VBD', 'VM'),
           'VIFs': ('VIF', 'VM'), 'VTPMs': ('VTPM', 'VM')},
    'VBD': {},
    'VDI': {'VBDs': ('VBD', 'VDI'), 'snapshots': ('VDI', 'snapshot_of')},
    'VIF': {},
    'network': {'VIFs': ('VIF', 'network'), 'PIFs': ('PIF', 'network')},
    # A physical PIF has VLAN -1; a VLAN's untagged_PIF is the PIF on the VLAN's network, its tagged_PIF the
    # physical one, whose VLAN_slave_of lists the VLANs on it (ocaml/xapi/xapi_vlan.ml create_internal).
    'PIF': {'VLAN_slave_of': ('VLAN', 'tagged_PIF')},
    'VLAN': {},
    'task': {'subtasks': ('task', 'subtask_of')},
    # ocaml/idl/datamodel_vtpm.ml: VTPM.VM is the VM's VTPMs; the contents live in a Secret the record never shows.
    'VTPM': {},
}
QUALIFIERS = {'RW': RW, 'RO/constructor': SRO, 'RO/runtime': DRO}
KINDS = {'string': 'str', 'int': 'int', 'float': 'float', 'bool': 'bool', 'datetime': 'date', 'enum': 'enum',
         'ref': 'ref', 'set': 'set', 'map': 'map'}


def _stored_value(typ, value):
    """A datamodel literal as the store keeps it (dates as xmlrpc DateTime)."""
    if typ.kind == 'datetime':
        return xmlrpc.client.DateTime(value)
    return value


def _class_fields(cls, inverses):
    """Every field the datamodel gives ``cls`` in any release; records pick those of the selected version."""
    out = {}
    for name, fdef in datamodel.load().classes[cls].fields.items():
        inverse = inverses.get(name)
        out[name] = Field(name, KINDS.get(fdef.type.kind, 'str'), QUALIFIERS[fdef.qualifier],
                          _stored_value(fdef.type, fdef.default), target=inverse[0] if inverse else fdef.type.name,
                          inverse=inverse[1] if inverse else None, typ=fdef.type)
    return out


FIELDS = {cls: _class_fields(cls, inverses) for cls, inverses in MODELED.items()}
LOWER = {cls.lower(): cls for cls in FIELDS}


def class_name(name):
    """Canonical class name from any case (XAPI lower-cases class names in events)."""
    if name in FIELDS:
        return name
    return LOWER.get(name.lower())


class Store:
    """All objects by class and ref, with an event log.  One lock guards it."""

    MAX_EVENTS = 20000

    def __init__(self):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects = {cls: {} for cls in FIELDS}
        self.by_uuid = {}
        self.events = []
        self.event_id = 0

    # --- basic access -------------------------------------------------
    def exists(self, cls, ref):
        """True when ``ref`` is a live object of ``cls``."""
        return ref in self.objects.get(cls, {})

    def raw(self, cls, ref):
        """The stored dict (inverse fields absent); HANDLE_INVALID otherwise."""
        try:
            return self.objects[cls][ref]
        except KeyError:
            raise XapiError('HANDLE_INVALID', cls, ref) from None

    def ref_of_uuid(self, cls, value):
        """Ref of the object with ``uuid``; UUID_INVALID otherwise."""
        hit = self.by_uuid.get(value)
        if hit is None or hit[0] != cls:
            raise XapiError('UUID_INVALID', cls, value)
        return hit[1]

    def refs(self, cls):
        """All refs of a class."""
        return list(self.objects[cls])

    def get(self, cls, ref, name):
        """One field, computing server-kept inverses."""
        obj = self.raw(cls, ref)
        field = FIELDS[cls][name]
        if field.inverse:
            return [r for r, o in self.objects[field.target].items() if o.get(field.inverse) == ref]
        return copy.deepcopy(obj[name])

    def record(self, cls, ref, names=None):
        """A full record with inverses filled in (only the fields ``names`` when given)."""
        obj = self.raw(cls, ref)
        rec = {}
        for name, field in FIELDS[cls].items():
            if names is not None and name not in names:
                continue
            if field.inverse:
                rec[name] = [r for r, o in self.objects[field.target].items() if o.get(field.inverse) == ref]
            else:
                value = obj[name]
                # Only containers can be changed in place by a caller; scalars and dates are never mutated.
                rec[name] = copy.deepcopy(value) if isinstance(value, (list, dict)) else value
        return rec

    # --- mutation -----------------------------------------------------
    def add(self, cls, values, ref=None):
        """Create an object from ``values`` (already typed); returns its ref."""
        ref = ref or new_ref()
        obj = {}
        for name, field in FIELDS[cls].items():
            if field.inverse:
                continue
            obj[name] = values[name] if name in values else field.fresh_default()
        if not obj.get('uuid'):
            obj['uuid'] = new_uuid()
        with self.lock:
            self.objects[cls][ref] = obj
            self.by_uuid[obj['uuid']] = (cls, ref)
            self.emit(cls, ref, 'add')
            self._touch_targets(cls, obj)
        return ref

    def remove(self, cls, ref):
        """Delete an object."""
        with self.lock:
            obj = self.raw(cls, ref)
            del self.objects[cls][ref]
            self.by_uuid.pop(obj['uuid'], None)
            self.emit(cls, ref, 'del')
            self._touch_targets(cls, obj)

    def set(self, cls, ref, name, value):
        """Set one stored field and emit a mod event."""
        with self.lock:
            obj = self.raw(cls, ref)
            old = obj.get(name)
            obj[name] = value
            self.emit(cls, ref, 'mod')
            field = FIELDS[cls][name]
            if field.kind == 'ref':
                for target_ref in (old, value):
                    if field.target in self.objects and target_ref in self.objects[field.target]:
                        self.emit(field.target, target_ref, 'mod')

    def update(self, cls, ref, **values):
        """Set several fields at once."""
        with self.lock:
            for name, value in values.items():
                self.set(cls, ref, name, value)

    def _touch_targets(self, cls, obj):
        for name, field in FIELDS[cls].items():
            if field.kind == 'ref' and field.target in self.objects:
                target_ref = obj.get(name)
                if target_ref in self.objects[field.target]:
                    self.emit(field.target, target_ref, 'mod')

    # --- events -------------------------------------------------------
    def emit(self, cls, ref, op):
        """Append an event (caller holds the lock)."""
        with self.lock:
            self.event_id += 1
            snap = None if op == 'del' else ref
            self.events.append((self.event_id, cls, op, ref, snap))
            if len(self.events) > self.MAX_EVENTS:
                del self.events[:len(self.events) - self.MAX_EVENTS]
            self.changed.notify_all()

    def match_expr(self, cls, ref, expr):
        """Evaluate a ``get_all_records_where`` expression on one object."""
        return expr.evaluate(self.record(cls, ref))


# --- get_all_records_where expressions -------------------------------------

class Expr:
    """Parsed expression: field "x"="y", and, or, not, true, false."""

    def __init__(self, text):
        self.tokens = self._lex(text)
        self.pos = 0
        self.tree = self._or() if self.tokens else ('true',)
        if self.pos != len(self.tokens):
            raise ValueError('trailing tokens')

    @staticmethod
    def _lex(text):
        tokens = []
        i = 0
        while i < len(text):
            char = text[i]
            if char.isspace():
                i += 1
            elif char in '()=':
                tokens.append(char)
                i += 1
            elif char == '!' and text[i:i + 2] == '!=':
                tokens.append('!=')
                i += 2
            elif char == '"':
                j = i + 1
                buf = []
                while j < len(text) and text[j] != '"':
                    if text[j] == '\\' and j + 1 < len(text):
                        j += 1
                    buf.append(text[j])
                    j += 1
                if j >= len(text):
                    raise ValueError('unterminated string')
                tokens.append(('s', ''.join(buf)))
                i = j + 1
            else:
                j = i
                while j < len(text) and not text[j].isspace() and text[j] not in '()="!':
                    j += 1
                if j == i:
                    raise ValueError('bad character')
                tokens.append(text[i:j].lower())
                i = j
        return tokens

    def _peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self):
        tok = self._peek()
        if tok is None:
            raise ValueError('unexpected end')
        self.pos += 1
        return tok

    def _or(self):
        left = self._and()
        while self._peek() == 'or':
            self.pos += 1
            left = ('or', left, self._and())
        return left

    def _and(self):
        left = self._unary()
        while self._peek() == 'and':
            self.pos += 1
            left = ('and', left, self._unary())
        return left

    def _unary(self):
        tok = self._next()
        if tok == 'not':
            return ('not', self._unary())
        if tok == '(':
            inner = self._or()
            if self._next() != ')':
                raise ValueError('missing )')
            return inner
        if tok in ('true', 'false'):
            return (tok,)
        if tok == 'field':
            name = self._next()
            if not isinstance(name, tuple):
                raise ValueError('field name must be quoted')
            op = self._next()
            if op not in ('=', '!='):
                raise ValueError('bad operator')
            value = self._next()
            if not isinstance(value, tuple):
                raise ValueError('value must be quoted')
            return (op, name[1], value[1])
        raise ValueError('unexpected token %r' % (tok,))

    def evaluate(self, record, node=None):
        """True when ``record`` matches."""
        node = node or self.tree
        kind = node[0]
        if kind == 'true':
            return True
        if kind == 'false':
            return False
        if kind == 'not':
            return not self.evaluate(record, node[1])
        if kind == 'and':
            return self.evaluate(record, node[1]) and self.evaluate(record, node[2])
        if kind == 'or':
            return self.evaluate(record, node[1]) or self.evaluate(record, node[2])
        value = record.get(node[1])
        if isinstance(value, bool):
            text = 'true' if value else 'false'
        elif isinstance(value, xmlrpc.client.DateTime):
            text = value.value
        else:
            text = str(value)
        return (text == node[2]) if kind == '=' else (text != node[2])
