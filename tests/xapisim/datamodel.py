# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""XAPI's published datamodel (datamodel/xapi-datamodel.json) plus the hand-written
supplement (datamodel/supplement.yml), loaded once, viewed per XAPI version.

``load()`` gives the whole model; ``load().view('1.249.41')`` the classes, fields
and messages a host of that version publishes.  Nothing here knows about the
object store or the wire."""

from __future__ import annotations

import functools
import json
import os
import re

import yaml

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'datamodel')
JSON_PATH = os.path.join(HERE, 'xapi-datamodel.json')
SUPPLEMENT_PATH = os.path.join(HERE, 'supplement.yml')
NULL_REF = 'OpaqueRef:NULL'
NULL_DATE = '19700101T00:00:00Z'


# --- types ---------------------------------------------------------------------

class Type:
    """A datamodel type: ``kind`` is one of string int float bool datetime enum ref record set map
    option void other; ``name`` the enum or class name; ``of`` / ``key`` / ``value`` the inner types."""

    __slots__ = ('kind', 'name', 'of', 'key', 'value', 'text')

    def __init__(self, kind, text, name=None, of=None, key=None, value=None):
        self.kind = kind
        self.text = text
        self.name = name
        self.of = of
        self.key = key
        self.value = value

    def __repr__(self):
        return 'Type(%s)' % self.text


BASIC = {'string': 'string', 'int': 'int', 'float': 'float', 'bool': 'bool', 'datetime': 'datetime',
         'void': 'void'}


@functools.lru_cache(maxsize=None)
def parse_type(text):
    """A Type from the JSON's type text (``(string -> enum vm_operations) map``, ``VDI ref set`` ...)."""
    text = text.strip()
    if text in BASIC:
        return Type(BASIC[text], text)
    if text.endswith(' map') and text.startswith('('):
        inner = text[1:-len(') map')]
        depth = 0
        for pos, char in enumerate(inner):
            depth += char == '('
            depth -= char == ')'
            if depth == 0 and inner.startswith(' -> ', pos):
                return Type('map', text, key=parse_type(inner[:pos]), value=parse_type(inner[pos + 4:]))
        raise ValueError('bad map type %r' % text)
    for suffix, kind in ((' set', 'set'), (' option', 'option')):
        if text.endswith(suffix):
            return Type(kind, text, of=parse_type(text[:-len(suffix)]))
    if text.startswith('enum '):
        return Type('enum', text, name=text[5:])
    match = re.fullmatch(r'(\w+) (ref|record)', text)
    if match:
        return Type(match.group(2), text, name=match.group(1))
    return Type('other', text)


def parse_literal(typ, text):
    """A Python value from an XAPI literal default (``{}``, ``""``, ``1.``, ``Null``, ``{"a" -> "b"}``)."""
    kind = typ.kind
    if kind == 'string':
        return _unquote(text)
    if kind == 'int':
        return int(text)
    if kind == 'float':
        return float(text)
    if kind == 'bool':
        return text == 'true'
    if kind == 'datetime':
        return text
    if kind == 'enum':
        return _unquote(text)
    if kind == 'ref':
        return NULL_REF if text in ('Null', NULL_REF) else text
    if kind == 'set':
        body = text.strip()[1:-1].strip()
        return [parse_literal(typ.of, item.strip()) for item in _split_top(body)] if body else []
    if kind == 'map':
        body = text.strip()[1:-1].strip()
        out = {}
        for item in _split_top(body) if body else []:
            key, _sep, value = item.partition(' -> ')
            out[parse_literal(typ.key, key.strip())] = parse_literal(typ.value, value.strip())
        return out
    return text


def _unquote(text):
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _split_top(body):
    """Split ``a, "b, c", d`` on commas outside quotes and braces."""
    items, depth, quoted, start = [], 0, False, 0
    for pos, char in enumerate(body):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in '{(':
            depth += 1
        elif not quoted and char in '})':
            depth -= 1
        elif not quoted and depth == 0 and char == ',':
            items.append(body[start:pos])
            start = pos + 1
    items.append(body[start:])
    return items


