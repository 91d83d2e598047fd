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
    """One field: name, kind (str int float bool date ref set map), qualifier, default."""

    __slots__ = ('name', 'kind', 'qual', 'default', 'target', 'inverse')

    def __init__(self, name, kind, qual, default, target=None, inverse=None):
        self.name = name
        self.kind = kind
        self.qual = qual
        self.default = default
        self.target = target
        self.inverse = inverse

    def fresh_default(self):
        """A copy of the default (maps and sets are mutable)."""
        return copy.deepcopy(self.default)


def _fields(spec):
    out = {}
    for line in spec.strip().splitlines():
        parts = line.split()
        if not parts:
            continue
        name, kind, qual = parts[0], parts[1], {'rw': RW, 'ro': SRO, 'dy': DRO}[parts[2]]
        target = inverse = None
        if kind.startswith('ref:'):
            kind, target = 'ref', kind[4:]
        elif kind.startswith('inv:'):
            # inv:Class.field = set of refs of Class whose field points here
            kind = 'set'
            target, inverse = kind_target(parts[1])
        default = {'str': '', 'int': 0, 'float': 0.0, 'bool': False, 'date': NULL_DATE, 'ref': NULL_REF,
                   'set': [], 'map': {}}[kind]
        if len(parts) > 3:
            default = _parse_default(kind, ' '.join(parts[3:]))
        out[name] = Field(name, kind, qual, default, target, inverse)
    return out


def kind_target(text):
    """Split ``inv:Class.field``."""
    cls, field = text[4:].split('.')
    return cls, field


def _parse_default(kind, text):
    if kind == 'int':
        return int(text)
    if kind == 'float':
        return float(text)
    if kind == 'bool':
        return text == 'true'
    if kind == 'str':
        return '' if text == '""' else text
    raise ValueError(kind)


COMMON = """
uuid str dy
"""

