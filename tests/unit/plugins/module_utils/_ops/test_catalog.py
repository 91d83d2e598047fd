# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What backup_info reports of a repository (describe_repository), and what its verification finds.

On histories written with the VHD engine (RepoBuilder) and on one written by real exports from the
simulator in this process.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.catalog import describe_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import manage_job_snapshots
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import sidecar_name
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.structures import BAT_UNUSED
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import BLOCK, JOB, VM, RepoBuilder, chain_sha
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

POINTS = 4


@pytest.fixture
def history(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=2, size=8 * BLOCK)
    for number in range(POINTS):
        builder.add_point(full=number == 0, changed_blocks=2)
    return builder


def flip_byte(path: str, offset: int) -> None:
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_points_with_their_chains_newest_file_first(history):
    result = describe_repository(history.repo)
    assert result['problems'] == [] and result['verified'] is False and result['files_verified'] == 0
    assert [vm['uuid'] for vm in result['vms']] == [VM] and result['vms'][0]['name_label'] == 'vm1'
    backups = result['vms'][0]['backups']
    assert [point['timestamp'] for point in backups] == sorted(history.truth)
    assert all(point['job_id'] == JOB for point in backups)
    assert result['jobs'] == [{'id': JOB, 'name': None}]
    for number, point in enumerate(backups):
        for disk in point['disks']:
            # a point's chain runs from its own file back to the full
            assert len(disk['chain']) == number + 1
            assert disk['chain'][0] == disk['path'] and disk['differencing'] is (number > 0)
            assert disk['file_size'] == os.path.getsize(os.path.join(history.repo.vm_dir(VM), disk['path']))
    assert backups[0]['written_by'] == 'xapi.delta_backup'


def test_verification_of_an_intact_repository_hashes_every_file_once(history):
    result = describe_repository(history.repo, verify=True)
    assert result['verified'] is True and result['problems'] == []
    assert result['files_verified'] == 2 * POINTS
    assert result['damaged_blocks'] == [] and result['foreign_merges'] == [] and result['unverified_files'] == []


def present_blocks(path: str) -> list:
    with VhdFile.open(path) as vhd:
        return [index for index in range(vhd.block_count) if vhd.bat[index] != BAT_UNUSED]


def data_offset_of(path: str, index: int, within: int) -> int:
    with VhdFile.open(path) as vhd:
        return vhd.bat[index] * 512 + vhd.bitmap_size + within


def points_reading_wrong_data(history) -> list:
    """The oracle: the points whose disks no longer read as written (read without any checksum)."""
    wrong = []
    for point in history.repo.list_backups(VM):
        for disk in point.disks:
            if chain_sha(history.repo, point, disk) != history.expected_disk(point.timestamp, history.live.index(disk.vdi_uuid)):
                wrong.append(point.timestamp)
    return sorted(set(wrong))