def empty_value(typ):
    """The value XAPI's database gives a field of ``typ`` nobody set (used for fields the simulator does not keep)."""
    return {'string': '', 'int': 0, 'float': 0.0, 'bool': False, 'datetime': NULL_DATE, 'enum': '',
            'ref': NULL_REF, 'set': [], 'map': {}}.get(typ.kind, '')


# --- versions ------------------------------------------------------------------

class Releases:
    """Comparable keys for releases, as release_leq in ocaml/idl/datamodel_types.ml orders them."""

    def __init__(self, order):
        self.order = {name: num for num, name in enumerate(order)}

    def key(self, release):
        """(0, position) for a code name, (1, numbers...) for a numbered release."""
        release = str(release).strip()
        if release in self.order:
            return (0, self.order[release])
        if re.fullmatch(r'\d+(\.\d+)*', release):
            return (1,) + tuple(int(part) for part in release.split('.'))
        raise ValueError('unknown XAPI release %r: give a version like 1.249.41 or 24.19.2' % release)


# --- classes, fields, messages -------------------------------------------------

class FieldDef:
    """One field of a class as the datamodel describes it."""

    __slots__ = ('name', 'type', 'qualifier', 'has_default', 'default', 'release', 'state')

    def __init__(self, raw):
        self.name = raw['name']
        self.type = parse_type(raw['type'])
        self.qualifier = raw['qualifier']
        self.has_default = 'default' in raw
        self.default = parse_literal(self.type, raw['default']) if self.has_default else empty_value(self.type)
        self.release = raw['release']
        self.state = raw.get('state')

    @property
    def is_constructor_arg(self):
        """RW and RO/constructor fields are <class>.create arguments (see the JSON's note)."""
        return self.qualifier in ('RW', 'RO/constructor')

    @property
    def required_in_create(self):
        """A constructor argument without default must be in the create record."""
        return self.is_constructor_arg and not self.has_default


class MessageDef:
    """One message: parameters in wire order (session_id first where present)."""

    __slots__ = ('cls', 'name', 'params', 'result', 'release', 'state', 'implicit', 'defaults', 'param_since',
                 'removed_in', 'has_async')

    def __init__(self, cls, raw, supplement):
        self.cls = cls
        self.name = raw['name']
        self.params = [(name, parse_type(typ)) for name, typ in raw['params']]
        self.result = parse_type(raw['result'])
        self.release = raw['release']
        self.state = raw.get('state')
        self.implicit = raw.get('implicit', False)
        extra = (supplement.get('param_defaults') or {}).get('%s.%s' % (cls, self.name), {})
        self.defaults = {name: spec['default'] for name, spec in extra.items()}
        self.param_since = {name: str(spec['since']) for name, spec in extra.items() if 'since' in spec}
        removed = [release for what, release in raw.get('changed', []) if what == 'removed']
        self.removed_in = removed[0] if removed and self.state == 'Removed_s' else None
        # gen_client.ml has_async: implicit messages only for create/destroy; explicit ones unless their
        # flags lack `Async (supplement no_async).
        if self.implicit:
            self.has_async = self.name in ('create', 'destroy')
        else:
            self.has_async = self.name not in ((supplement.get('no_async') or {}).get(cls) or {})

    def raw_params(self):
        """The parameters as the JSON lists them."""
        return [[name, typ.text] for name, typ in self.params]

    @property
    def has_session(self):
        """True when the first wire parameter is the session."""
        return bool(self.params) and self.params[0][0] == 'session_id'


