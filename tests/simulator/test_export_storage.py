# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exports and snapshots as a real VHD SR does them: host VHD ids, error pages in a 200 answer,
control-domain VBDs, asynchronous coalesce, the chain limit, blocked migrations."""

import time
import urllib.parse
import uuid

import pytest
import XenAPI

import simhelpers as h

MIB = 1 << 20


def _vdi(api, name):
    return [r for r in api.VDI.get_by_name_label(name) if not api.VDI.get_is_a_snapshot(r)][0]


def _snapshot_disk(api, snap, live):
    return [api.VBD.get_VDI(v) for v in api.VM.get_VBDs(snap) if api.VDI.get_snapshot_of(api.VBD.get_VDI(v)) == live][0]


def _dom0_vbds(api):
    dom0 = [vm for vm in api.VM.get_all() if api.VM.get_is_control_domain(vm)][0]
    return [api.VBD.get_record(vbd) for vbd in api.VM.get_VBDs(dom0)]


def _error_code(excinfo):
    return excinfo.value.details[0]


def test_exports_carry_host_vhd_ids_not_vdi_uuids(hxapi, hsim):
    api = hxapi.xenapi
    vm = api.VM.get_by_name_label('db01')[0]
    root = _vdi(api, 'db01-root')
    live_id_before = hsim.control.vdi_vhd_id(root)
    base = _snapshot_disk(api, api.VM.snapshot(vm, 'one'), root)
    # The snapshot made new leaf files: the live disk has a new VHD id, the snapshot its own.
    live_id = hsim.control.vdi_vhd_id(root)
    base_id = hsim.control.vdi_vhd_id(base)
    assert len({live_id_before, live_id, base_id}) == 3
    assert base_id != api.VDI.get_uuid(base)
    first = h.export(hsim, hxapi.handle, base, 'vhd')[2]
    second = h.export(hsim, hxapi.handle, base, 'vhd')[2]
    # Every export gets a fresh footer id (both copies of the footer agree within one export).
    assert first[68:84] != second[68:84]
    assert first[68:84] == first[-512 + 68:-512 + 84]
    assert uuid.UUID(bytes=first[68:84]) not in (uuid.UUID(api.VDI.get_uuid(base)), uuid.UUID(base_id))
    hsim.control.write_vdi(root, 0, seed=5, length=MIB)
    target = _snapshot_disk(api, api.VM.snapshot(vm, 'two'), root)
    delta = h.export(hsim, hxapi.handle, target, 'vhd', base=base)[2]
    assert uuid.UUID(bytes=delta[512 + 40:512 + 56]) == uuid.UUID(base_id)


def test_error_page_in_a_200_answer_fails_the_task(hxapi, hsim):
    api = hxapi.xenapi
    root = _vdi(api, 'db01-root')
    hsim.control.export_error_page(vdi='db01-root')
    task = api.task.create('export', '')
    status, _headers, body = h.export(hsim, hxapi.handle, root, 'vhd', task=task)
    assert status == 200
    assert body.startswith(b'HTTP/1.1 500 Internal Error\r\n')
    assert b'SR_BACKEND_FAILURE_46: [ ; The VDI is not available' in body
    rec = h.wait_task(api, task)
    assert rec['status'] == 'failure' and rec['error_info'][0] == 'SR_BACKEND_FAILURE_46'
    assert _dom0_vbds(api) == []
    # Only once: the next export is a VHD again.
    assert h.export(hsim, hxapi.handle, root, 'vhd')[2][:8] == b'conectix'


def test_export_plugs_a_dom0_vbd_while_it_streams_and_removes_it(hxapi, hsim):
    api = hxapi.xenapi
    root = _vdi(api, 'db01-root')
    conn = h.connection(hsim)
    conn.request('GET', '/export_raw_vdi?' + urllib.parse.urlencode({'session_id': hxapi.handle, 'vdi': root, 'format': 'raw'}))
    resp = conn.getresponse()
    assert len(resp.read(MIB)) == MIB  # 8 GiB of raw data: the server is blocked mid-stream now
    during = _dom0_vbds(api)
    assert [(v['VDI'], v['mode'], v['type'], v['currently_attached'], v['unpluggable'], v['other_config']) for v in during] == \
        [(root, 'RO', 'Disk', True, True, {})]
    resp.close()
    conn.close()
    deadline = time.monotonic() + 10
    while _dom0_vbds(api) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dom0_vbds(api) == []


def test_delta_export_plugs_the_base_too_and_a_left_vbd_blocks_vdi_destroy(hxapi, hsim):
    api = hxapi.xenapi
    vm = api.VM.get_by_name_label('db01')[0]
    root = _vdi(api, 'db01-root')
    base = _snapshot_disk(api, api.VM.snapshot(vm, 'one'), root)
    target = _snapshot_disk(api, api.VM.snapshot(vm, 'two'), root)
    hsim.control.leave_export_vbd(vdi=target)
    assert h.export(hsim, hxapi.handle, target, 'vhd', base=base)[0] == 200
    left = _dom0_vbds(api)
    assert sorted(v['VDI'] for v in left) == sorted([target, base]) and all(v['currently_attached'] for v in left)
    with pytest.raises(XenAPI.Failure, match=r"^\['VDI_IN_USE', ") as excinfo:
        api.VDI.destroy(target)
    assert _error_code(excinfo) == 'VDI_IN_USE'
    for vbd in api.VDI.get_VBDs(target) + api.VDI.get_VBDs(base):
        if api.VM.get_is_control_domain(api.VBD.get_VM(vbd)):
            api.VBD.unplug(vbd)
            api.VBD.destroy(vbd)
    api.VDI.destroy(target)
    assert _dom0_vbds(api) == []
    # The fault was for one export only.
    assert h.export(hsim, hxapi.handle, base, 'vhd')[0] == 200 and _dom0_vbds(api) == []


def _chain(api, vdi):
    # One get_all_records call: the SR garbage collector may remove a base copy between
    # separate get_all and get_uuid calls, as it may on a real pool.
    records = api.VDI.get_all_records()
    by_uuid = {record['uuid']: record for record in records.values()}
    chain = []
    parent = records[vdi]['sm_config'].get('vhd-parent')
    while parent in by_uuid:
        chain.append(parent)
        parent = by_uuid[parent]['sm_config'].get('vhd-parent')
    return chain


def _destroy_snapshot(api, snap, _live=None):
    disks = [api.VBD.get_VDI(vbd) for vbd in api.VM.get_VBDs(snap) if api.VBD.get_type(vbd) == 'Disk']
    api.VM.destroy(snap)
    for disk in disks:
        api.VDI.destroy(disk)


def test_base_copies_wait_for_the_sr_garbage_collector(hxapi, hsim):
    api = hxapi.xenapi
    hsim.control.hold_coalesce('Local storage')
    vm = api.VM.get_by_name_label('db01')[0]
    root = _vdi(api, 'db01-root')
    first = api.VM.snapshot(vm, 'one')
    api.VM.snapshot(vm, 'two')
    assert len(_chain(api, root)) == 2
    _destroy_snapshot(api, first, root)
    # Held: the first base copy stays in the chain with a single child.
    chain = _chain(api, root)
    waiting = hsim.control.waiting_base_copies('Local storage')
    assert len(chain) == 2 and chain[1] in waiting and len(waiting) == 2  # db01-root's and db01-scratch's
    assert hsim.control.vdi_chain_depth(root) == 3
    assert hsim.control.coalesce('Local storage') == waiting
    assert len(_chain(api, root)) == 1 and hsim.control.waiting_base_copies() == []


def test_coalesce_delay_from_the_pool_yaml(hxapi, hsim):
    hsim.control.load_config({'srs': [{'name': 'Slow SR', 'size': '10GiB', 'coalesce_delay': 1}],
                              'vms': [{'name': 'vm1', 'disks': [{'name': 'vm1-root', 'size': '1GiB'}]}]})
    session = hsim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'xapisim-tests')
    try:
        api = session.xenapi
        vm = api.VM.get_by_name_label('vm1')[0]
        root = _vdi(api, 'vm1-root')
        first = api.VM.snapshot(vm, 'one')
        api.VM.snapshot(vm, 'two')
        _destroy_snapshot(api, first, root)
        assert len(_chain(api, root)) == 2  # not yet
        deadline = time.monotonic() + 10
        while len(_chain(api, root)) == 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_chain(api, root)) == 1
    finally:
        session.xenapi.session.logout()


def test_snapshot_fails_when_the_vhd_chain_reaches_sm_limit(hxapi, hsim):
    api = hxapi.xenapi
    hsim.control.hold_coalesce()
    vm = api.VM.get_by_name_label('db01')[0]
    root = _vdi(api, 'db01-root')
    previous = None
    while hsim.control.vdi_chain_depth(root) < 30:
        snap = api.VM.snapshot(vm, 'grow')
        if previous is not None:
            _destroy_snapshot(api, previous, root)
        previous = snap
    with pytest.raises(XenAPI.Failure, match='The snapshot chain is too long') as excinfo:
        api.VM.snapshot(vm, 'one too many')
    assert excinfo.value.details == ['SR_BACKEND_FAILURE_109', '', 'The snapshot chain is too long', '']
    with pytest.raises(XenAPI.Failure, match='The snapshot chain is too long'):
        api.VDI.snapshot(root, {})
    hsim.control.coalesce()
    assert hsim.control.vdi_chain_depth(root) == 2
    api.VM.snapshot(vm, 'after coalesce')


def test_migrations_honour_blocked_operations(hxapi):
    api = hxapi.xenapi
    vm = api.VM.get_by_name_label('web01')[0]
    host = api.pool.get_master(api.pool.get_all()[0])
    api.VM.add_to_blocked_operations(vm, 'pool_migrate', 'backup job nightly')
    api.VM.add_to_blocked_operations(vm, 'migrate_send', 'backup job nightly')
    with pytest.raises(XenAPI.Failure, match=r"^\['OPERATION_BLOCKED', ") as excinfo:
        api.VM.pool_migrate(vm, host, {'live': 'true'})
    assert excinfo.value.details == ['OPERATION_BLOCKED', vm, 'backup job nightly']
    with pytest.raises(XenAPI.Failure, match=r"^\['OPERATION_BLOCKED', ") as excinfo:
        api.VM.migrate_send(vm, {}, True, {}, {}, {}, {})
    assert excinfo.value.details == ['OPERATION_BLOCKED', vm, 'backup job nightly']
    api.VM.remove_from_blocked_operations(vm, 'pool_migrate')
    api.VM.remove_from_blocked_operations(vm, 'migrate_send')
    api.VM.pool_migrate(vm, host, {'live': 'true'})
    assert api.VM.migrate_send(vm, {}, True, {}, {}, {}, {}) == vm
