# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""atomic.py: a file appears under its name only once committed, an abort leaves nothing, size and sha256 are hashlib's."""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.atomic import AtomicFile, write_file_atomically
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile, VhdStream
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import BlockSums, compute_sums

EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'


@pytest.fixture
def storage(tmp_path):
    (tmp_path / 'xo-vm-backups').mkdir()
    return LocalStorage(str(tmp_path))


@pytest.fixture
def backup_dir(tmp_path):
    return str(tmp_path / 'xo-vm-backups')


def test_atomic_file_is_invisible_until_commit(storage, backup_dir):
    target = os.path.join(backup_dir, 'x.bin')
    with AtomicFile(storage, 'xo-vm-backups/x.bin') as writer:
        writer.write(b'abc')
        assert not os.path.exists(target)
        names = os.listdir(backup_dir)
        assert len(names) == 1 and names[0].startswith('.') and names[0].endswith('.x.bin')
    assert open(target, 'rb').read() == b'abc'
    assert writer.sha256 == 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    assert os.listdir(backup_dir) == ['x.bin']


def test_atomic_file_removes_temp_on_error_and_never_overwrites(storage, backup_dir):
    target = os.path.join(backup_dir, 'y.bin')
    with pytest.raises(ZeroDivisionError, match='division'):
        with AtomicFile(storage, 'xo-vm-backups/y.bin') as writer:
            writer.write(b'partial')
            raise ZeroDivisionError('division')
    assert os.listdir(backup_dir) == []
    write_file_atomically(storage, 'xo-vm-backups/y.bin', b'1')
    with pytest.raises(RepositoryError, match='%s already exists: refusing to overwrite' % target):
        write_file_atomically(storage, 'xo-vm-backups/y.bin', b'2')
    assert open(target, 'rb').read() == b'1'


def test_nothing_visible_under_the_final_name_while_many_chunks_are_written(storage, backup_dir):
    target = os.path.join(backup_dir, 'big.vhd')
    with AtomicFile(storage, 'xo-vm-backups/big.vhd') as writer:
        for index in range(20):
            writer.write(bytes([index]) * 65536)
            assert not os.path.lexists(target)
            assert storage.list_dir('xo-vm-backups') == [name for name in os.listdir(backup_dir) if name.startswith('.')]
    assert os.path.getsize(target) == 20 * 65536


@pytest.mark.parametrize('chunks', [
    [b''],
    [b'x'],
    [b'abc', b'', b'def'],
    [bytes(range(256)) * 1000, b'\0' * 3, bytes(range(255, -1, -1)) * 17],
    [bytearray(b'mutable'), memoryview(b'a view')],
])
def test_size_and_sha256_are_those_of_hashlib(storage, tmp_path, chunks):
    expected = hashlib.sha256()
    with AtomicFile(storage, 'xo-vm-backups/f.vhd') as writer:
        for chunk in chunks:
            assert writer.write(chunk) == len(chunk)
            expected.update(chunk)
    content = b''.join(bytes(chunk) for chunk in chunks)
    assert writer.size == len(content)
    assert writer.sha256 == expected.hexdigest() == hashlib.sha256(content).hexdigest()
    assert (tmp_path / 'xo-vm-backups' / 'f.vhd').read_bytes() == content


def test_an_empty_file_is_written_and_hashed(storage, tmp_path):
    with AtomicFile(storage, 'xo-vm-backups/empty') as writer:
        assert writer.size == 0 and writer.sha256 == EMPTY_SHA256
    assert (tmp_path / 'xo-vm-backups' / 'empty').read_bytes() == b''
    assert writer.sha256 == EMPTY_SHA256


def test_the_two_halves_of_write_give_the_same_file_and_digest(storage, tmp_path):
    chunks = [b'one ' * 1000, b'two ' * 3000, b'three']
    with AtomicFile(storage, 'xo-vm-backups/whole') as whole:
        for chunk in chunks:
            whole.write(chunk)
    with AtomicFile(storage, 'xo-vm-backups/halves') as halves:
        for chunk in chunks:
            halves.write_data(chunk)
        for chunk in chunks:  # another thread hashes behind the writer: only the order per half matters
            halves.update_hash(chunk)
    assert (halves.size, halves.sha256) == (whole.size, whole.sha256)
    assert (tmp_path / 'xo-vm-backups' / 'halves').read_bytes() == (tmp_path / 'xo-vm-backups' / 'whole').read_bytes()


def test_write_data_alone_counts_bytes_but_does_not_hash(storage):
    with AtomicFile(storage, 'xo-vm-backups/unhashed') as writer:
        writer.write_data(b'12345')
        assert writer.size == 5 and writer.sha256 == EMPTY_SHA256


