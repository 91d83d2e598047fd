# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vTPM backup and restore (_ops/vtpm.py): the pure planning, then export and restore against the simulator in this
process (real HTTP, real XenAPI client), the contents checked through the simulator's ground truth."""

from __future__ import annotations

import json
import os
import secrets
import stat

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import vtpm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.restore import RestoreError, restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import manage_job_snapshots
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiError
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

JOB = 'nightly'
SECRET = 'cGVybWFsbA%s== c2F2ZQ== dm9sYXRpbGU=' % secrets.token_hex(8)
POOL = """
pool: {name: vtpm-pool}
srs: [{name: Local storage, size: 2GiB, default: true}]
networks: [{name: Pool-wide network associated with eth0, bridge: xenbr0}]
vms:
  - name: win
    power_state: Running
    vtpm: {contents: "%s"}
    disks: [{name: win-root, size: 4MiB, data: [{offset: 0, length: 2MiB, seed: 3}]}]
    vifs: [{network: Pool-wide network associated with eth0}]
  - name: sealed
    vtpm: {contents: "dW5pcXVl", is_unique: true}
    disks: [{name: sealed-root, size: 2MiB}]
""" % SECRET
OLD_POOL = """
xapi: {profile: xcp-ng-8.2}
pool: {name: old-pool}
srs: [{name: Local storage, size: 2GiB, default: true}]
networks: [{name: Pool-wide network associated with eth0, bridge: xenbr0}]
"""


# -- pure --------------------------------------------------------------------------------------


def test_backed_up_vtpms_reads_ours_and_xen_orchestras():
    ours = vtpm.backed_up_vtpms({'vtpms': ['c2VjcmV0'], 'xapi_delta_backup_vtpms': [{'uuid': 'u1', 'is_unique': True, 'read_from': 'vm'}]})
    assert [(item.source_uuid, item.is_unique, item.contents, item.action) for item in ours] == [('u1', True, 'c2VjcmV0', 'recreate')]
    # Xen Orchestra writes only the list; a vTPM it could not read is null (JSON of undefined in an array).
    xo = vtpm.backed_up_vtpms({'vtpms': ['YQ==', None]})
    assert [(item.source_uuid, item.is_unique, item.contents) for item in xo] == [(None, False, 'YQ=='), (None, False, None)]
    assert vtpm.backed_up_vtpms({}) == [] and vtpm.backed_up_vtpms({'vtpms': []}) == []


@pytest.mark.parametrize('value', ['c2VjcmV0', {'a': 'c2VjcmV0'}, ['c2VjcmV0', 7]])
def test_bad_vtpms_field_is_named_without_its_contents(value):
    with pytest.raises(ValueError) as refused:
        vtpm.backed_up_vtpms({'vtpms': value})
    assert "'vtpms' field must be a list" in str(refused.value) and 'c2VjcmV0' not in str(refused.value)


def test_pool_support_from_restrictions():
    assert vtpm.pool_vtpm_support({'restrict_vtpm': 'false'}) is None
    assert 'no vTPM support' in vtpm.pool_vtpm_support({})
    assert 'licence does not allow vTPMs (pool restrictions restrict_vtpm=true)' in vtpm.pool_vtpm_support({'restrict_vtpm': 'true'})


def _items():
    return vtpm.backed_up_vtpms({'vtpms': ['c2VjcmV0'], 'xapi_delta_backup_vtpms': [{'uuid': 'u1', 'is_unique': False}]})


def test_plan_recreates_where_supported_and_refuses_or_drops_elsewhere():
    planned, refusal = vtpm.plan_vtpms(_items(), None, False)
    assert refusal is None and [item.action for item in planned] == ['recreate']
    _planned, refusal = vtpm.plan_vtpms(_items(), 'this pool\'s XAPI has no vTPM support', False)
    assert 'had a vTPM (u1), which this restore cannot recreate: this pool\'s XAPI has no vTPM support' in refusal
    assert 'allow_vtpm_loss=true' in refusal and 'c2VjcmV0' not in refusal
    planned, refusal = vtpm.plan_vtpms(_items(), 'no support', True)
    assert refusal is None
    expected = {'source_uuid': 'u1', 'is_unique': False, 'action': 'drop', 'restored': False, 'uuid': None, 'reason': 'no support'}
    assert [item.as_result() for item in planned] == [expected]
    assert planned[0].contents is None


