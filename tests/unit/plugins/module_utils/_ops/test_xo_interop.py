# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Interoperability with Xen Orchestra, both ways, against the simulator in this process.

- Our points are restorable by XO's logic: every field XO's restore dereferences (XO_READS, from its source)
  is in what delta_export writes, with the type XO's own metadata gives it.
- A point XO wrote (xo_fixture: XO's layout and JSON-RPC typed records, no sha256, VHDs from an independent
  writer) is listed, verified and restored, disks byte for byte, its values encoded by datamodel type.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.catalog import describe_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import manage_job_snapshots
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import read_metadata
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.constructor import CONSTRUCTOR_FIELDS, REQUIRED
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.record_types import RECORD_TYPES
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.wire_types import (
    WireTypeError, jsonrpc_value, xmlrpc_value,
)
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops import xo_fixture
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

COLLECTION = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', '..'))
with open(os.path.join(COLLECTION, 'tests', 'xapisim', 'datamodel', 'xapi-datamodel.json'), encoding='utf-8') as _handle:
    DATAMODEL_TYPES = {cls: {field['name']: field['type'] for field in spec['fields']} for cls, spec in json.load(_handle)['classes'].items()}

# Fields @xen-orchestra/xapi/vm.mjs create (lines 265-313) defaults when the record lacks them.
XO_VM_CREATE_DEFAULTS = ('actions_after_crash', 'actions_after_reboot', 'actions_after_shutdown', 'affinity', 'has_vendor_device', 'is_a_template',
                         'other_config', 'PCI_bus', 'memory_dynamic_max', 'memory_dynamic_min')

