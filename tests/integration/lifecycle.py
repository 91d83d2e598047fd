# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small pool and the steps of a backup run, shared by the integration tests."""

from __future__ import annotations

import os

from oracles import chain_of, chain_sha256, engine_chain_sha256

MIB = 1024 * 1024
POOL = """
pool: {name: export-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 20GiB, default: true}]
networks: [{name: Network 0, bridge: xenbr0}]
vms:
  - name: app01
    power_state: Running
    disks:
      - name: app01-root
        size: 96MiB
        data:
          - {offset: 0, length: 6MiB, seed: 11}
          - {offset: 50MiB, length: 1MiB, seed: 12}
      - name: app01-data
        size: 64MiB
        data:
          - {offset: 3MiB, length: 5MiB, seed: 13}
      - name: "app01-swap [NOBAK]"
        size: 32MiB
        data:
          - {offset: 0, length: 2MiB, seed: 14}
    vifs: [{network: Network 0}]
"""


def load_app_pool(ansible, pool, tmp_path) -> dict:
    """The small export pool loaded, and one empty repository."""
    pool.control.load_config(POOL)
    repository = tmp_path / 'repo'
    repository.mkdir()
    # Snapshots copy disk names, so guest writes address the live disks by uuid.
    live = {name: pool.control.record('VDI', name)['uuid'] for name in ('app01-root', 'app01-data')}
    return {'ansible': ansible, 'sim': pool, 'repo': str(repository), 'tmp': tmp_path, 'live': live}


def guest_write(app, disk, offset, length, seed):
    app['sim'].control.write_vdi(app['live'][disk], offset, length=length, seed=seed)


def backup(app, repositories=None, check=False, expect_failure=False, **options):
    """One run in one playbook: snapshot, then export that snapshot; returns (snapshot result, export result)."""
    args = dict({'vm': 'app01', 'job': 'nightly', 'repositories': repositories or [app['repo']]}, **options)
    if not check:
        args['snapshot'] = '{{ result_0.snapshot.uuid }}'
    snap, export = app['ansible'].run_tasks([('vm_snapshot', {'vm': 'app01', 'job': 'nightly'}), ('delta_export', args)],
                                            check=check, expect_failure=expect_failure)
    return snap, export


def ground_truth(app, export):
    """The content of each snapshot VDI, read from the simulator while the snapshot still exists."""
    return {disk['snapshot_vdi_uuid']: app['sim'].control.vdi_sha256(disk['snapshot_vdi_uuid']) for disk in export['disks']}


def assert_point_matches_truth(app, repository, export, truth=None, engine: bool = False):
    """Every disk of the backup, read by libvhdi (with ``engine``, by our VHD engine) through its chain, equals the snapshot VDI's content."""
    truth = truth or ground_truth(app, export)
    vm_dir = os.path.join(repository, 'xo-vm-backups', export['vm']['uuid'])
    for disk in export['disks']:
        chain = chain_of(os.path.join(vm_dir, disk['path']))
        digest, size = engine_chain_sha256(chain) if engine else chain_sha256(chain)
        assert size == disk['virtual_size']
        assert digest == truth[disk['snapshot_vdi_uuid']], disk['name_label']
