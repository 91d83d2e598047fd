# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""lock.py: the per-VM lock folder, exclusive between runs, threads and processes; when a holder counts as gone; heartbeat; messages."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.lock import (
    FOREIGN_LOCK_STALE_SECONDS, RepositoryLock, RepositoryLockedError, describe_lock_holder, lock_is_stale, process_is_alive,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._repo.repo_testlib import VM

OTHER_VM = 'ffffffff-0000-4000-8000-000000000000'


@pytest.fixture
def repo(tmp_path):
    return open_repository(str(tmp_path), create=True)


@pytest.fixture(scope='module')
def dead_pid():
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


def write_owner(repo, owner, vm=VM):
    lock_dir = os.path.join(repo.backup_dir, vm + '.lock')
    os.mkdir(lock_dir)
    with open(os.path.join(lock_dir, 'owner.json'), 'w') as owner_file:
        owner_file.write(owner if isinstance(owner, str) else json.dumps(owner))
    return lock_dir


def test_lock_contention_names_the_holder(repo):
    with repo.lock(VM, 'nightly') as held:
        assert os.path.isdir(held.path) and stat.S_IMODE(os.stat(held.path).st_mode) == 0o700
        with pytest.raises(RepositoryLockedError, match="is locked by job 'nightly'") as caught:
            repo.lock(VM, 'weekly').acquire()
        message = str(caught.value)
        assert "job 'nightly'" in message and 'pid %d' % os.getpid() in message and socket.gethostname() in message
        assert caught.value.holder['job'] == 'nightly'
    assert not os.path.exists(held.path)
    with repo.lock(VM, 'weekly'):
        pass


def test_lock_of_another_process(repo):
    # A real second process, still alive, holds the lock: we must be refused.
    code = ('import sys, time; sys.path[:0] = %r\n'
            'from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository\n'
            'lock = open_repository(%r).lock(%r, "other-job"); lock.acquire(); print("held", flush=True); time.sleep(30)\n'
            % (sys.path, repo.root, VM))
    child = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == 'held'
        with pytest.raises(RepositoryLockedError, match="job 'other-job' \\(pid %d" % child.pid):
            repo.lock(VM, 'nightly').acquire()
    finally:
        child.kill()
        child.wait()
    # Now its pid is dead on this host: the lock is stale and taken over.
    with repo.lock(VM, 'nightly') as lock:
        assert lock.took_over['pid'] == child.pid
    assert not os.path.exists(lock.path)


def test_lock_from_another_host_is_kept_while_its_heartbeat_runs(repo):
    lock_dir = os.path.join(repo.backup_dir, VM + '.lock')
    os.mkdir(lock_dir)
    owner = {'host': 'elsewhere.example', 'pid': 1, 'job': 'x', 'started': 'then'}
    with open(os.path.join(lock_dir, 'owner.json'), 'w') as owner_file:
        json.dump(owner, owner_file)
    # refreshed 9 minutes ago: its pid cannot be checked from here, so it is kept
    os.utime(lock_dir, (time.time() - 540, time.time() - 540))
    with pytest.raises(RepositoryLockedError, match=r'elsewhere\.example.*last refreshed 5[0-9]{2} s ago; .* idle for 600 s is taken over'):
        repo.lock(VM, 'nightly').acquire()
    assert os.path.isdir(lock_dir)
    # idle for 11 minutes: its run is gone (an AWX job killed with its container, say)
    os.utime(lock_dir, (time.time() - 660, time.time() - 660))
    with repo.lock(VM, 'nightly') as lock:
        assert lock.took_over == owner


def quick_lock(repo, job='nightly'):
    lock = repo.lock(VM, job)
    lock.ownerless_stale_seconds = 1.0
    lock.heartbeat_seconds = 0.2
    return lock