# Every field Xen Orchestra's restore of a delta backup reads from a backup's JSON, written once, with where it reads it
# (vatesfr/xen-orchestra at 9ef53890, 2026-08-21). A path goes from the top of the JSON; '*' is every entry of a map;
# the type is a JSON type, or 'XAPI <Class>' for a field of that XAPI class, typed as XAPI's JSON-RPC gives it to XO
# (xen-api doc/content/xen-api/wire-protocol.md: an int is a JSON number). Optional entries XO reads with a default.
XO_READS = [
    # path, type, optional, XO source
    (('mode',), 'str', False, '@xen-orchestra/backups/ImportVmBackup.mjs:231,240 (isFull, assert delta)'),
    (('timestamp',), 'int', False, 'ImportVmBackup.mjs:47 (listVmBackups predicate), :279 (formatFilenameDate)'),
    (('jobId',), 'str', False, '@xen-orchestra/backups/formatVmBackups.mjs:37'),
    (('scheduleId',), 'str', False, 'formatVmBackups.mjs:39'),
    (('size',), 'int', False, 'formatVmBackups.mjs:40'),
    (('isVhdDifferencing', '*'), 'bool', False, 'formatVmBackups.mjs:5,13-14'),
    (('tags',), 'list', True, 'formatVmBackups.mjs:48 (backup.tags ?? [])'),
    (('vtpms',), 'list', True, '@xen-orchestra/backups/_incrementalVm.mjs:384 (incrementalVm.vtpms ?? [])'),
    (('vhds', '*'), 'str', False, '@xen-orchestra/backups/RemoteAdapter.mjs:520,526 (join(dir, vhds[ref]) for each vdis ref)'),
    (('vm', 'uuid'), 'XAPI VM', False, 'ImportVmBackup.mjs:46; formatVmBackups.mjs:43'),
    (('vm', 'name_label'), 'XAPI VM', False, '_incrementalVm.mjs:227,391; ImportVmBackup.mjs:279'),
    (('vm', 'name_description'), 'XAPI VM', False, 'ImportVmBackup.mjs:271'),
    (('vm', 'tags'), 'XAPI VM', False, 'ImportVmBackup.mjs:216 (backup.vm.tags.push)'),
    (('vm', 'is_a_template'), 'XAPI VM', False, 'RemoteAdapter.mjs:578 (integer booleans repaired when a number)'),
    (('vm', 'blocked_operations'), 'XAPI VM', False, '_incrementalVm.mjs:221,396'),
    (('vm', 'bios_strings'), 'XAPI VM', False, '_incrementalVm.mjs:230'),
    (('vm', 'ha_always_run'), 'XAPI VM', False, '_incrementalVm.mjs:390'),
    (('vmSnapshot', 'suspend_VDI'), 'XAPI VM', False, 'RemoteAdapter.mjs:535 (vm.suspend_VDI = vmSnapshot.suspend_VDI); formatVmBackups.mjs:10'),
] + [
    # XO's VM_create takes these from {...vmRecord}: optional where vm.mjs gives a default or XAPI has one (constructor.py)
    (('vm', name), 'XAPI VM', name in XO_VM_CREATE_DEFAULTS or CONSTRUCTOR_FIELDS['VM'][name][1] is not REQUIRED,
     '@xen-orchestra/xapi/vm.mjs:264-313 (VM.create record)')
    for name in ('actions_after_crash', 'actions_after_reboot', 'actions_after_shutdown', 'affinity', 'appliance', 'blocked_operations',
                 'domain_type', 'generation_id', 'ha_restart_priority', 'hardware_platform_version', 'has_vendor_device', 'HVM_boot_params',
                 'HVM_boot_policy', 'HVM_shadow_multiplier', 'is_a_template', 'is_vmss_snapshot', 'last_boot_CPU_flags', 'last_booted_record',
                 'memory_static_max', 'memory_static_min', 'memory_dynamic_max', 'memory_dynamic_min', 'name_description', 'name_label', 'NVRAM',
                 'order', 'other_config', 'PCI_bus', 'platform', 'PV_args', 'PV_bootloader_args', 'PV_bootloader', 'PV_kernel',
                 'PV_legacy_args', 'PV_ramdisk', 'recommendations', 'reference_label', 'shutdown_delay', 'snapshot_schedule', 'start_delay',
                 'suspend_SR', 'tags', 'user_version', 'VCPUs_at_startup', 'VCPUs_max', 'VCPUs_params', 'version', 'xenstore_data')
] + [
    (('vdis', '*', 'uuid'), 'XAPI VDI', False, 'ImportVmBackup.mjs:222 (mapVdisSrs), RemoteAdapter.mjs:522 (ignoredVdis)'),
    (('vdis', '*', 'other_config'), 'XAPI VDI', False, '_incrementalVm.mjs:268; @xen-orchestra/xapi/vdi.mjs:95'),
    (('vdis', '*', 'virtual_size'), 'XAPI VDI', False, '_incrementalVm.mjs:271,333; vdi.mjs:101,117'),
    (('vdis', '*', 'name_label'), 'XAPI VDI', False, '_incrementalVm.mjs:330,343; vdi.mjs:94'),
    (('vdis', '*', 'name_description'), 'XAPI VDI', False, 'vdi.mjs:93'),
    (('vdis', '*', 'read_only'), 'XAPI VDI', True, 'vdi.mjs:96'),
    (('vdis', '*', 'sharable'), 'XAPI VDI', True, 'vdi.mjs:97'),
    (('vdis', '*', 'tags'), 'XAPI VDI', False, 'vdi.mjs:99'),
    (('vdis', '*', 'type'), 'XAPI VDI', True, 'vdi.mjs:100'),
    (('vdis', '*', 'xenstore_data'), 'XAPI VDI', False, 'vdi.mjs:102'),
    (('vdis', '*', '$snapshot_of$uuid'), 'str', False, 'ImportVmBackup.mjs:73,103 (differential restore)'),
    (('vdis', '*', '$SR$uuid'), 'str', False, 'written by _incrementalVm.mjs:68 beside $snapshot_of$uuid'),
    (('vbds', '*', 'VDI'), 'XAPI VBD', False, '_incrementalVm.mjs:252 (groupBy(vbdRecords, "VDI"))'),
] + [
    (('vbds', '*', name), 'XAPI VBD', name not in ('VDI', 'userdevice'), '@xen-orchestra/xapi/vbd.mjs:13-28 (VBD.create record)')
    for name in ('bootable', 'currently_attached', 'device', 'other_config', 'qos_algorithm_params', 'qos_algorithm_type', 'type',
                 'unpluggable', 'userdevice', 'empty', 'mode')
] + [
    (('vifs', '*', '$network$uuid'), 'str', False, '_incrementalVm.mjs:349'),
    (('vifs', '*', '$network$name_label'), 'str', False, '_incrementalVm.mjs:355'),
    (('vifs', '*', '$network$VLAN'), 'int', True, '_incrementalVm.mjs:352 (default -1; absent for a network without PIF, :103)'),
    (('vifs', '*', 'MAC'), 'XAPI VIF', False, '_incrementalVm.mjs:372'),
] + [
    (('vifs', '*', name), 'XAPI VIF', name in ('currently_attached', 'other_config', 'qos_algorithm_params', 'qos_algorithm_type'),
     '@xen-orchestra/xapi/vif.mjs:4-17 (VIF.create record)')
    for name in ('currently_attached', 'device', 'ipv4_allowed', 'ipv6_allowed', 'locking_mode', 'MTU', 'other_config', 'qos_algorithm_params',
                 'qos_algorithm_type')
]

