# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The restored VM's record (issue 13): its name, its tags, the BIOS strings XAPI takes, and the fields set after
VM.create, checked against the simulator on XCP-ng 8.3 and 8.2."""

from __future__ import annotations

import json

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import restore, vm_record
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupPoint
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import build_metadata
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiError
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import JOB, SCHEDULE, VM
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

STAMP = '20260105T010000Z'
NVRAM = {'EFI-variables': 'AAECAwQFBgc='}
# A VM's BIOS strings hold XAPI's 16 keys (constants.ml generic_bios_strings), here with a vendor and serial number of its own.
BIOS = {'bios-vendor': 'Dell Inc.', 'bios-version': '', 'system-manufacturer': 'Xen', 'system-product-name': 'HVM domU', 'system-version': '',
        'system-serial-number': 'SN-1234', 'baseboard-manufacturer': '', 'baseboard-product-name': '', 'baseboard-version': '',
        'baseboard-serial-number': '', 'baseboard-asset-tag': '', 'baseboard-location-in-chassis': '', 'enclosure-asset-tag': '',
        'hp-rombios': '', 'oem-1': 'Xen', 'oem-2': 'MS_VM_CERT/SHA1/bdbeb6e0a816d43fa6d3fe8aaef04c2bad9d3e3d'}
POOL = """
xapi: {profile: %s}
vms:
  - name: uefi01
    tags: [backup-daily, web, xo:no-bak=test copy]
    record:
      HVM_boot_params: {order: c, firmware: uefi}
      platform: {secureboot: "true", viridian: "true", device-model: qemu-upstream-uefi}
      NVRAM: {EFI-variables: AAECAwQFBgc=}
      bios_strings: %s
      has_vendor_device: true
      hardware_platform_version: 2
      ha_restart_priority: restart
      ha_always_run: true