CLASSES = {
    'pool': COMMON + """
name_label str rw
name_description str rw
master ref:host dy
default_SR ref:SR rw
suspend_image_SR ref:SR rw
crash_dump_SR ref:SR rw
other_config map rw
tags set rw
ha_enabled bool dy
wlb_enabled bool rw
migration_compression bool rw
""",
    'host': COMMON + """
name_label str rw
name_description str rw
hostname str rw
address str rw
enabled bool dy true
API_version_major int dy 2
API_version_minor int dy 21
API_version_vendor str dy XenSource
software_version map dy
cpu_info map dy
memory_overhead int dy
other_config map rw
tags set rw
resident_VMs inv:VM.resident_on dy
PBDs inv:PBD.host dy
PIFs inv:PIF.host dy
control_domain ref:VM dy
""",
    'SR': COMMON + """
name_label str rw
name_description str rw
physical_size int ro
physical_utilisation int dy
virtual_allocation int dy
type str ro ext
content_type str ro user
shared bool rw
other_config map rw
sm_config map rw
tags set rw
VDIs inv:VDI.SR dy
PBDs inv:PBD.SR dy
allowed_operations set dy
current_operations map dy
clustered bool dy
is_tools_sr bool dy
""",
    'PBD': COMMON + """
host ref:host ro
SR ref:SR ro
device_config map ro
currently_attached bool dy true
other_config map rw
""",
    'VM': COMMON + """
name_label str rw
name_description str rw
user_version int rw 1
is_a_template bool rw
is_default_template bool dy
is_control_domain bool dy
is_a_snapshot bool dy
snapshot_of ref:VM dy
snapshots inv:VM.snapshot_of dy
snapshot_time date dy
snapshot_info map dy
snapshot_metadata str dy
transportable_snapshot_id str dy
parent ref:VM dy
children inv:VM.parent dy
power_state str dy Halted
domid int dy -1
resident_on ref:host dy
affinity ref:host rw
tags set rw
other_config map ro
platform map ro
xenstore_data map rw
blocked_operations map ro
allowed_operations set dy
current_operations map dy
memory_overhead int dy
memory_target int ro
memory_static_max int ro
memory_dynamic_max int ro
memory_dynamic_min int ro
memory_static_min int ro
VCPUs_params map ro
VCPUs_max int ro 1
VCPUs_at_startup int ro 1
actions_after_shutdown str ro destroy
actions_after_reboot str ro restart
actions_after_crash str ro restart
actions_after_softreboot str ro soft_reboot
PV_bootloader str ro
PV_kernel str ro
PV_ramdisk str ro
PV_args str ro
PV_bootloader_args str ro
PV_legacy_args str ro
HVM_boot_policy str ro
HVM_boot_params map ro
HVM_shadow_multiplier float ro 1.0
PCI_bus str ro
recommendations str ro
ha_restart_priority str ro
ha_always_run bool dy
order int ro
start_delay int ro
shutdown_delay int ro
has_vendor_device bool ro
domain_type str ro hvm
NVRAM map ro
bios_strings map dy
hardware_platform_version int ro
generation_id str ro
reference_label str ro
suspend_VDI ref:VDI dy
suspend_SR ref:SR rw
version int ro
VBDs inv:VBD.VM dy
VIFs inv:VIF.VM dy
VTPMs set dy
VGPUs set dy
VUSBs set dy
attached_PCIs set dy
consoles set dy
crash_dumps set dy
metrics ref:VM_metrics dy
guest_metrics ref:VM_guest_metrics dy
appliance ref:VM_appliance rw
protection_policy ref:VMPP dy
snapshot_schedule ref:VMSS rw
is_snapshot_from_vmpp bool dy
is_vmss_snapshot bool dy
last_booted_record str dy
last_boot_CPU_flags map dy
""",
    'VBD': COMMON + """
VM ref:VM ro
VDI ref:VDI ro
device str dy
userdevice str rw
bootable bool rw
mode str ro RW
type str rw Disk
unpluggable bool rw true
storage_lock bool dy
empty bool ro
other_config map rw
currently_attached bool dy
status_code int dy
status_detail str dy
runtime_properties map dy
qos_algorithm_type str rw
qos_algorithm_params map rw
qos_supported_algorithms set dy
metrics ref:VBD_metrics dy
allowed_operations set dy
current_operations map dy
""",
    'VDI': COMMON + """
name_label str ro
name_description str ro
SR ref:SR ro
VBDs inv:VBD.VDI dy
crash_dumps set dy
virtual_size int ro
physical_utilisation int dy
type str ro user
sharable bool ro
read_only bool ro
other_config map rw
storage_lock bool dy
location str dy
managed bool dy true
missing bool dy
parent ref:VDI dy
xenstore_data map ro
sm_config map ro
is_a_snapshot bool dy
snapshot_of ref:VDI dy
snapshots inv:VDI.snapshot_of dy
snapshot_time date dy
tags set rw
allow_caching bool ro
on_boot str ro persist
metadata_of_pool ref:pool dy
metadata_latest bool dy
is_tools_iso bool dy
cbt_enabled bool dy
allowed_operations set dy
current_operations map dy
""",
    'VIF': COMMON + """
device str ro
network ref:network ro
VM ref:VM ro
MAC str ro
MTU int ro 1500
MAC_autogenerated bool dy
other_config map rw
currently_attached bool dy
status_code int dy
status_detail str dy
runtime_properties map dy
qos_algorithm_type str rw
qos_algorithm_params map rw
locking_mode str ro network_default
ipv4_allowed set ro
ipv6_allowed set ro
allowed_operations set dy
current_operations map dy
""",
    'network': COMMON + """
name_label str rw
name_description str rw
bridge str ro
managed bool ro true
MTU int rw 1500
other_config map rw
tags set rw
VIFs inv:VIF.network dy
PIFs inv:PIF.network dy
allowed_operations set dy
current_operations map dy
""",
    # PIF and VLAN after XAPI's datamodel (ocaml/idl/datamodel_*.ml, xenapi.json): a physical PIF has VLAN -1;
    # a VLAN's untagged_PIF is the PIF on the VLAN's network, its tagged_PIF the physical one (ocaml/xapi/xapi_vlan.ml).
    'PIF': COMMON + """
device str ro
network ref:network ro
host ref:host ro
MAC str ro
MTU int ro
VLAN int ro -1
metrics ref:PIF_metrics dy
physical bool dy
currently_attached bool dy true
ip_configuration_mode str dy None
IP str dy
netmask str dy
gateway str dy
DNS str dy
bond_slave_of ref:Bond dy
bond_master_of set dy
VLAN_master_of ref:VLAN dy
VLAN_slave_of inv:VLAN.tagged_PIF dy
management bool dy
other_config map rw
disallow_unplug bool dy
tunnel_access_PIF_of set dy
tunnel_transport_PIF_of set dy
ipv6_configuration_mode str dy None
IPv6 set dy
ipv6_gateway str dy
primary_address_type str dy IPv4
managed bool ro true
properties map dy
capabilities set dy
igmp_snooping_status str dy unknown
sriov_physical_PIF_of set dy
sriov_logical_PIF_of set dy
PCI ref:PCI dy
""",
    'VLAN': COMMON + """
tagged_PIF ref:PIF ro
untagged_PIF ref:PIF dy
tag int ro -1
other_config map rw
""",
    'task': COMMON + """
name_label str ro
name_description str ro
created date dy
finished date dy
status str dy pending
resident_on ref:host dy
progress float dy
type str dy
result str dy
error_info set dy
other_config map rw
subtask_of ref:task dy
subtasks inv:task.subtask_of dy
backtrace str dy
allowed_operations set dy
current_operations map dy
""",
}

