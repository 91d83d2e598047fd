# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Xen Orchestra's delta backup repository layout on a local or mounted file system.

::

    <root>/xo-vm-backups/<vm uuid>/<timestamp>.json
    <root>/xo-vm-backups/<vm uuid>/vdis/<job uuid>/<live vdi uuid>/<timestamp>.vhd
    <root>/xo-vm-backups/<vm uuid>.lock/owner.json

Every path is built from validated UUIDs and timestamps only, never from names a user or a VM
can choose. Files appear atomically (temporary dot-name, fsync, rename, directory fsync) and a
backup's JSON is written last, so a half-written backup is never listed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field

from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdFile

BACKUP_DIR = 'xo-vm-backups'
VDIS_DIR = 'vdis'
LOCK_SUFFIX = '.lock'
LOCK_OWNER_FILE = 'owner.json'
METADATA_VERSION = '2.0.0'
BACKUP_MODE = 'delta'
OWN_FIELD = 'xapi_delta_backup'
COLLECTION_VERSION = '0.1.0'
TIMESTAMP_FORMAT = '%Y%m%dT%H%M%SZ'
DEFAULT_FILE_MODE = 0o600
DEFAULT_DIR_MODE = 0o700
MERGE_STATE_SUFFIX = '.merge.json'
XO_CACHE_FILE = 'cache.json.gz'
# Fixed forever: changing it would change every job id and break every chain (XO keys bases by job id).
JOB_ID_NAMESPACE = uuid.UUID('a0aac57f-fdfd-4454-a0b4-1123a1d5b51a')

UUID_PATTERN = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')
TIMESTAMP_PATTERN = re.compile(r'^\d{8}T\d{6}Z$')
METADATA_NAME_PATTERN = re.compile(r'^(\d{8}T\d{6}Z)\.json$')
VHD_NAME_PATTERN = re.compile(r'^(\d{8}T\d{6}Z)\.vhd$')
# vhds values are relative to the VM folder; XO's directory mode adds ".alias".
VHD_RELATIVE_PATTERN = re.compile(r'^vdis/([0-9a-f-]{36})/([0-9a-f-]{36})/(\d{8}T\d{6}Z)(\.alias)?\.vhd$')

# VHD footer (copy at offset 0 of dynamic and differencing files): cookie, then disk type at byte 60.
VHD_COOKIE = b'conectix'
VHD_DISK_TYPE_OFFSET = 60
VHD_TYPE_FIXED, VHD_TYPE_DYNAMIC, VHD_TYPE_DIFFERENCING = 2, 3, 4


class RepositoryError(DeltaBackupError):
    """A repository problem with a message saying what is wrong and where."""

    error_code = 'repository_error'


class MetadataError(RepositoryError):
    """A backup metadata JSON that cannot be used (hand-edited, truncated, wrong types)."""

    error_code = 'invalid_metadata'

    def __init__(self, path: str, problem: str):
        super().__init__('backup metadata %s is invalid: %s' % (path, problem))
        self.path = path
        self.problem = problem


class RepositoryLockedError(RepositoryError):
    """Another run holds the VM's lock; ``holder`` is its owner record (may be empty)."""

    error_code = 'repository_locked'

    def __init__(self, lock_path: str, holder: dict, idle_seconds: float | None = None):
        idle = ''
        if idle_seconds is not None and holder:
            idle = ' (last refreshed %d s ago; a lock of another host idle for %d s is taken over)' % (idle_seconds, FOREIGN_LOCK_STALE_SECONDS)
        super().__init__('%s is locked by %s: another backup of this VM is running; wait for it or, if it died on another host, remove %s%s'
                         % (lock_path, describe_lock_holder(holder), lock_path, idle))
        self.lock_path = lock_path
        self.holder = holder


# -- names -------------------------------------------------------------------------------------


def validate_uuid(value, what: str = 'uuid') -> str:
    """Return the uuid if it is canonical lower-case text; paths are only ever built from such values."""
    if not isinstance(value, str) or not UUID_PATTERN.match(value):
        raise RepositoryError('%s %r is not a canonical lower-case uuid' % (what, value))
    return value


