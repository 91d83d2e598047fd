# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The per-VM repository lock (Xen Orchestra's lock folder), its heartbeat, and when a holder counts as gone."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import posixpath
import secrets
import socket
import threading
import time
import typing

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import (
    BACKUP_DIR, LOCK_OWNER_FILE, LOCK_SUFFIX, RepositoryError, lock_folder, validate_uuid,
)

if typing.TYPE_CHECKING:  # the store creates locks; only the annotation needs its class
    from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupRepository


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
        self.storage = repository.storage
        self.vm_uuid = validate_uuid(vm_uuid, 'VM uuid')
        self.folder = lock_folder(vm_uuid)
        self.owner_file = posixpath.join(self.folder, LOCK_OWNER_FILE)
        self.path = self.storage.describe(self.folder)
        self.owner_path = self.storage.describe(self.owner_file)
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

    def read_holder(self, lock_folder_path: str | None = None) -> dict:
        try:
            holder = json.loads(self.storage.read_bytes(posixpath.join(lock_folder_path or self.folder, LOCK_OWNER_FILE)).decode('utf-8'))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> None:
        for attempt in range(3):
            try:
                self.storage.make_dir_exclusive(self.folder)
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
                with contextlib.suppress(OSError):
                    self.storage.remove_tree(self.folder)
                raise RepositoryError('cannot write the owner file of lock %s: %s' % (self.path, exc.strerror or exc)) from exc
            self.held = True
            # Runs before this one may have changed the VM's points: read them afresh under the lock.
            self.repository.forget_listing(self.vm_uuid)
            self._start_heartbeat()
            self._sweep_broken_locks()
            return

    def _write_owner(self) -> None:
        # No temporary file: the window between mkdir and this write is when a kill leaves an
        # ownerless lock, so it is kept to one small exclusive create. A reader that finds the file
        # empty or half-written treats the lock as ownerless, which is never broken while fresh.
        self.storage.create_exclusive(self.owner_file, json.dumps(self.owner, indent=1).encode('utf-8'))

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
            return self.storage.modified_time(self.folder)
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
        aside = posixpath.join(BACKUP_DIR, '.%s%s.broken-%s' % (self.vm_uuid, LOCK_SUFFIX, secrets.token_hex(4)))
        try:
            self.storage.rename(self.folder, aside)
        except FileNotFoundError:
            return
        moved = self.read_holder(aside)
        if moved != holder:
            with contextlib.suppress(OSError):
                self.storage.rename(aside, self.folder)
            return
        self.took_over = holder
        with contextlib.suppress(OSError):
            self.storage.remove_tree(aside)

    def _sweep_broken_locks(self) -> None:
        """Remove folders that a killed run moved aside (they are no longer locks of anyone)."""
        prefix = '.%s%s.' % (self.vm_uuid, LOCK_SUFFIX)
        with contextlib.suppress(OSError):
            for name in self.storage.list_dir(BACKUP_DIR):
                if name.startswith(prefix) and ('.broken-' in name or '.released-' in name):
                    with contextlib.suppress(OSError):
                        self.storage.remove_tree(posixpath.join(BACKUP_DIR, name))

    def _start_heartbeat(self) -> None:
        self._stop_heartbeat.clear()

        def beat():
            while not self._stop_heartbeat.wait(self.heartbeat_seconds):
                try:
                    self.storage.touch(self.folder)
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
        released = posixpath.join(BACKUP_DIR, '.%s%s.released-%s' % (self.vm_uuid, LOCK_SUFFIX, secrets.token_hex(4)))
        try:
            self.storage.rename(self.folder, released)
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError):
            self.storage.remove_tree(released)
