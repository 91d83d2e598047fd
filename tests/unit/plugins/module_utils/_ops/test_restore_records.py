# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What vm_restore sends to XAPI: the constructor field table (current with XAPI's datamodel), the VM and VIF
records built from it, and the network mapping rules."""

from __future__ import annotations

import importlib.util
import json
import os
import types

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.constructor import CONSTRUCTOR_FIELDS, REQUIRED, SOURCE

COLLECTION = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))))
DATAMODEL = os.path.join(COLLECTION, 'tests', 'xapisim', 'datamodel', 'xapi-datamodel.json')
NULL = 'OpaqueRef:NULL'


def _generator():
    spec = importlib.util.spec_from_file_location('gen_xapi_constructor_fields', os.path.join(COLLECTION, 'tools', 'gen_xapi_constructor_fields.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_constructor_table_is_current_with_the_datamodel():
    generator = _generator()
    with open(DATAMODEL, encoding='utf-8') as handle:
        datamodel = json.load(handle)
    with open(generator.TABLE, encoding='utf-8') as handle:
        assert handle.read() == generator.render(datamodel), 'run tools/gen_xapi_constructor_fields.py'
    assert SOURCE == datamodel['source'] and 'e2ee48d6883e0b98c4d219d3f0778a10c6655607' in SOURCE
    # spot checks against the datamodel itself, not the generator
    vm_fields = {field['name']: field for field in datamodel['classes']['VM']['fields']}
    for name, (kind, default, _release) in CONSTRUCTOR_FIELDS['VM'].items():
        assert vm_fields[name]['qualifier'] in ('RW', 'RO/constructor') and vm_fields[name]['type'] == kind
        assert (default is REQUIRED) == ('default' not in vm_fields[name])
    assert {name for name, field in vm_fields.items() if field['qualifier'] in ('RW', 'RO/constructor')} == set(CONSTRUCTOR_FIELDS['VM'])


def test_constructor_table_rows():
    assert CONSTRUCTOR_FIELDS['VM']['affinity'] == ('host ref', REQUIRED, 'rio')
    assert CONSTRUCTOR_FIELDS['VM']['blocked_operations'][1] == {}
    assert CONSTRUCTOR_FIELDS['VM']['HVM_shadow_multiplier'][1] == 1.0
    assert CONSTRUCTOR_FIELDS['VM']['generation_id'][1] == '0:0'
    assert CONSTRUCTOR_FIELDS['VM']['start_delay'][1] == '0'
    assert CONSTRUCTOR_FIELDS['VBD']['unpluggable'][1] is True
    assert CONSTRUCTOR_FIELDS['VIF']['locking_mode'][1] == 'network_default'
    assert CONSTRUCTOR_FIELDS['VIF']['MAC'][1] is REQUIRED
    assert 'uuid' not in CONSTRUCTOR_FIELDS['VDI'] and 'VBDs' not in CONSTRUCTOR_FIELDS['VM']


def _source_vm(**changes):
    record = {name: default for name, (_kind, default, _release) in CONSTRUCTOR_FIELDS['VM'].items() if default is not REQUIRED}
    record.update({
        'uuid': 'ab9c2c5e-0d9f-4a55-b1b9-0d2a3c0e4f11', 'name_label': 'web01', 'user_version': '1', 'is_a_template': False,
        'affinity': 'OpaqueRef:host-of-the-source-pool', 'memory_static_max': '2147483648', 'memory_dynamic_max': '2147483648',
        'memory_dynamic_min': '1073741824', 'memory_static_min': '536870912', 'VCPUs_params': {'weight': '256'}, 'VCPUs_max': 4,
        'VCPUs_at_startup': '2', 'actions_after_shutdown': 'destroy', 'actions_after_reboot': 'restart', 'actions_after_crash': 'restart',
        'PV_bootloader': '', 'PV_kernel': '', 'PV_ramdisk': '', 'PV_args': '', 'PV_bootloader_args': '', 'PV_legacy_args': '',
        'HVM_boot_policy': 'BIOS order', 'HVM_boot_params': {'order': 'cd'}, 'platform': {'viridian': 'true'}, 'PCI_bus': '',
        'other_config': {'mac_seed': 'e3b4f0a2-4f7e-4c1d-9a51-53d6b0a1c2d3', 'owner': 'ops', 'xo:backup:job': 'x'}, 'recommendations': '',
        'power_state': 'Running', 'suspend_SR': 'OpaqueRef:sr-of-the-source-pool', 'generation_id': '123:456',
        'blocked_operations': {'destroy': 'protected'}, 'ha_always_run': True, 'tags': ['web'], 'NVRAM': {'EFI-variables': 'AAAA'},
        'domain_type': 'hvm', 'VBDs': ['OpaqueRef:vbd'], 'snapshots': []})
    record.update(changes)
    return record


def _point(vm=None, vifs=None):
    return types.SimpleNamespace(metadata={'vm': vm or _source_vm(), 'vifs': vifs or {}}, vm_uuid='ab9c2c5e-0d9f-4a55-b1b9-0d2a3c0e4f11',
                                 timestamp='20261124T020000Z')


def test_vm_record_carries_every_constructor_field():
    record = restore.vm_create_record(_point(), 'web01 (restored)')
    assert set(record) == set(CONSTRUCTOR_FIELDS['VM'])
    assert record['affinity'] == NULL and record['suspend_SR'] == NULL      # refs of the source pool are not sent
    assert record['power_state'] == 'Halted' and record['ha_always_run'] is False and record['blocked_operations'] == {}
    assert record['is_a_template'] is False and record['name_label'] == 'web01 (restored)'
    assert record['VCPUs_max'] == '4' and record['memory_static_min'] == '536870912'   # ints as decimal strings
    assert record['NVRAM'] == {'EFI-variables': 'AAAA'} and record['tags'] == ['web'] and record['platform'] == {'viridian': 'true'}
    assert record['generation_id'] not in ('123:456', '0:0', '') and len(record['generation_id'].split(':')) == 2
    other = record['other_config']
    assert 'mac_seed' not in other and 'xo:backup:job' not in other and other['owner'] == 'ops'
    assert other[restore.RESTORED_FROM_KEY] == 'ab9c2c5e-0d9f-4a55-b1b9-0d2a3c0e4f11@20261124T020000Z' and restore.IN_PROGRESS_KEY in other


def test_vm_record_keeps_seed_and_home_host_when_asked():
    record = restore.vm_create_record(_point(_source_vm(generation_id='')), 'web01', affinity='OpaqueRef:host1', keep_mac=True)
    assert record['other_config']['mac_seed'] == 'e3b4f0a2-4f7e-4c1d-9a51-53d6b0a1c2d3'
    assert record['affinity'] == 'OpaqueRef:host1' and record['generation_id'] == ''
    assert restore.blocked_while_restoring(_point()) == {'destroy': 'protected', 'start': restore.BLOCK_REASON, 'start_on': restore.BLOCK_REASON}


def test_our_own_blocks_are_not_restored():
    """The backup run blocks migrations while it runs (so the live record carries them); a restore's start block is ours too."""
    running = 'xapi.delta_backup: backup job nightly is running (since 2026-11-24T02:00:00Z)'
    point = _point(_source_vm(blocked_operations={'pool_migrate': running, 'migrate_send': running, 'start': restore.BLOCK_REASON,
                                                  'destroy': 'protected', 'clean_shutdown': 'xapi.delta_backup is great'}))
    assert restore.backed_up_blocked_operations(point) == {'destroy': 'protected', 'clean_shutdown': 'xapi.delta_backup is great'}