def validate_timestamp(value) -> str:
    """Return the timestamp if it is a real UTC time written as %Y%m%dT%H%M%SZ."""
    if not isinstance(value, str) or not TIMESTAMP_PATTERN.match(value):
        raise RepositoryError('timestamp %r is not of the form YYYYMMDDTHHMMSSZ' % (value,))
    parse_timestamp(value)
    return value


def parse_timestamp(value: str) -> datetime.datetime:
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


def vhd_relative_path(job_id: str, vdi_uuid: str, timestamp: str) -> str:
    """Path of a VHD relative to the VM folder, as stored in the metadata's ``vhds``."""
    return '%s/%s/%s/%s.vhd' % (VDIS_DIR, validate_uuid(job_id, 'job id'), validate_uuid(vdi_uuid, 'VDI uuid'), validate_timestamp(timestamp))


def is_hidden_name(name: str) -> bool:
    """Listings skip temporary dot-files and lock folders, as XO does."""
    return name.startswith('.') or name.endswith(LOCK_SUFFIX)


# -- atomic files ------------------------------------------------------------------------------


def fsync_directory(path: str) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(final_name: str) -> str:
    """``.<ms epoch>-<random>.<name>``: hidden from listings, unique, recognisable as ours."""
    return '.%d-%s.%s' % (int(time.time() * 1000), secrets.token_hex(4), final_name)


class AtomicFile:
    """A file that appears under its final name only once complete and on disk.

    Counts bytes and computes the SHA-256 while writing. Use as a context manager: leaving
    normally commits, an exception removes the temporary file.
    """

    def __init__(self, path: str, mode: int = DEFAULT_FILE_MODE, overwrite: bool = False):
        self.path = path
        self.directory, name = os.path.split(path)
        self.temp_path = os.path.join(self.directory, temporary_name(name))
        self.mode = mode
        self.overwrite = overwrite
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def __enter__(self) -> 'AtomicFile':
        if not self.overwrite and os.path.lexists(self.path):
            raise RepositoryError('%s already exists: refusing to overwrite a backup file' % self.path)
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_NOFOLLOW', 0), self.mode)
        os.fchmod(fd, self.mode)  # the umask must not loosen or tighten the configured mode
        self._file = os.fdopen(fd, 'wb')
        return self

    def write(self, data) -> int:
        self.write_data(data)
        self.update_hash(data)
        return len(data)

    # The two halves of write, for a caller that runs them on two threads (transfer.WriteBehind):
    # each must see every chunk, in order.
    def write_data(self, data) -> None:
        self._file.write(data)
        self.size += len(data)

    def update_hash(self, data) -> None:
        self._hash.update(data)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if not self.overwrite and os.path.lexists(self.path):
            self.abort()
            raise RepositoryError('%s appeared while it was being written: refusing to overwrite it' % self.path)
        os.replace(self.temp_path, self.path)
        fsync_directory(self.directory)

    def abort(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)


def write_file_atomically(path: str, data: bytes, mode: int = DEFAULT_FILE_MODE, overwrite: bool = False) -> str:
    """Write bytes atomically; return their SHA-256."""
    with AtomicFile(path, mode=mode, overwrite=overwrite) as target:
        target.write(data)
    return target.sha256


# -- VHD footer --------------------------------------------------------------------------------


def vhd_disk_type(path: str) -> int:
    """Disk type from the footer copy at the start of a VHD (2 fixed, 3 dynamic, 4 differencing).

    Only what the chain walk needs; everything else about VHDs belongs to the VHD engine.
    """
    try:
        with open(path, 'rb') as vhd:
            head = vhd.read(VHD_DISK_TYPE_OFFSET + 4)
    except OSError as exc:
        raise RepositoryError('cannot read VHD %s: %s' % (path, exc.strerror or exc)) from exc
    if len(head) < VHD_DISK_TYPE_OFFSET + 4 or head[:8] != VHD_COOKIE:
        raise RepositoryError('%s is not a VHD file (no conectix footer at its start)' % path)
    return struct.unpack('>I', head[VHD_DISK_TYPE_OFFSET:VHD_DISK_TYPE_OFFSET + 4])[0]


