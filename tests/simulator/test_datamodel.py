# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The simulator answers to XAPI's datamodel, per XAPI version (profiles from datamodel/supplement.yml)."""

import contextlib
import xmlrpc.client

import pytest

from xapisim import datamodel
from xapisim.control import ControlError

import simhelpers as h

SMALL_VM = {'name': 'small', 'disks': [{'name': 'small-root', 'size': '4MiB'}]}


@contextlib.contextmanager
def _session(sim, xapi_spec, vms=(SMALL_VM,)):
    """A logged-in session on a pool loaded with ``xapi: xapi_spec``."""
    sim.control.load_config({'xapi': xapi_spec, 'vms': list(vms)})
    session = sim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'test-datamodel')
    try:
        yield session.xenapi
    finally:
        session.xenapi.session.logout()


def _host(api):
    return api.host.get_record(api.pool.get_master(api.pool.get_all()[0]))


# --- the model itself ------------------------------------------------------------

def test_release_order_codenames_before_numbers():
    releases = datamodel.load().releases
    assert releases.key('rio') < releases.key('stockholm') < releases.key('1.249.41') < releases.key('1.250.0')
    assert releases.key('1.329.0') < releases.key('21.2.0') < releases.key('21.4.0') < releases.key('26.1.4')
    with pytest.raises(ValueError, match='unknown XAPI release'):
        releases.key('bogus')


def test_types_and_defaults_parsed():
    model = datamodel.load()
    vm = model.classes['VM']
    assert vm.fields['HVM_shadow_multiplier'].default == 1.0
    assert vm.fields['affinity'].type.kind == 'ref' and not vm.fields['affinity'].has_default
    assert vm.fields['affinity'].required_in_create
    assert vm.fields['current_operations'].type.value.kind == 'enum'
    assert vm.fields['blocked_operations'].type.key.name == 'vm_operations'
    snapshot = vm.messages['snapshot']
    assert [name for name, _t in snapshot.params] == ['session_id', 'vm', 'new_name', 'ignore_vdis']
    assert snapshot.defaults == {'ignore_vdis': []}


def test_snapshot_arity_per_version():
    model = datamodel.load()
    old, new = model.view('1.249.41'), model.view('21.4.0')
    snapshot = model.classes['VM'].messages['snapshot']
    assert old.arity(snapshot) == (2, 2)
    assert new.arity(snapshot) == (2, None)
    assert model.view('21.3.0').arity(snapshot) == (2, 2)


# --- profiles on the wire ----------------------------------------------------------

def test_profile_8_2_host_reports_xapi_1_249(sim):
    with _session(sim, {'profile': 'xcp-ng-8.2'}) as api:
        host = _host(api)
        assert host['API_version_major'] == '2' and host['API_version_minor'] == '15'
        version = host['software_version']
        assert version['product_brand'] == 'XCP-ng' and version['product_version'] == '8.2.1'
        assert version['xapi'] == '1.249' and 'xapi_build' not in version
        assert version['platform_name'] == 'XCP'


def test_default_profile_is_8_3(sim):
    with _session(sim, {}) as api:
        version = _host(api)['software_version']
        assert version['product_version'] == '8.3.0'
        assert version['xapi'] == '26.1' and version['xapi_build'] == '26.1.4'
        assert _host(api)['API_version_minor'] == '21'


def test_version_key_and_bad_profile(sim):
    with _session(sim, {'version': '21.3.0'}) as api:
        vm = api.VM.get_by_name_label('small')[0]
        assert h.xapi_failure(api.VM.snapshot, vm, 'x', []) == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '3']
        version = _host(api)['software_version']
        assert version['xapi'] == '21.3' and 'xapi_build' not in version  # xapi_build came in 22.9.0
        assert _host(api)['API_version_minor'] == '16'  # datamodel_common.ml from v1.250.0 to v22.5.0
    with pytest.raises(ControlError, match='unknown xapi profile'):
        sim.control.load_config({'xapi': {'profile': 'xcp-ng-9.9'}})
    with pytest.raises(ControlError, match='unknown key'):
        sim.control.load_config({'xapi': {'snapshot_ignore_vdis': False}})


def test_profile_8_2_snapshot_without_ignore_vdis(sim):
    with _session(sim, {'profile': 'xcp-ng-8.2'}) as api:
        vm = api.VM.get_by_name_label('small')[0]
        assert h.xapi_failure(api.VM.snapshot, vm, 'x', []) == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '3']
        assert api.VM.get_is_a_snapshot(api.VM.snapshot(vm, 'x'))
    with _session(sim, {'profile': 'xcp-ng-8.3'}) as api:
        vm = api.VM.get_by_name_label('small')[0]
        assert api.VM.get_is_a_snapshot(api.VM.snapshot(vm, 'y', []))


