# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""XAPI tasks: Async calls, waiting for a task (event.from, else polling), cancelling, destroying.

``XapiTasks`` is a base of ``session.XapiConnection``, which provides ``call``, ``timeout`` and
``originator``.
"""

from __future__ import annotations

import time
import xmlrpc.client

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import (
    TaskTimeoutError, XapiError, is_task_gone, task_destroyed_error, xapi_error_from_failure,
)

# Calls that can outlast a socket timeout on a busy pool (a VM start waits for xenopsd, a VDI.destroy
# for the SR). call() runs them as Async.* and waits for their task under operation_timeout instead.
LONG_OPERATIONS = frozenset({'VM.start', 'VM.hard_shutdown', 'VM.clean_shutdown', 'VM.shutdown', 'VM.destroy',
                             'VDI.destroy', 'VDI.snapshot', 'VDI.clone', 'VM.snapshot', 'VM.clone'})
# event.from must return before the socket timeout fires, so its wait is capped.
EVENT_WAIT_CAP = 30.0
TASK_POLL_INTERVAL = 0.5
TASK_CANCEL_GRACE = 5.0
UNFINISHED_TASK_STATES = ('pending', 'cancelling')


def decode_task_result(text) -> object:
    """Decode task.result, which XAPI returns as XML-RPC ``<value>`` text ('' for void)."""
    if not isinstance(text, str) or not text.strip():
        return text if text is not None else ''
    if '<value' not in text:
        return text
    document = '<?xml version="1.0"?><methodResponse><params><param>%s</param></params></methodResponse>' % text
    try:
        values, dummy = xmlrpc.client.loads(document)
    except Exception as exc:  # expat and xmlrpc raise several unrelated types for bad input
        raise XapiError('cannot decode the task result %r: %s' % (text[:200], exc)) from exc
    return values[0] if values else ''


class XapiTasks:
    """Task handling of a XAPI connection; ``session.XapiConnection`` provides the session and the calls."""

    timeout: float
    originator: str

    def call(self, method: str, *args, what: str | None = None):
        """Call a XAPI method (long operations as Async tasks); see XapiConnection.call."""
        raise NotImplementedError

    def _call(self, method: str, *args, what: str | None = None):
        """Call a XAPI method as is; see XapiConnection._call."""
        raise NotImplementedError

    def call_async(self, method: str, *args, timeout: float | None = None, what: str | None = None):
        """Run ``Async.<method>``, wait for its task and return the decoded result."""
        label = what or method
        task_ref = self._call('Async.' + method, *args, what=label)
        return self.wait_for_task(task_ref, timeout=timeout, what=label)

    def create_task(self, label: str, description: str = '') -> str:
        return self.call('task.create', label, description or 'created by %s' % self.originator)

    def wait_for_task(self, task_ref: str, timeout: float | None = None, what: str | None = None, destroy: bool = True):
        """Wait until the task finishes; return its decoded result or raise XapiError.

        On timeout the task is cancelled; with ``destroy`` it is destroyed in every case.
        """
        label = what or 'task %s' % task_ref
        limit = self.timeout if timeout is None else float(timeout)
        try:
            status = self._wait_until_finished(task_ref, time.monotonic() + limit)
            if status in UNFINISHED_TASK_STATES:
                status = self._cancel_after_timeout(task_ref, label, limit)
            return self._task_outcome(task_ref, status, label)
        except XapiError as error:
            if is_task_gone(error) and error.params[1:2] == [task_ref]:
                raise task_destroyed_error(label, task_ref) from error
            raise
        finally:
            if destroy:
                self.destroy_task(task_ref)

    def _cancel_after_timeout(self, task_ref: str, label: str, limit: float) -> str:
        """Cancel a task that outlived its wait and raise TIMEOUT saying whether XAPI stopped it.

        XAPI lists ``cancel`` in a task's allowed_operations only when the operation can be stopped
        (xenopsd VM operations, snapshots); a cancel of any other is recorded and ignored. A task that
        finished during the cancel grace period returns its final status instead.
        """
        try:
            cancellable = 'cancel' in (self.call('task.get_allowed_operations', task_ref) or [])
        except XapiError:
            cancellable = True
        if cancellable:
            self.cancel_task(task_ref)
            try:
                status = self.task_status(task_ref)
            except XapiError:
                status = 'cancelled'
            if status in ('success', 'failure'):
                return status
            if status == 'cancelled':
                raise TaskTimeoutError('%s did not finish within %s seconds; the task was cancelled (raise the timeout for large disks or slow hosts)'
                                       % (label, limit), task_ref)
        else:
            self.request_cancel(task_ref)
        raise TaskTimeoutError('%s did not finish within %s seconds; XAPI cannot cancel this operation, so it may still complete: '
                               'check the object later, or raise the timeout' % (label, limit), task_ref)

    def task_status(self, task_ref: str) -> str:
        return self.call('task.get_status', task_ref)

    def _task_outcome(self, task_ref: str, status: str, label: str):
        if status == 'success':
            return decode_task_result(self.call('task.get_result', task_ref))
        error_info = self.call('task.get_error_info', task_ref)
        if not error_info:
            error_info = ['TASK_CANCELLED' if status == 'cancelled' else 'INTERNAL_ERROR', 'task ended with status %s' % status]
        raise xapi_error_from_failure(error_info, what=label)

    def _wait_until_finished(self, task_ref: str, deadline: float) -> str:
        """Block on event.from for the task (falling back to polling); return the last status seen."""
        token = ''
        events_work = True
        while True:
            status = self.task_status(task_ref)
            remaining = deadline - time.monotonic()
            if status not in UNFINISHED_TASK_STATES or remaining <= 0:
                return status
            wait = min(remaining, EVENT_WAIT_CAP, self.timeout / 2)
            if events_work:
                try:
                    token = self._next_event_token(task_ref, token, wait)
                    continue
                except XapiError:
                    # Some servers or roles refuse event.from: fall back to plain polling.
                    events_work = False
            time.sleep(min(remaining, TASK_POLL_INTERVAL))

    def _next_event_token(self, task_ref: str, token: str, wait: float) -> str:
        answer = self.call('event.from', ['task/%s' % task_ref], token, float(wait))
        return answer.get('token', token) if isinstance(answer, dict) else token

    def request_cancel(self, task_ref: str) -> bool:
        """Send task.cancel; False when XAPI refused it (the task may have finished or be gone)."""
        try:
            self.call('task.cancel', task_ref)
        except XapiError:
            return False
        return True

    def abandon_task(self, task_ref: str) -> None:
        """End a task this client made with task.create for a transfer it gives up, then destroy it.

        Nothing in XAPI completes such a task once no handler runs it any more, and task.destroy only
        marks an unfinished task (XAPI's GC would keep it 24 hours), so it is set ``cancelled`` first.
        """
        self.request_cancel(task_ref)
        try:
            if self.task_status(task_ref) in UNFINISHED_TASK_STATES:
                self.call('task.set_status', task_ref, 'cancelled')
        except XapiError:
            pass
        self.destroy_task(task_ref)

    def cancel_task(self, task_ref: str) -> None:
        """Ask XAPI to cancel the task and give it a moment to stop; errors are ignored (it may have finished)."""
        if not self.request_cancel(task_ref):
            return
        deadline = time.monotonic() + TASK_CANCEL_GRACE
        while time.monotonic() < deadline:
            try:
                if self.task_status(task_ref) not in UNFINISHED_TASK_STATES:
                    return
            except XapiError:
                return
            time.sleep(0.1)

    def destroy_task(self, task_ref: str) -> None:
        try:
            self.call('task.destroy', task_ref)
        except XapiError:
            pass