# -- metadata ----------------------------------------------------------------------------------


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
        if not isinstance(own, dict) or not isinstance(own.get('sha256', {}), dict) or not isinstance(own.get('virtual_sizes', {}), dict):
            raise MetadataError(path, 'field %r must be an object with sha256 and virtual_sizes objects' % OWN_FIELD)
        bad_sizes = {ref: size for ref, size in own.get('virtual_sizes', {}).items() if not isinstance(size, int) or isinstance(size, bool) or size < 0}
        if bad_sizes:
            raise MetadataError(path, '%s.virtual_sizes must map VDI refs to sizes in bytes, got %r' % (OWN_FIELD, bad_sizes))
    return data


def load_metadata_json(path: str):
    """Parse a backup JSON without checking its fields; errors name the file."""
    try:
        with open(path, 'rb') as source:
            raw = source.read()
    except OSError as exc:
        raise MetadataError(path, 'cannot read it: %s' % (exc.strerror or exc)) from exc
    try:
        return json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(path, 'not valid JSON (%s)' % exc) from exc


def read_metadata(path: str) -> dict:
    """Load and validate one delta backup JSON; any problem becomes a MetadataError naming the file."""
    return validate_metadata(load_metadata_json(path), path)


def is_full_mode_backup(data) -> bool:
    """XO's full (XVA) backups share the VM folder; they are valid, just not ours to read."""
    return isinstance(data, dict) and data.get('mode') == 'full'