def test_plan_refuses_a_vtpm_without_contents_unless_loss_is_accepted():
    items = vtpm.backed_up_vtpms({'vtpms': [None]})
    _planned, refusal = vtpm.plan_vtpms(items, None, False)
    assert 'holds no contents for it' in refusal
    planned, refusal = vtpm.plan_vtpms(items, None, True)
    assert refusal is None and planned[0].action == 'drop'


def test_plan_refuses_contents_xapi_would_not_take_in_one_request():
    items = vtpm.backed_up_vtpms({'vtpms': ['A' * (300 * 1024)]})
    for allow in (False, True):
        _planned, refusal = vtpm.plan_vtpms(items, None, allow)
        assert 'more than XAPI takes in one request (307200)' in refusal and 'AAAA' not in refusal


def test_result_and_repr_never_show_the_contents():
    item = _items()[0]
    assert 'c2VjcmV0' not in repr(item) and 'c2VjcmV0' not in json.dumps(item.as_result())


# -- against the simulator ---------------------------------------------------------------------


@pytest.fixture
def pool():
    with running_pool(POOL) as sim:
        with connect(sim) as xapi:
            yield sim, xapi


def _backup(xapi, repository, vm, **options):
    os.makedirs(repository, exist_ok=True)
    manage_job_snapshots(xapi, vm, Job(JOB), take=True)
    return export_vm(xapi, [repository], vm, Job(JOB), **options)


def _metadata(repository: str, vm_uuid: str) -> tuple[dict, str]:
    point = open_repository(repository).list_backups(vm_uuid)[-1]
    return point.metadata, point.metadata_path


def _vm_uuid(xapi, name):
    return xapi.call('VM.get_uuid', xapi.call('VM.get_by_name_label', name)[0])


def test_export_records_the_snapshot_contents_as_xen_orchestra_does(pool, tmp_path):
    sim, xapi = pool
    repository = str(tmp_path / 'repo')
    vm_ref = xapi.call('VM.get_by_name_label', 'win')[0]
    live_vtpm = xapi.call('VM.get_VTPMs', vm_ref)[0]
    os.makedirs(repository)
    manage_job_snapshots(xapi, 'win', Job(JOB), take=True)
    # Changed after the snapshot: the backup keeps the snapshot's contents, those of the disks' moment.
    xapi.call('VTPM.set_contents', live_vtpm, 'bGF0ZXI=')
    result = export_vm(xapi, [repository], 'win', Job(JOB), file_mode=0o640)
    metadata, path = _metadata(repository, _vm_uuid(xapi, 'win'))
    assert metadata['vtpms'] == [SECRET]
    [snapshot] = xapi.call('VM.get_snapshots', vm_ref)
    [snapshot_vtpm] = sim.control.vtpms(snapshot)
    assert metadata['xapi_delta_backup_vtpms'] == [{'uuid': snapshot_vtpm['uuid'], 'is_unique': False, 'read_from': 'snapshot'}]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert SECRET not in json.dumps(result)


def test_export_reads_a_unique_vtpm_from_the_live_vm(pool, tmp_path):
    sim, xapi = pool
    repository = str(tmp_path / 'repo')
    _backup(xapi, repository, 'sealed')
    metadata, _path = _metadata(repository, _vm_uuid(xapi, 'sealed'))
    # The snapshot's copy of a unique vTPM is empty (XAPI never copies it): the live VM's contents are recorded.
    assert metadata['vtpms'] == ['dW5pcXVl']
    assert metadata['xapi_delta_backup_vtpms'][0]['is_unique'] is True and metadata['xapi_delta_backup_vtpms'][0]['read_from'] == 'vm'