@pytest.mark.parametrize('which_file', [0, 1, POINTS - 1], ids=['full', 'middle-delta', 'newest-delta'])
@pytest.mark.parametrize('which_block', ['first', 'middle', 'last'])
def test_a_flipped_bit_in_any_block_is_named_with_every_point_reading_it(history, which_file, which_block):
    point = history.repo.list_backups(VM)[which_file]
    victim = point.disks[0].path
    blocks = present_blocks(victim)
    index = {'first': blocks[0], 'middle': blocks[len(blocks) // 2], 'last': blocks[-1]}[which_block]
    flip_byte(victim, data_offset_of(victim, index, 777))
    assert describe_repository(history.repo)['problems'] == [], 'without verify nothing is read'
    readers = points_reading_wrong_data(history)
    assert readers, 'the oracle sees the damage in at least the point that wrote the block'
    result = describe_repository(history.repo, verify=True)
    relative = os.path.relpath(victim, history.repo.vm_dir(VM))
    assert result['damaged_blocks'] == [{'vm_uuid': VM, 'file': relative, 'block': index, 'virtual_offset': index * BLOCK,
                                         'problem': 'does not match its recorded checksum (the block is damaged)', 'points': readers}]
    assert result['problems'] == ['%s: block %d (virtual offset %d): does not match its recorded checksum (the block is damaged); '
                                  'read by backup point%s %s' % (victim, index, index * BLOCK, 's' if len(readers) > 1 else '',
                                                                 ', '.join(readers))]
    assert result['vms'][0]['problems'] == result['problems'] and result['foreign_merges'] == []


def test_a_damaged_block_table_names_the_file_and_the_points_holding_it(history):
    points = history.repo.list_backups(VM)
    victim = points[1].disks[1].path
    with VhdFile.open(victim) as vhd:
        bat_offset = vhd.header.table_offset
    flip_byte(victim, bat_offset + 4 * 7 + 3)  # the low byte of block 7's entry: a moved or invented block
    result = describe_repository(history.repo, verify=True)
    holders = ', '.join(point.timestamp for point in points[1:])
    assert '%s: its BAT differs from the one recorded with its block checksums (changed or damaged) (in the chain of backup points %s)' % (
        victim, holders) in result['problems'], result['problems']
    assert all(victim in problem for problem in result['problems'])


def test_a_missing_or_damaged_block_checksum_file_is_damage(history):
    points = history.repo.list_backups(VM)
    removed, damaged, damaged_entry = points[2].disks[0].path, points[3].disks[1].path, points[0].disks[1].path
    os.unlink(sidecar_name(removed))
    flip_byte(sidecar_name(damaged), 100)  # in its header (covered by the header's own checksum)
    index = present_blocks(damaged_entry)[0]
    flip_byte(sidecar_name(damaged_entry), 512 + 32 * index + 9)  # in one block's entry: that block no longer matches
    result = describe_repository(history.repo, verify=True)
    joined = ' | '.join(result['problems'])
    assert '%s: its block checksum file %s is missing' % (removed, os.path.basename(sidecar_name(removed))) in joined
    assert sidecar_name(damaged) in joined and 'header checksum mismatch' in joined
    assert [(block['file'], block['block']) for block in result['damaged_blocks']] == [
        (os.path.relpath(damaged_entry, history.repo.vm_dir(VM)), index)]
    assert len(result['problems']) == 3, result['problems']


def test_a_legacy_repository_is_checked_file_by_file(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=1, size=8 * BLOCK, legacy=True)
    for number in range(3):
        builder.add_point(full=number == 0, changed_blocks=2)
    assert describe_repository(builder.repo, verify=True)['problems'] == []
    victim = builder.repo.list_backups(VM)[1].disks[0].path
    flip_byte(victim, data_offset_of(victim, present_blocks(victim)[0], 5))
    result = describe_repository(builder.repo, verify=True)
    assert len(result['problems']) == 1 and result['problems'][0].startswith(victim + ': sha256 '), result['problems']
    assert result['damaged_blocks'] == []


def test_verification_names_a_truncated_and_a_missing_file(history):
    points = history.repo.list_backups(VM)
    truncated = points[2].disks[1].path
    with open(truncated, 'r+b') as handle:
        handle.truncate(os.path.getsize(truncated) - 4096)
    missing = points[3].disks[0].path
    os.unlink(missing)
    result = describe_repository(history.repo, verify=True)
    assert any(truncated in problem and 'footer' in problem for problem in result['problems']), result['problems']
    relative = os.path.relpath(missing, history.repo.vm_dir(VM))
    assert '%s, which is missing' % relative in ' '.join(result['problems']), result['problems']
    untouched = points[1].disks[0].path
    assert not any(problem.startswith(untouched + ':') for problem in result['problems'])


def test_filters_by_vm_and_job(history):
    assert [vm['uuid'] for vm in describe_repository(history.repo, vm='vm1')['vms']] == [VM]
    assert [vm['uuid'] for vm in describe_repository(history.repo, vm=VM)['vms']] == [VM]
    assert describe_repository(history.repo, job='weekly')['vms'] == []
    with pytest.raises(Exception, match=r"no backup of VM 'vm2' in %s" % history.repo.root):
        describe_repository(history.repo, vm='vm2')
    with pytest.raises(Exception, match=r"no backup of VM 'vm1' in .* by job 'weekly'"):
        describe_repository(history.repo, vm='vm1', job='weekly')


POOL = """
pool: {name: catalog-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
vms:
  - name: app
    power_state: Running
    disks: [{name: app-root, size: 6MiB, data: [{offset: 0, length: 5MiB, seed: 3}]}]
"""


def test_a_repository_written_by_real_exports(tmp_path):
    repo = tmp_path / 'repo'
    repo.mkdir()
    with running_pool(POOL) as sim:
        with connect(sim) as xapi:
            for _run in range(2):
                manage_job_snapshots(xapi, 'app', Job('nightly'), take=True)
                export_vm(xapi, [str(repo)], 'app', Job('nightly'))
            vm_uuid = xapi.call('VM.get_uuid', xapi.call('VM.get_by_name_label', 'app')[0])
    result = describe_repository(open_repository(str(repo)), vm='app', verify=True)
    assert result['problems'] == [] and result['files_verified'] == 2
    assert result['jobs'] == [{'id': job_id_for('nightly'), 'name': 'nightly'}]
    full, delta = result['vms'][0]['backups']
    assert result['vms'][0]['uuid'] == vm_uuid
    assert [disk['name_label'] for disk in full['disks']] == ['app-root']
    assert full['disks'][0]['differencing'] is False and delta['disks'][0]['differencing'] is True
    assert delta['disks'][0]['chain'] == [delta['disks'][0]['path'], full['disks'][0]['path']]
    assert result['vms'][0]['size'] == full['size'] + delta['size'] > 0
    assert [disk['checksums'] for point in (full, delta) for disk in point['disks']] == ['blocks', 'blocks']
    full_path = os.path.join(str(repo), 'xo-vm-backups', vm_uuid, full['disks'][0]['path'])
    index = present_blocks(full_path)[1]
    flip_byte(full_path, data_offset_of(full_path, index, 4096))
    damaged = describe_repository(open_repository(str(repo)), verify=True)
    # the delta holds no block: both points read the full's damaged block
    assert [(block['file'], block['block'], block['points']) for block in damaged['damaged_blocks']] == [
        (full['disks'][0]['path'], index, [full['timestamp'], delta['timestamp']])]
    assert len(damaged['problems']) == 1 and full_path in damaged['problems'][0]
