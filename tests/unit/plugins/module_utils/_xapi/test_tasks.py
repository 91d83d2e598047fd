# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Tests of _xapi/tasks.py: Async calls, waiting for tasks (events, polling), timeouts, cancelling and destroying.

Over real HTTPS against ``MiniXapi`` (xapi_stub.py), and against the XAPI simulator for what it models better.
"""

from __future__ import annotations

import time

import pytest

XenAPI = pytest.importorskip('XenAPI')

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi import tasks as tasks_mod  # noqa: E402
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import TaskTimeoutError, XapiError  # noqa: E402
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
