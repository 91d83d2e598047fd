# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A restored VM has the same record (issue 13): a UEFI VM with Secure Boot and viridian platform flags, NVRAM, BIOS
strings, HVM boot parameters, a vendor device and HA's always-run flag is backed up and restored through the modules,
then every field is compared with the original's as the simulator holds it, on XCP-ng 8.3 and 8.2 (what 8.2 lacks is
reported). The restored VM is named after its backup and does not get the tags a backup job selects by."""

from __future__ import annotations

import json

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.constructor import CONSTRUCTOR_FIELDS

from lifecycle import backup
from harness import XenApi

# The 16 keys XAPI keeps (constants.ml generic_bios_strings), with a vendor and serial number of this VM's own.
BIOS = {'bios-vendor': 'Dell Inc.', 'bios-version': '2.17.1', 'system-manufacturer': 'Dell Inc.', 'system-product-name': 'PowerEdge R740',
        'system-version': '', 'system-serial-number': 'SN-1234', 'baseboard-manufacturer': '', 'baseboard-product-name': '',
        'baseboard-version': '', 'baseboard-serial-number': '', 'baseboard-asset-tag': '', 'baseboard-location-in-chassis': '',
        'enclosure-asset-tag': '', 'hp-rombios': '', 'oem-1': 'Xen', 'oem-2': 'MS_VM_CERT/SHA1/bdbeb6e0a816d43fa6d3fe8aaef04c2bad9d3e3d'}
NVRAM = {'EFI-variables': 'UEZJIHZhcmlhYmxlcyBvZiB3aW4wMQ=='}
PLATFORM = {'secureboot': 'true', 'viridian': 'true', 'viridian_time_ref_count': 'true', 'viridian_reference_tsc': 'true',
            'device-model': 'qemu-upstream-uefi', 'device_id': '0002', 'vtpm': 'false'}
SOURCE_POOL = """
pool: {name: production}
xapi: {profile: %s}
srs: [{name: Local storage, size: 8GiB, default: true}]
networks: [{name: lan, bridge: xenbr0}]
vms:
  - name: app01
    power_state: Running
    tags: [backup-daily, windows, xo:no-bak=copies are not backed up]
    disks: [{name: app01-root, size: 8MiB, data: [{offset: 0, length: 2MiB, seed: 3}]}]
    vifs: [{network: lan}]
    record:
      HVM_boot_params: {order: dc, firmware: uefi}
      platform: %s
      NVRAM: %s
      bios_strings: %s
      has_vendor_device: true
      hardware_platform_version: 2
      ha_restart_priority: restart
