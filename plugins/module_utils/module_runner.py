# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What every module shell shares: the argument spec with connection options, and one exit path.

A module body is a function ``body(module) -> dict``; whatever it raises leaves through
``fail_json`` with a message that says what was wrong and what to do, and an ``error_code``
(docs/errors.md); ``xapi_error`` carries XAPI's own error when XAPI sent one.
"""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import ConnectionOptionError, XenApiMissingError
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import (
    DEFAULT_OPERATION_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_TRANSFER_READ_TIMEOUT, HAS_XENAPI, XENAPI_IMPORT_ERROR, XapiConnection, XapiError,
)


class ModuleFailure(DeltaBackupError):
    """A failure the module reports as is (bad input, a refused operation); ``details`` join the result.

    ``error_code`` defaults to invalid_input; a module gives another documented one when the failure
    is of another kind (a check that found problems, a missing library).
    """

    error_code = 'invalid_input'

    def __init__(self, message: str, error_code: str | None = None, **details):
        super().__init__(message)
        if error_code:
            self.error_code = error_code
        self.details = details


def connection_argument_spec() -> dict:
    """Options shared by every module that talks to a pool (see the connection doc fragment)."""
    return dict(
        hostname=dict(type='str', aliases=['host', 'pool'], fallback=(env_fallback, ['XENSERVER_HOST'])),
        username=dict(type='str', aliases=['user', 'admin'], default='root', fallback=(env_fallback, ['XENSERVER_USER'])),
        password=dict(type='str', aliases=['pass', 'pwd'], no_log=True, fallback=(env_fallback, ['XENSERVER_PASSWORD'])),
        validate_certs=dict(type='bool', default=True, fallback=(env_fallback, ['XENSERVER_VALIDATE_CERTS'])),
        ca_path=dict(type='path', fallback=(env_fallback, ['XENSERVER_CA_PATH'])),
        timeout=dict(type='float', default=DEFAULT_TIMEOUT),
        operation_timeout=dict(type='float', default=DEFAULT_OPERATION_TIMEOUT),
        transfer_read_timeout=dict(type='float', default=DEFAULT_TRANSFER_READ_TIMEOUT),
    )


# error_code of options that fail Ansible's own validation (missing, unsupported, wrong type or choice).
INVALID_OPTION_CODE = 'invalid_option'


class DeltaBackupModule(AnsibleModule):
    """An AnsibleModule whose every failure carries an error_code, including the argument spec's own checks."""

    def fail_json(self, msg, **kwargs):
        # Only AnsibleModule's own checks call this without an error_code: run() always gives one.
        kwargs.setdefault('error_code', INVALID_OPTION_CODE)
        super().fail_json(msg, **kwargs)


def new_module(argument_spec: dict, with_connection: bool = True, **kwargs) -> AnsibleModule:
    """An AnsibleModule with check mode and the shared connection options.

    Modules that never talk to a pool (``with_connection=False``) still accept the connection
    options, so that ``module_defaults`` for the collection's action group applies to them without
    error; only the pool-facing ones require a hostname and XenAPI.
    """
    spec = dict(connection_argument_spec())
    spec.update(argument_spec)
    kwargs.setdefault('supports_check_mode', True)
    module = DeltaBackupModule(argument_spec=spec, **kwargs)
    if with_connection:
        if not HAS_XENAPI:
            module.fail_json(msg=missing_required_lib('XenAPI'), exception=XENAPI_IMPORT_ERROR, error_code=XenApiMissingError.error_code)
        if not module.params.get('hostname'):
            module.fail_json(msg='no pool given: set hostname (or the XENSERVER_HOST environment variable) to the pool coordinator',
                             error_code=ConnectionOptionError.error_code)
    return module


def connect(module: AnsibleModule) -> XapiConnection:
    """A not-yet-logged-in connection from the module's options; use it as a context manager."""
    return XapiConnection.from_params(module.params)


# error_code of failures that are no error of ours: the OS refused a file operation, or a bug.
OS_ERROR_CODE = 'os_error'
UNEXPECTED_ERROR_CODE = 'unexpected_error'


def failure_result(error: BaseException) -> dict:
    """What a module returns for ``error``: msg, error_code, xapi_error (XAPI's own error only) and details."""
    if isinstance(error, DeltaBackupError):
        result = {'msg': error.message, 'error_code': error.error_code}
        if isinstance(error, XapiError) and error.as_result() is not None:
            result['xapi_error'] = error.as_result()
        if isinstance(error, ModuleFailure):
            result.update(error.details)
        return result
    if isinstance(error, OSError):
        return {'msg': '%s: %s' % (error.strerror or error, error.filename or ''), 'error_code': OS_ERROR_CODE}
    return {'msg': 'unexpected %s: %s. This is a bug of the xapi.delta_backup collection: please report it with the '
                   'task\'s output at -vvv (the traceback)' % (type(error).__name__, error),
            'error_code': UNEXPECTED_ERROR_CODE}


def run(module: AnsibleModule, body) -> None:
    """Run the module body and leave through exit_json or fail_json, never a bare exception.

    Every failure carries ``error_code`` (docs/errors.md); only a ModuleFailure, which reports bad
    input or a refused operation as is, comes without a traceback.
    """
    try:
        result = body(module)
    except Exception as error:  # pylint: disable=broad-except
        # One exit path: anything escaping the body still leaves as a module failure with an error_code.
        failure = failure_result(error)
        if not isinstance(error, ModuleFailure):
            failure['exception'] = traceback.format_exc()
        module.fail_json(**failure)
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