def test_a_required_field_missing_from_the_backup_is_named():
    vm = _source_vm()
    del vm['HVM_boot_policy'], vm['VCPUs_max']
    with pytest.raises(restore.RestoreError, match='lacks VCPUs_max, HVM_boot_policy, which XAPI needs to create the VM'):
        restore.vm_create_record(_point(vm), 'web01')


def test_vif_record():
    source = {'device': '1', 'MAC': '02:16:3e:00:00:07', 'MTU': '9000', 'network': 'OpaqueRef:old-net', 'VM': 'OpaqueRef:old-vm',
              'currently_attached': True, 'other_config': {'xo:backup:x': '1', 'k': 'v'}, 'qos_algorithm_type': 'ratelimit',
              'qos_algorithm_params': {'kbps': '100'}, 'locking_mode': 'unlocked', 'ipv4_allowed': [], 'ipv6_allowed': []}
    vif = restore.VifRestore(record=source, network_ref='OpaqueRef:new-net', network=NETWORKS['OpaqueRef:lan'], matched_by='uuid')
    record = restore.vif_create_record(vif, 'OpaqueRef:new-vm', keep_mac=False)
    assert set(record) == set(CONSTRUCTOR_FIELDS['VIF'])
    assert (record['MAC'], record['network'], record['VM'], record['MTU'], record['currently_attached']) == \
        ('', 'OpaqueRef:new-net', 'OpaqueRef:new-vm', '9000', False)
    assert record['other_config'] == {'k': 'v'} and record['qos_algorithm_params'] == {'kbps': '100'}
    assert restore.vif_create_record(vif, 'OpaqueRef:new-vm', keep_mac=True)['MAC'] == '02:16:3e:00:00:07'
    # an older metadata VIF with only device and MAC still gives a complete record
    vif = restore.VifRestore(record={'device': '0'}, network_ref='OpaqueRef:n', network=NETWORKS['OpaqueRef:lan'], matched_by='uuid')
    bare = restore.vif_create_record(vif, 'OpaqueRef:v', True)
    assert set(bare) == set(CONSTRUCTOR_FIELDS['VIF']) and bare['MTU'] == '1500' and bare['MAC'] == ''


