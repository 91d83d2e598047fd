# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local file system as a ``Storage``: POSIX calls with fsync discipline and configured permissions."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage.base import (
    AtomicWriter, RandomAccessFile, Storage, StorageError, check_relative_path,
)

DEFAULT_FILE_MODE = 0o600
DEFAULT_DIR_MODE = 0o700
# Linux returns at most this much per copy_file_range call; more is simply looped.
COPY_CHUNK = 1 << 30
# What temporary_name writes: .<ms epoch>-<8 hex>.<final name>
TEMPORARY_NAME_PATTERN = re.compile(r'^\.\d+-[0-9a-f]{8}\.')
# A file written front to back hands its pages to the disk every this many bytes (see LocalAtomicWriter.write).
WRITEBACK_WINDOW = 32 << 20
# copy_file_range refusals that mean "not between these two files": fall back to reading and writing.
COPY_FALLBACK_ERRNOS = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def split_local_path(path) -> tuple['LocalStorage', str]:
    """A storage rooted at the folder of a local ``path``, and the file's name in it."""
    absolute = os.path.abspath(os.fspath(path))
    return LocalStorage(os.path.dirname(absolute)), os.path.basename(absolute)


def temporary_name(final_name: str) -> str:
    """``.<ms epoch>-<random>.<name>``: hidden from listings (dot-file), unique, recognisable as ours."""
    return '.%d-%s.%s' % (int(time.time() * 1000), secrets.token_hex(4), final_name)


class LocalFile(RandomAccessFile):
    """A file descriptor used with pread/pwrite: no shared file position, so threads may share it."""

    def __init__(self, full_path: str, path: str, writable: bool):
        self.path = path
        self.full_path = full_path
        self.fd = os.open(full_path, os.O_RDWR if writable else os.O_RDONLY)

    def fileno(self) -> int:
        return self.fd

    def pread(self, length: int, offset: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        # A local pread returns short only at the end of the file or on a signal: loop for the latter.
        while len(data) < length:
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def pwrite(self, data, offset: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.pwrite(self.fd, view, offset + (len(data) - len(view))):]

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def copy_range_from(self, source: RandomAccessFile, length: int, source_offset: int, offset: int) -> None:
        """copy_file_range between two local files (reflinks or in-kernel copies), else the generic loop."""
        if not isinstance(source, LocalFile) or not hasattr(os, 'copy_file_range'):
            super().copy_range_from(source, length, source_offset, offset)
            return
        done = 0
        try:
            while done < length:
                copied = os.copy_file_range(source.fd, self.fd, min(length - done, COPY_CHUNK), source_offset + done, offset + done)
                if copied == 0:
                    raise StorageError('%s ended at %d while copying %d bytes from offset %d' % (source.path, source_offset + done, length, source_offset))
                done += copied
        except OSError as error:
            if isinstance(error, StorageError) or error.errno not in COPY_FALLBACK_ERRNOS:
                raise
            super().copy_range_from(source, length - done, source_offset + done, offset + done)


class LocalAtomicWriter(AtomicWriter):
    """A hidden temporary file in the target folder, fsynced then renamed over the final name."""

    def __init__(self, storage: 'LocalStorage', path: str, overwrite: bool):
        self.storage = storage
        self.path = path
        self.overwrite = overwrite
        self.full_path = storage.full_path(path)
        if not overwrite and os.path.lexists(self.full_path):
            raise FileExistsError(17, 'refusing to overwrite an existing file', self.full_path)
        directory, name = os.path.split(self.full_path)
        self.directory = directory
        self.temp_path = os.path.join(directory, temporary_name(name))
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_NOFOLLOW', 0), storage.file_mode)
        os.fchmod(fd, storage.file_mode)  # the umask must neither loosen nor tighten the configured mode
        self._file = os.fdopen(fd, 'wb')
        self._written = 0
        self._handed = 0  # bytes whose writeback was started
        self._dropped = 0  # bytes before this were dropped from the page cache

    def write(self, data) -> None:
        self._file.write(data)
        self._written += len(data)
        if self._written - self._handed >= WRITEBACK_WINDOW:
            self._write_back()

    def _write_back(self) -> None:
        """Start writing the last window to disk and drop the window before it from the page cache.

        A big file (a VHD) then streams to the disk while it is received, instead of waiting in the
        page cache for the final fsync, which would write it all at the end with the network idle;
        and a backup does not evict everything else from the cache. On Linux, POSIX_FADV_DONTNEED
        starts writeback of the range's dirty pages without waiting for it, then drops the pages
        that are clean (mm/fadvise.c generic_fadvise); elsewhere it is a hint or nothing.
        """
        if not hasattr(os, 'posix_fadvise'):
            return
        self._file.flush()
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._file.fileno(), self._dropped, self._written - self._dropped, os.POSIX_FADV_DONTNEED)
        self._dropped, self._handed = self._handed, self._written

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if not self.overwrite and os.path.lexists(self.full_path):
            self.abort()
            raise FileExistsError(17, 'the file appeared while it was being written', self.full_path)
        os.replace(self.temp_path, self.full_path)
        self.storage.sync_full_dir(self.directory)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)


