# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage layer: every file operation of the repository store and the VHD engine goes through a ``Storage``.

The local file system (``LocalStorage``) is the first implementation; an object store is added by
implementing ``Storage`` and ``RandomAccessFile`` without touching the layers above.
"""

from __future__ import annotations

from ansible_collections.xapi.delta_backup.plugins.module_utils._storage.base import (
    AtomicWriter, RandomAccessFile, Storage, StorageError, check_relative_path,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage.local import LocalStorage, split_local_path

__all__ = ['AtomicWriter', 'LocalStorage', 'RandomAccessFile', 'Storage', 'StorageError', 'check_relative_path', 'split_local_path']
