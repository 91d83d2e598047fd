# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Errors of the XAPI layer and the operator-facing explanation of XAPI error codes.

``XapiError.code`` and ``params`` hold only what XAPI itself returned (its ErrorDescription);
failures XAPI never names (a cut stream, a host that does not answer, a task that outlived its
wait, a VM that is not in the pool) are subclasses with ``code`` None, told apart by their
``error_code`` (docs/errors.md). They derive from XapiError so that code catching "anything that
went wrong talking to the pool" keeps catching them.
"""

from __future__ import annotations

from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError


class XapiError(DeltaBackupError):
    """A failed XAPI interaction, with a message a pool operator can act on.

    ``code`` and ``params`` keep the raw XAPI error (None for transport errors)
    so that modules can return them as ``xapi_error``.
    """

    error_code = 'xapi_error'

    def __init__(self, message: str, code: str | None = None, params: list | tuple | None = None):
        super().__init__(message)
        self.code = code
        self.params = list(params or [])

    def as_result(self) -> dict | None:
        """The raw XAPI error for a module result (``xapi_error``), or None when XAPI returned none."""
        if self.code is None:
            return None
        return {'code': self.code, 'params': self.params}

    def reworded(self, message: str) -> 'XapiError':
        """The same error (same class, code and params) with another message, for callers that add context."""
        # Not copy.copy: that rebuilds the exception from its args, which subclasses' constructors do not take.
        error = type(self).__new__(type(self))
        error.__dict__.update(self.__dict__)
        error.message = message
        error.args = (message,)
        return error


class ConnectionOptionError(XapiError):
    """A connection option (``option`` names it) that cannot be used as given."""

    error_code = 'invalid_connection_option'

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


class XenApiMissingError(XapiError):
    """The XenAPI Python library is not installed where the module or plugin runs."""

    error_code = 'missing_library'


class XapiTransportError(XapiError):
    """The host could not be reached or answered outside XAPI's protocol (network, TLS, HTTP, XML-RPC)."""

    error_code = 'xapi_transport_error'


class CertificateVerifyError(XapiTransportError):
    """A host's TLS certificate is not trusted by ca_path (or the system's CAs)."""

    error_code = 'certificate_verify_failed'

    def __init__(self, message: str, host: str):
        super().__init__(message)
        self.host = host


class TaskTimeoutError(XapiError):
    """A XAPI task did not finish within its timeout (it was cancelled if XAPI could cancel it)."""

    error_code = 'task_timeout'

    def __init__(self, message: str, task_ref: str):
        super().__init__(message)
        self.task_ref = task_ref


class TaskDestroyedError(XapiError):
    """XAPI destroyed a task before it finished (its GC removes stalled tasks pending for 24 hours)."""

    error_code = 'task_destroyed'

    def __init__(self, message: str, task_ref: str):
        super().__init__(message)
        self.task_ref = task_ref


class TransferError(XapiError):
    """A disk transfer (/export_raw_vdi, /import_raw_vdi) failed with no XAPI error to say why.

    ``http_status`` is the host's HTTP answer when there was one.
    """

    error_code = 'transfer_failed'

    def __init__(self, message: str, http_status: int | str | None = None):
        super().__init__(message)
        self.http_status = http_status


class TransferCutError(TransferError):
    """A transfer ended before all its bytes: an export cut short, or an import source shorter than announced."""

    error_code = 'transfer_cut'


class TransferTooLongError(TransferError):
    """A transfer carried more bytes than expected: an import source longer than announced, data after an export's VHD."""

    error_code = 'transfer_too_long'


class ExportNotVhdError(TransferError):
    """An export whose body is no VHD (XAPI sent an error page or nothing)."""

    error_code = 'export_not_vhd'


class VmLookupError(XapiError):
    """A VM named in the options cannot be used: see the subclasses."""

    error_code = 'vm_lookup_failed'

    def __init__(self, message: str, names: list | tuple = ()):
        super().__init__(message)
        self.names = list(names)


class VmNotFoundError(VmLookupError):
    """No VM of the pool has that name or uuid (templates, snapshots and the control domain do not count)."""

    error_code = 'vm_not_found'


class VmAmbiguousError(VmLookupError):
    """Several VMs have that name."""

    error_code = 'vm_ambiguous'


class VmNotBackupCandidateError(VmLookupError):
    """The name or uuid is a template, a snapshot or the control domain, none of which is backed up."""

    error_code = 'vm_not_backup_candidate'


class NotASnapshotError(XapiError):
    """Refused: the VM to destroy as a snapshot is not one (a safety check of ours, not a XAPI error)."""

    error_code = 'not_a_snapshot'


def error_param(params: list, index: int, default: str = '?') -> str:
    """The error's parameter at ``index`` as text, or ``default`` when XAPI sent fewer."""
    return str(params[index]) if len(params) > index else default