"""


def _pool(profile: str) -> str:
    return POOL % (profile, json.dumps(BIOS))


def _point(vm: dict, timestamp: str = STAMP) -> BackupPoint:
    metadata = build_metadata(JOB, SCHEDULE, 1, dict(vm, uuid=VM), {}, {}, {}, {}, {}, {}, size=0, block_checksums={}, virtual_sizes={})
    return BackupPoint(vm_uuid=VM, timestamp=timestamp, metadata_storage_path='xo-vm-backups/%s/%s.json' % (VM, timestamp),
                       metadata_path='/b/xo-vm-backups/%s/%s.json' % (VM, timestamp), metadata=metadata)


# -- name ---------------------------------------------------------------------------------------


def test_the_name_says_which_backup_it_is():
    point = _point({'name_label': 'web01'})
    assert vm_record.restored_name(point, None, vm_record.DEFAULT_NAME_TEMPLATE) == 'web01 (%s)' % STAMP
    assert vm_record.restored_name(point, None, '{name_label} {vm_uuid} {job} {{copy}}') == 'web01 %s %s {copy}' % (VM, JOB)
    assert vm_record.restored_name(point, 'exactly this', '{name_label} ({timestamp})') == 'exactly this', 'name wins'
    assert vm_record.restored_name(point, None, '') == 'web01', 'no template: the backed-up name'
    assert vm_record.restored_name(_point({}), None, None) == 'restored VM %s' % VM


@pytest.mark.parametrize('template, message', [
    ('{hostname}', r"holds \{hostname\}: the placeholders are \{name_label\}, \{timestamp\}, \{vm_uuid\}, \{job\}"),
    ('{name_label.__class__}', r'holds \{name_label.__class__\}'),
    ('{timestamp:>30}', r'holds \{timestamp:>30\}'),
    ('{name_label!r}', r'holds \{name_label!r\}'),
    ('{0}', r'holds \{0\}'),
    ('{}', r'holds \{\}'),
    ('{name_label', r'is not a valid template .*a literal brace as \{\{ or \}\}'),
    ('   ', 'gives an empty name'),
])
def test_a_bad_template_is_refused_saying_what_to_write(template, message):
    with pytest.raises(vm_record.NameTemplateError, match=message) as error:
        vm_record.restored_name(_point({'name_label': 'web01'}), None, template)
    assert error.value.error_code == 'invalid_name_template' and isinstance(error.value, restore.RestoreError)


def test_restore_refuses_a_bad_template_before_touching_the_repository_or_the_pool():
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError('%s used before the template was checked' % name)

    with pytest.raises(vm_record.NameTemplateError, match='holds {when}'):
        restore.restore(Untouchable(), Untouchable(), VM, name_template='{name_label} {when}')


def test_the_plan_carries_name_tags_and_the_setters():
    vm = {'uuid': VM, 'name_label': 'web01', 'tags': ['backup-daily', 'xo:no-bak'], 'bios_strings': BIOS, 'ha_always_run': True}
    backup = restore.CheckedBackup(point=_point(vm), disks=[], verified=[], unverified=[], finished_merges=[])
    plan = restore.plan_restore(backup, 'OpaqueRef:sr', {'uuid': 'u-sr'}, {}, disk_only=False, name_template='{name_label}@{timestamp}')
    assert plan.vm_name == 'web01@%s' % STAMP and plan.tags == ['xo:no-bak'] and plan.dropped_tags == ['backup-daily']
    result = restore.restore_result(plan, {})
    assert result['tags'] == {'kept': ['xo:no-bak'], 'dropped': ['backup-daily']}
    assert result['vm_record'] == {'set_after_create': ['bios_strings', 'ha_always_run'], 'not_restored': []}
    kept = restore.plan_restore(backup, 'OpaqueRef:sr', {'uuid': 'u-sr'}, {}, disk_only=False, keep_tags=True)
    assert kept.vm_name == 'web01' and kept.tags == ['backup-daily', 'xo:no-bak'] and kept.dropped_tags == []
    disk = restore.plan_restore(backup, 'OpaqueRef:sr', {'uuid': 'u-sr'}, {}, disk_only=True, name_template='{nope}')
    assert disk.tags == [] and disk.vm_record == {}, 'a disk restore has no VM: its template is not even read'


# -- tags ---------------------------------------------------------------------------------------


def test_tags_are_dropped_except_the_exclusion_tag_unless_kept():
    point = _point({'tags': ['backup-daily', 'xo:no-bak', 'xo:no-bak=copy', 'xo:no-bakery', 'web']})
    assert vm_record.restored_tags(point, keep_tags=False) == (['xo:no-bak', 'xo:no-bak=copy'], ['backup-daily', 'xo:no-bakery', 'web'])
    assert vm_record.restored_tags(point, keep_tags=True) == (['backup-daily', 'xo:no-bak', 'xo:no-bak=copy', 'xo:no-bakery', 'web'], [])
    assert vm_record.restored_tags(_point({}), keep_tags=False) == ([], [])


# -- BIOS strings -------------------------------------------------------------------------------


def test_only_the_bios_strings_xapi_takes_are_sent_and_the_others_are_reported():
    strings = dict(BIOS, **{'hp-rombios': 'COMPAQ', 'baseboard-asset-tag': 'x' * 513, 'system-version': 'caf\u00e9',
                            'oem-3': 'vendor', 'oem-1': 'Xen'})
    settable, skipped = vm_record.settable_bios_strings(strings)
    assert settable == {'bios-vendor': 'Dell Inc.', 'system-manufacturer': 'Xen', 'system-product-name': 'HVM domU',
                        'system-serial-number': 'SN-1234'}, 'empty values are XAPI\'s generic ones'
    assert sorted(skipped) == ['baseboard-asset-tag', 'hp-rombios', 'oem-3', 'system-version'], 'generic oem-1/oem-2 are no loss'
    assert 'longer than the 512' in skipped['baseboard-asset-tag'] and 'printable ASCII' in skipped['system-version']
    assert "generic value" in skipped['hp-rombios']
    planned = vm_record.plan_server_owned_fields(_point({'bios_strings': strings}))
    assert planned['set_after_create'] == ['bios_strings'] and [item['key'] for item in planned['not_restored']] == sorted(skipped)
    assert vm_record.plan_server_owned_fields(_point({'bios_strings': {}, 'ha_always_run': False}))['set_after_create'] == []


def test_a_xapi_without_a_setter_is_reported_not_fatal():
    """No simulated profile lacks VM.set_bios_strings (since inverness): a stand-in XAPI that answers MESSAGE_METHOD_UNKNOWN."""
    class OldXapi:
        calls = []

        def call(self, method, *args):
            self.calls.append(method)
            if method == 'VM.get_record':
                return {'name_label': 'x'}
            raise XapiError('MESSAGE_METHOD_UNKNOWN %s' % method, 'MESSAGE_METHOD_UNKNOWN', [method])

    point = _point({'bios_strings': BIOS, 'ha_always_run': True})
    done = vm_record.apply_server_owned_fields(OldXapi(), 'OpaqueRef:vm', point)
    assert done['set_after_create'] == []
    assert done['not_restored'] == [{'field': 'bios_strings', 'reason': 'this XAPI version has no VM.set_bios_strings'},
                                    {'field': 'ha_always_run', 'reason': 'this XAPI version has no VM.set_ha_always_run'}]


# -- against the simulator ----------------------------------------------------------------------


def _restore_record(source_profile: str, target_profile: str):
    """Create a VM on a ``target_profile`` pool from the record of uefi01 read on a ``source_profile`` pool."""
    with running_pool(_pool(source_profile)) as source, connect(source) as xapi:
        vm = xapi.call('VM.get_by_name_label', 'uefi01')[0]
        xapi.call('VM.start', vm, False, False)
        original = xapi.call('VM.get_record', vm)
    point = _point(original)
    tags, dropped = vm_record.restored_tags(point, keep_tags=False)
    with running_pool(_pool(target_profile)) as target, connect(target) as xapi:
        ref = xapi.call('VM.create', vm_record.vm_create_record(point, 'uefi01 restored', tags=tags))
        assert xapi.call('VM.get_ha_always_run', ref) is False, 'not created always-run: HA must not start a VM being restored'
        done = vm_record.apply_server_owned_fields(xapi, ref, point)
        restored = xapi.call('VM.get_record', ref)
        xapi.call('VM.start', ref, False, False)
        restored_running = xapi.call('VM.get_record', ref)
    return original, restored, restored_running, done, dropped


@pytest.mark.parametrize('profile', ['xcp-ng-8.3', 'xcp-ng-8.2'])
def test_every_field_comes_back_on_the_same_version(profile):
    original, restored, running, done, dropped = _restore_record(profile, profile)
    for field in ('NVRAM', 'platform', 'HVM_boot_params', 'HVM_boot_policy', 'has_vendor_device', 'hardware_platform_version',
                  'ha_restart_priority', 'domain_type', 'memory_static_max', 'VCPUs_max', 'actions_after_crash'):
        assert restored[field] == original[field], field
    assert restored['NVRAM'] == NVRAM and restored['platform']['secureboot'] == 'true'
    assert restored['bios_strings'] == original['bios_strings'] == BIOS
    assert restored['tags'] == ['xo:no-bak=test copy'] and dropped == ['backup-daily', 'web']
    assert original['ha_always_run'] is True and restored['ha_always_run'] is False and running['ha_always_run'] is True
    assert done == {'set_after_create': ['bios_strings', 'ha_always_run'], 'not_restored': []}


def test_what_xcp_ng_8_2_lacks_is_reported():
    original, restored, _running, done, _dropped = _restore_record('xcp-ng-8.3', 'xcp-ng-8.2')
    assert 'actions_after_softreboot' in original and 'actions_after_softreboot' not in restored
    assert done['not_restored'] == [{'field': 'actions_after_softreboot', 'reason': 'this XAPI version has no VM field actions_after_softreboot'}]
    assert restored['NVRAM'] == NVRAM and restored['bios_strings'] == BIOS


def test_a_value_xapi_changes_is_reported():
    """VM.create raises the hardware platform version a vendor device needs (xapi_vm_helpers.ml)."""
    with running_pool(_pool('xcp-ng-8.3')) as sim, connect(sim) as xapi:
        original = xapi.call('VM.get_record', xapi.call('VM.get_by_name_label', 'uefi01')[0])
        point = _point(dict(original, hardware_platform_version='0'))
        ref = xapi.call('VM.create', vm_record.vm_create_record(point, 'copy'))
        done = vm_record.apply_server_owned_fields(xapi, ref, point)
    assert done['not_restored'] == [{'field': 'hardware_platform_version', 'reason': "XAPI gave the restored VM '2' instead of the backed-up '0'"}]


def test_a_bios_string_no_one_can_set_is_reported_once():
    """hp-rombios is not settable (constants.ml settable_vm_bios_string_keys): the restored VM has XAPI's generic value."""
    with running_pool(_pool('xcp-ng-8.3')) as sim, connect(sim) as xapi:
        original = xapi.call('VM.get_record', xapi.call('VM.get_by_name_label', 'uefi01')[0])
        point = _point(dict(original, bios_strings=dict(BIOS, **{'hp-rombios': 'COMPAQ'})))
        ref = xapi.call('VM.create', vm_record.vm_create_record(point, 'copy'))
        done = vm_record.apply_server_owned_fields(xapi, ref, point)
        restored = xapi.call('VM.get_bios_strings', ref)
    assert done['set_after_create'] == ['bios_strings', 'ha_always_run']
    assert done['not_restored'] == [{'field': 'bios_strings', 'key': 'hp-rombios',
                                     'reason': "XAPI lets no one set this BIOS string: the restored VM has XAPI's generic value"}]
    assert restored == BIOS, 'every other string as backed up'
