# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backup metadata: Xen Orchestra's 2.0.0 delta JSON plus this collection's own section; schema check, build, read."""

from __future__ import annotations

import json

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import (
    UUID_PATTERN, VHD_RELATIVE_PATTERN, RepositoryError, validate_uuid,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import Storage

METADATA_VERSION = '2.0.0'
BACKUP_MODE = 'delta'
OWN_FIELD = 'xapi_delta_backup'
# The collection's version, recorded in every backup written; galaxy.yml's ``version`` must be the same
# (a unit test compares them).
COLLECTION_VERSION = '0.1.0'


class MetadataError(RepositoryError):
    """A backup metadata JSON that cannot be used (hand-edited, truncated, wrong types)."""

    error_code = 'invalid_metadata'

    def __init__(self, path: str, problem: str):
        super().__init__('backup metadata %s is invalid: %s' % (path, problem))
        self.path = path
        self.problem = problem


def _require_type(path: str, data: dict, key: str, kinds, label: str) -> None:
    value = data.get(key)
    # bool is an int in Python; a timestamp of true is still wrong.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,))):
        raise MetadataError(path, 'field %r must be %s, got %s' % (key, label, type(value).__name__ if key in data else 'nothing'))


def validate_metadata(data, path: str) -> dict:
    """Check the fields this collection relies on; return the metadata with XO's integer booleans repaired."""
    if not isinstance(data, dict):
        raise MetadataError(path, 'the top level must be an object, got %s' % type(data).__name__)
    _require_type(path, data, 'version', str, 'a version string')
    if not data['version'].startswith('2.'):
        raise MetadataError(path, 'unsupported metadata version %r (expected %s)' % (data['version'], METADATA_VERSION))
    if data.get('mode') != BACKUP_MODE:
        raise MetadataError(path, 'mode is %r, only %r backups are handled' % (data.get('mode'), BACKUP_MODE))
    _require_type(path, data, 'jobId', str, 'a uuid string')
    _require_type(path, data, 'timestamp', int, 'an integer (ms since the epoch)')
    for key in ('vm', 'vmSnapshot', 'vbds', 'vifs', 'vdis', 'vhds'):
        _require_type(path, data, key, dict, 'an object')
    for ref, relative in data['vhds'].items():
        if not isinstance(relative, str) or not VHD_RELATIVE_PATTERN.match(relative):
            raise MetadataError(path, 'vhds[%r] = %r is not a vdis/<job uuid>/<vdi uuid>/<timestamp>.vhd path' % (ref, relative))
        for part in VHD_RELATIVE_PATTERN.match(relative).groups()[:2]:
            if not UUID_PATTERN.match(part):
                raise MetadataError(path, 'vhds[%r] = %r holds an invalid uuid %r' % (ref, relative, part))
    differencing = data.get('isVhdDifferencing', {})
    if not isinstance(differencing, dict):
        raise MetadataError(path, "field 'isVhdDifferencing' must be an object, got %s" % type(differencing).__name__)
    repaired = {}
    for ref, flag in differencing.items():
        # Xen Orchestra keyed this map '<ref>.vhd' until 2025-05 (its stream names; xen-orchestra commits 41e5a33c, f2a38591).
        if ref.endswith('.vhd') and ref[:-len('.vhd')] in data['vhds'] and ref[:-len('.vhd')] not in differencing:
            ref = ref[:-len('.vhd')]
        # XenServer < 7.1 era backups stored booleans as 0/1.
        if isinstance(flag, bool) or flag in (0, 1):
            repaired[ref] = bool(flag)
        else:
            raise MetadataError(path, 'isVhdDifferencing[%r] must be a boolean, got %r' % (ref, flag))
    data['isVhdDifferencing'] = repaired
    if 'size' in data:
        _require_type(path, data, 'size', int, 'an integer number of bytes')
    own = data.get(OWN_FIELD)
    if own is not None:
        if not isinstance(own, dict) or not all(isinstance(own.get(key, {}), dict) for key in ('sha256', 'block_checksums', 'virtual_sizes')):
            raise MetadataError(path, 'field %r must be an object with sha256, block_checksums and virtual_sizes objects' % OWN_FIELD)
        bad_sizes = {ref: size for ref, size in own.get('virtual_sizes', {}).items() if not isinstance(size, int) or isinstance(size, bool) or size < 0}
        if bad_sizes:
            raise MetadataError(path, '%s.virtual_sizes must map VDI refs to sizes in bytes, got %r' % (OWN_FIELD, bad_sizes))
    return data


def parse_metadata_json(raw: bytes, shown: str):
    """Parse a backup JSON without checking its fields; errors name the file (``shown``)."""
    try:
        return json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(shown, 'not valid JSON (%s)' % exc) from exc


def load_metadata_json(storage: Storage, path: str):
    """Read and parse the backup JSON at storage ``path`` without checking its fields; errors name the file."""
    try:
        raw = storage.read_bytes(path)
    except OSError as exc:
        raise MetadataError(storage.describe(path), 'cannot read it: %s' % (exc.strerror or exc)) from exc
    return parse_metadata_json(raw, storage.describe(path))


def read_metadata(storage: Storage, path: str) -> dict:
    """Load and validate one delta backup JSON; any problem becomes a MetadataError naming the file."""
    return validate_metadata(load_metadata_json(storage, path), storage.describe(path))


def metadata_bytes(metadata: dict) -> bytes:
    """The JSON text of a backup's metadata as this collection writes it (one format for new and rewritten points)."""
    return json.dumps(metadata, indent=1, sort_keys=True).encode('utf-8')


def is_full_mode_backup(data) -> bool:
    """XO's full (XVA) backups share the VM folder; they are valid, just not ours to read."""
    return isinstance(data, dict) and data.get('mode') == 'full'


def build_metadata(job_id: str, schedule_id: str, timestamp_ms: int, vm: dict, vm_snapshot: dict, vbds: dict, vifs: dict, vdis: dict,
                   vhds: dict, differencing: dict, size: int, block_checksums: dict, virtual_sizes: dict,
                   collection_version: str = COLLECTION_VERSION, extra: dict | None = None) -> dict:
    """Metadata in XO's 2.0.0 delta format plus our own ``xapi_delta_backup`` section.

    ``vhds`` maps VDI refs to paths relative to the VM folder; ``block_checksums`` and ``virtual_sizes``
    are keyed by those same relative paths and by VDI ref respectively. ``block_checksums`` names the
    VHDs written with a block checksum file (``<vhd>.blocksums``, see ``_vhd/blocksums.py``), each
    mapped to its hash name: a VHD listed there whose checksum file is missing is damage. The
    ``sha256`` map (one digest per whole file) is only found in repositories written before block
    checksums; a merge migrates the files it touches (``_repo/migrate.py``).
    """
    metadata = {
        'version': METADATA_VERSION,
        'mode': BACKUP_MODE,
        'jobId': validate_uuid(job_id, 'job id'),
        'scheduleId': validate_uuid(schedule_id, 'schedule id'),
        'timestamp': int(timestamp_ms),
        'vm': vm,
        'vmSnapshot': vm_snapshot,
        'vbds': vbds,
        'vifs': vifs,
        'vdis': vdis,
        'vhds': dict(vhds),
        'isVhdDifferencing': {ref: bool(flag) for ref, flag in differencing.items()},
        'size': int(size),
        OWN_FIELD: {'collection_version': collection_version, 'block_checksums': dict(block_checksums), 'virtual_sizes': dict(virtual_sizes)},
    }
    metadata.update(extra or {})
    return validate_metadata(metadata, '<new backup metadata>')
