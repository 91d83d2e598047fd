# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A backup repository in Xen Orchestra's delta layout (see ``layout``), on a ``Storage``.

Files appear atomically (``atomic``) and a backup's JSON is written last, so a half-written backup
is never listed. Every file operation goes through the repository's storage, with paths relative
to its root; ``describe`` gives the path a user sees (and, for now, the one the VHD engine opens).
"""

from __future__ import annotations

import datetime
import json
import os
import posixpath
from dataclasses import dataclass, field

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.atomic import AtomicFile, write_file_atomically
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import (
    BACKUP_DIR, MERGE_STATE_SUFFIX, METADATA_NAME_PATTERN, VDIS_DIR, VHD_NAME_PATTERN, VHD_RELATIVE_PATTERN, XO_CACHE_FILE,
    RepositoryError, disk_folder, is_hidden_name, is_merge_state_name, is_uuid, metadata_file, parse_timestamp, validate_timestamp,
    vhd_file, vm_folder,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.lock import RepositoryLock
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import (
    OWN_FIELD, is_full_mode_backup, load_metadata_json, metadata_bytes, read_metadata, validate_metadata,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import LocalStorage, Storage
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage.local import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import (
    HASH_NAME, SUFFIX as SIDECAR_SUFFIX, is_sidecar_name, sidecar_name,
)


# -- backup points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupDisk:
    """One disk of a backup point: ``storage_path`` for file operations, ``path`` as shown to users."""

    vdi_ref: str
    vdi_uuid: str
    job_id: str
    relative_path: str
    storage_path: str
    path: str
    differencing: bool
    sha256: str | None
    virtual_size: int | None


@dataclass
class BackupPoint:
    """One complete backup of a VM: a valid ``<timestamp>.json`` and what it says."""

    vm_uuid: str
    timestamp: str
    metadata_storage_path: str
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
        vm_dir = posixpath.dirname(self.metadata_storage_path)
        shown_vm_dir = posixpath.dirname(self.metadata_path)
        disks = []
        for ref, relative in sorted(self.metadata['vhds'].items(), key=lambda item: item[1]):
            job_id, vdi_uuid = VHD_RELATIVE_PATTERN.match(relative).groups()[:2]
            size = own.get('virtual_sizes', {}).get(ref)
            disks.append(BackupDisk(vdi_ref=ref, vdi_uuid=vdi_uuid, job_id=job_id, relative_path=relative,
                                    storage_path=posixpath.join(vm_dir, relative), path=posixpath.join(shown_vm_dir, relative),
                                    differencing=self.metadata['isVhdDifferencing'].get(ref, False),
                                    sha256=own.get('sha256', {}).get(relative), virtual_size=int(size) if size is not None else None))
        return disks


# -- the repository ----------------------------------------------------------------------------


class BackupRepository:
    """A storage holding ``xo-vm-backups``."""

    def __init__(self, storage: Storage, create: bool = False):
        self.storage = storage
        self.root = storage.describe()
        self.backup_dir = storage.describe(BACKUP_DIR)
        # Listings of each VM, read once and dropped on every change this object makes and when the
        # VM's lock is taken (another run may have written before that).
        self._listings: dict[str, list[BackupPoint]] = {}
        if create:
            self.initialize()
        self.validate()

    def validate(self) -> None:
        """Raise unless the root looks like a repository."""
        storage = self.storage
        if not storage.exists(''):
            raise RepositoryError('%s is not a backup repository: it does not exist' % self.root)
        if not storage.is_dir(''):
            raise RepositoryError('%s is not a backup repository: it is not a directory' % self.root)
        if not storage.is_dir(BACKUP_DIR):
            raise RepositoryError('%s is not a backup repository: it has no %s folder (create it or point to the right mount)' % (self.root, BACKUP_DIR))
        try:
            storage.list_dir(BACKUP_DIR)
        except OSError:
            raise RepositoryError('%s is not a backup repository: %s cannot be read' % (self.root, self.backup_dir)) from None

    def initialize(self) -> None:
        if not self.storage.is_dir(''):
            raise RepositoryError('%s is not a backup repository: the directory does not exist (mount it or create it first)' % self.root)
        self.make_dirs(BACKUP_DIR)

    def make_dirs(self, path: str) -> None:
        """Create missing folders below the root (with the storage's folder mode); make each creation durable."""
        missing = []
        current = path
        while current and not self.storage.is_dir(current):
            missing.append(current)
            current = posixpath.dirname(current)
        if not missing:
            return
        self.storage.make_dirs(path)
        for folder in reversed(missing):
            self.storage.sync_dir(posixpath.dirname(folder))

    def is_file(self, path: str) -> bool:
        return self.storage.exists(path) and not self.storage.is_dir(path)

    # paths: storage paths come from ``layout``; these are the same paths as a user sees them

    def describe(self, path: str) -> str:
        return self.storage.describe(path)

    def local_path(self, path: str) -> str:
        """The local file of a storage path, for tools that open local files (qemu-img in tests, benchmarks)."""
        return self.storage.full_path(path)

    def vm_dir(self, vm_uuid: str) -> str:
        return self.describe(vm_folder(vm_uuid))

    def metadata_path(self, vm_uuid: str, timestamp: str) -> str:
        return self.describe(metadata_file(vm_uuid, timestamp))

    def vdi_dir(self, vm_uuid: str, job_id: str, vdi_uuid: str) -> str:
        return self.describe(disk_folder(vm_uuid, job_id, vdi_uuid))

    def vhd_path(self, vm_uuid: str, job_id: str, vdi_uuid: str, timestamp: str) -> str:
        return self.describe(vhd_file(vm_uuid, job_id, vdi_uuid, timestamp))

    def lock(self, vm_uuid: str, job: str) -> RepositoryLock:
        return RepositoryLock(self, vm_uuid, job)

    # writing

    def open_vhd_writer(self, vm_uuid: str, job_id: str, vdi_uuid: str, timestamp: str, hash_name: str = HASH_NAME) -> AtomicFile:
        """An AtomicFile for one disk of a run, written with its block checksums; it becomes visible to listings only via the JSON."""
        path = vhd_file(vm_uuid, job_id, vdi_uuid, timestamp)
        self.make_dirs(posixpath.dirname(path))
        return AtomicFile(self.storage, path, vhd=True, hash_name=hash_name)

    def write_metadata(self, vm_uuid: str, timestamp: str, metadata: dict) -> str:
        """Write ``<timestamp>.json`` last, after checking every VHD it names is in place; return its storage path."""
        path = metadata_file(vm_uuid, timestamp)
        validate_metadata(metadata, self.describe(path))
        for relative in metadata['vhds'].values():
            if not self.is_file(posixpath.join(vm_folder(vm_uuid), relative)):
                raise RepositoryError('cannot write %s: the VHD %s it references is missing' % (self.describe(path), relative))
        self.make_dirs(vm_folder(vm_uuid))
        write_file_atomically(self.storage, path, metadata_bytes(metadata))
        self.changed(vm_uuid)
        return path

    def rewrite_metadata(self, point: BackupPoint, metadata: dict) -> None:
        """Replace a point's JSON atomically (same format as write_metadata)."""
        validate_metadata(metadata, point.metadata_path)
        write_file_atomically(self.storage, point.metadata_storage_path, metadata_bytes(metadata), overwrite=True)
        self.changed(point.vm_uuid)
        point.metadata = metadata

    def remove_metadata(self, vm_uuid: str, timestamp: str) -> bool:
        """Delete a backup point the way XO does: only its JSON; the next clean-up or merge handles the VHDs."""
        path = metadata_file(vm_uuid, timestamp)
        if not self.storage.remove_if_present(path):
            return False
        self.storage.sync_dir(posixpath.dirname(path))
        self.changed(vm_uuid)
        return True

    def remove_files(self, paths) -> None:
        """Remove files (absent ones are fine) and the block checksums of removed VHDs, then make the removals durable folder by folder."""
        for path in paths:
            self.storage.remove_if_present(path)
            if path.endswith('.vhd'):
                self.storage.remove_if_present(sidecar_name(path))
        for folder in sorted({posixpath.dirname(path) for path in paths}):
            self.storage.sync_dir(folder)

    def changed(self, vm_uuid: str) -> None:
        """After a change to a VM's points: drop our listing and XO's cache (XO only notices a change in the number of JSONs)."""
        self._listings.pop(vm_uuid, None)
        self.storage.remove_if_present(posixpath.join(vm_folder(vm_uuid), XO_CACHE_FILE))

    def forget_listing(self, vm_uuid: str) -> None:
        """Read the VM's points again next time (its lock was just taken: others may have written before)."""
        self._listings.pop(vm_uuid, None)

    # listing

    def list_vms(self) -> list[str]:
        """UUIDs of the VMs with a folder in the repository."""
        return [name for name in self.storage.list_dir(BACKUP_DIR)
                if not is_hidden_name(name) and is_uuid(name) and self.storage.is_dir(posixpath.join(BACKUP_DIR, name))]

    def list_backups(self, vm_uuid: str, job_id: str | None = None) -> list[BackupPoint]:
        """Complete delta backup points of a VM (of one job when given), oldest first; XO full-mode backups are skipped.

        An invalid JSON raises MetadataError naming it.
        """
        if vm_uuid not in self._listings:
            self._listings[vm_uuid] = self._read_points(vm_uuid)
        return [point for point in self._listings[vm_uuid] if job_id is None or point.job_id == job_id]

    def _read_points(self, vm_uuid: str) -> list[BackupPoint]:
        folder = vm_folder(vm_uuid)
        if not self.storage.is_dir(folder):
            return []
        points = []
        for name in self.storage.list_dir(folder):
            match = METADATA_NAME_PATTERN.match(name)
            if not match or is_hidden_name(name):
                continue
            path = posixpath.join(folder, name)
            data = load_metadata_json(self.storage, path)
            if is_full_mode_backup(data):
                continue
            points.append(BackupPoint(vm_uuid=vm_uuid, timestamp=validate_timestamp(match.group(1)), metadata_storage_path=path,
                                      metadata_path=self.describe(path), metadata=validate_metadata(data, self.describe(path))))
        return points

    def get_backup(self, vm_uuid: str, timestamp: str) -> BackupPoint:
        path = metadata_file(vm_uuid, timestamp)
        if not self.is_file(path):
            raise RepositoryError('no backup of VM %s at %s in %s' % (vm_uuid, timestamp, self.root))
        return BackupPoint(vm_uuid=vm_uuid, timestamp=timestamp, metadata_storage_path=path, metadata_path=self.describe(path),
                           metadata=read_metadata(self.storage, path))

    def disk_files(self, vm_uuid: str, job_id: str, vdi_uuid: str) -> list[str]:
        """Flat ``<timestamp>.vhd`` names in a disk folder, oldest first (name order is time order)."""
        return self.vhd_names_in(disk_folder(vm_uuid, job_id, vdi_uuid))

    def vhd_names_in(self, folder: str) -> list[str]:
        """Flat ``<timestamp>.vhd`` names in the disk folder at a storage path, oldest first."""
        if not self.storage.is_dir(folder):
            return []
        return [name for name in self.storage.list_dir(folder) if VHD_NAME_PATTERN.match(name)]

    def disk_folders(self, vm_uuid: str, job_id: str | None = None) -> list[str]:
        """Storage paths of the VM's ``vdis/<job>/<vdi>`` folders (of one job when given)."""
        base = posixpath.join(vm_folder(vm_uuid), VDIS_DIR)
        if job_id:
            jobs = [job_id]
        else:
            jobs = self.storage.list_dir(base) if self.storage.is_dir(base) else []
        folders = []
        for job in jobs:
            job_dir = posixpath.join(base, job)
            if not is_uuid(job) or not self.storage.is_dir(job_dir):
                continue
            folders.extend(posixpath.join(job_dir, vdi) for vdi in self.storage.list_dir(job_dir)
                           if is_uuid(vdi) and self.storage.is_dir(posixpath.join(job_dir, vdi)))
        return folders

    def vhd_chain(self, point: BackupPoint, disk: BackupDisk) -> list[str]:
        """Storage paths of the VHDs needed to read ``disk`` at ``point``: newest (the point's own VHD) to the full.

        Follows each differencing file's parent name (relative to the child, as XO links them) to
        an older file of the same folder, until a dynamic or fixed one. Files without a JSON of
        their own may be links; a stray file between two links is not (a time-order walk would
        read it into the disk).
        """
        folder = posixpath.dirname(disk.storage_path)
        names = set(self.disk_files(point.vm_uuid, disk.job_id, disk.vdi_uuid))
        name = posixpath.basename(disk.storage_path)
        if name not in names:
            raise RepositoryError('backup %s of VM %s references %s, which is missing' % (point.timestamp, point.vm_uuid, disk.relative_path))
        chain = []
        while True:
            path = posixpath.join(folder, name)
            chain.append(path)
            try:
                with VhdFile.open_in(self.storage, path) as vhd:
                    if not vhd.is_differencing:
                        return chain
                    parent_storage, parent_path = vhd.parent_location() or (None, None)
            except (VhdError, OSError) as error:
                raise RepositoryError('cannot read the chain of %s: %s' % (disk.relative_path, error)) from error
            parent = posixpath.basename(parent_path) if parent_path else None
            if parent_storage is not self.storage or posixpath.dirname(parent_path) != folder or parent not in names:
                raise RepositoryError('the chain of %s is broken: %s names parent %r, which is not a backup file of its folder %s'
                                      % (disk.relative_path, name, vhd.header.parent_name, self.describe(folder)))
            if parent >= name:
                raise RepositoryError('the chain of %s is broken: %s names parent %s, which is not older (a parent sorts first)'
                                      % (disk.relative_path, name, parent))
            name = parent

    def file_size(self, path: str) -> int | None:
        """Size of the file at a storage path, None if it cannot be read."""
        try:
            return self.storage.size(path)
        except OSError:
            return None

    # cleaning up after interrupted runs

    def cleanup_incomplete(self, vm_uuid: str, dry_run: bool = False) -> dict:
        """Remove leftovers of interrupted runs: our temporary files, VHDs no complete JSON needs, block checksums without their VHD.

        Kept: every VHD a valid JSON references and the older files of its chain, and anything an
        unfinished merge (``.<name>.merge.json``) names, plus those state files themselves. Call it
        while holding the VM's lock. Returns what was (or, with dry_run, would be) removed, as shown to users.
        """
        folder_of_vm = vm_folder(vm_uuid)
        temporary, unreferenced = [], []
        if self.storage.is_dir(folder_of_vm):
            needed = self._needed_vhds(self.list_backups(vm_uuid))
            for folder in [folder_of_vm] + self.disk_folders(vm_uuid):
                protected = self._merge_protected(folder)
                for name in self.storage.list_dir(folder):
                    path = posixpath.join(folder, name)
                    if name in protected or name.endswith(MERGE_STATE_SUFFIX) or not self.is_file(path):
                        continue
                    if name.startswith('.'):
                        temporary.append(path)
                    elif (folder != folder_of_vm and is_sidecar_name(name) and name[:-len(SIDECAR_SUFFIX)] not in protected
                          and not self.is_file(path[:-len(SIDECAR_SUFFIX)])):
                        # The block checksums of a VHD never published: AtomicFile makes them durable
                        # just before the VHD, so a run killed in between leaves them alone.
                        temporary.append(path)
                    elif folder != folder_of_vm and VHD_NAME_PATTERN.match(name) and path not in needed:
                        unreferenced.append(path)
        if not dry_run:
            self.remove_files(temporary + unreferenced)
        return {'temporary_files': [self.describe(path) for path in temporary],
                'unreferenced_vhds': [self.describe(path) for path in unreferenced]}

    def _needed_vhds(self, points: list[BackupPoint]) -> set[str]:
        needed = set()
        for point in points:
            for disk in point.disks:
                needed.add(disk.storage_path)
                try:
                    needed.update(self.vhd_chain(point, disk))
                except RepositoryError:
                    # Unreadable chain: keep every older file of the disk rather than guess.
                    names = self.disk_files(point.vm_uuid, disk.job_id, disk.vdi_uuid)
                    own = posixpath.basename(disk.storage_path)
                    folder = posixpath.dirname(disk.storage_path)
                    needed.update(posixpath.join(folder, name) for name in names if name <= own)
        return needed

    def merge_states(self, folder: str) -> list[str]:
        """Storage paths of the state files of unfinished merges in a disk folder."""
        return [posixpath.join(folder, name) for name in self.storage.list_dir(folder) if is_merge_state_name(name)]

    def _merge_protected(self, folder: str) -> set[str]:
        """Names an unfinished merge in ``folder`` still needs: its parent and every chain entry."""
        protected = set()
        for state_path in self.merge_states(folder):
            protected.add(posixpath.basename(state_path)[1:-len(MERGE_STATE_SUFFIX)])
            try:
                state = json.loads(self.storage.read_bytes(state_path).decode('utf-8'))
            except (OSError, ValueError):
                # Unreadable state: protect the whole folder, the merge engine will sort it out.
                return set(self.storage.list_dir(folder))
            protected.update(_merge_state_file_names(state))
        return protected


def _merge_state_file_names(state) -> set[str]:
    """File names a merge state refers to: XO's ``chain`` list, or the VHD engine's ``parent``, ``children`` and
    ``sums`` (the merged file's block checksums, hidden while the merge runs)."""
    names = set()
    if not isinstance(state, dict):
        return names
    entries = [state.get('parent'), state.get('sums')]
    for key in ('chain', 'children'):
        if isinstance(state.get(key), list):
            entries.extend(state[key])
    for entry in entries:
        if isinstance(entry, str) and entry:
            names.add(posixpath.basename(entry))
    return names


def open_repository(path: str, create: bool = False, file_mode: int = DEFAULT_FILE_MODE, dir_mode: int = DEFAULT_DIR_MODE) -> BackupRepository:
    """Open (or with ``create`` initialise) the repository in a local folder; raises RepositoryError if ``path`` is not one."""
    if not isinstance(path, str) or not path.strip():
        raise RepositoryError('a repository path is required')
    return BackupRepository(LocalStorage(path, file_mode=file_mode, dir_mode=dir_mode), create=create)


def repository_location(path: str) -> str:
    """How the repository at a local path is named in results and messages (its absolute path)."""
    return LocalStorage(path).describe()


def holds_repository(path: str) -> bool:
    """Whether the local folder at ``path`` holds a repository (an ``xo-vm-backups`` folder)."""
    return LocalStorage(path).is_dir(BACKUP_DIR)


def same_local_folder(first: str, second: str) -> bool:
    """Whether two local repository paths are the same folder (through symbolic links too)."""
    # The one file-system call of this layer: it is about the local paths a user gave, before any storage exists.
    return os.path.realpath(first) == os.path.realpath(second)


def open_or_initialize(path: str, check_mode: bool = False, file_mode: int = DEFAULT_FILE_MODE,
                       dir_mode: int = DEFAULT_DIR_MODE) -> BackupRepository | None:
    """Open a repository; an existing EMPTY folder becomes a new one (in check mode: None, it would be).

    A folder holding anything else but no repository is refused: it is probably the wrong path or an
    unmounted mount point, and writing there would scatter backups.
    """
    if not isinstance(path, str) or not path.strip():
        raise RepositoryError('a repository path is required')
    storage = LocalStorage(path, file_mode=file_mode, dir_mode=dir_mode)
    if not storage.is_dir(BACKUP_DIR) and storage.is_dir('') and not storage.list_dir(''):
        return None if check_mode else BackupRepository(storage, create=True)
    return BackupRepository(storage)


def resolve_backup_vm(repo: BackupRepository, vm: str) -> str:
    """The uuid of a backed-up VM given its uuid or its name at its newest backup (the VM itself may be gone)."""
    vm = str(vm or '').strip()
    if not vm:
        raise RepositoryError('no VM given: set vm to the uuid or name of the backed-up VM')
    vms = repo.list_vms()
    if vm.lower() in vms:
        return vm.lower()
    matches, unreadable = [], []
    for vm_uuid in vms:
        try:
            points = repo.list_backups(vm_uuid)
        except RepositoryError as error:
            # The VM may be the one asked for: say why it could not be looked at.
            unreadable.append(str(error))
            continue
        if points and (points[-1].metadata.get('vm') or {}).get('name_label') == vm:
            matches.append(vm_uuid)
    if len(matches) != 1:
        raise RepositoryError('%s backed-up VM named or with uuid %r in %s%s%s' % (
            'no' if not matches else '%d' % len(matches), vm, repo.root, ': give the uuid (%s)' % ', '.join(matches) if matches else '',
            '; some backups could not be read: %s' % '; '.join(unreadable) if unreadable and not matches else ''))
    return matches[0]
