# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM record as XAPI keeps it (issue 13): what VM.create ignores or derives, VM.set_bios_strings,
VM.set_has_vendor_device, HA's always-run flag, and the config's ``record:`` key, on XCP-ng 8.2 and 8.3."""

import contextlib

import pytest

from xapisim.control import ControlError

import simhelpers as h

PROFILES = ('xcp-ng-8.2', 'xcp-ng-8.3')
NVRAM = {'EFI-variables': 'AAECAwQFBgc='}
UEFI_VM = {'name': 'uefi01', 'disks': [{'name': 'uefi01-root', 'size': '4MiB'}],
           'record': {'HVM_boot_params': {'order': 'c', 'firmware': 'uefi'}, 'NVRAM': NVRAM,
                      'platform': {'secureboot': 'true', 'viridian': 'true', 'device-model': 'qemu-upstream-uefi'},
                      'bios_strings': {'bios-vendor': 'Dell Inc.', 'system-serial-number': 'SN-1234', 'oem-1': 'Xen'},
                      'has_vendor_device': True, 'hardware_platform_version': 2, 'ha_restart_priority': 'restart'}}
GENERIC_OEM_2 = 'MS_VM_CERT/SHA1/bdbeb6e0a816d43fa6d3fe8aaef04c2bad9d3e3d'


@contextlib.contextmanager
def _session(sim, profile, vms=(UEFI_VM,)):
    sim.control.load_config({'xapi': {'profile': profile}, 'vms': list(vms)})
    session = sim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'test-vm-record-setters')
    try:
        yield session.xenapi
    finally:
        session.xenapi.session.logout()


def _create_record(api, **changes):
    """A VM.create record from an existing VM's record (as a restore builds one)."""
    record = api.VM.get_record(api.VM.get_by_name_label('uefi01')[0])
    record.update(name_label='created', affinity='OpaqueRef:NULL', suspend_VDI='OpaqueRef:NULL', protection_policy='OpaqueRef:NULL',
                  snapshot_schedule='OpaqueRef:NULL', appliance='OpaqueRef:NULL', suspend_SR='OpaqueRef:NULL')
    record.update(changes)
    return record


@pytest.mark.parametrize('profile', PROFILES)
def test_create_takes_nvram_platform_vendor_device_and_ignores_what_xapi_ignores(sim, profile):
    """xapi_vm.ml create: NVRAM (since naples), platform, HVM_boot_params, has_vendor_device are stored; blocked_operations,
    is_snapshot_from_vmpp and is_vmss_snapshot are not; bios_strings start empty; a vendor device needs hardware version 2."""
    with _session(sim, profile) as api:
        vm = api.VM.create(_create_record(api, blocked_operations={'start': 'no'}, is_snapshot_from_vmpp=True, is_vmss_snapshot=True,
                                          hardware_platform_version='0', has_vendor_device=True))
        record = api.VM.get_record(vm)
        assert record['NVRAM'] == NVRAM and record['platform']['secureboot'] == 'true' and record['platform']['viridian'] == 'true'
        assert record['HVM_boot_params'] == {'order': 'c', 'firmware': 'uefi'}
        assert record['has_vendor_device'] is True and record['hardware_platform_version'] == '2'
        assert record['blocked_operations'] == {} and record['is_snapshot_from_vmpp'] is False and record['is_vmss_snapshot'] is False
        assert record['bios_strings'] == {}
        assert ('actions_after_softreboot' in record) == (profile == 'xcp-ng-8.3'), 'a field of 23.1.0: absent on 8.2'


@pytest.mark.parametrize('profile', PROFILES)
def test_set_bios_strings_as_xapi(sim, profile):
    """xapi_vm.ml set_bios_strings and xapi_vm_helpers.ml assert_valid_bios_strings (since inverness: on both profiles)."""
    with _session(sim, profile) as api:
        vm = api.VM.create(_create_record(api))
        assert h.xapi_failure(api.VM.set_bios_strings, vm, {'hp-rombios': 'COMPAQ'}) == ['INVALID_VALUE', 'hp-rombios', 'Unknown key']
        assert h.xapi_failure(api.VM.set_bios_strings, vm, {'bios-vendor': ''}) == ['INVALID_VALUE', 'bios-vendor', 'Value provided is empty']
        assert h.xapi_failure(api.VM.set_bios_strings, vm, {'bios-version': 'x' * 513}) == [
            'INVALID_VALUE', 'bios-version', '%s has length more than 512 characters' % ('x' * 513)]
        assert h.xapi_failure(api.VM.set_bios_strings, vm, {'system-version': 'caf\u00e9'}) == [
            'INVALID_VALUE', 'system-version', 'caf\u00e9 has non-printable ASCII characters']
        assert api.VM.get_bios_strings(vm) == {}, 'a refused call sets nothing'
        api.VM.set_bios_strings(vm, {'bios-vendor': 'Dell Inc.', 'system-serial-number': 'SN-1234'})
        strings = api.VM.get_bios_strings(vm)
        assert strings['bios-vendor'] == 'Dell Inc.' and strings['system-serial-number'] == 'SN-1234'
        assert strings['system-product-name'] == 'HVM domU' and strings['oem-1'] == 'Xen' and strings['oem-2'] == GENERIC_OEM_2
        assert len(strings) == 16
        assert h.xapi_failure(api.VM.set_bios_strings, vm, {'bios-vendor': 'Other'}) == ['VM_BIOS_STRINGS_ALREADY_SET']


