# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Independent checks of what the modules wrote: libvhdi reads the VHD chains, plain json reads the metadata."""

from __future__ import annotations

import glob
import hashlib
import json
import os

import pyvhdi

# libvhdi 20260901 can return zeros for one large read spanning a partly written block: read in small pieces.
CHUNK = 64 * 1024


def chain_sha256(chain_paths: list[str], length: int | None = None) -> tuple[str, int]:
    """SHA-256 and size of the disk a chain (newest first) represents, as libvhdi reads it (its first ``length`` bytes if given)."""
    handles = []
    try:
        for path in chain_paths:
            handle = pyvhdi.file()
            handle.open(path)
            handles.append(handle)
        for child, parent in zip(handles, handles[1:], strict=False):
            child.set_parent(parent)
        newest = handles[0]
        size = newest.get_media_size() if length is None else length
        digest = hashlib.sha256()
        for offset in range(0, size, CHUNK):
            digest.update(newest.read_buffer_at_offset(min(CHUNK, size - offset), offset))
        return digest.hexdigest(), size
    finally:
        for handle in handles:
            handle.close()


def engine_chain_sha256(chain_paths: list[str]) -> tuple[str, int]:
    """SHA-256 and size of the disk a chain (newest first) represents, as the collection's VHD engine reads it.

    Only for the one state libvhdi refuses by design: a merge killed between its footer step (the
    parent takes the merged delta's id) and its rename (docs/vhd-engine.md); the engine accepts a
    parent that absorbed a newer member, and the next run finishes the merge.
    """
    from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdChain  # pylint: disable=import-outside-toplevel
    digest = hashlib.sha256()
    with VhdChain.from_paths(chain_paths) as chain:
        for index in range(chain.block_count):
            data = chain.read_block(index)
            length = min(chain.block_size, chain.size - index * chain.block_size)
            digest.update(bytes(data)[:length] if data is not None else bytes(length))
        return digest.hexdigest(), chain.size


def chain_of(vhd_path: str) -> list[str]:
    """The chain ending at ``vhd_path`` by the repository's rule: older files of its folder down to the full."""
    folder = os.path.dirname(vhd_path)
    names = sorted(name for name in os.listdir(folder) if name.endswith('.vhd') and not name.startswith('.'))
    older = list(reversed(names[:names.index(os.path.basename(vhd_path)) + 1]))
    chain = []
    for name in older:
        path = os.path.join(folder, name)
        chain.append(path)
        with open(path, 'rb') as vhd:
            disk_type = int.from_bytes(vhd.read(64)[60:64], 'big')
        if disk_type != 4:
            break
    return chain


def backup_points(repository: str, vm_uuid: str) -> list[dict]:
    """The metadata JSONs of a VM, oldest first."""
    paths = sorted(glob.glob(os.path.join(repository, 'xo-vm-backups', vm_uuid, '*.json')))
    points = []
    for path in paths:
        with open(path, encoding='utf-8') as handle:
            points.append(dict(json.load(handle), _path=path))
    return points


def visible_files(repository: str) -> list[str]:
    """Every file under the repository, relative, sorted (dot files included)."""
    found = []
    for folder, _dirs, files in os.walk(repository):
        found.extend(os.path.relpath(os.path.join(folder, name), repository) for name in files)
    return sorted(found)