JSON_TYPES = {'str': (str,), 'int': (int,), 'float': (int, float), 'bool': (bool,), 'list': (list,), 'dict': (dict,)}


def json_kind(datamodel_type: str) -> str:
    """The JSON type XAPI's JSON-RPC gives a datamodel type (what XO's own metadata holds)."""
    if datamodel_type.endswith(' map'):
        return 'dict'
    if datamodel_type.endswith(' set'):
        return 'list'
    if datamodel_type in ('int', 'float', 'bool'):
        return datamodel_type
    return 'str'  # string, datetime, enum, ref


def walk(metadata: dict, path: tuple) -> list:
    """(where, value or KeyError) of every place ``path`` names."""
    found = [('', metadata)]
    for step in path:
        following = []
        for where, node in found:
            if isinstance(node, KeyError):
                following.append((where, node))
            elif step == '*':
                following.extend(('%s.%s' % (where, key), value) for key, value in node.items())
            else:
                following.append(('%s.%s' % (where, step), node[step] if step in node else KeyError(step)))
        found = following
    return found


def xo_problems(metadata: dict) -> list[str]:
    """Every field of XO_READS missing or not of the type XO gets from XAPI; plus the links XO relies on."""
    problems = []
    for path, kind, optional, source in XO_READS:
        expected = json_kind(DATAMODEL_TYPES[kind.split()[1]][path[-1]]) if kind.startswith('XAPI ') else kind
        places = walk(metadata, path)
        if not places and not optional:
            problems.append('%s: nothing there (%s)' % ('.'.join(path), source))
        for where, value in places:
            if isinstance(value, KeyError):
                if not optional:
                    problems.append('%s: missing (%s)' % (where, source))
            elif isinstance(value, bool) and expected != 'bool' or not isinstance(value, JSON_TYPES[expected]):
                problems.append('%s = %r: XO gets a JSON %s there (%s)' % (where, value, expected, source))
    # XO restores the disks it finds in vdis, each from vhds[ref] (RemoteAdapter.mjs:524-526), attached by the VBDs whose VDI
    # is that ref (_incrementalVm.mjs:252,282-290): a disk without them would come back missing or detached.
    vdis, vhds = metadata.get('vdis') or {}, metadata.get('vhds') or {}
    attached = {vbd.get('VDI') for vbd in (metadata.get('vbds') or {}).values()}
    problems.extend('vdis.%s: no vhds entry' % ref for ref in vdis if ref not in vhds)
    problems.extend('vdis.%s: no VBD attaches it' % ref for ref in vdis if ref not in attached)
    return problems


# -- our points, read as XO reads them ---------------------------------------------------------------------

POOL = """
pool: {name: interop-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
networks:
  - {name: Pool-wide network associated with eth0, bridge: xenbr0}
  - {name: vlan20-prod, bridge: xapi1, vlan: 20, pif_device: eth1}
  - {name: Isolated, bridge: xapi9, private: true}
vms:
  - name: app
    memory: 6GiB
    vcpus: 2
    cdrom: true
    disks:
      - {name: app-root, size: 8MiB, data: [{offset: 0, length: 3MiB, seed: 1}]}
      - {name: app-data, size: 6MiB, data: [{offset: 2MiB, length: 1MiB, seed: 2}]}
    vifs:
      - {network: Pool-wide network associated with eth0}
      - {network: vlan20-prod}
      - {network: Isolated}
"""


