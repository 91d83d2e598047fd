# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parameter values as XAPI reads them off the wire, by datamodel type.

XAPI decodes XML-RPC into rpclib values (String, Int, Bool, Float, DateTime, Dict, Enum for arrays) and
converts them with the ``*_of_rpc`` functions generated for its types (ocaml/idl/ocaml_backend/gen_api.ml,
rpclib's rpc.ml and ppx_deriving_rpc).  A conversion failure is an OCaml exception, which
ocaml/xapi/server_helpers.ml (dispatch_exn_wrapper) turns into an error with ocaml/xapi/exnHelper.ml:
``INTERNAL_ERROR [Printexc.to_string exn]``, e.g. ``Failure("Expected bool, got 'S(yes)'")``.
Nothing here knows about the object store."""

from __future__ import annotations

import copy
import re
import xmlrpc.client

from .model import XapiError

# OCaml keywords: an enum value equal to one gets a leading underscore in its OCaml constructor
# (ocaml/idl/ocaml_backend/ocaml_utils.ml, constructor_of / keywords).
OCAML_KEYWORDS = frozenset('''and as assert asr begin class constraint do done downto else end exception external false
for fun function functor if in include inherit initializer land lazy let lor lsl lsr lxor match method mod module
mutable new nonrec object of open or private rec sig struct then to true try type val virtual when while with'''.split())


def ocaml_string(text):
    """``%S`` of OCaml's Printf: a quoted string with OCaml escapes."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append('\\' + char)
        elif char == '\n':
            out.append('\\n')
        elif char == '\t':
            out.append('\\t')
        elif char == '\r':
            out.append('\\r')
        elif code < 32 or code == 127:
            out.append('\\%03d' % code)
        else:
            out.append(char)
    return '"%s"' % ''.join(out)


def failure(message):
    """XAPI's answer to ``failwith message`` during unmarshalling."""
    return XapiError('INTERNAL_ERROR', 'Failure(%s)' % ocaml_string(message))


def rpc_text(value):
    """rpclib's Rpc.to_string of a decoded XML-RPC value (used in its error messages)."""
    if isinstance(value, bool):
        return 'B(%s)' % ('true' if value else 'false')
    if isinstance(value, int):
        return 'I(%d)' % value
    if isinstance(value, float):
        return 'F(%s)' % ('%g' % value)
    if isinstance(value, str):
        return 'S(%s)' % value
    if isinstance(value, xmlrpc.client.DateTime):
        return 'D(%s)' % value.value
    if isinstance(value, (list, tuple)):
        return '[%s]' % ';'.join(rpc_text(v) for v in value)
    if isinstance(value, dict):
        return '{%s}' % ';'.join('%s:%s' % (k, rpc_text(v)) for k, v in value.items())
    if isinstance(value, xmlrpc.client.Binary):
        return 'B64(%s)' % value.data.decode('latin-1')
    if value is None:
        return 'N'
    return 'S(%s)' % value


def _int64_of_string(text):
    """OCaml's Int64.of_string: decimal, 0x/0o/0b prefixes, optional sign, underscores."""
    match = re.fullmatch(r'([-+]?)(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)', text)
    if not match:
        raise failure('Int64.of_string')
    digits = match.group(2).replace('_', '')
    value = int(digits, 0) if digits[:2].lower() in ('0x', '0o', '0b') else int(digits)
    value = -value if match.group(1) == '-' else value
    if not -(1 << 63) <= value < (1 << 64):
        raise failure('Int64.of_string')
    return value


def _float_of_string(text):
    try:
        return float(text.replace('_', ''))
    except ValueError:
        raise failure('float_of_string') from None


def enum_constructor(value):
    """The lower-cased OCaml constructor name ppx_deriving_rpc matches an enum value against."""
    name = ''.join(c for c in value if c.isalnum() or c == '_')
    if value in OCAML_KEYWORDS or (value[:1].isdigit()):
        name = '_' + name
    return name.lower()


def _enum(typ, value, enums):
    values = enums.get(typ.name)
    # bond_mode has a hand-written unmarshaller matching the exact strings (gen_api.ml overrides).
    if typ.name == 'bond_mode':
        if isinstance(value, str) and value in (values or []):
            return value
        raise failure('Unmarshalling error in bond-mode')
    if isinstance(value, str) and values:
        wanted = value.lower()
        for candidate in values:
            if enum_constructor(candidate) == wanted:
                return candidate
    raise failure('Unknown tag/contents')


def _date(value):
    if isinstance(value, xmlrpc.client.DateTime):
        text = value.value
    elif isinstance(value, str):
        text = value
    else:
        raise failure('Date.t_of_rpc')
    # ocaml/libs/clock/date.ml of_iso8601: the database form YYYYMMDDTHH:MM:SSZ, else RFC 3339.
    if re.fullmatch(r'\d{8}T\d\d:\d\d:\d\dZ', text) or re.fullmatch(
            r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[-+]\d\d:?\d\d)', text):
        return xmlrpc.client.DateTime(text)
    raise XapiError('INTERNAL_ERROR', 'Invalid argument: Clock__Date.of_iso8601: %s' % text)


def value_of(typ, value, enums):  # pylint: disable=too-many-return-statements,too-many-branches
    """``value`` (decoded XML-RPC) converted to datamodel type ``typ``; XapiError as XAPI fails."""
    kind = typ.kind
    if kind == 'string':
        if isinstance(value, str):
            return value
        raise failure("Expected string, got '%s'" % rpc_text(value))
    if kind == 'int':
        if isinstance(value, bool):
            raise failure("Expected int64, got '%s'" % rpc_text(value))
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return _int64_of_string(value)
        raise failure("Expected int64, got '%s'" % rpc_text(value))
    if kind == 'float':
        if isinstance(value, bool):
            raise failure("Expected float, got '%s'" % rpc_text(value))
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return _float_of_string(value)
        raise failure("Expected float, got '%s'" % rpc_text(value))
    if kind == 'bool':
        if isinstance(value, bool):
            return value
        raise failure("Expected bool, got '%s'" % rpc_text(value))
    if kind == 'datetime':
        return _date(value)
    if kind == 'enum':
        return _enum(typ, value, enums)
    if kind == 'ref':
        # ocaml/xapi-types/ref.ml t_of_rpc: any string is a reference; lookups fail later (HANDLE_INVALID).
        if isinstance(value, str):
            return value
        raise failure("Expected string, got '%s'" % rpc_text(value))
    if kind == 'set':
        if isinstance(value, (list, tuple)):
            return [value_of(typ.of, item, enums) for item in value]
        raise failure("Expecting Rpc.Enum, but found '%s'" % rpc_text(value))
    if kind == 'map':
        if isinstance(value, dict):
            return {value_of(typ.key, key, enums): value_of(typ.value, item, enums) for key, item in value.items()}
        raise failure("Expecting Rpc.Dict, but found '%s'" % rpc_text(value))
    if kind == 'option':
        if isinstance(value, (list, tuple)) and len(value) <= 1:
            return value_of(typ.of, value[0], enums) if value else None
        raise failure("Expecting Rpc.Enum, but found '%s'" % rpc_text(value))
    return value


def constructor_record(fields, record, enums):
    """The values of a ``<class>.create`` record: every constructor field (RW or RO/constructor) is looked
    up by name (ocaml/idl/ocaml_backend/gen_server.ml, from_ctor_record); a missing one without default
    raises Server_helpers.Dispatcher_FieldNotFound (ocaml/xapi/server_helpers.ml my_assoc), a missing one with
    a default takes it; other keys of the struct are never read."""
    if not isinstance(record, dict):
        raise failure('bad __structure')
    out = {}
    for name, fdef in fields.items():
        if not fdef.is_constructor_arg:
            continue
        if name in record:
            out[name] = value_of(fdef.type, record[name], enums)
        elif fdef.has_default:
            out[name] = copy.deepcopy(fdef.default) if fdef.type.kind != "datetime" else xmlrpc.client.DateTime(fdef.default)
        else:
            raise XapiError('INTERNAL_ERROR', 'Server_helpers.Dispatcher_FieldNotFound(%s)' % ocaml_string(name))
    return out
