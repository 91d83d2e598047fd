# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The simulator answers to XAPI's datamodel, per XAPI version (profiles from datamodel/supplement.yml)."""

import contextlib

import pytest
import XenAPI

from xapisim import datamodel
from xapisim.control import ControlError

SMALL_VM = {'name': 'small', 'disks': [{'name': 'small-root', 'size': '4MiB'}]}


def _fail(call, *args):
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return info.value.details


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
        assert _fail(api.VM.snapshot, vm, 'x', []) == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '3']
        version = _host(api)['software_version']
        assert version['xapi'] == '21.3' and 'xapi_build' not in version  # xapi_build came in 22.9.0
    with pytest.raises(ControlError, match='unknown xapi profile'):
        sim.control.load_config({'xapi': {'profile': 'xcp-ng-9.9'}})
    with pytest.raises(ControlError, match='unknown key'):
        sim.control.load_config({'xapi': {'snapshot_ignore_vdis': False}})


def test_profile_8_2_snapshot_without_ignore_vdis(sim):
    with _session(sim, {'profile': 'xcp-ng-8.2'}) as api:
        vm = api.VM.get_by_name_label('small')[0]
        assert _fail(api.VM.snapshot, vm, 'x', []) == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '3']
        assert api.VM.get_is_a_snapshot(api.VM.snapshot(vm, 'x'))
    with _session(sim, {'profile': 'xcp-ng-8.3'}) as api:
        vm = api.VM.get_by_name_label('small')[0]
        assert api.VM.get_is_a_snapshot(api.VM.snapshot(vm, 'y', []))


def test_later_message_unknown_on_8_2(sim):
    # VM.restart_device_models was published in 23.30.0 (datamodel release).
    with _session(sim, {'profile': 'xcp-ng-8.2'}) as api:
        vm = api.VM.get_by_name_label('small')[0]
        assert _fail(api.VM.restart_device_models, vm) == ['MESSAGE_METHOD_UNKNOWN', 'VM.restart_device_models']
