# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage interface: what the repository store, merge, seed and restore need of a place that holds files.

Paths are relative to the storage's root, '/'-separated, never absolute and never leaving the root
('..'), so the same repository code works on a folder or on a bucket prefix.

Errors follow Python's OS error family, which callers already handle: a missing path raises
``FileNotFoundError``, an exclusive create over an existing one ``FileExistsError``; anything else
the backend reports is an ``OSError`` (``StorageError`` for what has no errno).
"""

from __future__ import annotations

import abc
import posixpath

from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError


class StorageError(DeltaBackupError, OSError):
    """A storage failure that is not a plain OS error (bad path, backend refusal)."""

    error_code = 'storage_error'


def check_relative_path(path: str) -> str:
    """``path`` normalised, or StorageError if it is absolute, empty or leaves the root."""
    if not isinstance(path, str) or not path or path.startswith('/'):
        raise StorageError('storage path %r must be relative to the repository root' % (path,))
    normal = posixpath.normpath(path)
    if normal == '..' or normal.startswith('../'):
        raise StorageError('storage path %r leaves the repository root' % (path,))
    return '' if normal == '.' else normal


class RandomAccessFile(abc.ABC):
    """An open file read and written at explicit offsets (what VHD structures need)."""

    path: str

    @abc.abstractmethod
    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""

    @abc.abstractmethod
    def pwrite(self, data, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (the file must be open writable)."""

    @abc.abstractmethod
    def size(self) -> int:
        """Current length in bytes."""

    @abc.abstractmethod
    def truncate(self, size: int) -> None:
        """Cut or extend the file to ``size`` bytes."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make what was written durable."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file; further calls are errors."""

    def copy_range_from(self, source: 'RandomAccessFile', length: int, source_offset: int, offset: int) -> None:
        """Copy ``length`` bytes of ``source`` into this file; backends override it with a server-side copy."""
        done = 0
        while done < length:
            data = source.pread(min(length - done, 1 << 21), source_offset + done)
            if not data:
                raise StorageError('%s ended at %d while copying %d bytes from offset %d' % (source.path, source_offset + done, length, source_offset))
            self.pwrite(data, offset + done)
            done += len(data)

    def __enter__(self) -> 'RandomAccessFile':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


class AtomicWriter(abc.ABC):
    """A file written front to back that appears under its final name only at ``commit``, complete and durable."""

    path: str

    @abc.abstractmethod
    def write(self, data) -> None:
        """Append ``data``."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Publish the file under its final name (FileExistsError if it appeared meanwhile and overwrite is off)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop what was written; the final name is untouched. Safe to call twice or after commit failed."""


class Storage(abc.ABC):
    """A place that holds a repository's files. Paths: see ``check_relative_path``."""

    @abc.abstractmethod
    def describe(self, path: str = '') -> str:
        """How to show ``path`` to a user (a local path, a URL)."""

    def is_temporary_name(self, name: str) -> bool:
        """Whether ``name`` is one of this storage's unfinished atomic writes (a backend without such files: never)."""
        return False

    @abc.abstractmethod
    def open_file(self, path: str, writable: bool = False) -> RandomAccessFile:
        """An existing file for random access."""

    @abc.abstractmethod
    def atomic_writer(self, path: str, overwrite: bool = False) -> AtomicWriter:
        """A writer that publishes ``path`` only when committed (FileExistsError now if it exists and overwrite is off)."""

    @abc.abstractmethod
    def list_dir(self, path: str = '') -> list[str]:
        """Names directly under ``path``, sorted (FileNotFoundError if it does not exist)."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a file or folder is at ``path``."""

    @abc.abstractmethod
    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a folder (a prefix with entries, on an object store)."""

    @abc.abstractmethod
    def size(self, path: str) -> int:
        """Length of the file at ``path``."""

    @abc.abstractmethod
    def modified_time(self, path: str) -> float:
        """Last modification, seconds since the epoch."""

    @abc.abstractmethod
    def touch(self, path: str) -> None:
        """Set the modification time of ``path`` to now (lock heartbeats)."""

    @abc.abstractmethod
    def make_dirs(self, path: str) -> None:
        """Create the folder and its parents if missing."""

    @abc.abstractmethod
    def make_dir_exclusive(self, path: str) -> None:
        """Create one folder, FileExistsError if it exists: the lock primitive."""

    @abc.abstractmethod
    def create_exclusive(self, path: str, data: bytes) -> None:
        """Create a small file with ``data`` in one step, FileExistsError if it exists."""

    @abc.abstractmethod
    def rename(self, source: str, target: str) -> None:
        """Move ``source`` to ``target``, replacing a file there, atomically where the backend can."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file (FileNotFoundError if absent)."""

    @abc.abstractmethod
    def remove_tree(self, path: str) -> None:
        """Remove a folder and everything under it; absent is fine."""

    @abc.abstractmethod
    def sync_dir(self, path: str) -> None:
        """Make renames and removals in the folder durable (a no-op where the backend has no such step)."""

    def read_bytes(self, path: str) -> bytes:
        """The whole (small) file at ``path``."""
        with self.open_file(path) as handle:
            size = handle.size()
            data = handle.pread(size, 0)
        if len(data) != size:
            raise StorageError('%s changed while it was read' % self.describe(path))
        return data

    def write_bytes_atomically(self, path: str, data: bytes, overwrite: bool = False) -> None:
        """Publish ``data`` as ``path`` in one atomic step."""
        writer = self.atomic_writer(path, overwrite=overwrite)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def remove_if_present(self, path: str) -> bool:
        """Remove a file; False if it was already gone."""
        try:
            self.remove(path)
        except FileNotFoundError:
            return False
        return True

    def join(self, *parts: str) -> str:
        """A path under the root made of ``parts`` (each checked)."""
        return check_relative_path(posixpath.join(*parts))
