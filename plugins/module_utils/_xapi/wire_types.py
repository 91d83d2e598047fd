# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Values encoded by their XAPI datamodel type, for XML-RPC calls and for the records a backup stores.

A recorded value may come from either of XAPI's wire protocols (xen-api ``doc/content/xen-api/wire-protocol.md``):
over XML-RPC an ``int`` is a decimal string (this collection's records), over JSON-RPC a JSON number
(Xen Orchestra's records, so memory sizes above 2^31 are plain numbers, which Python's XML-RPC client
refuses to send: "int exceeds XML-RPC limits"); backups of XenServer < 7.1 hold booleans as 0/1
(Xen Orchestra ``@xen-orchestra/backups/RemoteAdapter.mjs`` ``readVmBackupMetadata``). ``xmlrpc_value``
gives what XAPI's XML-RPC takes whoever wrote the value; ``jsonrpc_value`` gives the form XAPI's
JSON-RPC answers with, the one Xen Orchestra's metadata holds. Types are the datamodel's spelling, as in
``constructor.py``: ``int``, ``float``, ``bool``, ``string``, ``datetime``, ``enum <name>``, ``<class> ref``,
``<type> set``, ``(<type> -> <type>) map``.
"""

from __future__ import annotations

from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError


class WireTypeError(DeltaBackupError, ValueError):
    """A recorded value that its datamodel type cannot hold (e.g. ``"lots"`` for an int)."""

    error_code = 'invalid_record_value'


def _split_map(kind: str) -> tuple[str, str]:
    """``(K -> V) map`` -> (K, V), splitting at the top-level arrow (K and V may be maps themselves)."""
    inner = kind[1:-len(') map')]
    depth = 0
    for index, char in enumerate(inner):
        if char == '(':
            depth += 1
        elif char == ')':
            depth -= 1
        elif depth == 0 and inner.startswith(' -> ', index):
            return inner[:index], inner[index + 4:]
    raise WireTypeError('cannot read the datamodel type %r' % kind)


def _unwrap(kind: str) -> str:
    kind = kind.strip()
    if kind.startswith('(') and kind.endswith(')') and not kind.endswith(') map'):
        return kind[1:-1].strip()
    return kind


def _as_int(value) -> int:
    if isinstance(value, bool):
        raise WireTypeError('%r is a boolean, not an integer' % value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise WireTypeError('%r is not an integer' % (value,))


def _as_float(value) -> float:
    if not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise WireTypeError('%r is not a number' % (value,))


def _as_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ('true', 'false', '1', '0'):
        return value.strip().lower() in ('true', '1')
    raise WireTypeError('%r is not a boolean' % (value,))


def _as_string(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'  # as XAPI writes booleans into maps
    if isinstance(value, (int, float, str)):
        return str(value)
    raise WireTypeError('%r is not a string' % (value,))


def _convert(kind: str, value, scalar):
    kind = _unwrap(kind)
    if kind.endswith(' map') and kind.startswith('('):
        if not isinstance(value, dict):
            raise WireTypeError('%r is not a map' % (value,))
        key_kind, value_kind = _split_map(kind)
        return {_as_string(key): _convert(value_kind, item, scalar) for key, item in value.items()}
    if kind.endswith(' set'):
        if not isinstance(value, (list, tuple)):
            raise WireTypeError('%r is not a set' % (value,))
        return [_convert(kind[:-len(' set')], item, scalar) for item in value]
    if kind.endswith(' record'):
        return value
    return scalar(kind, value)


def _xmlrpc_scalar(kind: str, value):
    if kind == 'int':
        return str(_as_int(value))  # XAPI's XML-RPC carries 64-bit ints as decimal strings
    if kind == 'float':
        return _as_float(value)
    if kind == 'bool':
        return _as_bool(value)
    if kind == 'datetime' and not isinstance(value, str):
        return value  # an xmlrpc DateTime stays one
    return _as_string(value)


def _jsonrpc_scalar(kind: str, value):
    if kind == 'int':
        return _as_int(value)
    if kind == 'float':
        return _as_float(value)
    if kind == 'bool':
        return _as_bool(value)
    if kind == 'datetime' and not isinstance(value, str):
        return value
    return _as_string(value)


def xmlrpc_value(kind: str, value):
    """``value`` as XAPI's XML-RPC takes a ``kind`` (ints as decimal strings); WireTypeError when it cannot be one."""
    return _convert(kind, value, _xmlrpc_scalar)


def jsonrpc_value(kind: str, value):
    """``value`` as XAPI's JSON-RPC gives a ``kind`` (ints as numbers), the form Xen Orchestra's metadata holds."""
    return _convert(kind, value, _jsonrpc_scalar)


def jsonrpc_record(fields: dict, record: dict) -> dict:
    """A copy of ``record`` with every field ``fields`` types (name -> (type, ...)) in JSON-RPC form.

    A value its type cannot hold is kept as it is: a record is stored as read, never refused.
    """
    typed = dict(record)
    for name, spec in fields.items():
        if typed.get(name) is None:
            continue
        try:
            typed[name] = jsonrpc_value(spec[0], typed[name])
        except WireTypeError:
            pass
    return typed
