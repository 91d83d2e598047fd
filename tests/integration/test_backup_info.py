# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_info through ansible-playbook: listing, chains, verification of damaged repositories."""

from __future__ import annotations

import json
import os

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
from lifecycle import MIB, backup, guest_write
from oracles import backup_points


def two_points(app):
    _snap, full = backup(app)
    guest_write(app, 'app01-root', 2 * MIB, 4096, 31)
    _snap, delta = backup(app)
    return full, delta


def test_lists_points_with_chains_and_verifies_clean(app):
    full, delta = two_points(app)
    listing = app['ansible'].run_task('backup_info', {'repository': app['repo']})
    assert listing['changed'] is False and listing['problems'] == []
    assert listing['jobs'][0]['name'] == 'nightly'
    (vm,) = listing['vms']
    assert vm['name_label'] == 'app01'
    assert [point['timestamp'] for point in vm['backups']] == [full['timestamp'], delta['timestamp']]
    newest_root = next(disk for disk in vm['backups'][1]['disks'] if disk['name_label'] == 'app01-root')
    assert newest_root['differencing'] is True
    assert [path.rsplit('/', 1)[1] for path in newest_root['chain']] == [delta['timestamp'] + '.vhd', full['timestamp'] + '.vhd']
    verified = app['ansible'].run_task('backup_info', {'repository': app['repo'], 'verify': True})
    assert verified['problems'] == [] and verified['files_verified'] == 4


def block_at(path: str, file_offset: int):
    """(block number, whether the file holds it) of the block whose stored span holds ``file_offset`` (None if none does)."""
    with VhdFile.open(path) as vhd:
        for index in range(vhd.block_count):
            start = vhd.bat[index] * 512
            if vhd.bat[index] != 0xFFFFFFFF and start <= file_offset < start + vhd.bitmap_size + vhd.block_size:
                return index
    return None


def holds_block(path: str, index: int) -> bool:
    with VhdFile.open(path) as vhd:
        return vhd.bat[index] != 0xFFFFFFFF


def test_flipped_byte_and_truncation_are_named(app):
    full, delta = two_points(app)
    vm_dir = os.path.join(app['repo'], 'xo-vm-backups', full['vm']['uuid'])
    damaged = os.path.join(vm_dir, full['disks'][0]['path'])
    with open(damaged, 'r+b') as vhd:
        vhd.seek(4 * MIB)
        byte = vhd.read(1)
        vhd.seek(4 * MIB)
        vhd.write(bytes([byte[0] ^ 0xFF]))
    truncated = os.path.join(vm_dir, full['disks'][1]['path'])
    os.truncate(truncated, os.path.getsize(truncated) - 1000)
    index = block_at(damaged, 4 * MIB)
    assert index is not None, 'the flipped byte lies in a data block'
    newer = os.path.join(vm_dir, next(disk['path'] for disk in delta['disks'] if disk['vdi_uuid'] == full['disks'][0]['vdi_uuid']))
    readers = [full['timestamp']] + ([] if holds_block(newer, index) else [delta['timestamp']])
    result = app['ansible'].run_task('backup_info', {'repository': app['repo'], 'verify': True}, expect_failure=True)
    assert result['error_code'] == 'integrity_check_failed'
    assert [block for block in result['damaged_blocks'] if block['file'] == full['disks'][0]['path']] == [{
        'vm_uuid': full['vm']['uuid'], 'file': full['disks'][0]['path'], 'block': index, 'virtual_offset': index * 2 * MIB,
        'problem': 'does not match its recorded checksum (the block is damaged)', 'points': readers}]
    assert any(problem.startswith('%s: block %d (virtual offset %d)' % (damaged, index, index * 2 * MIB)) for problem in result['problems'])
    assert any(truncated in problem for problem in result['problems'])
    report = app['ansible'].run_task('backup_info', {'repository': app['repo'], 'verify': True, 'fail_on_problems': False})
    assert len(report['problems']) >= 2


def test_hand_edited_metadata_is_a_clear_error(app):
    two_points(app)
    path = backup_points(app['repo'], app['sim'].control.record('VM', 'app01')['uuid'])[0]['_path']
    with open(path, encoding='utf-8') as handle:
        metadata = json.load(handle)
    metadata['timestamp'] = 'yesterday'
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(metadata, handle)
    result = app['ansible'].run_task('backup_info', {'repository': app['repo']}, expect_failure=False)
    assert any(path in problem and "'timestamp' must be an integer" in problem for problem in result['problems'])


def test_not_a_repository(app, tmp_path):
    result = app['ansible'].run_task('backup_info', {'repository': str(tmp_path)}, expect_failure=True)
    assert 'is not a backup repository' in result['msg']


def test_verify_playbook_publishes_the_damaged_block_with_its_points(app):
    full, delta = two_points(app)
    stats, _output = app['ansible'].play_collection('verify', {'verify_repositories': [app['repo']]})
    assert stats['xapi_delta_backup_verify']['problems'] == [] and stats['xapi_delta_backup_verify']['damaged_blocks'] == []
    damaged = os.path.join(app['repo'], 'xo-vm-backups', full['vm']['uuid'], full['disks'][0]['path'])
    index = block_at(damaged, 4 * MIB)
    with open(damaged, 'r+b') as vhd:
        vhd.seek(4 * MIB)
        byte = vhd.read(1)
        vhd.seek(4 * MIB)
        vhd.write(bytes([byte[0] ^ 0x01]))
    stats, output = app['ansible'].play_collection('verify', {'verify_repositories': [app['repo']]}, expect_rc=2)
    [block] = stats['xapi_delta_backup_verify']['damaged_blocks']
    assert (block['file'], block['block']) == (full['disks'][0]['path'], index) and full['timestamp'] in block['points']
    assert '1 problem(s) found' in output and 'block %d (virtual offset %d)' % (index, index * 2 * MIB) in output