class LocalStorage(Storage):
    """Files under a local folder, created with ``file_mode``/``dir_mode`` whatever the umask."""

    def __init__(self, root, file_mode: int = DEFAULT_FILE_MODE, dir_mode: int = DEFAULT_DIR_MODE):
        self.root = os.path.abspath(os.fspath(root))
        self.file_mode = file_mode
        self.dir_mode = dir_mode

    def full_path(self, path: str) -> str:
        relative = check_relative_path(path) if path else ''
        return os.path.join(self.root, relative) if relative else self.root

    def describe(self, path: str = '') -> str:
        return self.full_path(path)

    def is_temporary_name(self, name: str) -> bool:
        return bool(TEMPORARY_NAME_PATTERN.match(name))

    def open_file(self, path: str, writable: bool = False) -> LocalFile:
        return LocalFile(self.full_path(path), path, writable)

    def atomic_writer(self, path: str, overwrite: bool = False) -> LocalAtomicWriter:
        return LocalAtomicWriter(self, path, overwrite)

    def list_dir(self, path: str = '') -> list[str]:
        return sorted(os.listdir(self.full_path(path)))

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.full_path(path))

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(self.full_path(path))

    def size(self, path: str) -> int:
        return os.stat(self.full_path(path)).st_size

    def modified_time(self, path: str) -> float:
        return os.stat(self.full_path(path)).st_mtime

    def touch(self, path: str) -> None:
        os.utime(self.full_path(path))

    def make_dirs(self, path: str) -> None:
        full = self.full_path(path)
        missing = []
        while not os.path.isdir(full):
            missing.append(full)
            full = os.path.dirname(full)
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, self.dir_mode)
            os.chmod(folder, self.dir_mode)

    def make_dir_exclusive(self, path: str) -> None:
        full = self.full_path(path)
        os.mkdir(full, self.dir_mode)
        os.chmod(full, self.dir_mode)

    def create_exclusive(self, path: str, data: bytes) -> None:
        full = self.full_path(path)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_NOFOLLOW', 0), self.file_mode)
        try:
            os.fchmod(fd, self.file_mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, source: str, target: str) -> None:
        os.replace(self.full_path(source), self.full_path(target))

    def remove(self, path: str) -> None:
        os.unlink(self.full_path(path))

    def remove_tree(self, path: str) -> None:
        full = self.full_path(path)
        if full == self.root:
            raise StorageError('refusing to remove the storage root %s' % self.root)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)

    def sync_dir(self, path: str) -> None:
        self.sync_full_dir(self.full_path(path))

    @staticmethod
    def sync_full_dir(full_path: str) -> None:
        fd = os.open(full_path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