def _explain_failure(code: str, params: list, method: str | None) -> str:
    """Operator-facing explanation of one XAPI error code (ansible-conventions.md, section 5)."""
    if code == 'SESSION_AUTHENTICATION_FAILED':
        return 'login failed for user %s: check username and password' % error_param(params, 0)
    if code == 'HANDLE_INVALID' and error_param(params, 0) == 'task':
        # XAPI's database GC destroyed the task (see TASK_DESTROYED_ADVICE); checked before the general case.
        return TASK_DESTROYED_ADVICE
    if code == 'HANDLE_INVALID':
        return '%s %s does not exist (any more): it was deleted or the reference is stale; look it up again' % (error_param(params, 0), error_param(params, 1))
    if code == 'UUID_INVALID':
        return 'no %s with uuid %s exists: check the uuid' % (error_param(params, 0), error_param(params, 1))
    if code == 'VM_BAD_POWER_STATE':
        return 'VM %s is %s but must be %s for this operation: change its power state first' % (
            error_param(params, 0), error_param(params, 2), error_param(params, 1))
    if code in ('SR_FULL', 'SR_BACKEND_FAILURE_44'):
        return 'the SR is out of space: free space on it (delete old snapshots, wait for coalesce) or use another SR'
    if code == 'SR_BACKEND_FAILURE_109':
        return 'the VDI snapshot chain is too long: wait for the SR garbage collector to coalesce it (or rescan the SR), then retry'
    if code == 'VDI_IN_USE':
        return 'VDI %s is in use (%s): retry later' % (error_param(params, 0), error_param(params, 1))
    if code == 'OTHER_OPERATION_IN_PROGRESS':
        return '%s %s is busy with another operation (%s): retry later' % (error_param(params, 0), error_param(params, 1), error_param(params, 2, 'unknown'))
    if code == 'VDI_IO_ERROR':
        return 'the disk transfer failed on the host (%s): check the SR and the host logs, then retry' % error_param(params, 0, 'no detail')
    if code == 'MESSAGE_PARAMETER_COUNT_MISMATCH':
        called = error_param(params, 0, method or '?')
        if called in ('VM.snapshot', 'Async.VM.snapshot'):
            return 'this XAPI is too old for VM.snapshot with ignore_vdis (added in XAPI 21.4.0): update the pool or exclude no disks'
        return 'XAPI expected %s parameters for %s but got %s: client and pool versions do not match' % (error_param(params, 1), called, error_param(params, 2))
    if code == 'TASK_CANCELLED':
        return 'the task was cancelled'
    if code == 'HOST_IS_SLAVE':
        return 'host is a pool member, not the coordinator (%s): connect to the pool coordinator' % error_param(params, 0)
    if code == 'SESSION_INVALID':
        return 'the XAPI session expired or was logged out (too many sessions on the pool?): retry'
    detail = ', '.join(str(p) for p in params)
    return 'XAPI error %s%s' % (code, ' (%s)' % detail if detail else '')


# XAPI's database GC (ocaml/xapi/db_gc_util.ml) destroys a pending task older than pending_task_timeout
# (24 h by default) as soon as its progress stops moving between two passes, 30 s apart: a full export
# of a large disk over a slow link, whose percentage moves less often than that, is cut this way.
# Xen Orchestra meets the same event as "task has been destroyed before completion" (its xen-api
# client, packages/xen-api/index.mjs, rejects a watched task that disappears unfinished).
TASK_DESTROYED_ADVICE = ('XAPI destroyed the task before the transfer finished (its garbage collector removes tasks pending '
                         'for more than 24 hours whose progress stalls, e.g. a first full export over a slow link): make the '
                         'first full into a repository near the pool and move it with the seed procedure (role '
                         'xapi.delta_backup.seed, module seed_copy); later runs then send only deltas')


def is_task_gone(error: XapiError) -> bool:
    """True when XAPI no longer knows the task (destroyed by its GC or by someone else)."""
    return error.code == 'HANDLE_INVALID' and error.params[:1] == ['task']


def task_destroyed_error(label: str, task_ref: str, after: str = '') -> TaskDestroyedError:
    """The error for a transfer whose task XAPI destroyed; ``after`` says how far it got."""
    return TaskDestroyedError('%s failed%s: %s' % (label, after, TASK_DESTROYED_ADVICE), task_ref)


def xapi_error_from_failure(details, what: str | None = None, method: str | None = None) -> XapiError:
    """Build a XapiError from a XAPI ErrorDescription list (or XenAPI.Failure.details).

    ``what`` names the action or object ("VM.snapshot on OpaqueRef:..") and prefixes the message.
    """
    details = [str(d) for d in (details or [])] or ['INTERNAL_ERROR', 'empty error description']
    code, params = details[0], details[1:]
    explanation = _explain_failure(code, params, method)
    message = '%s failed: %s' % (what, explanation) if what else explanation
    return XapiError(message, code=code, params=params)
