# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checksum files name their hash (BLAKE3 where the blake3 package is installed, else SHA-256): every reader uses the
one its file names, a file of a hash this control node lacks is refused saying what to install, and a merge of files
hashed differently never records a checksum it did not compute with the result's hash."""

from __future__ import annotations

import hashlib

import blake3
import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile, merge_chain
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import blocksums
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import (
    UNKNOWN, BlockSums, BlockSumsError, compute_sums, sidecar_name, structure_problems, verify_blocks,
)
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import ChainModel, read_disk

MIB = 1024 * 1024


def _model(tmp_path) -> ChainModel:
    model = ChainModel(str(tmp_path), 8 * MIB, 2 * MIB)
    model.add_point([(0, 16384, 1)])
    model.add_point([(8, 8, 2), (5000, 4000, 3)], full_blocks=True)
    model.add_point([(100, 30, 4)])
    return model


def _record(path, hash_name):
    with VhdFile(path) as vhd:
        raw = compute_sums(vhd, hash_name=hash_name).pack()
    with open(sidecar_name(path), 'wb') as handle:
        handle.write(raw)


def _sidecar(path) -> BlockSums:
    with open(sidecar_name(path), 'rb') as handle:
        return BlockSums.parse(handle.read(), sidecar_name(path))


def test_blake3_is_the_hash_written_when_installed():
    assert blocksums.HASH_NAME == 'blake3'
    assert blocksums.block_digest(b'x' * 4096) == blake3.blake3(b'x' * 4096).digest()
    assert blocksums.block_digest(b'x' * 4096, 'sha256') == hashlib.sha256(b'x' * 4096).digest()


@pytest.mark.parametrize('hash_name', ['sha256', 'blake3'])
def test_each_hash_is_recorded_named_and_checked_by_its_own_name(tmp_path, hash_name):
    model = _model(tmp_path)
    path = model.paths[0]
    _record(path, hash_name)
    sums = _sidecar(path)
    assert sums.hash_name == hash_name
    with VhdFile(path) as vhd:
        span = vhd.bitmap_size + vhd.block_size
        first = next(index for index in range(vhd.block_count) if vhd.bat[index] != 0xFFFFFFFF)
        raw = vhd.file.pread(span, vhd.bat[first] * 512)
        expected = blake3.blake3(raw).digest() if hash_name == 'blake3' else hashlib.sha256(raw).digest()
        assert sums.digest(first) == expected
        assert structure_problems(vhd, sums) == [] and verify_blocks(vhd, sums) == []
    with open(path, 'r+b') as handle:  # one flipped bit is found whatever the hash
        handle.seek(vhd.bat[first] * 512 + 512 + 77)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 4]))
    with VhdFile(path) as vhd:
        assert [problem.index for problem in verify_blocks(vhd, sums)] == [first]


def test_a_blake3_checksum_file_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    model = _model(tmp_path)
    _record(model.paths[0], 'blake3')
    monkeypatch.delitem(blocksums.HASHES, 'blake3')
    with pytest.raises(BlockSumsError, match=r'BLAKE3.*blake3 is not installed here.*pip install blake3'):
        _sidecar(model.paths[0])


def test_an_unknown_hash_name_is_refused_naming_it(tmp_path):
    model = _model(tmp_path)
    _record(model.paths[0], 'sha256')
    sums = _sidecar(model.paths[0])
    sums.hash_name = 'md5'
    with pytest.raises(BlockSumsError, match=r"hash 'md5' unsupported by this collection: upgrade it"):
        BlockSums.parse(sums.pack(), 'x.blocksums')


def test_a_merge_of_deltas_hashed_otherwise_than_the_full_keeps_no_checksum_it_did_not_compute(tmp_path):
    """A full hashed with SHA-256 (an older control node) and deltas with BLAKE3: the full's kept blocks become UNKNOWN."""
    model = _model(tmp_path)
    _record(model.paths[0], 'sha256')
    for path in model.paths[1:]:
        _record(path, 'blake3')
    result = merge_chain(model.paths[0], model.paths[1:])
    sums = _sidecar(result)
    assert sums.hash_name == 'blake3'
    with VhdFile(result) as vhd:
        assert structure_problems(vhd, sums) == []
        assert verify_blocks(vhd, sums) == []  # every entry it holds was computed with BLAKE3 (the rest are UNKNOWN)
        fresh = compute_sums(vhd, hash_name='blake3')
    unknown = [index for index in range(sums.entries) if sums.digest(index) == UNKNOWN]
    assert unknown  # the full's own blocks, never hashed with BLAKE3
    assert all(sums.digest(index) == fresh.digest(index) for index in range(sums.entries) if index not in unknown)
    assert read_disk(result) == model.points[-1]


def test_deltas_hashed_differently_leave_the_merge_result_without_a_checksum_file(tmp_path):
    model = _model(tmp_path)
    _record(model.paths[0], 'blake3')
    _record(model.paths[1], 'sha256')
    _record(model.paths[2], 'blake3')
    result = merge_chain(model.paths[0], model.paths[1:])
    assert not (tmp_path / (result.rsplit('/', 1)[1] + '.blocksums')).exists()
    assert read_disk(result) == model.points[-1]
