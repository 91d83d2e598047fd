# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_restore and seed_copy check each block as they read it, through ansible-playbook against the simulator.

A bit flipped in a data block leaves every structure sound, so only the block checksums can tell:
the restore must stop its upload before the import completes, name the file, block and virtual
offset, and leave the pool and the repository as they were; seed_copy must refuse the file likewise.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from test_merge_seed_restore import POOL, History, pool_objects, restore

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdChain, VhdFile

BLOCK = 2 * 1024 * 1024


@pytest.fixture
def app(ansible, pool, tmp_path):
    pool.control.load_config(POOL)
    repository = tmp_path / 'repo'
    repository.mkdir()
    return History(ansible, pool, str(repository))


def root_chain(app) -> list:
    """Local paths of the newest point's chain of the root disk, newest first."""
    repo = open_repository(app.repository)
    point = repo.list_backups(app.vm_uuid)[-1]
    [disk] = [disk for disk in point.disks if disk.vdi_uuid == app.live['app01-root']]
    return [repo.local_path(path) for path in repo.vhd_chain(point, disk)]


def blocks_read_from(chain: list, path: str) -> list:
    """The blocks a restore of ``chain`` reads from ``path``: those no newer file of the chain holds."""
    found = []
    with VhdChain.from_paths(chain) as opened:
        for index in opened.allocated_blocks():
            for layer in opened.layers():
                if layer.block_offset(index) is not None:
                    if layer.path == path:
                        found.append(index)
                    break
    return found


def flip_bit(path: str, index: int) -> None:
    """Flip one bit in the data of block ``index`` (calling it again repairs it)."""
    with VhdFile.open(path) as vhd:
        offset = vhd.block_offset(index) + vhd.bitmap_size + 777
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x02]))


def repository_state(root: str) -> dict:
    state = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), 'rb') as handle:
                state[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(handle.read()).hexdigest()
    return state


def test_a_flipped_bit_stops_restore_and_seed_copy_naming_the_block(app, tmp_path):
    stamps = app.build(3)
    chain = root_chain(app)
    assert len(chain) == 3
    full_blocks, delta_blocks, newest_blocks = (blocks_read_from(chain, path) for path in (chain[2], chain[1], chain[0]))
    cases = [(chain[2], full_blocks[0]), (chain[2], full_blocks[len(full_blocks) // 2]), (chain[2], full_blocks[-1])]
    cases += [(chain[1], delta_blocks[len(delta_blocks) // 2])] if delta_blocks else []
    cases += [(chain[0], newest_blocks[-1])] if newest_blocks else []
    assert len(cases) >= 4, (full_blocks, delta_blocks, newest_blocks)
    counts = pool_objects(app.sim)
    for path, index in cases:
        flip_bit(path, index)
        before = repository_state(app.repository)
        refused = restore(app, expect_failure=True)
        message = refused['msg']
        assert 'everything it created was removed:' in message, message
        assert '%s: block[%d].checksum' % (path, index) in message, message
        assert 'block %d (virtual offset %d) does not match its recorded checksum' % (index, index * BLOCK) in message, message
        assert pool_objects(app.sim) == counts
        assert repository_state(app.repository) == before
        flip_bit(path, index)  # repaired
    # seed_copy reads every block of every file: the damaged one is named, no point appears at the destination
    path, index = cases[1]
    flip_bit(path, index)
    far = tmp_path / 'far'
    far.mkdir()
    refused = app.ansible.run_task('seed_copy', {'source': app.repository, 'destination': str(far)}, expect_failure=True)
    assert '%s: block %d (virtual offset %d): does not match its recorded checksum' % (path, index, index * BLOCK) in refused['msg']
    assert not [name for _folder, _dirs, names in os.walk(str(far)) for name in names if name.endswith('.json')]
    flip_bit(path, index)
    # repaired, the newest point restores byte for byte, every file of its chains checked block by block
    restored = restore(app)
    app.assert_restored(restored, stamps[-1])
    assert len(restored['checksums']['verified']) == 6 and restored['checksums']['unverified'] == [] and restored['checksums']['legacy'] == []