def test_restore_recreates_the_vtpm_with_its_contents(pool, tmp_path):
    sim, xapi = pool
    repository = str(tmp_path / 'repo')
    _backup(xapi, repository, 'win')
    vm_uuid = _vm_uuid(xapi, 'win')
    planned = restore(xapi, open_repository(repository), vm_uuid, name_label='win-check', check_mode=True)
    assert [(item['action'], item['restored']) for item in planned['vtpms']] == [('recreate', False)]
    assert xapi.call('VM.get_by_name_label', 'win-check') == []
    result = restore(xapi, open_repository(repository), vm_uuid, name_label='win-restored', start=True)
    assert SECRET not in json.dumps(result)
    [entry] = result['vtpms']
    assert entry['action'] == 'recreate' and entry['restored'] is True and entry['is_unique'] is False
    truth = sim.control.vtpms('win-restored')
    assert truth == [{'uuid': entry['uuid'], 'is_unique': False, 'contents': SECRET}]
    assert result['vm']['started'] is True


def test_restore_keeps_a_unique_vtpm_unique(pool, tmp_path):
    sim, xapi = pool
    repository = str(tmp_path / 'repo')
    _backup(xapi, repository, 'sealed')
    result = restore(xapi, open_repository(repository), _vm_uuid(xapi, 'sealed'), name_label='sealed-restored')
    assert sim.control.vtpms('sealed-restored') == [{'uuid': result['vtpms'][0]['uuid'], 'is_unique': True, 'contents': 'dW5pcXVl'}]


def test_a_failed_contents_write_rolls_back_vm_and_vtpm(pool, tmp_path):
    sim, xapi = pool
    repository = str(tmp_path / 'repo')
    _backup(xapi, repository, 'win')
    before = set(xapi.call('VTPM.get_all'))
    sim.control.fail_next('VTPM.set_contents', ['INTERNAL_ERROR', 'injected'])
    with pytest.raises(XapiError) as failed:
        restore(xapi, open_repository(repository), _vm_uuid(xapi, 'win'), name_label='win-failed')
    assert 'everything it created was removed' in str(failed.value) and SECRET not in str(failed.value)
    assert xapi.call('VM.get_by_name_label', 'win-failed') == []
    assert set(xapi.call('VTPM.get_all')) == before


def test_restore_to_a_pool_without_vtpm_support(pool, tmp_path):
    _sim, xapi = pool
    repository = str(tmp_path / 'repo')
    _backup(xapi, repository, 'win')
    vm_uuid = _vm_uuid(xapi, 'win')
    with running_pool(OLD_POOL) as old:
        with connect(old) as old_xapi:
            vms_before = set(old_xapi.call('VM.get_all'))
            vdis_before = set(old_xapi.call('VDI.get_all'))
            with pytest.raises(RestoreError, match='no vTPM support'):
                restore(old_xapi, open_repository(repository), vm_uuid, name_label='win-old', check_mode=True)
            planned = restore(old_xapi, open_repository(repository), vm_uuid, name_label='win-old', check_mode=True, allow_vtpm_loss=True)
            assert [(item['action'], item['restored']) for item in planned['vtpms']] == [('drop', False)]
            with pytest.raises(RestoreError) as refused:
                restore(old_xapi, open_repository(repository), vm_uuid, name_label='win-old')
            assert 'cannot recreate: this pool\'s XAPI has no vTPM support' in str(refused.value)
            assert 'allow_vtpm_loss=true' in str(refused.value) and SECRET not in str(refused.value)
            assert set(old_xapi.call('VM.get_all')) == vms_before and set(old_xapi.call('VDI.get_all')) == vdis_before
            result = restore(old_xapi, open_repository(repository), vm_uuid, name_label='win-old', allow_vtpm_loss=True)
            [entry] = result['vtpms']
            assert entry['action'] == 'drop' and entry['restored'] is False and entry['uuid'] is None
            assert 'no vTPM support' in entry['reason']
            assert old_xapi.call('VM.get_VTPMs', old_xapi.call('VM.get_by_uuid', result['vm']['uuid'])) == []


def test_export_on_a_pool_without_vtpms_records_none(tmp_path):
    with running_pool(OLD_POOL + """
vms:
  - name: old
    disks: [{name: old-root, size: 2MiB}]
""") as old:
        with connect(old) as xapi:
            repository = str(tmp_path / 'repo')
            _backup(xapi, repository, 'old')
            metadata, _path = _metadata(repository, _vm_uuid(xapi, 'old'))
            assert metadata['vtpms'] == [] and metadata['xapi_delta_backup_vtpms'] == []