def test_explicit_abort_leaves_nothing(storage, backup_dir):
    writer = AtomicFile(storage, 'xo-vm-backups/z.bin').__enter__()
    writer.write(b'never seen')
    assert len(os.listdir(backup_dir)) == 1
    writer.abort()
    assert os.listdir(backup_dir) == []
    writer.abort()  # twice is harmless
    assert os.listdir(backup_dir) == []


def test_abort_before_anything_was_opened_is_harmless(storage, backup_dir):
    AtomicFile(storage, 'xo-vm-backups/never').abort()
    assert os.listdir(backup_dir) == []


def test_a_refused_file_leaves_no_temporary_file(storage, backup_dir):
    write_file_atomically(storage, 'xo-vm-backups/kept', b'original')
    with pytest.raises(RepositoryError, match='kept already exists: refusing to overwrite a backup file'):
        with AtomicFile(storage, 'xo-vm-backups/kept'):
            pass
    assert os.listdir(backup_dir) == ['kept']


def test_a_file_that_appears_meanwhile_is_not_overwritten(storage, backup_dir):
    target = os.path.join(backup_dir, 'race.vhd')
    with pytest.raises(RepositoryError, match='%s appeared while it was being written: refusing to overwrite it' % target):
        with AtomicFile(storage, 'xo-vm-backups/race.vhd') as writer:
            writer.write(b'ours')
            with open(target, 'wb') as other:
                other.write(b'theirs')
    assert open(target, 'rb').read() == b'theirs'
    assert os.listdir(backup_dir) == ['race.vhd']


def test_overwrite_replaces_a_file_in_one_step(storage, backup_dir):
    write_file_atomically(storage, 'xo-vm-backups/meta.json', b'old')
    digest = write_file_atomically(storage, 'xo-vm-backups/meta.json', b'new content', overwrite=True)
    assert open(os.path.join(backup_dir, 'meta.json'), 'rb').read() == b'new content'
    assert digest == hashlib.sha256(b'new content').hexdigest()
    assert os.listdir(backup_dir) == ['meta.json']


def test_write_file_atomically_returns_the_sha256(storage, tmp_path):
    data = os.urandom(100000)
    assert write_file_atomically(storage, 'xo-vm-backups/r', data) == hashlib.sha256(data).hexdigest()
    assert (tmp_path / 'xo-vm-backups' / 'r').read_bytes() == data


def test_messages_name_the_file_as_the_storage_shows_it(storage, backup_dir):
    writer = AtomicFile(storage, 'xo-vm-backups/shown')
    assert writer.shown == os.path.join(backup_dir, 'shown') == storage.describe('xo-vm-backups/shown')
    assert writer.path == 'xo-vm-backups/shown'


# -- VHDs: block checksums computed as the bytes pass, reviewed before the file is published -----------------


def small_vhd(seed: int) -> bytes:
    data = bytes([seed]) * 4096
    return b''.join(VhdStream(4 * 1024 * 1024, [0, 1], lambda index: (None, data)))


def test_a_vhd_is_published_with_the_block_checksums_of_its_bytes(storage, backup_dir):
    with AtomicFile(storage, 'xo-vm-backups/a.vhd', vhd=True) as writer:
        writer.write(small_vhd(3))
    saved = BlockSums.load(storage, 'xo-vm-backups/a.vhd.blocksums')
    assert saved.pack() == writer.block_sums.pack()
    with VhdFile.open(os.path.join(backup_dir, 'a.vhd')) as vhd:
        assert saved.pack() == compute_sums(vhd).pack()


def test_review_sums_chooses_what_is_saved(storage, backup_dir):
    seen = []

    def none_saved(computed):
        seen.append(computed)
        return None

    with AtomicFile(storage, 'xo-vm-backups/b.vhd', vhd=True) as writer:
        writer.review_sums = none_saved
        writer.write(small_vhd(4))
    assert len(seen) == 1 and seen[0].entries == 2
    assert sorted(os.listdir(backup_dir)) == ['b.vhd']  # no block checksum file: the review said so


def test_a_refusing_review_publishes_nothing(storage, backup_dir):
    def refuse(computed):
        raise RepositoryError('not the checksums of the source')

    writer = AtomicFile(storage, 'xo-vm-backups/c.vhd', vhd=True)
    writer.review_sums = refuse
    with pytest.raises(RepositoryError, match='not the checksums of the source'):
        with writer:
            writer.write(small_vhd(5))
    assert os.listdir(backup_dir) == []