class ClassDef:
    """Fields and messages of one class."""

    def __init__(self, name, raw, supplement):
        self.name = name
        self.fields = {f['name']: FieldDef(f) for f in raw['fields']}
        self.messages = {m['name']: MessageDef(name, m, supplement) for m in raw['messages']}
        self.enums = raw.get('enums', {})
        # Messages hidden from XAPI's docs (so from the JSON), written down in the supplement with their source.
        for hidden in (supplement.get('hidden_messages') or {}).get(name) or []:
            self.messages[hidden['name']] = MessageDef(name, dict(hidden, release=str(hidden['release'])), supplement)
        everything = self.messages.get('get_all_records')
        if everything is not None and 'get_all_records_where' not in self.messages:
            # ocaml/idl/datamodel_utils.ml: get_all_records_where comes with get_all_records (hidden from docs,
            # so absent from the JSON); one string parameter "expr".
            self.messages['get_all_records_where'] = MessageDef(name, {
                'name': 'get_all_records_where', 'params': everything.raw_params() + [['expr', 'string']],
                'result': everything.result.text, 'release': everything.release, 'implicit': True}, supplement)


class Datamodel:
    """The whole datamodel and its supplement."""

    def __init__(self, raw, supplement):
        self.source = raw.get('source', '')
        self.supplement = supplement
        self.releases = Releases(supplement['release_order'])
        self.classes = {name: ClassDef(name, body, supplement) for name, body in raw['classes'].items()}
        self.enums = {}
        for cls in self.classes.values():
            self.enums.update(cls.enums)
        self.lower = {name.lower(): name for name in self.classes}
        self.profiles = supplement['profiles']
        self.default_profile = supplement['default_profile']
        self._views = {}

    def profile(self, name):
        """A named profile's settings; ValueError naming the known ones otherwise."""
        if name not in self.profiles:
            raise ValueError('unknown xapi profile %r: use one of %s' % (name, ', '.join(sorted(self.profiles))))
        return self.profiles[name]

    def view(self, version):
        """What a host running XAPI ``version`` publishes (cached per version)."""
        version = str(version)
        if version not in self._views:
            self._views[version] = VersionView(self, version)
        return self._views[version]


class VersionView:
    """The datamodel as published by one XAPI version: a field, message or parameter whose
    release is later than the version is absent."""

    def __init__(self, model, version):
        self.model = model
        self.version = version
        self.key = model.releases.key(version)
        self._fields = {}

    def published(self, release):
        """True when ``release`` is this version or older."""
        return self.model.releases.key(release) <= self.key

    def class_def(self, cls):
        """The ClassDef or None."""
        return self.model.classes.get(cls)

    def fields(self, cls):
        """{name: FieldDef} of the fields this version has, in datamodel order."""
        if cls not in self._fields:
            class_def = self.model.classes[cls]
            self._fields[cls] = {n: f for n, f in class_def.fields.items() if self.published(f.release)}
        return self._fields[cls]

    def message(self, cls, name):
        """The MessageDef if this version publishes it, else None."""
        class_def = self.model.classes.get(cls)
        if class_def is None:
            return None
        msg = class_def.messages.get(name)
        if msg is None or not self.published(msg.release):
            return None
        return msg

    def removed(self, msg):
        """True when this version answers the message with MESSAGE_REMOVED."""
        return msg.removed_in is not None and self.published(msg.removed_in)

    def params(self, msg):
        """The message's parameters in this version (later additions dropped), without the session."""
        out = []
        for name, typ in msg.params:
            if name == 'session_id' and typ.kind == 'ref' and typ.name == 'session':
                continue
            since = msg.param_since.get(name)
            if since is not None and not self.published(since):
                continue
            out.append((name, typ))
        return out

    def arity(self, msg):
        """(required, most) parameter counts, session excluded.  gen_server.ml matches a message without
        defaulted parameters exactly; with some, the required ones are matched and anything after them is
        read for the defaulted ones (missing -> default, surplus ignored), so ``most`` is None."""
        params = self.params(msg)
        required = sum(1 for name, _typ in params if name not in msg.defaults)
        return required, (None if required < len(params) else required)


@functools.lru_cache(maxsize=None)
def load():
    """The datamodel, read once per process."""
    with open(JSON_PATH, encoding='utf-8') as handle:
        raw = json.load(handle)
    with open(SUPPLEMENT_PATH, encoding='utf-8') as handle:
        supplement = yaml.safe_load(handle)
    return Datamodel(raw, supplement)
