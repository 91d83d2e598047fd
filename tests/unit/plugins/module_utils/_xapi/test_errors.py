# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Tests of _xapi/errors.py: XAPI error codes to operator-facing messages, the error classes and their results."""

from __future__ import annotations

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import (
    TASK_DESTROYED_ADVICE, CertificateVerifyError, ConnectionOptionError, ExportNotVhdError, TaskDestroyedError, TaskTimeoutError, TransferCutError,
    TransferError, TransferTooLongError, VmAmbiguousError, VmLookupError, VmNotFoundError, XapiError, XapiTransportError, error_param, is_task_gone,
    task_destroyed_error, xapi_error_from_failure,
)
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


@pytest.mark.parametrize('details, expected', [
    (['TASK_CANCELLED', 'OpaqueRef:t'], 'the task was cancelled'),
    (['HOST_IS_SLAVE', '10.0.0.1'], 'host is a pool member, not the coordinator (10.0.0.1): connect to the pool coordinator'),
    (['SESSION_INVALID', 'OpaqueRef:s'], 'the XAPI session expired or was logged out (too many sessions on the pool?): retry'),
    (['VDI_IO_ERROR'], 'the disk transfer failed on the host (no detail): check the SR and the host logs, then retry'),
    (['HANDLE_INVALID'], '? ? does not exist (any more): it was deleted or the reference is stale; look it up again'),
    (['OTHER_OPERATION_IN_PROGRESS', 'VDI', 'OpaqueRef:v'], 'VDI OpaqueRef:v is busy with another operation (unknown): retry later'),
    (['WEIRD_CODE'], 'XAPI error WEIRD_CODE'),
])
def test_error_mapping_without_a_label_is_the_bare_explanation(details, expected):
    error = xapi_error_from_failure(details)
    assert error.message == str(error) == expected
    assert error.__class__ is XapiError and error.code == details[0] and error.params == details[1:]


def test_error_mapping_of_the_parameter_count_falls_back_to_the_called_method():
    assert xapi_error_from_failure(['MESSAGE_PARAMETER_COUNT_MISMATCH'], method='Async.VM.snapshot').message.startswith('this XAPI is too old')
    assert xapi_error_from_failure(['MESSAGE_PARAMETER_COUNT_MISMATCH'], method='VM.start').message == (
        'XAPI expected ? parameters for VM.start but got ?: client and pool versions do not match')


def test_error_mapping_turns_every_detail_into_text():
    error = xapi_error_from_failure(('VDI_IN_USE', 7, None), what='VDI.destroy')
    assert error.code == 'VDI_IN_USE' and error.params == ['7', 'None']
    assert error.message == 'VDI.destroy failed: VDI 7 is in use (None): retry later'


@pytest.mark.parametrize('details', [None, [], ()])
def test_error_mapping_of_an_empty_description(details):
    error = xapi_error_from_failure(details)
    assert error.code == 'INTERNAL_ERROR' and error.params == ['empty error description']
    assert error.message == 'XAPI error INTERNAL_ERROR (empty error description)'


def test_error_param():
    assert error_param(['a', 2], 0) == 'a' and error_param(['a', 2], 1) == '2'
    assert error_param(['a'], 1) == '?' and error_param([], 0, 'none') == 'none'


# -- tasks XAPI destroyed --------------------------------------------------------------------------


@pytest.mark.parametrize('error, gone', [
    (XapiError('x', 'HANDLE_INVALID', ['task', 'OpaqueRef:t']), True),
    (XapiError('x', 'HANDLE_INVALID', ['VM', 'OpaqueRef:t']), False),
    (XapiError('x', 'HANDLE_INVALID', []), False),
    (XapiError('x', 'UUID_INVALID', ['task', 'abc']), False),
    (XapiError('x'), False),
])
def test_is_task_gone(error, gone):
    assert is_task_gone(error) is gone


def test_task_destroyed_error_names_the_transfer_and_the_seed_procedure():
    error = task_destroyed_error('export of VDI OpaqueRef:v', 'OpaqueRef:t', after=' after 42 bytes')
    assert isinstance(error, TaskDestroyedError) and isinstance(error, XapiError)
    assert error.message == 'export of VDI OpaqueRef:v failed after 42 bytes: ' + TASK_DESTROYED_ADVICE
    assert error.task_ref == 'OpaqueRef:t' and error.error_code == 'task_destroyed' and error.code is None and error.as_result() is None
    assert 'seed procedure' in TASK_DESTROYED_ADVICE and 'xapi.delta_backup.seed' in TASK_DESTROYED_ADVICE
    assert task_destroyed_error('import', 'OpaqueRef:t').message.startswith('import failed: XAPI destroyed the task')