@pytest.fixture(scope='module')
def our_points(tmp_path_factory):
    """Two points (a full, then a delta) delta_export wrote of a VM with 6 GiB of memory."""
    repo = tmp_path_factory.mktemp('ours') / 'repo'
    os.makedirs(str(repo))
    with running_pool(POOL) as sim, connect(sim) as xapi:
        root = sim.control.find('VDI', 'app-root')  # while its name is unique (snapshots share it)
        for run in range(2):
            if run:
                sim.control.write_vdi(root, 4 << 20, seed=9, length=1 << 20)
            manage_job_snapshots(xapi, 'app', Job('nightly'), take=True)
            result = export_vm(xapi, [str(repo)], 'app', Job('nightly'))
    folder = os.path.join(str(repo), 'xo-vm-backups', result['vm']['uuid'])
    points = []
    for name in sorted(os.listdir(folder)):
        if name.endswith('.json'):
            with open(os.path.join(folder, name), encoding='utf-8') as handle:
                points.append(json.load(handle))
    assert [point['isVhdDifferencing'] for point in points][1] and all(points[1]['isVhdDifferencing'].values())
    return points


def test_our_points_hold_every_field_xo_restore_reads_with_its_type(our_points):
    for metadata in our_points:
        assert xo_problems(metadata) == []
    newest = our_points[-1]
    # Memory above 2^31 is a JSON number, as in XO's own files; booleans are booleans.
    assert newest['vm']['memory_static_max'] == 6 * 1024 ** 3 and newest['vm']['VCPUs_max'] == 2
    assert all(isinstance(vdi['virtual_size'], int) for vdi in newest['vdis'].values())
    assert {vif['$network$name_label']: vif.get('$network$VLAN', 'absent') for vif in newest['vifs'].values()} == {
        'Pool-wide network associated with eth0': -1, 'vlan20-prod': 20, 'Isolated': 'absent'}
    assert newest['version'] == '2.0.0' and newest['mode'] == 'delta'  # IncrementalRemoteWriter.mjs:248,251
    assert {vdi['other_config'].get('xo:base_delta_vdi') for vdi in newest['vdis'].values()} == {
        vdi['uuid'] for vdi in our_points[0]['vdis'].values()}  # _incrementalVm.mjs:62


def test_the_walk_finds_what_xo_would_miss(our_points):
    """The check itself can fail: a field removed, a number stored as text, a disk without its VBD."""
    broken = json.loads(json.dumps(our_points[-1]))
    del broken['vmSnapshot']['suspend_VDI']
    broken['vm']['memory_static_max'] = str(broken['vm']['memory_static_max'])
    first_vbd = next(ref for ref, vbd in broken['vbds'].items() if vbd['type'] == 'Disk')
    broken['vbds'][first_vbd]['VDI'] = 'OpaqueRef:NULL'
    problems = xo_problems(broken)
    assert any(problem.startswith('.vmSnapshot.suspend_VDI: missing') for problem in problems)
    assert any(problem.startswith(".vm.memory_static_max = '6442450944': XO gets a JSON int") for problem in problems)
    assert any(problem.endswith(': no VBD attaches it') for problem in problems)


def test_xo_reads_of_its_own_fixture_agree_with_the_list(tmp_path):
    """The list is XO's reading: XO's own files (the fixture) pass it too."""
    repository = xo_fixture.build_xo_repository(str(tmp_path))
    for metadata in repository.metadata.values():
        assert xo_problems(metadata) == []


def test_record_types_table_is_current():
    spec = importlib.util.spec_from_file_location('gen_xapi_record_types', os.path.join(COLLECTION, 'tools', 'gen_xapi_record_types.py'))
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    with open(generator.DATAMODEL, encoding='utf-8') as handle:
        datamodel = json.load(handle)
    with open(generator.TABLE, encoding='utf-8') as handle:
        assert handle.read() == generator.render(datamodel), 'run tools/gen_xapi_record_types.py'
    assert RECORD_TYPES['VM']['memory_static_max'] == ('int',) and 'name_label' not in RECORD_TYPES['VM']


# -- values by datamodel type ------------------------------------------------------------------------------