def test_later_message_unknown_on_8_2(sim):
    # VM.restart_device_models was published in 23.30.0 (datamodel release).
    with _session(sim, {'profile': 'xcp-ng-8.2'}) as api:
        vm = api.VM.get_by_name_label('small')[0]
        assert h.xapi_failure(api.VM.restart_device_models, vm) == ['MESSAGE_METHOD_UNKNOWN', 'VM.restart_device_models']


# --- dispatch on the wire (raw XML-RPC, so any value can be sent) ------------------

@contextlib.contextmanager
def _raw(sim, xapi_spec=None):
    """(call, session, vm ref of 'small') on a pool loaded with ``xapi: xapi_spec``."""
    sim.control.load_config({'xapi': xapi_spec or {}, 'vms': [SMALL_VM]})
    session = h.raw_call(sim, 'session.login_with_password', 'root', 'secret')['Value']

    def call(method, *params):
        envelope = h.raw_call(sim, method, *params)
        return envelope.get('ErrorDescription') or envelope['Value']

    vm = call('VM.get_by_name_label', session, 'small')[0]
    try:
        yield call, session, vm
    finally:
        call('session.logout', session)


def _internal(message):
    return ['INTERNAL_ERROR', 'Failure("%s")' % message]


def test_unknown_messages(sim):
    with _raw(sim) as (call, session, _vm):
        assert call('VM.frobnicate', session) == ['MESSAGE_METHOD_UNKNOWN', 'VM.frobnicate']
        assert call('vm.get_all', session) == ['MESSAGE_METHOD_UNKNOWN', 'vm.get_all']
        assert call('Async_VM.get_all', session) == ['MESSAGE_METHOD_UNKNOWN', 'Async_VM.get_all']
        # An unknown name with a session is tried as a host extension, which checks the session first.
        assert call('VM.frobnicate', 'OpaqueRef:nope') == ['SESSION_INVALID', 'OpaqueRef:nope']
        assert call('VM.frobnicate') == ['MESSAGE_METHOD_UNKNOWN', 'VM.frobnicate']
        assert isinstance(call('VM_get_all', session), list)


def test_arity_without_and_with_defaults(sim):
    with _raw(sim) as (call, session, vm):
        assert call('VM.get_record', session, vm, 'x') == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.get_record', '1', '2']
        assert call('VM.get_record') == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.get_record', '1', '-1']
        assert call('VM.start', session, vm) == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.start', '3', '1']
        # Arity comes before the session check (gen_server.ml matches the parameter list first).
        assert call('VM.get_uuid', 'OpaqueRef:nope') == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.get_uuid', '1', '0']
        assert call('VM.snapshot', session, vm) == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '1']
        snap = call('VM.snapshot', session, vm, 'two args')
        assert call('VM.get_is_a_snapshot', session, snap) is True
        assert call('session.login_with_password', 'root') == [
            'MESSAGE_PARAMETER_COUNT_MISMATCH', 'session.login_with_password', '2', '1']
        other = call('session.login_with_password', 'root', 'secret')
        assert other.startswith('OpaqueRef:')
        call('session.logout', other)


def test_wire_types_refused_as_xapi_does(sim):
    with _raw(sim) as (call, session, vm):
        assert call('VM.set_name_label', session, vm, 5) == _internal("Expected string, got 'I(5)'")
        assert call('VM.set_user_version', session, vm, 'abc') == _internal('Int64.of_string')
        assert call('VM.set_user_version', session, vm, True) == _internal("Expected int64, got 'B(true)'")
        assert call('VM.set_is_a_template', session, vm, 'true') == _internal("Expected bool, got 'S(true)'")
        assert call('VM.set_HVM_shadow_multiplier', session, vm, 'x') == _internal('float_of_string')
        assert call('VM.set_actions_after_crash', session, vm, 'explode') == _internal('Unknown tag/contents')
        assert call('VM.set_tags', session, vm, 'a') == _internal("Expecting Rpc.Enum, but found 'S(a)'")
        assert call('VM.set_other_config', session, vm, ['a']) == _internal("Expecting Rpc.Dict, but found '[S(a)]'")
        assert call('VM.get_record', session, 5) == _internal("Expected string, got 'I(5)'")
        assert call('VM.get_record', session, 'OpaqueRef:nope') == ['HANDLE_INVALID', 'VM', 'OpaqueRef:nope']
        assert call('VM.create', session, 'x') == _internal('bad __structure')
        # Good values: ints as decimal strings, enums case-insensitively (ppx_deriving_rpc lower-cases).
        assert call('VM.set_user_version', session, vm, '7') == ''
        assert call('VM.get_user_version', session, vm) == '7'
        assert call('VM.set_actions_after_crash', session, vm, 'PRESERVE') == ''
        assert call('VM.get_actions_after_crash', session, vm) == 'preserve'
        # A datetime parameter (VMSS is not modelled: the value is checked, then the simulator gap answers).
        error = call('VMSS.set_last_run_time', session, 'OpaqueRef:x', 'yesterday')
        assert error == ['INTERNAL_ERROR', 'Invalid argument: Clock__Date.of_iso8601: yesterday']
        gap = call('VMSS.set_last_run_time', session, 'OpaqueRef:x', xmlrpc.client.DateTime('20260101T00:00:00Z'))
        assert gap[:2] == ['XAPISIM_NOT_IMPLEMENTED', 'VMSS.set_last_run_time']


