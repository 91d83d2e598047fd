# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Tests of _xapi/tasks.py: Async calls, waiting for tasks (events, polling), timeouts, cancelling and destroying.

Over real HTTPS against ``MiniXapi`` (xapi_stub.py), and against the XAPI simulator for what it models better.
"""

from __future__ import annotations

import threading
import time

import pytest

XenAPI = pytest.importorskip('XenAPI')

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi import tasks as tasks_mod  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import (  # noqa: E402
    TASK_DESTROYED_ADVICE, TaskDestroyedError, TaskTimeoutError, XapiError,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.tasks import decode_task_result  # noqa: E402
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._xapi.xapi_stub import Fail, MiniXapi, sim_connect  # noqa: E402


# -- task results ----------------------------------------------------------------------------------


@pytest.mark.parametrize('text, expected', [
    ('<value>OpaqueRef:abc</value>', 'OpaqueRef:abc'),
    ('<value><array><data><value>OpaqueRef:a</value><value>OpaqueRef:b</value></data></array></value>', ['OpaqueRef:a', 'OpaqueRef:b']),
    ('', ''),
    (None, ''),
    ('OpaqueRef:bare', 'OpaqueRef:bare'),
])
def test_decode_task_result(text, expected):
    assert decode_task_result(text) == expected


@pytest.mark.parametrize('value, expected', [
    ('<value></value>', ''),
    ('<value><boolean>1</boolean></value>', True),
    ('<value><struct><member><name>a</name><value><int>3</int></value></member></struct></value>', {'a': 3}),
    ('   ', '   '),
    (7, 7),
    (['OpaqueRef:a'], ['OpaqueRef:a']),
])
def test_decode_task_result_of_other_values(value, expected):
    assert decode_task_result(value) == expected


def test_decode_task_result_garbage():
    with pytest.raises(XapiError, match='cannot decode the task result'):
        decode_task_result('<value><struct>')


# -- Async calls and waits over real HTTPS ---------------------------------------------------------


def test_async_call_returns_decoded_result_and_destroys_task(connect, https_server):
    with connect() as xapi:
        assert xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=5) == 'OpaqueRef:snap'
    assert https_server.xapi.tasks == {} and len(https_server.xapi.destroyed) == 1


def test_async_failure_raises_from_error_info(connect, https_server):
    https_server.xapi.snapshot_behaviour = 'fail'
    with connect() as xapi:
        with pytest.raises(XapiError, match='VM.snapshot failed: the VDI snapshot chain is too long') as caught:
            xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=5)
    assert caught.value.code == 'SR_BACKEND_FAILURE_109' and https_server.xapi.tasks == {}


def test_async_arity_error_is_synchronous_and_explained(connect):
    with connect() as xapi:
        with pytest.raises(XapiError, match='too old for VM.snapshot with ignore_vdis'):
            xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', ['OpaqueRef:vdi'], timeout=5)


def test_task_timeout_cancels_then_destroys(connect, https_server):
    https_server.xapi.snapshot_behaviour = 'hang'
    started = time.monotonic()
    with connect() as xapi:
        with pytest.raises(XapiError, match='did not finish within 0.3 seconds; the task was cancelled') as caught:
            xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=0.3)
    assert isinstance(caught.value, TaskTimeoutError) and caught.value.error_code == 'task_timeout'
    assert caught.value.code is None and caught.value.as_result() is None  # XAPI sent no error: nothing to show as xapi_error
    assert time.monotonic() - started < 5
    task = caught.value.task_ref
    assert https_server.xapi.cancelled == [task] and https_server.xapi.destroyed == [task]


def test_wait_falls_back_to_polling_without_events(connect, https_server, monkeypatch):
    original = MiniXapi.call

    def no_events(self, method, params):
        if method == 'event.from':
            raise Fail('PERMISSION_DENIED', 'event.from')
        return original(self, method, params)
    monkeypatch.setattr(MiniXapi, 'call', no_events)
    monkeypatch.setattr(tasks_mod, 'TASK_POLL_INTERVAL', 0.05)
    with connect() as xapi:
        assert xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=5) == 'OpaqueRef:snap'


def hang_snapshots(server):
    server.xapi.snapshot_behaviour = 'hang'


def test_long_operation_call_goes_through_its_task(connect, https_server):
    with connect(operation_timeout=5) as xapi:
        assert xapi.call('VM.snapshot', 'OpaqueRef:vm', 'snap') == 'OpaqueRef:snap'
    assert https_server.xapi.tasks == {} and len(https_server.xapi.destroyed) == 1


def test_long_operation_call_times_out_after_operation_timeout(connect, https_server):
    hang_snapshots(https_server)
    with connect(operation_timeout=0.3) as xapi:
        with pytest.raises(TaskTimeoutError, match='^VM.snapshot on OpaqueRef:vm did not finish within 0.3 seconds; the task was cancelled'):
            xapi.call('VM.snapshot', 'OpaqueRef:vm', 'snap')
    assert https_server.xapi.tasks == {} and len(https_server.xapi.cancelled) == 1


def test_timeout_of_a_task_xapi_cannot_cancel_says_it_may_still_complete(connect, https_server, monkeypatch):
    original = MiniXapi.call

    def not_cancellable(self, method, params):
        if method == 'task.get_allowed_operations':
            return []
        return original(self, method, params)
    monkeypatch.setattr(MiniXapi, 'call', not_cancellable)
    hang_snapshots(https_server)
    with connect() as xapi:
        with pytest.raises(TaskTimeoutError, match='did not finish within 0.2 seconds; XAPI cannot cancel this operation, so it may still complete'):
            xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=0.2)
    # The cancel is still asked for (XAPI records it), and the task destroyed.
    assert len(https_server.xapi.cancelled) == 1 and https_server.xapi.tasks == {}


def test_task_that_finishes_during_the_cancel_returns_its_result(connect, https_server, monkeypatch):
    original = MiniXapi.call

    def finish_instead_of_cancelling(self, method, params):
        if method == 'task.cancel':
            self.finish(params[1], '<value>OpaqueRef:late</value>')
            return ''
        return original(self, method, params)
    monkeypatch.setattr(MiniXapi, 'call', finish_instead_of_cancelling)
    hang_snapshots(https_server)
    with connect() as xapi:
        assert xapi.call_async('VM.snapshot', 'OpaqueRef:vm', 'snap', timeout=0.2) == 'OpaqueRef:late'
    assert https_server.xapi.tasks == {}


# -- tasks this client creates ---------------------------------------------------------------------


def test_create_task_then_wait_for_it(connect, https_server):
    with connect() as xapi:
        task = xapi.create_task('xapi.delta_backup test')
        assert https_server.xapi.tasks[task]['label'] == 'xapi.delta_backup test'
        threading.Timer(0.2, https_server.xapi.finish, (task, '<value>OpaqueRef:done</value>')).start()
        assert xapi.wait_for_task(task, timeout=5) == 'OpaqueRef:done'
    assert https_server.xapi.destroyed == [task] and https_server.xapi.tasks == {}


def test_wait_without_destroy_keeps_the_task(connect, https_server):
    with connect() as xapi:
        task = xapi.create_task('kept')
        https_server.xapi.finish(task, '<value>OpaqueRef:x</value>')
        assert xapi.wait_for_task(task, timeout=5, destroy=False) == 'OpaqueRef:x'
        assert xapi.task_status(task) == 'success'
    assert list(https_server.xapi.tasks) == [task] and https_server.xapi.destroyed == []


@pytest.mark.parametrize('status, code, message', [
    ('cancelled', 'TASK_CANCELLED', '^copy failed: the task was cancelled$'),
    ('failure', 'INTERNAL_ERROR', r'^copy failed: XAPI error INTERNAL_ERROR \(task ended with status failure\)$'),
])
def test_task_ended_without_error_info(connect, https_server, status, code, message):
    with connect() as xapi:
        task = xapi.create_task('copy')
        https_server.xapi.tasks[task].update(status=status, error_info=[])
        with pytest.raises(XapiError, match=message) as caught:
            xapi.wait_for_task(task, timeout=5, what='copy')
    assert caught.value.code == code and https_server.xapi.tasks == {}


def test_task_xapi_destroyed_during_the_wait(connect, https_server):
    def destroy(task):
        with https_server.xapi.lock:
            del https_server.xapi.tasks[task]
    with connect() as xapi:
        task = xapi.create_task('export')
        threading.Timer(0.2, destroy, (task,)).start()
        with pytest.raises(TaskDestroyedError, match='^export of VDI OpaqueRef:v failed: XAPI destroyed the task') as caught:
            xapi.wait_for_task(task, timeout=5, what='export of VDI OpaqueRef:v')
    assert caught.value.task_ref == task and caught.value.message.endswith(TASK_DESTROYED_ADVICE)
    assert isinstance(caught.value.__cause__, XapiError) and caught.value.__cause__.code == 'HANDLE_INVALID'


def test_request_cancel_and_destroy_of_tasks_xapi_no_longer_knows(connect, https_server):
    with connect() as xapi:
        task = xapi.create_task('pending')
        assert xapi.request_cancel(task) is True and xapi.task_status(task) == 'cancelled'
        assert xapi.request_cancel('OpaqueRef:unknown') is False
        xapi.destroy_task('OpaqueRef:unknown')  # ignored: it may be gone already
        xapi.cancel_task('OpaqueRef:unknown')
        assert list(https_server.xapi.tasks) == [task] and https_server.xapi.destroyed == []


def test_abandon_task_cancels_and_destroys_it(connect, https_server):
    with connect() as xapi:
        task = xapi.create_task('given up')
        xapi.abandon_task(task)
    assert https_server.xapi.cancelled == [task] and https_server.xapi.destroyed == [task] and https_server.xapi.tasks == {}


# -- against the XAPI simulator --------------------------------------------------------------------


def test_sim_async_snapshot_and_task_cleanup(sim):
    with sim_connect(sim) as xapi:
        vm = xapi.call('VM.get_by_name_label', 'db01')[0]
        snapshot = xapi.call_async('VM.snapshot', vm, 'connection-test', timeout=30)
        assert snapshot.startswith('OpaqueRef:') and xapi.call('VM.get_is_a_snapshot', snapshot) is True
        assert not [t for t in xapi.call('task.get_all_records').values() if t['name_label'] == 'Async.VM.snapshot']
        assert xapi.call('VM.get_snapshot_of', snapshot) == vm


def test_sim_task_timeout_cancels_and_destroys(sim):
    sim.control.delay(1.5, method='VM.snapshot')
    with sim_connect(sim) as xapi:
        vm = xapi.call('VM.get_by_name_label', 'db01')[0]
        with pytest.raises(XapiError, match='did not finish within 0.3 seconds; the task was cancelled') as caught:
            xapi.call_async('VM.snapshot', vm, 'too-slow', timeout=0.3)
        task = caught.value.task_ref
        assert task not in xapi.call('task.get_all')


def test_sim_long_call_goes_through_its_task_and_a_timeout_cancels_it(sim):
    sim.control.delay(3, method='VM.start')
    with sim_connect(sim, operation_timeout=0.5) as xapi:
        vm = xapi.call('VM.get_by_name_label', 'db01')[0]
        began = time.monotonic()
        with pytest.raises(XapiError, match='VM.start on .* did not finish within 0.5 seconds; the task was cancelled') as caught:
            xapi.call('VM.start', vm, False, False)
        assert time.monotonic() - began < 2.5
        assert isinstance(caught.value, TaskTimeoutError)
        assert caught.value.task_ref not in xapi.call('task.get_all')
        assert xapi.call('VM.get_power_state', vm) == 'Halted'


def test_sim_timeout_of_an_operation_xapi_cannot_cancel_says_so(sim):
    with sim_connect(sim, operation_timeout=0.3) as xapi:
        vdi = xapi.call('VDI.create', {'name_label': 'scratch', 'SR': xapi.call('SR.get_by_name_label', 'Small SR')[0],
                                       'virtual_size': 2 << 20, 'type': 'user', 'sharable': False, 'read_only': False, 'other_config': {}})
        sim.control.delay(1.0, method='VDI.destroy')
        with pytest.raises(XapiError, match='XAPI cannot cancel this operation, so it may still complete'):
            xapi.call('VDI.destroy', vdi)
        deadline = time.monotonic() + 10
        while vdi in xapi.call('VDI.get_all') and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vdi not in xapi.call('VDI.get_all')
