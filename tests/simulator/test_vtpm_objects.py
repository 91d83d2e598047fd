# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VTPM as XAPI has it (issue 13): messages by release, power-state and count checks, the hidden
get/set_contents, copies made by VM.snapshot and VM.clone, VM.destroy, the pool YAML and control."""

import xmlrpc.client

import pytest
import yaml

import simhelpers as h

POOL = """
pool: {name: vtpm-pool}
srs: [{name: Local storage, size: 20GiB, default: true}]
vms:
  - name: win
    vtpm: {contents: "cGVybWFsbA== c2F2ZQ== dm9sYXRpbGU="}
    disks: [{name: win-root, size: 1GiB}]
  - name: plain
    disks: [{name: plain-root, size: 1GiB}]
  - name: unique
    vtpm: {contents: "dW5pcXVl", is_unique: true}
"""


def _config(profile=None, restrictions=None):
    config = yaml.safe_load(POOL)
    if profile:
        config['xapi'] = {'profile': profile}
    if restrictions:
        config['pool']['restrictions'] = restrictions
    return config


@pytest.fixture
def api(sim):
    """A session on the vTPM pool (XCP-ng 8.3)."""
    sim.control.load_config(_config())
    session = sim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'vtpm-tests')
    yield session.xenapi
    session.xenapi.session.logout()


def _vm(api, name):
    return api.VM.get_by_name_label(name)[0]


def test_record_and_contents_from_pool_yaml(sim, api):
    vm = _vm(api, 'win')
    vtpms = api.VM.get_VTPMs(vm)
    assert len(vtpms) == 1
    record = api.VTPM.get_record(vtpms[0])
    # Exactly the datamodel's fields: the contents (an internal-only Secret ref in XAPI) are not in the record.
    assert set(record) == {'uuid', 'allowed_operations', 'current_operations', 'VM', 'backend', 'persistence_backend',
                           'is_unique', 'is_protected'}
    assert record['VM'] == vm and record['backend'] == 'OpaqueRef:NULL' and record['persistence_backend'] == 'xapi'
    assert record['is_unique'] is False and record['is_protected'] is False
    assert record['allowed_operations'] == ['destroy']
    assert api.VTPM.get_contents(vtpms[0]) == 'cGVybWFsbA== c2F2ZQ== dm9sYXRpbGU='
    assert api.VTPM.get_by_uuid(record['uuid']) == vtpms[0]
    assert sim.control.vtpms('win') == [{'uuid': record['uuid'], 'is_unique': False, 'contents': 'cGVybWFsbA== c2F2ZQ== dm9sYXRpbGU='}]
    assert api.pool.get_restrictions(api.pool.get_all()[0])['restrict_vtpm'] == 'false'


def test_create_set_contents_and_destroy(sim, api):
    vm = _vm(api, 'plain')
    assert api.VM.get_VTPMs(vm) == []
    ref = api.VTPM.create(vm, True)
    assert api.VM.get_VTPMs(vm) == [ref]
    assert api.VTPM.get_is_unique(ref) is True
    assert api.VTPM.get_contents(ref) == ''  # a new Secret of value ""
    # No power-state check and no base64 validation that refuses anything (xapi_vtpm.ml set_contents).
    api.VTPM.set_contents(ref, 'not base64 at all!')
    assert api.VTPM.get_contents(ref) == 'not base64 at all!'
    assert sim.control.vtpms('plain')[0]['contents'] == 'not base64 at all!'
    # One VTPM per VM (xapi_vm_lifecycle.ml check_operation_error).
    assert h.xapi_failure(api.VTPM.create, vm, False) == ['VTPM_MAX_AMOUNT_REACHED', '1']
    api.VTPM.destroy(ref)
    assert api.VM.get_VTPMs(vm) == []
    assert h.xapi_failure(api.VTPM.get_contents, ref) == ['HANDLE_INVALID', 'VTPM', ref]


def test_async_create(sim, api):
    vm = _vm(api, 'plain')
    task = api.Async.VTPM.create(vm, False)
    record = h.wait_task(api, task)
    assert record['status'] == 'success'
    assert h.task_value(record) == api.VM.get_VTPMs(vm)[0]
    # get/set_contents have an Async form too (default flags in datamodel_vtpm.ml).
    task = api.Async.VTPM.get_contents(api.VM.get_VTPMs(vm)[0])
    assert h.wait_task(api, task)['status'] == 'success'


def test_power_state_checks(sim, api):
    vm = _vm(api, 'plain')
    api.VM.start(vm, False, False)
    assert h.xapi_failure(api.VTPM.create, vm, False) == ['VM_BAD_POWER_STATE', vm, 'halted', 'running']
    win = _vm(api, 'win')
    vtpm = api.VM.get_VTPMs(win)[0]
    api.VM.start(win, False, False)
    assert api.VTPM.get_allowed_operations(vtpm) == []
    assert h.xapi_failure(api.VTPM.destroy, vtpm) == ['VM_BAD_POWER_STATE', win, 'halted;suspended', 'running']
    # Contents may be read and written while the VM runs (xapi-guard does so for swtpm).
    api.VTPM.set_contents(vtpm, 'bmV3')
    assert api.VTPM.get_contents(vtpm) == 'bmV3'
    api.VM.hard_shutdown(win)
    assert api.VTPM.get_allowed_operations(vtpm) == ['destroy']


def test_snapshot_and_clone_copy_contents_unless_unique(sim, api):
    win = _vm(api, 'win')
    snap = api.VM.snapshot(win, 'win-snap')
    snap_vtpms = api.VM.get_VTPMs(snap)
    assert len(snap_vtpms) == 1 and snap_vtpms != api.VM.get_VTPMs(win)
    assert api.VTPM.get_contents(snap_vtpms[0]) == 'cGVybWFsbA== c2F2ZQ== dm9sYXRpbGU='
    # The copy is its own Secret: changing the VM's contents leaves the snapshot's alone.
    api.VTPM.set_contents(api.VM.get_VTPMs(win)[0], 'Y2hhbmdlZA==')
    assert api.VTPM.get_contents(snap_vtpms[0]) == 'cGVybWFsbA== c2F2ZQ== dm9sYXRpbGU='
    clone = api.VM.clone(win, 'win-clone')
    assert api.VTPM.get_contents(api.VM.get_VTPMs(clone)[0]) == 'Y2hhbmdlZA=='
    unique = _vm(api, 'unique')
    unique_snap = api.VM.snapshot(unique, 'unique-snap')
    copy = api.VM.get_VTPMs(unique_snap)[0]
    assert api.VTPM.get_is_unique(copy) is True
    assert api.VTPM.get_contents(copy) == ''  # "Contents from unique vtpms cannot be copied!"
    assert api.VTPM.get_contents(api.VM.get_VTPMs(unique)[0]) == 'dW5pcXVl'


def test_vm_destroy_takes_the_vtpm(sim, api):
    win = _vm(api, 'win')
    snap = api.VM.snapshot(win, 'win-snap')
    snap_vtpm = api.VM.get_VTPMs(snap)[0]
    api.VM.destroy(snap)
    assert h.xapi_failure(api.VTPM.get_record, snap_vtpm) == ['HANDLE_INVALID', 'VTPM', snap_vtpm]
    assert len(api.VM.get_VTPMs(win)) == 1
    vtpm = api.VM.get_VTPMs(win)[0]
    api.VM.destroy(win)
    assert h.xapi_failure(api.VTPM.get_record, vtpm) == ['HANDLE_INVALID', 'VTPM', vtpm]
    assert api.VTPM.get_all() == api.VM.get_VTPMs(_vm(api, 'unique'))


def test_restricted_pool_refuses_create(sim):
    sim.control.load_config(_config(restrictions={'restrict_vtpm': 'true'}))
    session = sim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'vtpm-tests')
    api = session.xenapi
    try:
        vm = _vm(api, 'plain')
        assert h.xapi_failure(api.VTPM.create, vm, False) == ['FEATURE_RESTRICTED', 'restrict_vtpm']
        assert api.VM.get_VTPMs(vm) == []
    finally:
        api.session.logout()


def test_xcp_ng_8_2_has_no_vtpm(sim):
    with pytest.raises(Exception) as refused:
        sim.control.load_config(_config('xcp-ng-8.2'))
    assert 'has no VTPM.create' in str(refused.value)
    config = _config('xcp-ng-8.2')
    config['vms'] = [vm for vm in config['vms'] if 'vtpm' not in vm]
    sim.control.load_config(config)
    session = sim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'vtpm-tests')
    api = session.xenapi
    try:
        vm = _vm(api, 'plain')
        # VM.VTPMs is a rio field (always there, empty); the messages came in 22.26.0.
        assert api.VM.get_VTPMs(vm) == []
        assert 'restrict_vtpm' not in api.pool.get_restrictions(api.pool.get_all()[0])
        for call, args in ((api.VTPM.create, (vm, False)), (api.VTPM.get_contents, ('OpaqueRef:x',)),
                           (api.VTPM.set_contents, ('OpaqueRef:x', 'c')), (api.VTPM.destroy, ('OpaqueRef:x',))):
            assert h.xapi_failure(call, *args)[0] == 'MESSAGE_METHOD_UNKNOWN'
        assert h.xapi_failure(api.VTPM.create, vm, False) == ['MESSAGE_METHOD_UNKNOWN', 'VTPM.create']
    finally:
        api.session.logout()


def test_contents_beyond_the_request_limit_are_refused_by_http(sim, api):
    """XAPI reads at most 300 KiB of an API request: a bigger VTPM.set_contents gets HTTP 500, nothing is stored."""
    vtpm = api.VM.get_VTPMs(_vm(api, 'win'))[0]
    with pytest.raises(xmlrpc.client.ProtocolError) as refused:
        api.VTPM.set_contents(vtpm, 'A' * (300 * 1024))
    assert refused.value.errcode == 500
    assert api.VTPM.get_contents(vtpm) == 'cGVybWFsbA== c2F2ZQ== dm9sYXRpbGU='
    api.VTPM.set_contents(vtpm, 'B' * (290 * 1024))  # well within the limit, envelope included
    assert sim.control.vtpms('win')[0]['contents'] == 'B' * (290 * 1024)