def _vm_record(call, session, vm, **changes):
    record = call('VM.get_record', session, vm)
    record.update(changes)
    return record


def test_create_requires_constructor_fields(sim):
    with _raw(sim) as (call, session, vm):
        record = _vm_record(call, session, vm, name_label='copy')
        del record['affinity']
        assert call('VM.create', session, record) == [
            'INTERNAL_ERROR', 'Server_helpers.Dispatcher_FieldNotFound("affinity")']
        model = datamodel.load().view('26.1.4')
        required = {n for n, f in model.fields('VM').items() if f.required_in_create}
        assert 'affinity' in required and 'name_label' not in required
        minimal = {n: v for n, v in _vm_record(call, session, vm).items() if n in required}
        # Unknown keys and runtime fields are never read; omitted fields with a default take it.
        minimal.update(frobnicate='x', power_state='Running', domid='7')
        made = call('VM.create', session, minimal)
        assert made.startswith('OpaqueRef:')
        got = call('VM.get_record', session, made)
        assert got['name_label'] == '' and got['HVM_shadow_multiplier'] == 1.0
        assert got['actions_after_softreboot'] == 'soft_reboot' and got['power_state'] == 'Halted'
        assert 'frobnicate' not in got


def test_setters_only_where_the_datamodel_has_them(sim):
    with _raw(sim) as (call, session, vm):
        assert call('VM.set_power_state', session, vm, 'Running') == ['MESSAGE_METHOD_UNKNOWN', 'VM.set_power_state']
        assert call('VM.set_domid', session, vm, '3') == ['MESSAGE_METHOD_UNKNOWN', 'VM.set_domid']
        assert call('VM.set_name_label', session, vm, 'renamed') == ''
        vdi = call('VDI.get_by_name_label', session, 'small-root')[0]
        # VDI.name_label is RO/constructor with an explicit setter; virtual_size has none (hidden set_ only).
        assert call('VDI.set_name_label', session, vdi, 'disk') == ''
        assert call('VDI.set_virtual_size', session, vdi, '1') == ['MESSAGE_METHOD_UNKNOWN', 'VDI.set_virtual_size']


def test_removed_async_and_gap_answers(sim):
    with _raw(sim) as (call, session, vm):
        vdi = call('VDI.get_by_name_label', session, 'small-root')[0]
        assert call('VDI.resize_online', session, vdi, '8388608') == ['MESSAGE_REMOVED']
        assert call('Async.VM.get_record', session, vm) == [
            'Fault', 'No async mode for this operation (rpc: VM.get_record)']
        assert call('Async.task.create', session, 'a', 'b') == [
            'Fault', 'No async mode for this operation (rpc: task.create)']
        task = call('Async.VM.snapshot', session, vm, 'async')
        assert task.startswith('OpaqueRef:')
        assert call('Bond.get_all', session)[:2] == ['XAPISIM_NOT_IMPLEMENTED', 'Bond.get_all']


def test_record_fields_follow_the_version(sim):
    model = datamodel.load()
    for profile, version in (('xcp-ng-8.2', '1.249.41'), ('xcp-ng-8.3', '26.1.4')):
        with _raw(sim, {'profile': profile}) as (call, session, vm):
            record = call('VM.get_record', session, vm)
            assert set(record) == set(model.view(version).fields('VM'))
            everything = call('VDI.get_all_records', session)
            assert all(set(r) == set(model.view(version).fields('VDI')) for r in everything.values())
            # actions_after_softreboot was published in 23.1.0; VM.restart_device_models in 23.30.0.
            assert ('actions_after_softreboot' in record) == (profile == 'xcp-ng-8.3')
            unknown = call('VM.get_actions_after_softreboot', session, vm)
            assert (unknown == ['MESSAGE_METHOD_UNKNOWN', 'VM.get_actions_after_softreboot']) == (profile == 'xcp-ng-8.2')
            # A ref to a class the simulator does not model is the null ref; sets of them are empty.
            assert record['metrics'] == 'OpaqueRef:NULL' and record['VGPUs'] == []
