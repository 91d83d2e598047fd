# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""XML-RPC encoding the way XAPI writes it: bare ``<value>`` strings, 64-bit
ints as decimal strings, ``YYYYMMDDTHH:MM:SSZ`` dates, the
Status/Value/ErrorDescription envelope.  Requests are decoded with the
standard library."""

from __future__ import annotations

import xmlrpc.client
from xml.sax.saxutils import escape


class I4(int):
    """An int that goes on the wire as ``<i4>`` (event.from valid_ref_counts)."""


def _encode(value, out):
    if isinstance(value, str):
        out.append('<value>%s</value>' % escape(value))
    elif isinstance(value, bool):
        out.append('<value><boolean>%d</boolean></value>' % (1 if value else 0))
    elif isinstance(value, I4):
        out.append('<value><i4>%d</i4></value>' % value)
    elif isinstance(value, int):
        out.append('<value>%d</value>' % value)
    elif isinstance(value, float):
        out.append('<value><double>%s</double></value>' % repr(value))
    elif isinstance(value, xmlrpc.client.DateTime):
        out.append('<value><dateTime.iso8601>%s</dateTime.iso8601></value>' % value.value)
    elif isinstance(value, dict):
        out.append('<value><struct>')
        for key, item in value.items():
            out.append('<member><name>%s</name>' % escape(str(key)))
            _encode(item, out)
            out.append('</member>')
        out.append('</struct></value>')
    elif isinstance(value, (list, tuple)):
        out.append('<value><array><data>')
        for item in value:
            _encode(item, out)
        out.append('</data></array></value>')
    elif value is None:
        out.append('<value></value>')
    else:
        out.append('<value>%s</value>' % escape(str(value)))


def encode_value(value):
    """One XML-RPC ``<value>`` as XAPI writes it (also a task's result text)."""
    out = []
    _encode(value, out)
    return ''.join(out)


def success(value):
    """A methodResponse carrying ``{Status: Success, Value: value}``."""
    return _response({'Status': 'Success', 'Value': value})


def failure(details):
    """A methodResponse carrying ``{Status: Failure, ErrorDescription: details}``."""
    return _response({'Status': 'Failure', 'ErrorDescription': [str(d) for d in details]})


def _response(envelope):
    return ('<?xml version="1.0"?>\n<methodResponse><params><param>%s</param></params></methodResponse>\n'
            % encode_value(envelope)).encode('utf-8')


def decode_request(body):
    """(method, params) from a methodCall body; raises ValueError on bad XML."""
    try:
        params, method = xmlrpc.client.loads(body, use_builtin_types=False)
    except Exception as exc:  # pylint: disable=broad-except
        raise ValueError(str(exc)) from exc
    if not method:
        raise ValueError('no methodName')
    return method, params