def test_start_fills_empty_bios_strings_with_the_generic_ones(sim):
    """message_forwarding.ml VM.start -> xapi_vm_helpers.ml consider_generic_bios_strings; strings already there stay."""
    with _session(sim, 'xcp-ng-8.3') as api:
        vm = api.VM.create(_create_record(api, has_vendor_device=False))
        api.VM.start(vm, False, False)
        assert api.VM.get_bios_strings(vm)['system-manufacturer'] == 'Xen'
        configured = api.VM.get_by_name_label('uefi01')[0]
        api.VM.start(configured, False, False)
        assert api.VM.get_bios_strings(configured) == {'bios-vendor': 'Dell Inc.', 'system-serial-number': 'SN-1234', 'oem-1': 'Xen'}


@pytest.mark.parametrize('profile', PROFILES)
def test_set_has_vendor_device_wants_a_halted_vm(sim, profile):
    """xapi_vm.ml set_has_vendor_device: assert_initial_power_state_is Halted, then the hardware platform version is raised."""
    with _session(sim, profile) as api:
        vm = api.VM.create(_create_record(api, has_vendor_device=False, hardware_platform_version='0'))
        api.VM.start(vm, False, False)
        assert h.xapi_failure(api.VM.set_has_vendor_device, vm, True) == ['VM_BAD_POWER_STATE', vm, 'halted', 'running']
        api.VM.hard_shutdown(vm)
        api.VM.set_has_vendor_device(vm, True)
        assert api.VM.get_has_vendor_device(vm) is True and api.VM.get_hardware_platform_version(vm) == '2'


@pytest.mark.parametrize('profile', PROFILES)
def test_ha_always_run_follows_the_restart_priority_and_the_power_state(sim, profile):
    """xapi_vm.ml set_ha_always_run -> set_ha_restart_priority; start sets ha_always_run for "restart", shutdown clears it."""
    with _session(sim, profile) as api:
        vm = api.VM.create(_create_record(api, ha_restart_priority='', ha_always_run=False))
        api.VM.set_ha_always_run(vm, True)
        assert api.VM.get_ha_restart_priority(vm) == 'restart' and api.VM.get_ha_always_run(vm) is False, 'halted: only the priority'
        api.VM.start(vm, False, False)
        assert api.VM.get_ha_always_run(vm) is True
        api.VM.set_ha_always_run(vm, False)
        assert api.VM.get_ha_restart_priority(vm) == '' and api.VM.get_ha_always_run(vm) is False, 'running: at once'
        api.VM.set_ha_restart_priority(vm, 'restart')
        assert api.VM.get_ha_always_run(vm) is True
        api.VM.hard_shutdown(vm)
        assert api.VM.get_ha_always_run(vm) is False
        assert h.xapi_failure(api.VM.set_ha_restart_priority, vm, 'always') == ['INVALID_VALUE', 'ha_restart_priority', 'always']


def test_config_record_key(sim):
    with _session(sim, 'xcp-ng-8.3') as api:
        record = api.VM.get_record(api.VM.get_by_name_label('uefi01')[0])
        assert record['NVRAM'] == NVRAM and record['HVM_boot_params']['firmware'] == 'uefi' and record['has_vendor_device'] is True
        assert record['bios_strings']['system-serial-number'] == 'SN-1234' and record['ha_restart_priority'] == 'restart'
    with pytest.raises(ControlError, match="record field 'VBDs' is not a VM field the config may set"):
        sim.control.load_config({'vms': [{'name': 'bad', 'record': {'VBDs': []}}]})
    with pytest.raises(ControlError, match="record field 'no_such_field'"):
        sim.control.load_config({'vms': [{'name': 'bad', 'record': {'no_such_field': 1}}]})


@pytest.mark.parametrize('profile', PROFILES)
def test_nvram_changes_only_while_halted(sim, profile):
    """message_forwarding.ml VM.set_NVRAM / add_to_NVRAM / remove_from_NVRAM: operation changing_NVRAM, halted only
    (xapi_vm_lifecycle.ml allowed_power_states)."""
    with _session(sim, profile) as api:
        vm = api.VM.get_by_name_label('uefi01')[0]
        api.VM.add_to_NVRAM(vm, 'EFI-variables-backup', 'AAE=')
        assert api.VM.get_NVRAM(vm) == dict(NVRAM, **{'EFI-variables-backup': 'AAE='})
        assert h.xapi_failure(api.VM.add_to_NVRAM, vm, 'EFI-variables', 'x')[0] == 'MAP_DUPLICATE_KEY'
        api.VM.remove_from_NVRAM(vm, 'EFI-variables-backup')
        api.VM.start(vm, False, False)
        assert h.xapi_failure(api.VM.set_NVRAM, vm, {}) == ['VM_BAD_POWER_STATE', vm, 'halted', 'running']
        assert h.xapi_failure(api.VM.remove_from_NVRAM, vm, 'EFI-variables') == ['VM_BAD_POWER_STATE', vm, 'halted', 'running']
        api.VM.hard_shutdown(vm)
        api.VM.set_NVRAM(vm, {'EFI-variables': 'AQI='})
        assert api.VM.get_NVRAM(vm) == {'EFI-variables': 'AQI='}