def test_ownerless_lock_kept_fresh_is_held(repo):
    # Xen Orchestra's lock: an empty folder whose mtime its holder refreshes.
    lock_dir = os.path.join(repo.backup_dir, VM + '.lock')
    os.mkdir(lock_dir)
    stop = threading.Event()

    def xo_heartbeat():
        while not stop.wait(0.3):
            os.utime(lock_dir)
    refresher = threading.Thread(target=xo_heartbeat)
    refresher.start()
    try:
        started = time.monotonic()
        with pytest.raises(RepositoryLockedError, match='names no owner but keeps the lock fresh'):
            quick_lock(repo).acquire()
        assert time.monotonic() - started < 1.5
    finally:
        stop.set()
        refresher.join()
    assert os.path.isdir(lock_dir) and os.listdir(lock_dir) == []


def test_ownerless_lock_left_unchanged_is_broken(repo):
    # A run killed between mkdir and the owner write leaves an empty folder nobody refreshes.
    lock_dir = os.path.join(repo.backup_dir, VM + '.lock')
    os.mkdir(lock_dir)
    started = time.monotonic()
    with quick_lock(repo) as lock:
        assert lock.took_over == {}
        assert json.load(open(lock.owner_path))['token'] == lock.owner['token']
    waited = time.monotonic() - started
    assert 0.9 <= waited < 3.0
    assert not os.path.exists(lock_dir)


def test_old_ownerless_lock_is_broken_at_once(repo):
    lock_dir = os.path.join(repo.backup_dir, VM + '.lock')
    os.mkdir(lock_dir)
    os.utime(lock_dir, (time.time() - 3600, time.time() - 3600))
    started = time.monotonic()
    with repo.lock(VM, 'nightly') as lock:
        assert lock.took_over == {}
    assert time.monotonic() - started < 0.5


def test_held_lock_mtime_is_refreshed(repo):
    with quick_lock(repo) as lock:
        os.utime(lock.path, (time.time() - 3600, time.time() - 3600))
        time.sleep(0.6)
        assert time.time() - os.stat(lock.path).st_mtime < 1.0
        # so neither Xen Orchestra nor our ownerless rule would ever call it stale
    assert not os.path.exists(lock.path)


def test_lock_whose_owner_cannot_be_written_is_not_left_behind(repo, monkeypatch):
    def full_disk(fd, data):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'write', full_disk)
    with pytest.raises(RepositoryError, match='cannot write the owner file of lock .*No space left on device'):
        repo.lock(VM, 'nightly').acquire()
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(repo.backup_dir, VM + '.lock'))
    with repo.lock(VM, 'nightly'):
        pass


def test_release_and_break_leave_nothing_behind(repo):
    # A run killed while removing a released or broken lock leaves a hidden folder: the next
    # holder sweeps it, and listings never show it.
    for leftover in ('.%s.lock.released-0000' % VM, '.%s.lock.broken-1111' % VM):
        os.makedirs(os.path.join(repo.backup_dir, leftover, 'x'))
    assert repo.list_vms() == []
    with repo.lock(VM, 'nightly'):
        pass
    assert os.listdir(repo.backup_dir) == []


def test_release_leaves_a_lock_taken_over_by_someone_else(repo):
    lock = repo.lock(VM, 'nightly')
    lock.acquire()
    with open(lock.owner_path, 'w') as owner:
        json.dump({'host': 'h', 'pid': 2, 'token': 'theirs'}, owner)
    lock.release()
    assert os.path.isdir(lock.path)


def test_only_one_of_many_concurrent_runs_gets_the_lock(repo):
    barrier = threading.Barrier(8)
    outcomes = []

    def contend(index):
        barrier.wait()
        lock = repo.lock(VM, 'job-%d' % index)
        try:
            lock.acquire()
            outcomes.append(('held', lock))
        except RepositoryLockedError:
            outcomes.append(('refused', None))
    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [lock for outcome, lock in outcomes if outcome == 'held']
    assert len(held) == 1 and len(outcomes) == 8
    held[0].release()
    assert not os.path.exists(held[0].path)


# -- when a holder is gone -------------------------------------------------------------------------


def test_process_is_alive(dead_pid):
    assert process_is_alive(os.getpid()) is True
    assert process_is_alive(dead_pid) is False
    assert process_is_alive(1) is True  # exists, whoever owns it