@pytest.mark.parametrize('kind, value, expected', [
    ('int', 4294967296, '4294967296'), ('int', '4294967296', '4294967296'), ('int', 2.0, '2'), ('float', 1, 1.0), ('float', '1.5', 1.5),
    ('bool', 0, False), ('bool', 1, True), ('bool', 'true', True), ('bool', False, False), ('string', 3, '3'),
    ('enum on_normal_exit', 'destroy', 'destroy'), ('VDI ref', 'OpaqueRef:NULL', 'OpaqueRef:NULL'),
    ('(string -> string) map', {'weight': 256, 'cap': '0', 'flag': True}, {'weight': '256', 'cap': '0', 'flag': 'true'}),
    ('string set', ['a', 1], ['a', '1']), ('(string -> int) map', {'a': 5000000000}, {'a': '5000000000'}),
    ('(string -> (string -> int) map) map', {'x': {'y': 3}}, {'x': {'y': '3'}}),
])
def test_xmlrpc_value_encodes_by_datamodel_type(kind, value, expected):
    encoded = xmlrpc_value(kind, value)
    assert encoded == expected and type(encoded) is type(expected)


@pytest.mark.parametrize('kind, value', [('int', 'lots'), ('int', True), ('int', 1.5), ('bool', 2), ('bool', 'yes'), ('float', 'x'),
                                         ('string set', 'abc'), ('(string -> string) map', ['a']), ('string', None)])
def test_xmlrpc_value_refuses_what_its_type_cannot_hold(kind, value):
    with pytest.raises(WireTypeError):
        xmlrpc_value(kind, value)


def test_jsonrpc_value_gives_numbers():
    assert jsonrpc_value('int', '6442450944') == 6442450944 and jsonrpc_value('bool', 1) is True and jsonrpc_value('float', '1.0') == 1.0


def test_a_bad_recorded_value_is_refused_naming_the_field():
    with pytest.raises(restore.RestoreError, match=r"the VM record has memory_static_max = 'lots', which is no int for XAPI .*metadata JSON"):
        restore.constructor_record('VM', dict(xo_fixture.vm_record('x', False, False), memory_static_max='lots'), 'the VM record')


# -- a point XO wrote, restored ----------------------------------------------------------------------------

TARGET_POOL = """
pool: {name: target-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
networks: [{name: Pool-wide network associated with eth0, bridge: xenbr0}]
"""


@pytest.mark.parametrize('legacy_booleans', [False, True])
def test_a_point_xo_wrote_is_listed_verified_and_restored_byte_for_byte(tmp_path, legacy_booleans):
    fixture = xo_fixture.build_xo_repository(str(tmp_path / 'xo'), legacy_booleans=legacy_booleans)
    repository = open_repository(str(tmp_path / 'xo'))
    listed = describe_repository(repository, verify=True)
    assert listed['problems'] == [] and listed['files_verified'] == 4
    # read and checked structurally, but with nothing recorded to compare: listed as unverified
    assert sorted(entry['file'] for entry in listed['unverified_files']) == sorted(
        'vdis/%s/%s/%s.vhd' % (xo_fixture.JOB_ID, disk['live'], date) for disk in xo_fixture.DISKS for date in fixture.points)
    assert listed['damaged_blocks'] == [] and listed['foreign_merges'] == []
    [vm] = listed['vms']
    assert vm['uuid'] == xo_fixture.VM_UUID and [point['timestamp'] for point in vm['backups']] == fixture.points
    assert {point['written_by'] for point in vm['backups']} == {'another tool (no checksums recorded)'}
    newest = vm['backups'][-1]
    assert [len(disk['chain']) for disk in newest['disks']] == [2, 2] and all(disk['differencing'] for disk in newest['disks'])
    # no virtual_sizes of ours: each disk's size is its VHD footer's
    assert {disk['vdi_uuid']: disk['virtual_size'] for disk in newest['disks']} == {disk['live']: disk['size'] for disk in xo_fixture.DISKS}
    with running_pool(TARGET_POOL) as sim, connect(sim) as xapi:
        result = restore.restore(xapi, repository, xo_fixture.VM_UUID)
        # Not checksum-verified (XO records no sha256), and the result says so file by file.
        assert result['checksums']['verified'] == []
        assert sorted(result['checksums']['unverified']) == sorted(
            'vdis/%s/%s/%s.vhd' % (xo_fixture.JOB_ID, disk['live'], date) for disk in xo_fixture.DISKS for date in fixture.points)
        by_source = {disk['source_vdi_uuid']: disk for disk in result['disks']}
        for disk in xo_fixture.DISKS:
            restored = by_source[disk['live']]
            # No virtual_sizes of ours: the size is the VHD footer's current size.
            assert restored['virtual_size'] == disk['size'] and restored['chain_length'] == 2
            assert sim.control.read_vdi(restored['vdi_uuid']) == fixture.content[fixture.points[-1]][disk['live']]
        record = sim.control.record('VM', result['vm']['uuid'])
        assert [record[name] for name in ('memory_static_max', 'memory_dynamic_max', 'memory_dynamic_min', 'memory_static_min')] == [
            4 << 30, 4 << 30, 2 << 30, 1 << 30]
        assert (record['VCPUs_max'], record['VCPUs_at_startup'], record['user_version']) == (4, 2, 1)
        assert record['is_a_template'] is False and record['HVM_boot_params'] == {'order': 'cdn'}
        assert record['platform']['device-model'] == 'qemu-upstream-compat'
        vbds = [sim.control.record('VBD', ref) for ref in record['VBDs']]
        assert sorted((vbd['userdevice'], vbd['bootable'], vbd['unpluggable']) for vbd in vbds) == [('0', True, True), ('1', False, True)]
        [vif] = [sim.control.record('VIF', ref) for ref in record['VIFs']]
        assert (vif['MTU'], vif['qos_algorithm_type'], vif['qos_algorithm_params']) == (1500, 'ratelimit', {'kbps': '102400'})


