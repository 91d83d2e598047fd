# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the snapshot step sends to XAPI, per XAPI version: never an ignore_vdis that is not needed, never one
that the version does not know, and [NOBAK] disks never left in a snapshot either way.

Runs against the simulator in this process, on its XCP-ng 8.2 (xapi 1.249, VM.snapshot(vm, name) only) and
8.3 profiles; the connection's calls are recorded as they go out (a spy, the calls still reach the simulator).
"""

from __future__ import annotations

import os
import sys

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import (
    EXCLUDED_BY_IGNORE_VDIS, EXCLUDED_BY_REMOVAL, manage_job_snapshots,
)

TESTS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..'))
POOL = """
pool: {name: calls-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
xapi: {profile: %s}
srs: [{name: Local storage, size: 4GiB, default: true}]
vms:
  - name: plain
    power_state: Running
    disks: [{name: plain-root, size: 8MiB}]
  - name: mixed
    power_state: Running
    disks:
      - {name: mixed-root, size: 8MiB}
      - {name: "mixed-swap [NOBAK]", size: 8MiB}
"""


@pytest.fixture(params=['xcp-ng-8.2', 'xcp-ng-8.3'])
def pool(request):
    # ansible-test units does not put tests/ on sys.path; the simulator lives there.
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    from xapisim.testing import start_in_process  # pylint: disable=import-outside-toplevel
    with start_in_process(POOL % request.param) as running:
        yield request.param, running


class RecordingConnection(XapiConnection):
    """The real connection, keeping the method and arguments of every call it sends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = []

    def _call(self, method, *args, what=None):
        # Every XML-RPC call (sync, Async, the long operations run as tasks) leaves through _call.
        self.sent.append((method, args))
        return super()._call(method, *args, what=what)


def snapshot_calls(xapi):
    return [args for method, args in xapi.sent if method.endswith('VM.snapshot')]


def snapshot_disk_names(xapi, snapshot_uuid):
    vm = xapi.call('VM.get_by_uuid', snapshot_uuid)
    names = []
    for vbd in xapi.call('VM.get_VBDs', vm):
        vdi = xapi.call('VBD.get_VDI', vbd)
        if vdi != 'OpaqueRef:NULL':
            names.append(xapi.call('VDI.get_name_label', vdi))
    return sorted(names)


def test_a_vm_without_nobak_disks_is_snapshotted_with_two_arguments(pool):
    _profile, sim = pool
    with RecordingConnection(sim.url, username='root', password='secret', timeout=30) as xapi:
        result = manage_job_snapshots(xapi, 'plain', Job('calls'), take=True)
        assert result['excluded_by'] is None
        assert [len(args) for args in snapshot_calls(xapi)] == [2], 'no ignore_vdis, not even an empty one'
        assert snapshot_disk_names(xapi, result['snapshot']['uuid']) == ['plain-root']


def test_nobak_disks_are_left_out_the_way_the_version_allows(pool):
    profile, sim = pool
    with RecordingConnection(sim.url, username='root', password='secret', timeout=30) as xapi:
        swap = xapi.call('VDI.get_by_name_label', 'mixed-swap [NOBAK]')[0]
        result = manage_job_snapshots(xapi, 'mixed', Job('calls'), take=True)
        calls = snapshot_calls(xapi)
        if profile == 'xcp-ng-8.2':
            # xapi 1.249 has no ignore_vdis: it is never sent, the [NOBAK] disk is removed from the snapshot.
            assert [len(args) for args in calls] == [2]
            assert result['excluded_by'] == EXCLUDED_BY_REMOVAL
        else:
            assert len(calls) == 1 and calls[0][2] == [swap]
            assert result['excluded_by'] == EXCLUDED_BY_IGNORE_VDIS
        assert snapshot_disk_names(xapi, result['snapshot']['uuid']) == ['mixed-root']
        # No snapshot VDI of the [NOBAK] disk is left anywhere on the pool.
        assert [ref for ref in xapi.call('VDI.get_by_name_label', 'mixed-swap [NOBAK]') if ref != swap] == []
