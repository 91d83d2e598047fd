# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Tests of _xapi/errors.py: XAPI error codes to operator-facing messages, the error classes and their results."""

from __future__ import annotations

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import TaskTimeoutError, XapiError, xapi_error_from_failure
from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import failure_result


# -- XAPI error codes ------------------------------------------------------------------------------


@pytest.mark.parametrize('details, method, fragments', [
    (['SESSION_AUTHENTICATION_FAILED', 'root', 'x'], None, ['login failed for user root']),
    (['HANDLE_INVALID', 'VM', 'OpaqueRef:1'], None, ['VM OpaqueRef:1 does not exist']),
    (['UUID_INVALID', 'VM', 'abc'], None, ['no VM with uuid abc exists']),
    (['VM_BAD_POWER_STATE', 'OpaqueRef:1', 'halted', 'running'], None, ['is running but must be halted']),
    (['SR_FULL', '100', '50'], None, ['out of space']),
    (['SR_BACKEND_FAILURE_44', '', 'no space', ''], None, ['out of space']),
    (['SR_BACKEND_FAILURE_109', '', 'chain', ''], None, ['chain is too long', 'coalesce']),
    (['VDI_IN_USE', 'OpaqueRef:v', 'destroy'], None, ['in use (destroy)', 'retry later']),
    (['OTHER_OPERATION_IN_PROGRESS', 'VM', 'OpaqueRef:1', 'clean_shutdown'], None, ['busy', 'clean_shutdown', 'retry later']),
    (['VDI_IO_ERROR', 'Device I/O errors'], None, ['transfer failed', 'Device I/O errors']),
    (['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '3'], 'Async.VM.snapshot', ['too old', 'ignore_vdis']),
    (['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.start', '3', '2'], None, ['expected 3 parameters for VM.start but got 2']),
    (['WEIRD_CODE', 'a', 'b'], None, ['XAPI error WEIRD_CODE (a, b)']),
    ([], None, ['INTERNAL_ERROR']),
])
def test_error_mapping(details, method, fragments):
    error = xapi_error_from_failure(details, what='doing it', method=method)
    assert error.message.startswith('doing it failed: ')
    for fragment in fragments:
        assert fragment in error.message
    if details:
        assert error.code == details[0] and error.params == details[1:]
        assert error.as_result() == {'code': details[0], 'params': details[1:]}


# -- module results --------------------------------------------------------------------------------


def test_failure_result_keeps_xapi_code_and_params():
    result = failure_result(XapiError('boom', 'VDI_IN_USE', ['a', 'b']))
    assert result == {'msg': 'boom', 'error_code': 'xapi_error', 'xapi_error': {'code': 'VDI_IN_USE', 'params': ['a', 'b']}}


def test_failure_result_of_an_error_xapi_never_sent_has_no_xapi_error():
    result = failure_result(TaskTimeoutError('VM.start on OpaqueRef:vm did not finish within 1 seconds', 'OpaqueRef:task'))
    assert result == {'msg': 'VM.start on OpaqueRef:vm did not finish within 1 seconds', 'error_code': 'task_timeout'}