def test_lock_is_stale_only_for_a_dead_pid_of_this_host(dead_pid):
    here = socket.gethostname()
    assert lock_is_stale({'host': here, 'pid': dead_pid}) is True
    assert lock_is_stale({'host': 'h1', 'pid': dead_pid}, hostname='h1') is True
    assert lock_is_stale({'host': here, 'pid': os.getpid()}) is False
    assert lock_is_stale({'host': 'elsewhere.example', 'pid': dead_pid}) is False
    assert lock_is_stale({'host': here, 'pid': dead_pid}, hostname='another-name') is False


@pytest.mark.parametrize('holder', [
    {}, {'pid': 'DEAD'}, {'host': 'HOST', 'pid': None}, {'host': 'HOST'}, {'host': 'HOST', 'pid': 0}, {'host': 'HOST', 'pid': -1},
    {'host': 'HOST', 'pid': True}, {'host': 'HOST', 'pid': '123'}, {'host': 'HOST', 'pid': 12.0},
])
def test_lock_is_never_stale_without_a_real_pid_and_host(holder, dead_pid):
    holder = {key: (dead_pid if value == 'DEAD' else socket.gethostname() if value == 'HOST' else value) for key, value in holder.items()}
    assert lock_is_stale(holder) is False


def test_lock_of_a_dead_pid_on_this_host_is_taken_over_at_once(repo, dead_pid):
    owner = {'host': socket.gethostname(), 'pid': dead_pid, 'job': 'crashed', 'started': 'then', 'token': 'old'}
    write_owner(repo, owner)
    started = time.monotonic()
    with repo.lock(VM, 'nightly') as lock:
        assert lock.took_over == owner
        assert json.load(open(lock.owner_path))['token'] == lock.owner['token'] != 'old'
    assert time.monotonic() - started < 1.0


def test_lock_of_a_live_pid_on_this_host_is_refused_without_idle_advice(repo):
    write_owner(repo, {'host': socket.gethostname(), 'pid': os.getpid(), 'job': 'running', 'started': 'now', 'token': 't'})
    with pytest.raises(RepositoryLockedError, match="job 'running' \\(pid %d on host " % os.getpid()) as caught:
        repo.lock(VM, 'nightly').acquire()
    assert 'last refreshed' not in str(caught.value)
    assert caught.value.holder['token'] == 't'


def test_a_half_written_owner_file_counts_as_ownerless(repo):
    lock_dir = write_owner(repo, '{"host": "h')
    os.utime(lock_dir, (time.time() - 3600, time.time() - 3600))
    with repo.lock(VM, 'nightly') as lock:
        assert lock.took_over == {}


def test_a_fresh_ownerless_lock_is_waited_on_then_refused(repo):
    lock_dir = os.path.join(repo.backup_dir, VM + '.lock')
    os.mkdir(lock_dir)
    lock = repo.lock(VM, 'nightly')
    lock.ownerless_stale_seconds = 0.6

    def refresh_once():
        time.sleep(0.2)
        os.utime(lock_dir, (time.time() + 5, time.time() + 5))
    toucher = threading.Thread(target=refresh_once)
    toucher.start()
    try:
        with pytest.raises(RepositoryLockedError, match='names no owner but keeps the lock fresh'):
            lock.acquire()
    finally:
        toucher.join()
    assert not lock.held and os.path.isdir(lock_dir)


# -- holding and releasing ---------------------------------------------------------------------------


def test_owner_file_names_this_run(repo):
    with repo.lock(VM, 'nightly') as lock:
        owner = json.load(open(os.path.join(repo.backup_dir, VM + '.lock', 'owner.json')))
        assert owner == lock.owner
        assert owner['host'] == socket.gethostname() and owner['pid'] == os.getpid() and owner['job'] == 'nightly'
        assert len(owner['token']) == 16 and owner['started'].endswith('+00:00')
        assert lock.held is True and lock.took_over is None
    assert lock.held is False