"""
TARGET_POOL = """
pool: {name: disaster-recovery}
xapi: {profile: %s}
srs: [{name: DR storage, size: 8GiB, default: true}]
networks: [{name: lan, bridge: xenbr0}]
"""
# What the restore changes on purpose, or what is the VM's state rather than its configuration.
NOT_COMPARED = ('name_label', 'other_config', 'generation_id', 'affinity', 'tags', 'power_state', 'last_boot_CPU_flags',
                'last_booted_record', 'suspend_VDI', 'suspend_SR', 'appliance', 'protection_policy', 'snapshot_schedule')


def _source_pool(profile: str) -> str:
    return SOURCE_POOL % (profile, json.dumps(PLATFORM), json.dumps(NVRAM), json.dumps(BIOS))


def _backed_up(ansible, pool, tmp_path, profile):
    pool.control.load_config(_source_pool(profile))
    with XenApi(pool) as api:
        original = api.VM.get_record(api.VM.get_by_name_label('app01')[0])
    repository = tmp_path / 'repo'
    repository.mkdir()
    app = {'ansible': ansible, 'sim': pool, 'repo': str(repository)}
    backup(app)
    return app, original


def _restore(app, expect_failure=False, check=False, **options):
    return app['ansible'].run_task('vm_restore', dict({'repository': app['repo'], 'vm': 'app01'}, **options),
                                   expect_failure=expect_failure, check=check)


def _counts(sim):
    with XenApi(sim) as api:
        return len(api.VM.get_all()), len(api.VDI.get_all())


@pytest.mark.parametrize('source, target', [('xcp-ng-8.3', 'xcp-ng-8.3'), ('xcp-ng-8.2', 'xcp-ng-8.2'), ('xcp-ng-8.3', 'xcp-ng-8.2')])
def test_a_uefi_vm_comes_back_with_its_whole_record(ansible, pool, tmp_path, source, target):
    app, original = _backed_up(ansible, pool, tmp_path, source)
    assert original['ha_always_run'] is True and original['bios_strings'] == BIOS and original['NVRAM'] == NVRAM
    pool.control.load_config(TARGET_POOL % target)

    planned = _restore(app, check=True)
    assert planned['vm_record']['set_after_create'] == ['bios_strings', 'ha_always_run'] and planned['vm_record']['not_restored'] == []
    assert planned['tags'] == {'kept': ['xo:no-bak=copies are not backed up'], 'dropped': ['backup-daily', 'windows']}
    assert _counts(pool) == (1, 0), 'check mode creates nothing (the control domain only)'

    result = _restore(app, start=True)
    timestamp = result['backup']['timestamp']
    assert result['vm']['name_label'] == 'app01 (%s)' % timestamp and result['vm']['started'] is True
    assert result['tags'] == planned['tags']
    with XenApi(pool) as api:
        restored = api.VM.get_record(api.VM.get_by_uuid(result['vm']['uuid']))
    assert restored['name_label'] == 'app01 (%s)' % timestamp and restored['tags'] == ['xo:no-bak=copies are not backed up']

    # the fields the issue names, one by one
    assert restored['NVRAM'] == NVRAM and restored['HVM_boot_params'] == {'order': 'dc', 'firmware': 'uefi'}
    assert restored['platform'] == PLATFORM, 'Secure Boot and viridian flags'
    assert restored['bios_strings'] == BIOS
    assert restored['has_vendor_device'] is True and restored['hardware_platform_version'] == '2'
    assert restored['ha_restart_priority'] == 'restart' and restored['ha_always_run'] is True, 'started: XAPI turned it on'
    assert restored['is_a_template'] is False and restored['affinity'] == 'OpaqueRef:NULL'
    # and every other field VM.create takes
    lacking = []
    for field in CONSTRUCTOR_FIELDS['VM']:
        if field in NOT_COMPARED or field not in original:
            continue
        if field not in restored:
            lacking.append(field)
            continue
        assert restored[field] == original[field], field
    if source == target:
        assert lacking == [] and result['vm_record'] == {'set_after_create': ['bios_strings', 'ha_always_run'], 'not_restored': []}
    else:
        assert lacking == ['actions_after_softreboot'], 'a VM field of xapi 23.1.0, which XCP-ng 8.2 does not have'
        assert result['vm_record']['not_restored'] == [
            {'field': 'actions_after_softreboot', 'reason': 'this XAPI version has no VM field actions_after_softreboot'}]


def test_name_and_tags_options(ansible, pool, tmp_path):
    app, _original = _backed_up(ansible, pool, tmp_path, 'xcp-ng-8.3')
    counts = _counts(pool)
    refused = _restore(app, expect_failure=True, name_template='{name_label} restored on {date}')
    assert refused['error_code'] == 'invalid_name_template' and 'holds {date}: the placeholders are {name_label}, {timestamp}' in refused['msg']
    assert _counts(pool) == counts, 'refused before anything was created'

    kept = _restore(app, name_template='DR copy of {name_label} [{vm_uuid}]', keep_tags=True)
    assert kept['vm']['name_label'] == 'DR copy of app01 [%s]' % kept['backup']['vm_uuid']
    assert kept['tags'] == {'kept': ['backup-daily', 'windows', 'xo:no-bak=copies are not backed up'], 'dropped': []}
    exact = _restore(app, name='app01 exact', name_template='ignored {name_label}')
    assert exact['vm']['name_label'] == 'app01 exact' and exact['tags']['dropped'] == ['backup-daily', 'windows']
    with XenApi(pool) as api:
        assert api.VM.get_tags(api.VM.get_by_uuid(kept['vm']['uuid'])) == ['backup-daily', 'windows', 'xo:no-bak=copies are not backed up']
        assert api.VM.get_tags(api.VM.get_by_uuid(exact['vm']['uuid'])) == ['xo:no-bak=copies are not backed up']
    # a job selecting by tag (vm_info tags, as the backup role asks it) finds the original and the copy that kept its tags only
    listed = app['ansible'].run_task('vm_info', {'tags': ['backup-daily']})
    assert sorted(vm['name_label'] for vm in listed['vms']) == sorted(['app01', kept['vm']['name_label']])
