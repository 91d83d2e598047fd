# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""LocalStorage against the Storage contract: paths stay under the root, writes are atomic, errors are OS errors."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage, StorageError, check_relative_path, split_local_path


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / 'repo-root', file_mode=0o640, dir_mode=0o750)


@pytest.mark.parametrize('bad', ['', '/etc/passwd', '..', '../outside', 'a/../../outside'])
def test_paths_must_stay_under_the_root(bad):
    with pytest.raises(StorageError, match='repository root'):
        check_relative_path(bad)


def test_storage_error_is_both_ours_and_an_os_error():
    error = StorageError('boom')
    assert isinstance(error, DeltaBackupError) and isinstance(error, OSError)
    assert error.error_code == 'storage_error' and str(error) == 'boom'


def test_paths_are_normalised():
    assert check_relative_path('a/./b//c') == 'a/b/c'
    assert check_relative_path('a/b/../c') == 'a/c'


def test_make_dirs_applies_the_configured_mode_whatever_the_umask(storage):
    old = os.umask(0o077)
    try:
        storage.make_dirs('xo-vm-backups/vm/vdis')
    finally:
        os.umask(old)
    for folder in ('', 'xo-vm-backups', 'xo-vm-backups/vm', 'xo-vm-backups/vm/vdis'):
        assert stat.S_IMODE(os.stat(storage.full_path(folder)).st_mode) == 0o750, folder
    storage.make_dirs('xo-vm-backups/vm/vdis')  # present: fine


def test_atomic_writer_publishes_only_on_commit(storage):
    storage.make_dirs('d')
    writer = storage.atomic_writer('d/file.vhd')
    writer.write(b'abc')
    writer.write(b'def')
    assert storage.list_dir('d') != ['file.vhd'] and not storage.exists('d/file.vhd')
    assert all(name.startswith('.') for name in storage.list_dir('d'))
    writer.commit()
    assert storage.list_dir('d') == ['file.vhd']
    assert storage.read_bytes('d/file.vhd') == b'abcdef'
    assert stat.S_IMODE(os.stat(storage.full_path('d/file.vhd')).st_mode) == 0o640


def test_atomic_writer_abort_leaves_nothing(storage):
    storage.make_dirs('d')
    writer = storage.atomic_writer('d/file.json')
    writer.write(b'partial')
    writer.abort()
    writer.abort()
    assert storage.list_dir('d') == []


def test_atomic_writer_refuses_to_overwrite_unless_asked(storage):
    storage.make_dirs('d')
    storage.write_bytes_atomically('d/x', b'one')
    with pytest.raises(FileExistsError):
        storage.atomic_writer('d/x')
    storage.write_bytes_atomically('d/x', b'two', overwrite=True)
    assert storage.read_bytes('d/x') == b'two'
    # The name appearing while a writer runs is caught at commit, and nothing is left behind.
    writer = storage.atomic_writer('d/y')
    writer.write(b'late')
    storage.write_bytes_atomically('d/y', b'first')
    with pytest.raises(FileExistsError):
        writer.commit()
    assert storage.read_bytes('d/y') == b'first' and storage.list_dir('d') == ['x', 'y']


def test_random_access_reads_writes_and_copies(storage):
    storage.make_dirs('d')
    storage.write_bytes_atomically('d/source', bytes(range(256)) * 64)
    storage.write_bytes_atomically('d/target', b'\0' * 100)
    with storage.open_file('d/source') as source, storage.open_file('d/target', writable=True) as target:
        assert source.pread(4, 10) == bytes([10, 11, 12, 13])
        assert source.pread(100, source.size() - 3) == bytes([253, 254, 255])
        target.pwrite(b'xyz', 50)
        target.copy_range_from(source, 300, 1, 200)
        target.truncate(600)
        target.sync()
        assert target.size() == 600
    data = storage.read_bytes('d/target')
    assert data[50:53] == b'xyz' and data[200:500] == (bytes(range(256)) * 64)[1:301] and data[500:] == b'\0' * 100
    with storage.open_file('d/source') as source, storage.open_file('d/target', writable=True) as target:
        with pytest.raises(StorageError, match='ended at'):
            target.copy_range_from(source, 100, source.size() - 10, 0)
    with pytest.raises(OSError):
        with storage.open_file('d/source') as source:
            source.pwrite(b'no', 0)


def test_exclusive_primitives_and_removal(storage):
    storage.make_dirs('locks')
    storage.make_dir_exclusive('locks/vm.lock')
    with pytest.raises(FileExistsError):
        storage.make_dir_exclusive('locks/vm.lock')
    storage.create_exclusive('locks/vm.lock/owner.json', b'{"pid": 1}')
    with pytest.raises(FileExistsError):
        storage.create_exclusive('locks/vm.lock/owner.json', b'{}')
    before = storage.modified_time('locks/vm.lock/owner.json')
    os.utime(storage.full_path('locks/vm.lock/owner.json'), (before - 100, before - 100))
    storage.touch('locks/vm.lock/owner.json')
    assert storage.modified_time('locks/vm.lock/owner.json') >= before
    assert storage.size('locks/vm.lock/owner.json') == 10 and storage.is_dir('locks/vm.lock')
    storage.remove_tree('locks/vm.lock')
    storage.remove_tree('locks/vm.lock')
    assert not storage.exists('locks/vm.lock')
    assert storage.remove_if_present('locks/none') is False
    with pytest.raises(FileNotFoundError):
        storage.remove('locks/none')
    with pytest.raises(FileNotFoundError):
        storage.list_dir('missing')
    with pytest.raises(StorageError, match='storage root'):
        storage.remove_tree('')


def test_rename_replaces_and_split_local_path(storage, tmp_path):
    storage.make_dirs('d')
    storage.write_bytes_atomically('d/a', b'A')
    storage.write_bytes_atomically('d/b', b'B')
    storage.rename('d/a', 'd/b')
    storage.sync_dir('d')
    assert storage.list_dir('d') == ['b'] and storage.read_bytes('d/b') == b'A'
    parent, name = split_local_path(storage.full_path('d/b'))
    assert name == 'b' and parent.read_bytes(name) == b'A' and parent.describe(name) == storage.full_path('d/b')


def test_temporary_names_are_recognised_only_for_what_the_atomic_writer_makes(storage):
    storage.make_dirs('d')
    writer = storage.atomic_writer('d/20260101T010000Z.vhd')
    temporary = storage.list_dir('d')
    writer.abort()
    assert len(temporary) == 1 and storage.is_temporary_name(temporary[0])
    for name in ('20260101T010000Z.vhd', '.0b7c5d3e.lock', '.20260101T010000Z.vhd.merge.json', '.123-xyz.file'):
        assert not storage.is_temporary_name(name), name
