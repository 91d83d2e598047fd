# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The block checksum files an export writes, against the simulator in this process.

Each VHD gets ``<name>.vhd.blocksums``, computed as the bytes pass, once for every repository; it must
equal the checksums of the file as it lies on disk. A failed export leaves no sidecar, and the one a
run killed between the sidecar and its VHD leaves is removed by the next run.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import HASH_NAME
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import manage_job_snapshots
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import compute_sums
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import XapiError
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

MIB = 1024 * 1024
JOB = 'nightly'
POOL = """
pool: {name: sums-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
vms:
  - name: app
    power_state: Running
    disks:
      - {name: app-root, size: 12MiB, data: [{offset: 0, length: 5MiB, seed: 1}, {offset: 9MiB, length: 4096, seed: 3}]}
      - {name: app-data, size: 6MiB, data: [{offset: 2MiB, length: 1MiB, seed: 2}]}
"""


@pytest.fixture
def pool():
    with running_pool(POOL) as sim:
        with connect(sim) as xapi:
            yield sim, xapi


def export(xapi, repositories):
    for path in repositories:
        os.makedirs(str(path), exist_ok=True)
    manage_job_snapshots(xapi, 'app', Job(JOB), take=True)
    return export_vm(xapi, [str(path) for path in repositories], 'app', Job(JOB))


def all_files(root) -> list[str]:
    """Every file under ``root``, hidden ones included, relative and sorted."""
    return sorted(os.path.relpath(os.path.join(folder, name), root) for folder, _dirs, names in os.walk(root) for name in names)


def sidecars_of(repository, result) -> dict:
    """path -> sidecar bytes for each disk of ``result``, each checked equal to compute_sums of its file as stored."""
    vm_dir = os.path.join(str(repository), 'xo-vm-backups', result['vm']['uuid'])
    found = {}
    for disk in result['disks']:
        assert disk['block_checksums'] == disk['path'] + '.blocksums'
        with VhdFile(os.path.join(vm_dir, disk['path'])) as vhd:
            expected = compute_sums(vhd)
        with open(os.path.join(vm_dir, disk['block_checksums']), 'rb') as handle:
            found[disk['path']] = handle.read()
        assert found[disk['path']] == expected.pack(), disk['path']
        assert len(expected.present()) == disk['blocks']
    return found


def test_full_and_delta_to_two_repositories_get_the_checksums_of_their_files(pool, tmp_path):
    sim, xapi = pool
    first, second = tmp_path / 'one', tmp_path / 'two'
    full = export(xapi, [first, second])
    assert full['mode'] == 'full'
    assert sidecars_of(first, full) == sidecars_of(second, full)
    sim.control.write_vdi(xapi.call('VDI.get_by_name_label', 'app-root')[0], 7 * MIB, seed=9, length=MIB)
    delta = export(xapi, [first, second])
    assert delta['mode'] == 'delta'
    assert sidecars_of(first, delta) == sidecars_of(second, delta)
    root = next(disk for disk in delta['disks'] if disk['name_label'] == 'app-root')
    assert root['blocks'] == 1
    metadata_dir = os.path.join(str(first), 'xo-vm-backups', delta['vm']['uuid'])
    with open(os.path.join(metadata_dir, delta['timestamp'] + '.json'), encoding='utf-8') as handle:
        section = json.load(handle)['xapi_delta_backup']
    assert section['block_checksums'] == {disk['path']: HASH_NAME for disk in delta['disks']}
    assert 'sha256' not in section


@pytest.mark.parametrize('cut', [700, 3 * MIB + 100])
def test_a_cut_export_leaves_neither_vhd_nor_sidecar_in_any_repository(pool, tmp_path, cut):
    sim, xapi = pool
    first, second = tmp_path / 'one', tmp_path / 'two'
    export(xapi, [first, second])
    before = {path: all_files(path) for path in (first, second)}
    sim.control.write_vdi(xapi.call('VDI.get_by_name_label', 'app-root')[0], 0, seed=5, length=4 * MIB)
    sim.control.cut_export(cut)
    with pytest.raises(XapiError, match='export'):
        export(xapi, [first, second])
    assert {path: all_files(path) for path in (first, second)} == before


def test_a_sidecar_left_without_its_vhd_is_removed_by_the_next_run(pool, tmp_path):
    # A run killed after the sidecar was made durable and before its VHD was renamed into place.
    _sim, xapi = pool
    repository = tmp_path / 'repo'
    full = export(xapi, [repository])
    vm_dir = os.path.join(str(repository), 'xo-vm-backups', full['vm']['uuid'])
    kept = os.path.join(vm_dir, full['disks'][0]['block_checksums'])
    orphan = os.path.join(os.path.dirname(kept), '20000101T000000Z.vhd.blocksums')
    shutil.copyfile(kept, orphan)
    delta = export(xapi, [repository])
    assert not os.path.exists(orphan)
    assert orphan in delta['cleaned_up'][str(repository)]['temporary_files']
    assert os.path.exists(kept)  # the sidecar of a VHD that is there stays
    sidecars_of(repository, full)
    sidecars_of(repository, delta)
