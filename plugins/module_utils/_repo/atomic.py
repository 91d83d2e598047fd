# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backup files that appear under their final name only once complete and durable, with their size and checksums.

A VHD is written with its block checksum file (``_vhd/blocksums.py``), computed as the bytes pass;
the checksum file is made durable first, so a VHD never appears without it.
"""

from __future__ import annotations

import hashlib

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import AtomicWriter, Storage
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import HASH_NAME, BlockSums, StreamSums, sidecar_name


class AtomicFile:
    """A file written through ``Storage.atomic_writer``, counting bytes and checksumming while writing.

    Use as a context manager: leaving normally commits, an exception drops the temporary file.
    ``path`` is the storage path, ``shown`` how messages name it. With ``vhd`` the bytes are a
    VHD in file order: instead of one SHA-256 of the file, the block checksums are computed and
    written as ``<path>.blocksums`` just before the file itself is published (``block_sums``).
    """

    def __init__(self, storage: Storage, path: str, overwrite: bool = False, vhd: bool = False, hash_name: str = HASH_NAME):
        self.storage = storage
        self.path = path
        self.shown = storage.describe(path)
        self.overwrite = overwrite
        self.size = 0
        self._hash = None if vhd else hashlib.sha256()
        self._sums = StreamSums(self.shown, hash_name) if vhd else None
        self.block_sums: BlockSums | None = None
        #: With ``vhd``: called at commit with the computed block checksums; returns those to save (``None``: no sidecar)
        #: or raises to refuse the file (a copy compares them with its source's).
        self.review_sums = None
        self._sidecar_written = False
        self._writer: AtomicWriter | None = None
        self._sums_source: AtomicFile | None = None

    @property
    def sha256(self) -> str:
        if self._hash is None:
            raise ValueError('%s is a VHD: it has block checksums, not one sha256' % self.shown)
        return self._hash.hexdigest()

    @property
    def stream_sums(self) -> StreamSums | None:
        """With ``vhd``: the block checksums being computed as the bytes pass (``on_block`` sees each one)."""
        return self._sums

    @property
    def sidecar_path(self) -> str:
        return sidecar_name(self.path)

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
        if self._sums_source is not None:
            raise ValueError('%s takes the block checksums of %s: only that file is hashed' % (self.shown, self._sums_source.shown))
        (self._hash or self._sums).update(data)

    def share_block_sums(self, source: 'AtomicFile') -> None:
        """This VHD receives exactly the bytes ``source`` receives (one export written to several
        repositories): its block checksums are ``source``'s, computed once from those bytes.

        Feed ``update_hash`` of ``source`` only. At commit, a size that differs from ``source``'s
        means the two did not get the same bytes, and the file is refused.
        """
        if self._sums is None or source._sums is None:
            raise ValueError('only VHD files share block checksums (%s, %s)' % (self.shown, source.shown))
        self._sums_source = source
        self._sums = source._sums

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        """Publish the file (a VHD after its block checksums); on any failure nothing of it is left."""
        try:
            if self._sums_source is not None and self._sums_source.size != self.size:
                raise RepositoryError('%s: %d bytes written but %d to %s, whose block checksums it shares: not the same bytes'
                                      % (self.shown, self.size, self._sums_source.size, self._sums_source.shown))
            if self._sums is not None:
                self.block_sums = self._sums.finish()
                if self.review_sums is not None:
                    self.block_sums = self.review_sums(self.block_sums)
                if self.block_sums is not None:
                    self._sidecar_written = True
                    self.block_sums.save(self.storage, self.sidecar_path)
            self._writer.commit()
        except FileExistsError:
            self.abort()
            raise RepositoryError('%s appeared while it was being written: refusing to overwrite it' % self.shown) from None
        except BaseException:
            # A stream that ended early, a full file system while the sidecar or the file is made durable.
            self.abort()
            raise

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        if self._sidecar_written:
            self.storage.remove_if_present(self.sidecar_path)


def write_file_atomically(storage: Storage, path: str, data: bytes, overwrite: bool = False) -> str:
    """Write bytes atomically at storage ``path``; return their SHA-256."""
    with AtomicFile(storage, path, overwrite=overwrite) as target:
        target.write(data)
    return target.sha256
