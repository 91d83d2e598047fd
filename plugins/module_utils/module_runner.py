# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What every module shell shares: the argument spec with connection options, and one exit path.

A module body is a function ``body(module) -> dict``; whatever it raises of our own error
types leaves through ``fail_json`` with a message that says what was wrong and what to do.
"""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import (
    HAS_XENAPI, XENAPI_IMPORT_ERROR, XapiConnection, XapiError, connection_argument_spec, fail_json_with_xapi_error,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError


class ModuleFailure(Exception):
    """A failure the module reports as is (bad input, a refused operation)."""

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


def new_module(argument_spec: dict, with_connection: bool = True, **kwargs) -> AnsibleModule:
    """An AnsibleModule with check mode and the shared connection options.

    Modules that never talk to a pool (``with_connection=False``) still accept the connection
    options, so that ``module_defaults`` for the collection's action group applies to them without
    error; only the pool-facing ones require a hostname and XenAPI.
    """
    spec = dict(connection_argument_spec())
    spec.update(argument_spec)
    kwargs.setdefault('supports_check_mode', True)
    module = AnsibleModule(argument_spec=spec, **kwargs)
    if with_connection:
        if not HAS_XENAPI:
            module.fail_json(msg=missing_required_lib('XenAPI'), exception=XENAPI_IMPORT_ERROR)
        if not module.params.get('hostname'):
            module.fail_json(msg='no pool given: set hostname (or the XENSERVER_HOST environment variable) to the pool coordinator')
    return module


def connect(module: AnsibleModule) -> XapiConnection:
    """A not-yet-logged-in connection from the module's options; use it as a context manager."""
    return XapiConnection.from_params(module.params)


def run(module: AnsibleModule, body) -> None:
    """Run the module body and leave through exit_json or fail_json, never a bare exception."""
    try:
        result = body(module)
    except XapiError as error:
        fail_json_with_xapi_error(module, error)
    except ModuleFailure as failure:
        module.fail_json(msg=failure.message, **failure.details)
    except (VhdError, RepositoryError) as error:
        module.fail_json(msg=str(error), exception=traceback.format_exc())
    except OSError as error:
        module.fail_json(msg='%s: %s' % (error.strerror or error, error.filename or ''), exception=traceback.format_exc())
    module.exit_json(**result)


def parse_mode(value, option: str) -> int:
    """File or folder permissions given as octal text ('0600') or an int (YAML 0600 reads as 384)."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        try:
            mode = int(str(value).strip(), 8)
        except ValueError:
            raise ModuleFailure('%s must be octal permissions such as \'0600\', got %r' % (option, value)) from None
    if not 0 <= mode <= 0o7777:
        raise ModuleFailure('%s must be octal permissions such as \'0600\', got %r' % (option, value))
    return mode