def build_metadata(job_id: str, schedule_id: str, timestamp_ms: int, vm: dict, vm_snapshot: dict, vbds: dict, vifs: dict, vdis: dict,
                   vhds: dict, differencing: dict, size: int, sha256: dict, virtual_sizes: dict,
                   collection_version: str = COLLECTION_VERSION, extra: dict | None = None) -> dict:
    """Metadata in XO's 2.0.0 delta format plus our own ``xapi_delta_backup`` section.

    ``vhds`` maps VDI refs to paths relative to the VM folder; ``sha256`` and ``virtual_sizes``
    are keyed by those same relative paths and by VDI ref respectively.
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
        OWN_FIELD: {'collection_version': collection_version, 'sha256': dict(sha256), 'virtual_sizes': dict(virtual_sizes)},
    }
    metadata.update(extra or {})
    return validate_metadata(metadata, '<new backup metadata>')


# -- backup points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupDisk:
    """One disk of a backup point."""

    vdi_ref: str
    vdi_uuid: str
    job_id: str
    relative_path: str
    path: str
    differencing: bool
    sha256: str | None
    virtual_size: int | None


@dataclass
class BackupPoint:
    """One complete backup of a VM: a valid ``<timestamp>.json`` and what it says."""

    vm_uuid: str
    timestamp: str
    metadata_path: str
    metadata: dict = field(repr=False)

    @property
    def job_id(self) -> str:
        return self.metadata['jobId']

    @property
    def datetime(self) -> datetime.datetime:
        return parse_timestamp(self.timestamp)

    @property
    def disks(self) -> list[BackupDisk]:
        own = self.metadata.get(OWN_FIELD) or {}
        vm_dir = os.path.dirname(self.metadata_path)
        disks = []
        for ref, relative in sorted(self.metadata['vhds'].items(), key=lambda item: item[1]):
            job_id, vdi_uuid = VHD_RELATIVE_PATTERN.match(relative).groups()[:2]
            size = own.get('virtual_sizes', {}).get(ref)
            disks.append(BackupDisk(vdi_ref=ref, vdi_uuid=vdi_uuid, job_id=job_id, relative_path=relative,
                                    path=os.path.join(vm_dir, *relative.split('/')),
                                    differencing=self.metadata['isVhdDifferencing'].get(ref, False),
                                    sha256=own.get('sha256', {}).get(relative), virtual_size=int(size) if size is not None else None))
        return disks


# -- locks -------------------------------------------------------------------------------------


def describe_lock_holder(holder: dict) -> str:
    if not holder:
        return 'a holder that names no owner but keeps the lock fresh (Xen Orchestra, or a run taking it right now)'
    return 'job %r (pid %s on host %s, since %s)' % (holder.get('job'), holder.get('pid'), holder.get('host'), holder.get('started'))


def process_is_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (locks and export markers name their owner by pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def lock_is_stale(holder: dict, hostname: str | None = None) -> bool:
    """Stale only when provably dead: recorded on this host and its pid no longer runs."""
    if not holder or holder.get('host') != (hostname or socket.gethostname()):
        return False
    pid = holder.get('pid')
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    return not process_is_alive(pid)


# Xen Orchestra locks with proper-lockfile: an empty ``<vm uuid>.lock`` folder made by mkdir whose
# mtime its holder refreshes every 5 s, and which anyone may break once the mtime is 10 s old.
# We take the same folder the same way and keep its mtime fresh, so XO and this collection
# exclude each other on a shared repository.
LOCK_HEARTBEAT_SECONDS = 5.0
OWNERLESS_LOCK_STALE_SECONDS = 10.0
# A lock owned on another host cannot be checked by pid (and every AWX job runs on a new host name):
# it is judged by its heartbeat, far more patiently than XO's 10 s, so that clock skew between
# hosts or a stalled file server never breaks a live lock.
FOREIGN_LOCK_STALE_SECONDS = 600.0


class RepositoryLock:
    """Exclusive lock of one VM in one repository: the ``<vm uuid>.lock/`` folder, made with mkdir.

    The owner file inside names host, pid, start time and job so that a refused run can say who
    holds the lock. A heartbeat thread refreshes the folder's mtime while it is held.

    A lock is broken only when its holder is gone: an owner on this host whose pid no longer runs;
    a folder without owner (Xen Orchestra's, or ours killed between mkdir and the owner write)
    whose mtime stayed unchanged for ``OWNERLESS_LOCK_STALE_SECONDS``; an owner on another host
    whose heartbeat stopped ``FOREIGN_LOCK_STALE_SECONDS`` ago. Otherwise the error names the
    holder, how long ago it was refreshed, and how to clear it.
    """

    def __init__(self, repository: 'BackupRepository', vm_uuid: str, job: str):
        self.repository = repository
        self.vm_uuid = validate_uuid(vm_uuid, 'VM uuid')
        self.path = os.path.join(repository.backup_dir, vm_uuid + LOCK_SUFFIX)
        self.owner_path = os.path.join(self.path, LOCK_OWNER_FILE)
        self.owner = {'host': socket.gethostname(), 'pid': os.getpid(), 'job': job,
                      'started': datetime.datetime.now(datetime.timezone.utc).isoformat(), 'token': secrets.token_hex(8)}
        self.held = False
        self.took_over = None  # the owner record of a stale lock broken to get this one ({} if it had none)
        self.heartbeat_seconds = LOCK_HEARTBEAT_SECONDS
        self.ownerless_stale_seconds = OWNERLESS_LOCK_STALE_SECONDS
        self.foreign_stale_seconds = FOREIGN_LOCK_STALE_SECONDS
        self._stop_heartbeat = threading.Event()
        self._heartbeat = None

    def __enter__(self) -> 'RepositoryLock':
        self.acquire()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()

    def read_holder(self, lock_path: str | None = None) -> dict:
        try:
            with open(os.path.join(lock_path or self.path, LOCK_OWNER_FILE), 'rb') as source:
                holder = json.loads(source.read().decode('utf-8'))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> None:
        for attempt in range(3):
            try:
                os.mkdir(self.path, self.repository.dir_mode)
            except FileExistsError:
                holder = self.read_holder()
                if attempt < 2 and self._is_abandoned(holder):
                    self._break_stale(holder)
                    continue
                holder = self.read_holder() or holder
                foreign = bool(holder) and holder.get('host') != socket.gethostname()
                raise RepositoryLockedError(self.path, holder, self._lock_idle_seconds() if foreign else None) from None
            except OSError as exc:
                raise RepositoryError('cannot create lock %s: %s' % (self.path, exc.strerror or exc)) from exc
            try:
                self._write_owner()
            except OSError as exc:
                # A full or read-only file system: leave no ownerless lock behind for the next run to wait on.
                shutil.rmtree(self.path, ignore_errors=True)
                raise RepositoryError('cannot write the owner file of lock %s: %s' % (self.path, exc.strerror or exc)) from exc
            self.held = True
            self._start_heartbeat()
            self._sweep_broken_locks()
            return

    def _write_owner(self) -> None:
        # No temporary file and no fsync: the window between mkdir and this write is when a kill
        # leaves an ownerless lock, so it is kept to one small write. A reader that finds the file
        # empty or half-written treats the lock as ownerless, which is never broken while fresh.
        fd = os.open(self.owner_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_NOFOLLOW', 0), self.repository.file_mode)
        try:
            os.write(fd, json.dumps(self.owner, indent=1).encode('utf-8'))
        finally:
            os.close(fd)
        os.chmod(self.path, self.repository.dir_mode)

    def _is_abandoned(self, holder: dict) -> bool:
        if not holder:
            return self._ownerless_lock_is_abandoned()
        if holder.get('host') == socket.gethostname():
            return lock_is_stale(holder)
        idle = self._lock_idle_seconds()
        return idle is not None and idle >= self.foreign_stale_seconds

    def _lock_idle_seconds(self) -> float | None:
        mtime = self._lock_mtime()
        return None if mtime is None else max(time.time() - mtime, 0.0)

    def _lock_mtime(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None

    def _ownerless_lock_is_abandoned(self) -> bool:
        """Wait until an ownerless lock's mtime is one stale period old; False if anyone refreshes it."""
        first_seen = self._lock_mtime()
        while first_seen is not None:
            age = time.time() - first_seen
            if age >= self.ownerless_stale_seconds:
                return True
            self._stop_heartbeat.wait(min(self.ownerless_stale_seconds - age + 0.05, 1.0))
            if self._lock_mtime() != first_seen or self.read_holder():
                return False  # refreshed by a live holder, or our own kind finished taking it
        return True  # gone meanwhile: the next mkdir decides

    def _break_stale(self, holder: dict) -> None:
        # Move the folder aside under a unique name, then look at what was moved: if it is not
        # the lock judged stale (a live run re-took it in between), put it back.
        aside = os.path.join(self.repository.backup_dir, '.%s%s.broken-%s' % (self.vm_uuid, LOCK_SUFFIX, secrets.token_hex(4)))
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = self.read_holder(aside)
        if moved != holder:
            with contextlib.suppress(OSError):
                os.rename(aside, self.path)
            return
        self.took_over = holder
        shutil.rmtree(aside, ignore_errors=True)

    def _sweep_broken_locks(self) -> None:
        """Remove folders that a killed run moved aside (they are no longer locks of anyone)."""
        prefix = '.%s%s.' % (self.vm_uuid, LOCK_SUFFIX)
        with contextlib.suppress(OSError):
            for name in os.listdir(self.repository.backup_dir):
                if name.startswith(prefix) and ('.broken-' in name or '.released-' in name):
                    shutil.rmtree(os.path.join(self.repository.backup_dir, name), ignore_errors=True)

    def _start_heartbeat(self) -> None:
        self._stop_heartbeat.clear()

        def beat():
            while not self._stop_heartbeat.wait(self.heartbeat_seconds):
                try:
                    os.utime(self.path)
                except OSError:
                    return  # the folder is gone: release, or broken by someone else
        self._heartbeat = threading.Thread(target=beat, name='lock-heartbeat-%s' % self.vm_uuid, daemon=True)
        self._heartbeat.start()

    def _stop(self) -> None:
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None

    def release(self) -> None:
        """Remove the lock if it is still ours (a lock taken over meanwhile is left alone)."""
        if not self.held:
            return
        self.held = False
        self._stop()
        if self.read_holder().get('token') != self.owner['token']:
            return
        # One rename makes the lock disappear at once: a kill during the removal that follows
        # leaves a hidden folder the next run sweeps, never an ownerless lock.
        released = os.path.join(self.repository.backup_dir, '.%s%s.released-%s' % (self.vm_uuid, LOCK_SUFFIX, secrets.token_hex(4)))
        try:
            os.rename(self.path, released)
        except FileNotFoundError:
            return
        shutil.rmtree(released, ignore_errors=True)


# -- the repository ----------------------------------------------------------------------------


class BackupRepository:
    """A repository root holding ``xo-vm-backups``."""

    def __init__(self, root: str, file_mode: int = DEFAULT_FILE_MODE, dir_mode: int = DEFAULT_DIR_MODE, create: bool = False):
        if not isinstance(root, str) or not root.strip():
            raise RepositoryError('a repository path is required')
        self.root = os.path.abspath(root)
        self.backup_dir = os.path.join(self.root, BACKUP_DIR)
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        if create:
            self.initialize()
        self.validate()

    def validate(self) -> None:
        """Raise unless the root looks like a repository."""
        if not os.path.exists(self.root):
            raise RepositoryError('%s is not a backup repository: it does not exist' % self.root)
        if not os.path.isdir(self.root):
            raise RepositoryError('%s is not a backup repository: it is not a directory' % self.root)
        if not os.path.isdir(self.backup_dir):
            raise RepositoryError('%s is not a backup repository: it has no %s folder (create it or point to the right mount)' % (self.root, BACKUP_DIR))
        if not os.access(self.backup_dir, os.R_OK | os.X_OK):
            raise RepositoryError('%s is not a backup repository: %s cannot be read' % (self.root, self.backup_dir))

    def initialize(self) -> None:
        if not os.path.isdir(self.root):
            raise RepositoryError('%s is not a backup repository: the directory does not exist (mount it or create it first)' % self.root)
        self._make_dirs(self.backup_dir)

    def _make_dirs(self, path: str) -> None:
        """Create missing folders below the root with dir_mode (umask ignored); fsync each parent."""
        missing = []
        current = path
        while not os.path.isdir(current):
            missing.append(current)
            current = os.path.dirname(current)
        for folder in reversed(missing):
            try:
                os.mkdir(folder, self.dir_mode)
            except FileExistsError:
                continue
            os.chmod(folder, self.dir_mode)
            fsync_directory(os.path.dirname(folder))

    # paths

    def vm_dir(self, vm_uuid: str) -> str:
        return os.path.join(self.backup_dir, validate_uuid(vm_uuid, 'VM uuid'))

    def metadata_path(self, vm_uuid: str, timestamp: str) -> str:
        return os.path.join(self.vm_dir(vm_uuid), validate_timestamp(timestamp) + '.json')

    def vdi_dir(self, vm_uuid: str, job_id: str, vdi_uuid: str) -> str:
        return os.path.join(self.vm_dir(vm_uuid), VDIS_DIR, validate_uuid(job_id, 'job id'), validate_uuid(vdi_uuid, 'VDI uuid'))

    def vhd_path(self, vm_uuid: str, job_id: str, vdi_uuid: str, timestamp: str) -> str:
        return os.path.join(self.vdi_dir(vm_uuid, job_id, vdi_uuid), validate_timestamp(timestamp) + '.vhd')

    def lock(self, vm_uuid: str, job: str) -> RepositoryLock:
        return RepositoryLock(self, vm_uuid, job)

    # writing

    def open_vhd_writer(self, vm_uuid: str, job_id: str, vdi_uuid: str, timestamp: str) -> AtomicFile:
        """An AtomicFile for one disk of a run; it becomes visible to listings only via the JSON."""
        path = self.vhd_path(vm_uuid, job_id, vdi_uuid, timestamp)
        self._make_dirs(os.path.dirname(path))
        return AtomicFile(path, mode=self.file_mode)

    def write_metadata(self, vm_uuid: str, timestamp: str, metadata: dict) -> str:
        """Write ``<timestamp>.json`` last, after checking every VHD it names is in place."""
        path = self.metadata_path(vm_uuid, timestamp)
        validate_metadata(metadata, path)
        vm_dir = self.vm_dir(vm_uuid)
        for relative in metadata['vhds'].values():
            if not os.path.isfile(os.path.join(vm_dir, *relative.split('/'))):
                raise RepositoryError('cannot write %s: the VHD %s it references is missing' % (path, relative))
        self._make_dirs(vm_dir)
        write_file_atomically(path, json.dumps(metadata, indent=1, sort_keys=True).encode('utf-8'), mode=self.file_mode)
        self.invalidate_xo_cache(vm_uuid)
        return path

    def remove_metadata(self, vm_uuid: str, timestamp: str) -> bool:
        """Delete a backup point the way XO does: only its JSON; the next clean-up or merge handles the VHDs."""
        path = self.metadata_path(vm_uuid, timestamp)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        fsync_directory(os.path.dirname(path))
        self.invalidate_xo_cache(vm_uuid)
        return True

    def invalidate_xo_cache(self, vm_uuid: str) -> None:
        """Drop XO's listing cache: it only notices a change in the number of JSONs, not a swap."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.vm_dir(vm_uuid), XO_CACHE_FILE))

    # listing

    def list_vms(self) -> list[str]:
        """UUIDs of the VMs with a folder in the repository."""
        return sorted(name for name in os.listdir(self.backup_dir)
                      if not is_hidden_name(name) and UUID_PATTERN.match(name) and os.path.isdir(os.path.join(self.backup_dir, name)))

    def list_backups(self, vm_uuid: str) -> list[BackupPoint]:
        """Complete delta backup points of a VM, oldest first (XO full-mode backups are skipped).

        An invalid JSON raises MetadataError naming it.
        """
        vm_dir = self.vm_dir(vm_uuid)
        if not os.path.isdir(vm_dir):
            return []
        points = []
        for name in sorted(os.listdir(vm_dir)):
            match = METADATA_NAME_PATTERN.match(name)
            if not match or is_hidden_name(name):
                continue
            path = os.path.join(vm_dir, name)
            data = load_metadata_json(path)
            if is_full_mode_backup(data):
                continue
            points.append(BackupPoint(vm_uuid=vm_uuid, timestamp=validate_timestamp(match.group(1)), metadata_path=path,
                                      metadata=validate_metadata(data, path)))
        return points

    def get_backup(self, vm_uuid: str, timestamp: str) -> BackupPoint:
        path = self.metadata_path(vm_uuid, timestamp)
        if not os.path.isfile(path):
            raise RepositoryError('no backup of VM %s at %s in %s' % (vm_uuid, timestamp, self.root))
        return BackupPoint(vm_uuid=vm_uuid, timestamp=timestamp, metadata_path=path, metadata=read_metadata(path))

    def disk_files(self, vm_uuid: str, job_id: str, vdi_uuid: str) -> list[str]:
        """Flat ``<timestamp>.vhd`` names in a disk folder, oldest first (name order is time order)."""
        folder = self.vdi_dir(vm_uuid, job_id, vdi_uuid)
        if not os.path.isdir(folder):
            return []
        return sorted(name for name in os.listdir(folder) if VHD_NAME_PATTERN.match(name))

    def vhd_chain(self, point: BackupPoint, disk: BackupDisk) -> list[str]:
        """VHD paths needed to read ``disk`` at ``point``: newest (the point's own VHD) to the full.

        Follows each differencing file's parent name (relative to the child, as XO links them) to
        an older file of the same folder, until a dynamic or fixed one. Files without a JSON of
        their own may be links; a stray file between two links is not (a time-order walk would
        read it into the disk).
        """
        folder = os.path.dirname(disk.path)
        names = set(self.disk_files(point.vm_uuid, disk.job_id, disk.vdi_uuid))
        name = os.path.basename(disk.path)
        if name not in names:
            raise RepositoryError('backup %s of VM %s references %s, which is missing' % (point.timestamp, point.vm_uuid, disk.relative_path))
        chain = []
        while True:
            path = os.path.join(folder, name)
            chain.append(path)
            try:
                with VhdFile(path) as vhd:
                    if not vhd.is_differencing:
                        return chain
                    parent_path = vhd.parent_path()
            except (VhdError, OSError) as error:
                raise RepositoryError('cannot read the chain of %s: %s' % (disk.relative_path, error)) from error
            parent = os.path.basename(parent_path) if parent_path else None
            if parent_path is None or os.path.dirname(parent_path) != os.path.normpath(os.path.abspath(folder)) or parent not in names:
                raise RepositoryError('the chain of %s is broken: %s names parent %r, which is not a backup file of its folder %s'
                                      % (disk.relative_path, name, vhd.header.parent_name, folder))
            if parent >= name:
                raise RepositoryError('the chain of %s is broken: %s names parent %s, which is not older (a parent sorts first)'
                                      % (disk.relative_path, name, parent))
            name = parent

    # cleaning up after interrupted runs

    def cleanup_incomplete(self, vm_uuid: str, dry_run: bool = False) -> dict:
        """Remove leftovers of interrupted runs: our temporary files and VHDs no complete JSON needs.

        Kept: every VHD a valid JSON references and the older files of its chain, and anything an
        unfinished merge (``.<name>.merge.json``) names, plus those state files themselves. Call it
        while holding the VM's lock. Returns what was (or, with dry_run, would be) removed.
        """
        vm_dir = self.vm_dir(vm_uuid)
        report = {'temporary_files': [], 'unreferenced_vhds': []}
        if not os.path.isdir(vm_dir):
            return report
        points = self.list_backups(vm_uuid)
        needed = self._needed_vhds(points)
        for folder in [vm_dir] + self._disk_folders(vm_dir):
            protected = self._merge_protected(folder)
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if not os.path.isfile(path) or name in protected or name.endswith(MERGE_STATE_SUFFIX):
                    continue
                if name.startswith('.'):
                    report['temporary_files'].append(path)
                elif folder != vm_dir and VHD_NAME_PATTERN.match(name) and path not in needed:
                    report['unreferenced_vhds'].append(path)
        if not dry_run:
            for path in report['temporary_files'] + report['unreferenced_vhds']:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            for folder in {os.path.dirname(path) for path in report['unreferenced_vhds'] + report['temporary_files']}:
                fsync_directory(folder)
        return report

    def _disk_folders(self, vm_dir: str) -> list[str]:
        folders = []
        vdis = os.path.join(vm_dir, VDIS_DIR)
        for job_id in sorted(os.listdir(vdis)) if os.path.isdir(vdis) else []:
            job_dir = os.path.join(vdis, job_id)
            if not UUID_PATTERN.match(job_id) or not os.path.isdir(job_dir):
                continue
            folders.extend(os.path.join(job_dir, vdi) for vdi in sorted(os.listdir(job_dir))
                           if UUID_PATTERN.match(vdi) and os.path.isdir(os.path.join(job_dir, vdi)))
        return folders

    def _needed_vhds(self, points: list[BackupPoint]) -> set[str]:
        needed = set()
        for point in points:
            for disk in point.disks:
                needed.add(disk.path)
                try:
                    needed.update(self.vhd_chain(point, disk))
                except RepositoryError:
                    # Unreadable chain: keep every older file of the disk rather than guess.
                    names = self.disk_files(point.vm_uuid, disk.job_id, disk.vdi_uuid)
                    own = os.path.basename(disk.path)
                    needed.update(os.path.join(os.path.dirname(disk.path), name) for name in names if name <= own)
        return needed

    def _merge_protected(self, folder: str) -> set[str]:
        """Names an unfinished merge in ``folder`` still needs: its parent and every chain entry."""
        protected = set()
        for name in os.listdir(folder):
            if not (name.startswith('.') and name.endswith(MERGE_STATE_SUFFIX)):
                continue
            protected.add(name[1:-len(MERGE_STATE_SUFFIX)])
            try:
                with open(os.path.join(folder, name), 'rb') as source:
                    state = json.loads(source.read().decode('utf-8'))
            except (OSError, ValueError):
                # Unreadable state: protect the whole folder, the merge engine will sort it out.
                return set(os.listdir(folder))
            protected.update(_merge_state_file_names(state))
        return protected


def _merge_state_file_names(state) -> set[str]:
    """File names a merge state refers to: XO's ``chain`` list, or the VHD engine's ``parent`` and ``children``."""
    names = set()
    if not isinstance(state, dict):
        return names
    entries = [state.get('parent')]
    for key in ('chain', 'children'):
        if isinstance(state.get(key), list):
            entries.extend(state[key])
    for entry in entries:
        if isinstance(entry, str) and entry:
            names.add(os.path.basename(entry))
    return names


def open_repository(path: str, create: bool = False, file_mode: int = DEFAULT_FILE_MODE, dir_mode: int = DEFAULT_DIR_MODE) -> BackupRepository:
    """Open (or with ``create`` initialise) a repository; raises RepositoryError if ``path`` is not one."""
    return BackupRepository(path, file_mode=file_mode, dir_mode=dir_mode, create=create)
