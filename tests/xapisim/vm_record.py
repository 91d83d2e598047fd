# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What XAPI does to a VM's record beyond plain getters and setters (issue 13): the fields VM.create ignores or
derives, BIOS strings, the vendor device and HA's always-run flag.

Sources are files of xapi-project/xen-api at e2ee48d6 (the same code at v1.249.41 unless said otherwise).
"""

from __future__ import annotations

from .model import NULL_REF, XapiError

# ocaml/xapi-consts/constants.ml generic_bios_strings @ standard_type11_strings: what a VM gets when its BIOS
# strings are set through VM.set_bios_strings (the keys not given) or filled at its first start.
GENERIC_BIOS_STRINGS = {
    'bios-vendor': 'Xen', 'bios-version': '', 'system-manufacturer': 'Xen', 'system-product-name': 'HVM domU',
    'system-version': '', 'system-serial-number': '', 'baseboard-manufacturer': '', 'baseboard-product-name': '',
    'baseboard-version': '', 'baseboard-serial-number': '', 'baseboard-asset-tag': '', 'baseboard-location-in-chassis': '',
    'enclosure-asset-tag': '', 'hp-rombios': '', 'oem-1': 'Xen', 'oem-2': 'MS_VM_CERT/SHA1/bdbeb6e0a816d43fa6d3fe8aaef04c2bad9d3e3d',
}
# ocaml/xapi-consts/constants.ml settable_vm_bios_string_keys and bios_string_limit_size.
SETTABLE_BIOS_STRING_KEYS = ('bios-vendor', 'bios-version', 'system-manufacturer', 'system-product-name', 'system-version',
                             'system-serial-number', 'baseboard-manufacturer', 'baseboard-product-name', 'baseboard-version',
                             'baseboard-serial-number', 'baseboard-asset-tag', 'baseboard-location-in-chassis', 'enclosure-asset-tag')
BIOS_STRING_LIMIT = 512
# ocaml/xapi/xapi_globs.ml has_vendor_device: the virtual hardware platform version a vendor device needs.
HAS_VENDOR_DEVICE_VERSION = 2
# ocaml/xapi-consts/constants.ml ha_restart, ha_valid_restart_priorities.
HA_RESTART = 'restart'
HA_VALID_RESTART_PRIORITIES = (HA_RESTART, 'best-effort', '')


def on_create(values: dict) -> dict:
    """The stored VM of VM.create, after ocaml/xapi/xapi_vm.ml create: the VMPP/VMSS fields are taken but ignored
    (``~protection_policy:_`` ... stored null/false), BIOS strings start empty (``~bios_strings:[]``), and
    update_vm_virtual_hardware_platform_version (xapi_vm_helpers.ml) raises the hardware platform version a
    vendor device needs."""
    values.update(protection_policy=NULL_REF, is_snapshot_from_vmpp=False, snapshot_schedule=NULL_REF, is_vmss_snapshot=False,
                  bios_strings={})
    if values.get('has_vendor_device') and int(values.get('hardware_platform_version') or 0) < HAS_VENDOR_DEVICE_VERSION:
        values['hardware_platform_version'] = HAS_VENDOR_DEVICE_VERSION
    return values


def on_power(store, vm: str, old_state: str, new_state: str) -> None:
    """ha_always_run follows the power state (ocaml/xapi/xapi_vm.ml start and resume set it when ha_restart_priority
    is "restart"; hard_shutdown, clean_shutdown and suspend clear it). VM.start fills empty BIOS strings with the
    generic ones (message_forwarding.ml VM.start -> xapi_vm_helpers.ml consider_generic_bios_strings)."""
    obj = store.raw('VM', vm)
    if old_state in ('Halted', 'Suspended') and new_state in ('Running', 'Paused'):
        if obj.get('ha_restart_priority') == HA_RESTART:
            store.set('VM', vm, 'ha_always_run', True)
        if old_state == 'Halted' and not obj.get('bios_strings'):
            store.set('VM', vm, 'bios_strings', dict(GENERIC_BIOS_STRINGS))
    elif new_state in ('Halted', 'Suspended'):
        store.set('VM', vm, 'ha_always_run', False)


def assert_valid_bios_strings(value: dict) -> None:
    """ocaml/xapi/xapi_vm_helpers.ml assert_valid_bios_strings: known keys, non-empty values of at most 512 printable
    ASCII characters, else INVALID_VALUE [key, reason] (same texts)."""
    for key, text in value.items():
        if key not in SETTABLE_BIOS_STRING_KEYS:
            raise XapiError('INVALID_VALUE', key, 'Unknown key')
        if text == '':
            raise XapiError('INVALID_VALUE', key, 'Value provided is empty')
        if len(text) > BIOS_STRING_LIMIT:
            raise XapiError('INVALID_VALUE', key, '%s has length more than %d characters' % (text, BIOS_STRING_LIMIT))
        if any(not 32 <= ord(char) < 127 for char in text):
            raise XapiError('INVALID_VALUE', key, '%s has non-printable ASCII characters' % text)


def set_bios_strings(store, vm: str, value: dict) -> str:
    """ocaml/xapi/xapi_vm.ml set_bios_strings: only while the VM has none (VM_BIOS_STRINGS_ALREADY_SET), checked,
    then the generic strings with the given ones in their place."""
    if store.raw('VM', vm)['bios_strings']:
        raise XapiError('VM_BIOS_STRINGS_ALREADY_SET')
    assert_valid_bios_strings(value)
    store.set('VM', vm, 'bios_strings', {key: value.get(key, generic) for key, generic in GENERIC_BIOS_STRINGS.items()})
    return ''


def set_has_vendor_device(store, vm: str, value: bool, bad_power: str) -> str:
    """ocaml/xapi/xapi_vm.ml set_has_vendor_device: the VM must be halted (xapi_vm_lifecycle.ml
    assert_initial_power_state_is: VM_BAD_POWER_STATE [vm, "halted", actual]); then the hardware platform version
    is raised as VM.create does."""
    obj = store.raw('VM', vm)
    if obj['power_state'] != 'Halted':
        raise XapiError(bad_power, vm, 'halted', obj['power_state'].lower())
    store.set('VM', vm, 'has_vendor_device', bool(value))
    if value and int(obj.get('hardware_platform_version') or 0) < HAS_VENDOR_DEVICE_VERSION:
        store.set('VM', vm, 'hardware_platform_version', HAS_VENDOR_DEVICE_VERSION)
    return ''


def set_ha_restart_priority(store, vm: str, value: str) -> str:
    """ocaml/xapi/xapi_vm.ml set_ha_restart_priority (HA plan checks left out: the simulator has no HA): a valid
    priority (INVALID_VALUE ["ha_restart_priority", value]); a running VM gets ha_always_run at once."""
    if value not in HA_VALID_RESTART_PRIORITIES:
        raise XapiError('INVALID_VALUE', 'ha_restart_priority', value)
    obj = store.raw('VM', vm)
    if obj['ha_restart_priority'] != value:
        store.set('VM', vm, 'ha_restart_priority', value)
        if obj['power_state'] == 'Running':
            store.set('VM', vm, 'ha_always_run', value == HA_RESTART)
    return ''


def set_ha_always_run(store, vm: str, value: bool) -> str:
    """ocaml/xapi/xapi_vm.ml set_ha_always_run (deprecated since boston): the restart priority "restart" or ""; the
    flag itself changes only on a running VM (set_ha_restart_priority) or at its next start."""
    return set_ha_restart_priority(store, vm, HA_RESTART if value else '')


def assert_halted_for_nvram(store, vm: str, bad_power: str) -> None:
    """ocaml/xapi/message_forwarding.ml VM.set_NVRAM, add_to_NVRAM, remove_from_NVRAM run as the operation
    changing_NVRAM, which xapi_vm_lifecycle.ml allowed_power_states allows on a halted VM only
    (check_operation_error: VM_BAD_POWER_STATE [vm, "halted", actual])."""
    state = store.raw('VM', vm)['power_state']
    if state != 'Halted':
        raise XapiError(bad_power, vm, 'halted', state.lower())
