# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a pool: which VMs a backup may take, by name or uuid, and their disks, against the simulator.

Errors are checked on their message (what was wrong, what to do) and, where the error carries one,
its ``error_code``, so the checks hold whichever error class carries them.
"""

from __future__ import annotations

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.pool import (
    PoolSnapshotOfRecords, find_vm, is_excluded_disk, select_vms, vm_disks,
)
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

POOL = """
pool: {name: read-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
networks: [{name: Pool-wide network associated with eth0, bridge: xenbr0}]
templates: [{name: Debian Bookworm 12, memory: 1GiB, vcpus: 1}]
vms:
  - name: web01
    power_state: Running
    tags: [backup-daily, prod]
    cdrom: true
    disks:
      - {name: web01-data, size: 4MiB}
      - {name: web01-root, size: 8MiB}
      - {name: "web01-swap [NOBAK]", size: 2MiB}
    vifs: [{network: Pool-wide network associated with eth0, mac: "02:16:3e:00:00:01"}]
  - name: twin
    power_state: Halted
    tags: [backup-daily]
    disks: [{name: twin-a, size: 2MiB}]
  - name: twin
    power_state: Halted
    disks: [{name: twin-b, size: 2MiB}]
"""


@pytest.fixture(scope='module')
def xapi():
    with running_pool(POOL) as sim:
        with connect(sim) as connection:
            yield connection


def record_of(xapi, predicate) -> tuple[str, dict]:
    return next((ref, record) for ref, record in xapi.call('VM.get_all_records').items() if predicate(record))


def code_of(error) -> str:
    """Our documented error code (docs/errors.md); the raw XAPI code stays None: XAPI sent none."""
    assert error.code is None and error.params == []
    return error.error_code


def test_a_vm_is_found_by_name_or_uuid_in_any_case(xapi):
    ref, record = find_vm(xapi, 'web01')
    assert record['name_label'] == 'web01' and not record['is_a_template']
    assert find_vm(xapi, record['uuid'])[0] == ref
    assert find_vm(xapi, '  %s ' % record['uuid'].upper())[0] == ref


def test_a_uuid_that_is_another_vms_name_finds_the_uuid(xapi):
    _ref, web01 = find_vm(xapi, 'web01')
    twin_ref = xapi.call('VM.get_by_name_label', 'twin')[1]
    xapi.call('VM.set_name_label', twin_ref, web01['uuid'])
    try:
        assert find_vm(xapi, web01['uuid'])[1]['name_label'] == 'web01'
    finally:
        xapi.call('VM.set_name_label', twin_ref, 'twin')


@pytest.mark.parametrize('kind, predicate, message', [
    ('template', lambda record: record['is_a_template'] and record['name_label'] == 'Debian Bookworm 12', r'is a template, not a VM that can be backed up'),
    ('dom0', lambda record: record['is_control_domain'], r'is the control domain, not a VM that can be backed up'),
])
def test_templates_and_the_control_domain_are_refused_by_uuid(xapi, kind, predicate, message):
    _ref, record = record_of(xapi, predicate)
    with pytest.raises(Exception, match=r'%s \(%s\) %s' % (record['uuid'], record['uuid'], message)) as refused:
        find_vm(xapi, record['uuid'])
    assert code_of(refused.value) == 'vm_not_backup_candidate', kind


def test_a_snapshot_is_refused_by_uuid_and_not_found_by_name(xapi):
    vm_ref, _record = find_vm(xapi, 'web01')
    snapshot = xapi.call('VM.snapshot', vm_ref, 'web01-snap')
    try:
        uuid = xapi.call('VM.get_uuid', snapshot)
        with pytest.raises(Exception, match=r'is a snapshot, not a VM that can be backed up'):
            find_vm(xapi, uuid)
        # by name only real VMs are candidates: the snapshot's name finds nothing
        with pytest.raises(Exception, match=r"no VM named or with uuid 'web01-snap' exists in the pool"):
            find_vm(xapi, 'web01-snap')
    finally:
        for vbd in xapi.call('VM.get_VBDs', snapshot):
            vdi = xapi.call('VBD.get_VDI', vbd)
            if vdi != 'OpaqueRef:NULL':
                xapi.call('VDI.destroy', vdi)
        xapi.call('VM.destroy', snapshot)


def test_a_shared_name_is_ambiguous_and_lists_the_uuids(xapi):
    twins = sorted(xapi.call('VM.get_uuid', ref) for ref in xapi.call('VM.get_by_name_label', 'twin'))
    with pytest.raises(Exception, match=r"2 VMs are named 'twin' \(%s, %s\): give the uuid instead" % tuple(twins)) as refused:
        find_vm(xapi, 'twin')
    assert code_of(refused.value) == 'vm_ambiguous'
    assert find_vm(xapi, twins[1])[1]['uuid'] == twins[1]


@pytest.mark.parametrize('given, message', [
    ('nope', r"no VM named or with uuid 'nope' exists in the pool: check the name or use the uuid"),
    ('00000000-0000-4000-8000-000000000000', r"no VM named or with uuid '00000000-0000-4000-8000-000000000000' exists"),
    ('Debian Bookworm 12', r"no VM named or with uuid 'Debian Bookworm 12' exists"),
    ('', r'no VM given: set vm to the VM uuid or name'),
    ('   ', r'no VM given: set vm to the VM uuid or name'),
])
def test_nothing_found_says_what_to_do(xapi, given, message):
    with pytest.raises(Exception, match=message):
        find_vm(xapi, given)


def test_vm_disks_are_the_disk_vbds_by_userdevice_and_nobak_is_marked(xapi):
    _ref, record = find_vm(xapi, 'web01')
    disks = vm_disks(xapi, record)
    assert [vdi['name_label'] for _vbd_ref, _vbd, _vdi_ref, vdi in disks] == ['web01-data', 'web01-root', 'web01-swap [NOBAK]']
    assert [vbd['userdevice'] for _vbd_ref, vbd, _vdi_ref, _vdi in disks] == sorted(vbd['userdevice'] for _r, vbd, _v, _d in disks)
    assert all(vbd['type'] == 'Disk' for _vbd_ref, vbd, _vdi_ref, _vdi in disks), 'the CD drive is no disk'
    assert [is_excluded_disk(vdi) for _vbd_ref, _vbd, _vdi_ref, vdi in disks] == [False, False, True]
    # the marker is case-sensitive, as in Xen Orchestra
    assert not is_excluded_disk({'name_label': 'swap [nobak]'}) and not is_excluded_disk({})


def test_backup_candidates_are_described_without_templates_snapshots_or_dom0(xapi):
    described = PoolSnapshotOfRecords(xapi).backup_candidates()
    assert [vm['name_label'] for vm in described] == ['twin', 'twin', 'web01']
    web01 = described[-1]
    assert web01['tags'] == ['backup-daily', 'prod'] and web01['power_state'] == 'Running'
    assert [(disk['name_label'], disk['virtual_size'], disk['excluded']) for disk in web01['disks']] == [
        ('web01-data', 4 * 1024 * 1024, False), ('web01-root', 8 * 1024 * 1024, False), ('web01-swap [NOBAK]', 2 * 1024 * 1024, True)]
    assert all(disk['sr_name_label'] == 'Local storage' for disk in web01['disks'])
    assert web01['networks'] == [{'device': '0', 'mac': '02:16:3e:00:00:01', 'network_uuid': web01['networks'][0]['network_uuid'],
                                  'network_name_label': 'Pool-wide network associated with eth0'}]
    assert web01['networks'][0]['network_uuid']


def test_select_vms_by_name_uuid_and_tags(xapi):
    described = PoolSnapshotOfRecords(xapi).backup_candidates()
    web01 = next(vm for vm in described if vm['name_label'] == 'web01')
    assert [vm['uuid'] for vm in select_vms(described, [web01['uuid'].upper()], None)] == [web01['uuid']]
    assert len(select_vms(described, ['twin'], None)) == 2, 'a shared name selects every VM of that name'
    assert [vm['name_label'] for vm in select_vms(described, None, ['backup-daily'])] == ['twin', 'web01']
    assert [vm['name_label'] for vm in select_vms(described, ['twin', 'web01'], ['backup-daily', 'prod'])] == ['web01']
    assert select_vms(described, None, None) == described
    with pytest.raises(Exception, match=r"no VM named or with uuid 'web02', 'Debian Bookworm 12' in the pool \(templates, snapshots and the "
                                        r"control domain are never selected\)") as refused:
        select_vms(described, ['web01', 'web02', 'Debian Bookworm 12'], None)
    assert code_of(refused.value) == 'vm_not_found'