def test_an_older_point_xo_wrote_restores_its_own_content(tmp_path):
    fixture = xo_fixture.build_xo_repository(str(tmp_path / 'xo'))
    repository = open_repository(str(tmp_path / 'xo'))
    with running_pool(TARGET_POOL) as sim, connect(sim) as xapi:
        result = restore.restore(xapi, repository, xo_fixture.VM_UUID, point=0, disk=xo_fixture.DISKS[0]['live'])
        [restored] = result['disks']
        assert restored['chain_length'] == 1
        assert sim.control.read_vdi(restored['vdi_uuid']) == fixture.content[fixture.points[0]][xo_fixture.DISKS[0]['live']]


def test_xo_metadata_reads_as_valid(tmp_path):
    fixture = xo_fixture.build_xo_repository(str(tmp_path), legacy_booleans=True)
    storage = LocalStorage(str(tmp_path))
    metadata = read_metadata(storage, 'xo-vm-backups/%s/%s.json' % (xo_fixture.VM_UUID, fixture.points[-1]))
    assert set(metadata['isVhdDifferencing'].values()) == {True}  # 0/1 repaired


def test_xo_differencing_flags_keyed_by_stream_name_are_read(tmp_path):
    """XO keyed isVhdDifferencing '<ref>.vhd' until 2025-05 (xen-orchestra 41e5a33c, f2a38591): the delta is still a delta."""
    fixture = xo_fixture.build_xo_repository(str(tmp_path))
    path = os.path.join(fixture.vm_folder, '%s.json' % fixture.points[-1])
    with open(path, encoding='utf-8') as handle:
        metadata = json.load(handle)
    metadata['isVhdDifferencing'] = {'%s.vhd' % ref: flag for ref, flag in metadata['isVhdDifferencing'].items()}
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(metadata, handle)
    [vm] = describe_repository(open_repository(str(tmp_path)))['vms']
    assert [[disk['differencing'] for disk in point['disks']] for point in vm['backups']] == [[False, False], [True, True]]


def test_older_points_of_ours_and_xo_points_give_the_same_create_records():
    """Our files before this change held XML-RPC's text ints; XO's hold numbers (or 0/1 booleans): XAPI gets the same record."""
    xo_record = xo_fixture.vm_record('x', False, legacy=False)
    legacy_record = xo_fixture.vm_record('x', False, legacy=True)
    ours_before = {name: str(value) if RECORD_TYPES['VM'].get(name) == ('int',) else value for name, value in xo_record.items()}
    assert ours_before['memory_static_max'] == str(4 << 30)
    created = [restore.constructor_record('VM', record, 'the VM record') for record in (xo_record, legacy_record, ours_before)]
    assert created[0] == created[1] == created[2]
    assert created[0]['memory_static_max'] == str(4 << 30) and created[0]['is_a_template'] is False and created[0]['HVM_shadow_multiplier'] == 1.0
