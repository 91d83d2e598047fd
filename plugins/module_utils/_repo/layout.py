# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Names in Xen Orchestra's delta backup repository layout, and the validation that keeps paths safe.

::

    xo-vm-backups/<vm uuid>/<timestamp>.json
    xo-vm-backups/<vm uuid>/vdis/<job uuid>/<live vdi uuid>/<timestamp>.vhd
    xo-vm-backups/<vm uuid>.lock/owner.json

Paths here are relative to the repository's storage root ('/'-separated). Every one is built from
validated UUIDs and timestamps only, never from names a user or a VM can choose.
"""

from __future__ import annotations

import datetime
import posixpath
import re
import uuid

from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError

BACKUP_DIR = 'xo-vm-backups'
VDIS_DIR = 'vdis'
LOCK_SUFFIX = '.lock'
LOCK_OWNER_FILE = 'owner.json'
MERGE_STATE_SUFFIX = '.merge.json'
XO_CACHE_FILE = 'cache.json.gz'
TIMESTAMP_FORMAT = '%Y%m%dT%H%M%SZ'
# Fixed forever: changing it would change every job id and break every chain (XO keys bases by job id).
JOB_ID_NAMESPACE = uuid.UUID('a0aac57f-fdfd-4454-a0b4-1123a1d5b51a')

UUID_PATTERN = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z')
TIMESTAMP_PATTERN = re.compile(r'^\d{8}T\d{6}Z\Z')
METADATA_NAME_PATTERN = re.compile(r'^(\d{8}T\d{6}Z)\.json\Z')
VHD_NAME_PATTERN = re.compile(r'^(\d{8}T\d{6}Z)\.vhd\Z')
# vhds values are relative to the VM folder; XO's directory mode adds ".alias".
VHD_RELATIVE_PATTERN = re.compile(r'^vdis/([0-9a-f-]{36})/([0-9a-f-]{36})/(\d{8}T\d{6}Z)(\.alias)?\.vhd\Z')


class RepositoryError(DeltaBackupError):
    """A repository problem with a message saying what is wrong and where."""

    error_code = 'repository_error'


# -- validation --------------------------------------------------------------------------------


def validate_uuid(value, what: str = 'uuid') -> str:
    """Return the uuid if it is canonical lower-case text; paths are only ever built from such values."""
    if not isinstance(value, str) or not UUID_PATTERN.match(value):
        raise RepositoryError('%s %r is not a canonical lower-case uuid' % (what, value))
    return value


def is_uuid(value) -> bool:
    """Whether ``value`` is a canonical lower-case uuid (folder names that are not are not ours)."""
    return isinstance(value, str) and bool(UUID_PATTERN.match(value))


def validate_timestamp(value) -> str:
    """Return the timestamp if it is a real UTC time written as %Y%m%dT%H%M%SZ."""
    if not isinstance(value, str) or not TIMESTAMP_PATTERN.match(value):
        raise RepositoryError('timestamp %r is not of the form YYYYMMDDTHHMMSSZ' % (value,))
    parse_timestamp(value)
    return value


def parse_timestamp(value: str) -> datetime.datetime:
    """The aware UTC datetime of a file-name timestamp (YYYYMMDDTHHMMSSZ)."""
    try:
        return datetime.datetime.strptime(value, TIMESTAMP_FORMAT).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise RepositoryError('timestamp %r is not a valid UTC time' % (value,)) from None


def format_timestamp(moment: datetime.datetime | float | int | None = None) -> str:
    """UTC file-name timestamp of a datetime or epoch seconds (now by default)."""
    if moment is None:
        moment = datetime.datetime.now(datetime.timezone.utc)
    elif isinstance(moment, (int, float)):
        moment = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
    elif moment.tzinfo is None:
        raise RepositoryError('naive datetime %s: give an aware UTC datetime' % moment)
    return moment.astimezone(datetime.timezone.utc).strftime(TIMESTAMP_FORMAT)


def job_id_for(job_name: str) -> str:
    """Stable job uuid of a job name, so re-running a job finds its chains again."""
    if not isinstance(job_name, str) or not job_name.strip():
        raise RepositoryError('a job name is required to derive the job id')
    return str(uuid.uuid5(JOB_ID_NAMESPACE, job_name.strip()))


def is_hidden_name(name: str) -> bool:
    """Listings skip temporary dot-files and lock folders, as XO does."""
    return name.startswith('.') or name.endswith(LOCK_SUFFIX)


def is_merge_state_name(name: str) -> bool:
    """``.<file>.merge.json``: the state file of a merge in progress (XO's and the VHD engine's)."""
    return name.startswith('.') and name.endswith(MERGE_STATE_SUFFIX)


# -- relative paths ----------------------------------------------------------------------------


def vhd_relative_path(job_id: str, vdi_uuid: str, timestamp: str) -> str:
    """Path of a VHD relative to the VM folder, as stored in the metadata's ``vhds``."""
    return '%s/%s/%s/%s.vhd' % (VDIS_DIR, validate_uuid(job_id, 'job id'), validate_uuid(vdi_uuid, 'VDI uuid'), validate_timestamp(timestamp))


def vm_folder(vm_uuid: str) -> str:
    return posixpath.join(BACKUP_DIR, validate_uuid(vm_uuid, 'VM uuid'))


def metadata_file(vm_uuid: str, timestamp: str) -> str:
    return posixpath.join(vm_folder(vm_uuid), validate_timestamp(timestamp) + '.json')


def disk_folder(vm_uuid: str, job_id: str, vdi_uuid: str) -> str:
    return posixpath.join(vm_folder(vm_uuid), VDIS_DIR, validate_uuid(job_id, 'job id'), validate_uuid(vdi_uuid, 'VDI uuid'))


def vhd_file(vm_uuid: str, job_id: str, vdi_uuid: str, timestamp: str) -> str:
    return posixpath.join(vm_folder(vm_uuid), vhd_relative_path(job_id, vdi_uuid, timestamp))


def lock_folder(vm_uuid: str) -> str:
    return posixpath.join(BACKUP_DIR, validate_uuid(vm_uuid, 'VM uuid') + LOCK_SUFFIX)


def relative_to_vm_folder(vm_uuid: str, path: str) -> str:
    """A storage path under the VM folder as the metadata writes it (``vdis/...``)."""
    prefix = vm_folder(vm_uuid) + '/'
    if not path.startswith(prefix):
        raise RepositoryError('%s is not in the folder of VM %s' % (path, vm_uuid))
    return path[len(prefix):]
