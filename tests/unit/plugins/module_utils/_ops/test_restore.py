# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Restore planning: point and disk selection, refusal of damaged chains before anything is created."""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import IntegrityError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import resolve_backup_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdChain, VhdError, VhdFile, stream_disk
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import attach
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import BLOCK, JOB, VM, RepoBuilder
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

POOL = """
pool: {name: restore-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
networks: [{name: Pool-wide network associated with eth0, bridge: xenbr0}]
"""


def blocks_read_from(repo, chain: list, path: str) -> list:
    """Indices of the blocks a restore of ``chain`` (newest first) reads from the file ``path`` (the newest file holding each)."""
    found = []
    with VhdChain.from_paths(chain, storage=repo.storage) as opened:
        for index in opened.allocated_blocks():
            for layer in opened.layers():
                if layer.block_offset(index) is not None:
                    if layer.name == path:
                        found.append(index)
                    break
    return found


def flip_bit_in_block(path: str, index: int, within: int = 4096) -> None:
    """Flip one bit of block ``index``'s data (``within`` bytes into it), leaving every structure as it was."""
    with VhdFile.open(path) as vhd:
        offset = vhd.block_offset(index) + vhd.bitmap_size + within
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x10]))


def repository_state(root: str) -> dict:
    """Every file of the repository and its sha256: a failed restore changes none."""
    state = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if name.startswith('.lock') or name.endswith('.lock'):
                continue
            with open(path, 'rb') as handle:
                state[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return state


@pytest.fixture
def history(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=2)
    for number in range(4):
        builder.add_point(full=number == 0)
    return builder


@pytest.mark.parametrize('selector, expected', [
    (None, 3), ('latest', 3), (0, 0), ('-1', 3), ('1', 1), ('20260102T010000Z', 1), ('2026-01-03T12:00:00Z', 2), ('2026-01-03T01:00:00', 2),
])
def test_select_point(history, selector, expected):
    points = history.repo.list_backups(VM)
    assert restore.select_point(points, selector).timestamp == points[expected].timestamp


@pytest.mark.parametrize('selector, message', [
    ('7', 'out of range'), ('2025-01-01T00:00:00Z', 'at or before'), ('yesterday', 'neither'),
    ('20261340T010000Z', "timestamp '20261340T010000Z' is not a valid UTC time")])
def test_select_point_errors(history, selector, message):
    with pytest.raises(restore.RestoreError, match=message):
        restore.select_point(history.repo.list_backups(VM), selector)


def test_prepare_checks_every_chain_and_selects_disks(history):
    plan = restore.prepare_restore(history.repo, VM, JOB, 'latest', None)
    assert [len(item.chain) for item in plan.disks] == [4, 4]
    assert not plan.unverified and len(plan.verified) == 8
    one = restore.prepare_restore(history.repo, VM, None, 1, 'disk 1')
    assert [item.disk.vdi_uuid for item in one.disks] == [history.live[1]]
    with pytest.raises(restore.RestoreError, match='has no disk'):
        restore.prepare_restore(history.repo, VM, JOB, 1, 'nope')


def test_a_damaged_structure_is_refused_before_anything_is_created(history):
    # The footer is covered by the block checksum file's digests: prepare (before any pool call) refuses it.
    # A footer that is still well formed (its own checksum matches) but not the one written: only the digest tells.
    victim = history.repo.list_backups(VM)[1].disks[0].path
    with VhdFile.open(victim) as vhd:
        footer, where = vhd.footer, vhd.footer_offset
    footer.timestamp += 1
    with open(victim, 'r+b') as handle:
        handle.seek(where)
        handle.write(footer.pack())
    with pytest.raises(IntegrityError) as caught:
        restore.prepare_restore(history.repo, VM, JOB, 'latest', None)
    assert victim in str(caught.value) and 'refusing to restore' in str(caught.value)


def test_a_damaged_block_is_not_hashed_up_front_but_found_when_read(history):
    # prepare reads structures only (cost independent of the disk size); the block is checked when the stream reads it.
    point = history.repo.list_backups(VM)[-1]
    full = history.repo.vhd_chain(point, point.disks[0])[-1]
    index = blocks_read_from(history.repo, history.repo.vhd_chain(point, point.disks[0]), full)[0]
    flip_bit_in_block(history.repo.local_path(full), index)
    checked = restore.prepare_restore(history.repo, VM, JOB, 'latest', None)
    [item] = [item for item in checked.disks if item.disk.vdi_uuid == point.disks[0].vdi_uuid]
    assert set(item.block_sums) == set(item.chain)
    with VhdChain.from_paths(item.chain, storage=history.repo.storage) as chain:
        for layer in chain.layers():
            attach(layer, item.block_sums[layer.name])
        with pytest.raises(VhdError, match=r'block %d \(virtual offset %d\) does not match its recorded checksum' % (index, index * BLOCK)):
            for _chunk in stream_disk(chain).read_ahead():
                pass


def test_backed_up_vm_by_name(history):
    assert resolve_backup_vm(history.repo, 'vm1') == VM
    assert resolve_backup_vm(history.repo, VM.upper()) == VM
    with pytest.raises(RepositoryError, match='no backed-up VM'):
        resolve_backup_vm(history.repo, 'other')


@pytest.fixture
def deep_history(tmp_path):
    """One disk: a full of 24 blocks then three deltas, so the newest point reads blocks of every file."""
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=1)
    builder.add_point(full=True, changed_blocks=24)
    for _number in range(3):
        builder.add_point(changed_blocks=4)
    return builder


