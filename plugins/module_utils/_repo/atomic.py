# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backup files that appear under their final name only once complete and durable, with their size and SHA-256."""

from __future__ import annotations

import hashlib

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import AtomicWriter, Storage


class AtomicFile:
    """A file written through ``Storage.atomic_writer``, counting bytes and computing the SHA-256 while writing.

    Use as a context manager: leaving normally commits, an exception drops the temporary file.
    ``path`` is the storage path, ``shown`` how messages name it.
    """

    def __init__(self, storage: Storage, path: str, overwrite: bool = False):
        self.storage = storage
        self.path = path
        self.shown = storage.describe(path)
        self.overwrite = overwrite
        self.size = 0
        self._hash = hashlib.sha256()
        self._writer: AtomicWriter | None = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def __enter__(self) -> 'AtomicFile':
        try:
            self._writer = self.storage.atomic_writer(self.path, overwrite=self.overwrite)
        except FileExistsError:
            raise RepositoryError('%s already exists: refusing to overwrite a backup file' % self.shown) from None
        return self

    def write(self, data) -> int:
        self.write_data(data)
        self.update_hash(data)
        return len(data)

    # The two halves of write, for a caller that runs them on two threads (transfer.WriteBehind):
    # each must see every chunk, in order.
    def write_data(self, data) -> None:
        self._writer.write(data)
        self.size += len(data)

    def update_hash(self, data) -> None:
        self._hash.update(data)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        try:
            self._writer.commit()
        except FileExistsError:
            raise RepositoryError('%s appeared while it was being written: refusing to overwrite it' % self.shown) from None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


def write_file_atomically(storage: Storage, path: str, data: bytes, overwrite: bool = False) -> str:
    """Write bytes atomically at storage ``path``; return their SHA-256."""
    with AtomicFile(storage, path, overwrite=overwrite) as target:
        target.write(data)
    return target.sha256