FIELDS = {cls: _fields(spec) for cls, spec in CLASSES.items()}

# Constructor arguments that must be present (others default).
REQUIRED = {
    'VM': ['name_label', 'memory_static_max', 'memory_dynamic_max', 'memory_dynamic_min', 'memory_static_min',
           'VCPUs_max', 'VCPUs_at_startup'],
    'VDI': ['name_label', 'SR', 'virtual_size', 'type', 'sharable', 'read_only'],
    'VBD': ['VM', 'VDI', 'userdevice', 'bootable', 'mode', 'type', 'empty'],
    'VIF': ['device', 'network', 'VM'],
    'network': ['name_label'],
}

# Fields accepted in constructors although not RW (StaticRO ones are constructor fields).
LOWER = {cls.lower(): cls for cls in FIELDS}


def class_name(name):
    """Canonical class name from any case (XAPI lower-cases class names in events)."""
    if name in FIELDS:
        return name
    return LOWER.get(name.lower())


def coerce(field, value, cls='', where=''):
    """Turn a wire value into the field's Python type."""
    kind = field.kind
    try:
        if kind == 'int':
            return int(value)
        if kind == 'float':
            return float(value)
        if kind == 'bool':
            if isinstance(value, str):
                return value.lower() == 'true'
            return bool(value)
        if kind == 'map':
            if not isinstance(value, dict):
                raise TypeError
            return {str(k): str(v) if not isinstance(v, str) else v for k, v in value.items()}
        if kind == 'set':
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return list(value)
        if kind == 'date':
            if isinstance(value, xmlrpc.client.DateTime):
                return value
            return xmlrpc.client.DateTime(str(value))
        return str(value)
    except (TypeError, ValueError):
        raise XapiError('FIELD_TYPE_ERROR', field.name) from None


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

    def record(self, cls, ref):
        """A full record with inverses filled in."""
        obj = self.raw(cls, ref)
        rec = {}
        for name, field in FIELDS[cls].items():
            if field.inverse:
                rec[name] = [r for r, o in self.objects[field.target].items() if o.get(field.inverse) == ref]
            else:
                rec[name] = copy.deepcopy(obj[name])
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