def test_each_lock_has_its_own_token(repo):
    assert repo.lock(VM, 'a').owner['token'] != repo.lock(VM, 'a').owner['token']


def test_locks_of_different_vms_do_not_exclude_each_other(repo):
    with repo.lock(VM, 'nightly'), repo.lock(OTHER_VM, 'nightly'):
        assert sorted(os.listdir(repo.backup_dir)) == sorted([VM + '.lock', OTHER_VM + '.lock'])
    assert os.listdir(repo.backup_dir) == []


def test_the_same_job_twice_is_refused_too(repo):
    with repo.lock(VM, 'nightly'):
        with pytest.raises(RepositoryLockedError, match="is locked by job 'nightly'"):
            repo.lock(VM, 'nightly').acquire()


def test_an_error_inside_the_lock_releases_it(repo):
    with pytest.raises(ValueError, match='boom'):
        with repo.lock(VM, 'nightly'):
            raise ValueError('boom')
    assert os.listdir(repo.backup_dir) == []


def test_release_without_acquire_and_twice_is_harmless(repo):
    lock = repo.lock(VM, 'nightly')
    lock.release()
    with repo.lock(VM, 'other') as held:
        lock.release()  # not ours: the holder keeps it
        assert os.path.isdir(held.path)
    held.release()
    assert os.listdir(repo.backup_dir) == []


def test_heartbeat_stops_on_release(repo):
    name = 'lock-heartbeat-%s' % VM
    lock = repo.lock(VM, 'nightly')
    lock.heartbeat_seconds = 0.05
    with lock:
        assert [thread for thread in threading.enumerate() if thread.name == name]
    assert not [thread for thread in threading.enumerate() if thread.name == name]


def test_heartbeat_keeps_refreshing(repo):
    lock = repo.lock(VM, 'nightly')
    lock.heartbeat_seconds = 0.1
    with lock:
        for _round in range(3):
            os.utime(lock.path, (1000, 1000))
            time.sleep(0.35)
            assert os.stat(lock.path).st_mtime > time.time() - 1.0


def test_the_lock_refuses_a_bad_vm_uuid(repo):
    with pytest.raises(RepositoryError, match="VM uuid 'web' is not a canonical lower-case uuid"):
        RepositoryLock(repo, 'web', 'nightly')


def test_a_lock_that_cannot_be_created_says_why(repo):
    os.rmdir(repo.backup_dir)
    with pytest.raises(RepositoryError, match='cannot create lock %s: No such file or directory' % os.path.join(repo.backup_dir, VM + '.lock')):
        repo.lock(VM, 'nightly').acquire()


# -- messages ----------------------------------------------------------------------------------------


def test_describe_lock_holder():
    assert describe_lock_holder({'job': 'nightly', 'pid': 42, 'host': 'awx-1', 'started': '2026-01-01T01:00:00+00:00'}) == (
        "job 'nightly' (pid 42 on host awx-1, since 2026-01-01T01:00:00+00:00)")
    assert describe_lock_holder({}).startswith('a holder that names no owner but keeps the lock fresh (Xen Orchestra')


def test_locked_error_names_holder_path_and_remedy():
    holder = {'job': 'nightly', 'pid': 42, 'host': 'awx-1', 'started': 'then'}
    error = RepositoryLockedError('/repo/xo-vm-backups/x.lock', holder)
    assert str(error) == ("/repo/xo-vm-backups/x.lock is locked by job 'nightly' (pid 42 on host awx-1, since then): another backup of this VM "
                          "is running; wait for it or, if it died on another host, remove /repo/xo-vm-backups/x.lock")
    assert error.holder is holder and error.lock_path == '/repo/xo-vm-backups/x.lock' and error.error_code == 'repository_locked'
    assert isinstance(error, RepositoryError)
    idle = RepositoryLockedError('/l', holder, 42.7)
    assert str(idle).endswith('remove /l (last refreshed 42 s ago; a lock of another host idle for %d s is taken over)' % FOREIGN_LOCK_STALE_SECONDS)
    assert 'last refreshed' not in str(RepositoryLockedError('/l', {}, 42.7))