# -- reworded --------------------------------------------------------------------------------------


def test_reworded_keeps_class_code_params_and_attributes():
    original = XapiError('VDI.destroy failed', 'VDI_IN_USE', ['OpaqueRef:v', 'destroy'])
    error = original.reworded('removal failed: the disk is in use')
    assert error.__class__ is XapiError and error is not original
    assert error.message == str(error) == 'removal failed: the disk is in use' and error.args == ('removal failed: the disk is in use',)
    assert error.code == 'VDI_IN_USE' and error.params == ['OpaqueRef:v', 'destroy'] and error.as_result() == original.as_result()
    assert original.message == str(original) == 'VDI.destroy failed'


@pytest.mark.parametrize('original, attribute', [
    (TaskTimeoutError('too slow', 'OpaqueRef:t'), 'task_ref'),
    (TaskDestroyedError('gone', 'OpaqueRef:t'), 'task_ref'),
    (CertificateVerifyError('untrusted', 'host1'), 'host'),
    (TransferCutError('cut', http_status=500), 'http_status'),
    (ConnectionOptionError('ca_path', 'missing'), 'option'),
    (VmNotFoundError('no such VM', ['web01']), 'names'),
])
def test_reworded_subclasses_whose_constructors_take_other_arguments(original, attribute):
    error = original.reworded('new words')
    assert error.__class__ is type(original) and error.error_code == original.error_code
    assert getattr(error, attribute) == getattr(original, attribute)
    assert str(error) == error.message == 'new words' and str(original) != 'new words'


# -- the error classes -----------------------------------------------------------------------------


def test_transport_error_classes():
    error = CertificateVerifyError('certificate verify failed for host h', 'h')
    assert isinstance(error, XapiTransportError) and isinstance(error, XapiError)
    assert error.host == 'h' and error.code is None and error.params == [] and error.as_result() is None
    assert error.error_code == 'certificate_verify_failed' and XapiTransportError('x').error_code == 'xapi_transport_error'


@pytest.mark.parametrize('cls, error_code', [
    (TransferError, 'transfer_failed'),
    (TransferCutError, 'transfer_cut'),
    (TransferTooLongError, 'transfer_too_long'),
    (ExportNotVhdError, 'export_not_vhd'),
])
def test_transfer_error_classes_keep_the_http_status(cls, error_code):
    error = cls('export failed: HTTP 500', http_status=500)
    assert isinstance(error, TransferError) and error.error_code == error_code
    assert error.http_status == 500 and cls('x').http_status is None and error.as_result() is None


def test_vm_lookup_errors_keep_the_names():
    error = VmAmbiguousError('several VMs are called web01', ('web01',))
    assert isinstance(error, VmLookupError) and error.names == ['web01'] and error.error_code == 'vm_ambiguous'
    assert VmNotFoundError('none').names == []


def test_connection_option_error_names_the_option():
    error = ConnectionOptionError('timeout', 'timeout must be positive')
    assert error.option == 'timeout' and error.error_code == 'invalid_connection_option' and error.message == 'timeout must be positive'


def test_xapi_error_params_are_a_list_of_what_xapi_sent():
    assert XapiError('x', 'CODE', ('a', 'b')).params == ['a', 'b'] and XapiError('x', 'CODE').params == []
    with pytest.raises(XapiError, match='^boom$'):
        raise XapiError('boom', 'CODE')


# -- module results --------------------------------------------------------------------------------


def test_failure_result_keeps_xapi_code_and_params():
    result = failure_result(XapiError('boom', 'VDI_IN_USE', ['a', 'b']))
    assert result == {'msg': 'boom', 'error_code': 'xapi_error', 'xapi_error': {'code': 'VDI_IN_USE', 'params': ['a', 'b']}}


def test_failure_result_of_an_error_xapi_never_sent_has_no_xapi_error():
    result = failure_result(TaskTimeoutError('VM.start on OpaqueRef:vm did not finish within 1 seconds', 'OpaqueRef:task'))
    assert result == {'msg': 'VM.start on OpaqueRef:vm did not finish within 1 seconds', 'error_code': 'task_timeout'}


def test_a_task_handle_xapi_no_longer_knows_gets_the_seed_advice():
    # Found by splitting the tests: the general HANDLE_INVALID text used to answer first.
    message = xapi_error_from_failure(['HANDLE_INVALID', 'task', 'OpaqueRef:t']).message
    assert TASK_DESTROYED_ADVICE in message and 'look it up again' not in message
    assert 'look it up again' in xapi_error_from_failure(['HANDLE_INVALID', 'VDI', 'OpaqueRef:v']).message