# -- network mapping --------------------------------------------------------------------------------------------

NETWORKS = {
    'OpaqueRef:lan': {'uuid': 'u-lan', 'name_label': 'Pool-wide network associated with eth0', 'has_pifs': True, 'vlan': -1, 'internal': False},
    'OpaqueRef:v20': {'uuid': 'u-v20', 'name_label': 'vlan20-test', 'has_pifs': True, 'vlan': 20, 'internal': False},
    'OpaqueRef:v30a': {'uuid': 'u-v30a', 'name_label': 'dmz-a', 'has_pifs': True, 'vlan': 30, 'internal': False},
    'OpaqueRef:v30b': {'uuid': 'u-v30b', 'name_label': 'dmz-b', 'has_pifs': True, 'vlan': 30, 'internal': False},
    'OpaqueRef:priv': {'uuid': 'u-priv', 'name_label': 'Isolated', 'has_pifs': False, 'vlan': None, 'internal': False},
    'OpaqueRef:himn': {'uuid': 'u-himn', 'name_label': 'Host internal management network', 'has_pifs': False, 'vlan': None, 'internal': True},
}


def _vif(uuid, name, vlan, device='0'):
    return {'device': device, '$network$uuid': uuid, '$network$name_label': name, '$network$VLAN': vlan}


@pytest.mark.parametrize('vif, mapping, allow, expected', [
    (_vif('u-v20', 'renamed', 20), {}, False, ('OpaqueRef:v20', 'uuid')),
    (_vif('gone', 'vlan20-test', 20), {}, False, ('OpaqueRef:v20', 'name')),
    (_vif('gone', 'dmz-b', 30), {}, False, ('OpaqueRef:v30b', 'name')),             # same name and VLAN before the first on the VLAN
    (_vif('gone', 'dmz-b', 20), {}, False, ('OpaqueRef:v20', 'vlan')),              # a name on another VLAN is not the same network
    (_vif('gone', 'dmz-prod', 30), {}, False, ('OpaqueRef:v30a', 'vlan')),          # several on the VLAN: the first (device, then name)
    (_vif('gone', 'vlan20-prod', 20), {}, False, ('OpaqueRef:v20', 'vlan')),
    (_vif('gone', 'vlan20-prod', '20'), {}, False, ('OpaqueRef:v20', 'vlan')),        # a tag recorded as text
    (_vif('gone', 'old lan', -1), {}, False, ('OpaqueRef:lan', 'vlan')),              # the only untagged network
    (_vif('u-v20', 'vlan20-test', 20), {'vlan20-test': 'dmz-a'}, False, ('OpaqueRef:v30a', 'map')),   # an explicit entry wins
    (_vif('u-v20', 'x', 20), {'u-v20': 'u-priv'}, False, ('OpaqueRef:priv', 'map')),   # even to a network without PIFs
    (_vif('u-himn', 'Host internal management network', None), {}, True, ('OpaqueRef:himn', 'uuid')),
    (_vif('u-priv', 'Isolated', None), {}, True, ('OpaqueRef:priv', 'uuid')),
])
def test_mapping_rules(vif, mapping, allow, expected):
    assert restore.map_network(vif, NETWORKS, mapping, allow) == expected


@pytest.mark.parametrize('vif, mapping, message', [
    (_vif('u-himn', 'Host internal management network', None), {},
     r"VIF 0 of the backup was on network 'Host internal management network' \(uuid u-himn\): the only networks matching it, "
     r"'Host internal management network' \(uuid u-himn\), have no PIFs .* allow_internal_networks=true\. Say where it goes with network_map"),
    (_vif('u-priv', 'Isolated', None), {}, 'have no PIFs'),
    (_vif('gone', 'Isolated', None), {}, r"'Isolated' \(uuid gone\): the only networks matching it, 'Isolated' \(uuid u-priv\), have no PIFs"),
    (_vif('gone', 'far away', 45, device='2'), {},
     r"VIF 2 of the backup was on network 'far away' \(uuid gone, VLAN 45\): no network of this pool has its uuid, its name on its VLAN, or PIFs on its VLAN\. "
     r"Say where it goes with network_map, e.g. network_map: \{'far away': <network name or uuid of this pool>\}"),
    (_vif('gone', 'old', None), {'old': 'nope'}, "network_map sends network 'old' .* to 'nope', which is not a network of this pool"),
])
def test_mapping_refusals(vif, mapping, message):
    with pytest.raises(restore.RestoreError, match=message):
        restore.map_network(vif, NETWORKS, mapping, False)