@pytest.mark.parametrize('where', ['full, first block read', 'full, middle block', 'delta, middle block', 'newest, last block'])
def test_a_damaged_block_stops_the_restore_naming_it_and_leaves_nothing(deep_history, where):
    repo = deep_history.repo
    point = repo.list_backups(VM)[-1]
    chain = repo.vhd_chain(point, point.disks[0])
    path = {'full': chain[-1], 'delta': chain[1], 'newest': chain[0]}[where.split(',')[0]]
    read = blocks_read_from(repo, chain, path)
    index = {'first block read': read[0], 'middle block': read[len(read) // 2], 'last block': read[-1]}[where.split(', ')[1]]
    flip_bit_in_block(repo.local_path(path), index)
    before = repository_state(repo.root)
    with running_pool(POOL) as sim, connect(sim) as xapi:
        vms, vdis = set(xapi.call('VM.get_all')), set(xapi.call('VDI.get_all'))
        with pytest.raises(restore.RestoreError) as caught:
            restore.restore(xapi, repo, VM, disk=point.disks[0].vdi_uuid)
        message = str(caught.value)
        assert 'everything it created was removed' in message and ' except: ' not in message
        assert '%s: block[%d].checksum' % (repo.local_path(path), index) in message
        assert 'block %d (virtual offset %d) does not match its recorded checksum' % (index, index * BLOCK) in message
        # nothing new on the pool: no VM, no VDI, no import task left behind
        assert set(xapi.call('VM.get_all')) == vms and set(xapi.call('VDI.get_all')) == vdis
        assert not [task for task in xapi.call('task.get_all_records').values() if 'import' in task.get('name_label', '')]
    assert repository_state(repo.root) == before


def test_a_sound_chain_restores_byte_for_byte_with_every_block_checked(deep_history):
    repo = deep_history.repo
    point = repo.list_backups(VM)[-1]
    with running_pool(POOL) as sim, connect(sim) as xapi:
        result = restore.restore(xapi, repo, VM, disk=point.disks[0].vdi_uuid)
        [disk] = result['disks']
        assert hashlib.sha256(sim.control.read_vdi(disk['vdi_uuid'])).hexdigest() == deep_history.expected_disk(point.timestamp, 0)
    assert len(result['checksums']['verified']) == 4 and result['checksums']['unverified'] == [] and result['checksums']['legacy'] == []


def test_a_legacy_chain_is_hashed_up_front_and_restored(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=1, legacy=True)
    builder.add_point(full=True, changed_blocks=8)
    builder.add_point()
    repo = builder.repo
    point = repo.list_backups(VM)[-1]
    # a damaged legacy file is refused before anything is created, as before block checksums
    victim = repo.local_path(repo.vhd_chain(point, point.disks[0])[-1])
    with running_pool(POOL) as sim, connect(sim) as xapi:
        result = restore.restore(xapi, repo, VM, disk=point.disks[0].vdi_uuid)
        assert sorted(result['checksums']['legacy']) == sorted(result['checksums']['verified']) and len(result['checksums']['legacy']) == 2
        assert hashlib.sha256(sim.control.read_vdi(result['disks'][0]['vdi_uuid'])).hexdigest() == builder.expected_disk(point.timestamp, 0)
        flip_bit_in_block(victim, blocks_read_from(repo, repo.vhd_chain(point, point.disks[0]), repo.vhd_chain(point, point.disks[0])[-1])[0])
        vdis = set(xapi.call('VDI.get_all'))
        with pytest.raises(IntegrityError, match='sha256 .* differs from the .* recorded'):
            restore.restore(xapi, repo, VM, disk=point.disks[0].vdi_uuid)
        assert set(xapi.call('VDI.get_all')) == vdis
