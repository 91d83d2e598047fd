# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Repository layout, atomic writes, locks and clean-up, on real files in temporary folders."""

from __future__ import annotations

import datetime
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.atomic import AtomicFile, write_file_atomically
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import (
    RepositoryError, format_timestamp, job_id_for, validate_timestamp, validate_uuid, vhd_relative_path,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.lock import RepositoryLockedError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import MetadataError, build_metadata
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import BackupRepository, open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import DISK_DIFFERENCING, DISK_DYNAMIC, ParentLink, VhdStream

VM = '0b7c5d3e-3a51-4a3c-9a55-6e1f8c0a1b2c'
VDI_A = '11111111-2222-4333-8444-555555555555'
VDI_B = '66666666-7777-4888-9999-aaaaaaaaaaaa'
SCHEDULE = '2f0c6b1e-6a8a-4d8e-a3a4-0c4f1b9d7e10'
JOB = job_id_for('nightly')
T1, T2, T3, T4 = '20260101T010000Z', '20260102T010000Z', '20260103T010000Z', '20260104T010000Z'


FULL, DELTA = 'full', 'delta'
DISK_SIZE = 4 * 1024 * 1024


def real_vhd(kind: str, parent_name: str | None, seed: int) -> bytes:
    """A small real VHD: a full, or a delta naming its parent file (relative, as XO writes it)."""
    data = bytes([seed % 251 + 1]) * 4096
    parent = ParentLink(unique_id=uuid.UUID(int=seed).bytes, timestamp=0, name=parent_name) if kind == DELTA else None
    stream = VhdStream(DISK_SIZE, [0], lambda index: (None, data), disk_type=DISK_DIFFERENCING if kind == DELTA else DISK_DYNAMIC,
                       unique_id=uuid.UUID(int=seed + 1).bytes, parent=parent)
    return b''.join(stream)


@pytest.fixture
def repo(tmp_path):
    return open_repository(str(tmp_path), create=True)


def add_backup(repo: BackupRepository, timestamp: str, disks: dict, vm: str = VM, write_json: bool = True) -> dict:
    """Write one run: {vdi uuid: vhd bytes}; the JSON last, as the modules will."""
    vhds, differencing, sha, sizes = {}, {}, {}, {}
    sizes_written = 0
    for index, (vdi_uuid, kind) in enumerate(sorted(disks.items())):
        ref = 'OpaqueRef:snap-vdi-%d' % index
        # A delta's parent is the newest older file of its folder, or the T1 file when there is none (a broken chain).
        older = [name for name in repo.disk_files(vm, JOB, vdi_uuid) if name < timestamp + '.vhd']
        content = kind if isinstance(kind, bytes) else real_vhd(kind, older[-1] if older else T1 + '.vhd', int(timestamp[:8]))
        sizes_written += len(content)
        with repo.open_vhd_writer(vm, JOB, vdi_uuid, timestamp) as target:
            target.write(content)
        relative = vhd_relative_path(JOB, vdi_uuid, timestamp)
        vhds[ref] = relative
        differencing[ref] = kind == DELTA
        sha[relative] = target.sha256
        sizes[ref] = 10 * 1024 ** 3
    metadata = build_metadata(JOB, SCHEDULE, 1767229200000, {'uuid': vm}, {'uuid': 'snap'}, {}, {}, {}, vhds, differencing,
                              size=sizes_written, sha256=sha, virtual_sizes=sizes)
    if write_json:
        repo.write_metadata(vm, timestamp, metadata)
    return metadata


def tree(root) -> list[str]:
    found = []
    for folder, _subfolders, files in os.walk(str(root)):
        found.extend(os.path.relpath(os.path.join(folder, name), str(root)) for name in files)
    return sorted(found)


# -- names and validation --------------------------------------------------------------------


@pytest.mark.parametrize('value', [
    '../etc', VM.upper(), VM + '/x', ' ' + VM, VM[:-1], '', None, 12, 'x' * 36, VM.replace('-', '/'),
])
def test_uuid_validation_rejects_anything_not_canonical(value):
    with pytest.raises(RepositoryError, match='canonical lower-case uuid'):
        validate_uuid(value)


@pytest.mark.parametrize('value', ['20260101T010000', '2026-01-01T01:00:00Z', '20261301T010000Z', '20260101T250000Z', '../x', None])
def test_timestamp_validation(value):
    with pytest.raises(RepositoryError):
        validate_timestamp(value)


def test_paths_are_built_from_validated_parts_only(repo):
    assert repo.vhd_path(VM, JOB, VDI_A, T1) == os.path.join(repo.root, 'xo-vm-backups', VM, 'vdis', JOB, VDI_A, T1 + '.vhd')
    with pytest.raises(RepositoryError):
        repo.vhd_path(VM, JOB, '../../' + VDI_A[6:], T1)
    with pytest.raises(RepositoryError):
        repo.metadata_path('my vm', T1)


def test_job_id_is_stable_and_distinct():
    assert job_id_for('nightly') == job_id_for(' nightly ') == JOB
    assert job_id_for('weekly') != JOB
    validate_uuid(JOB)
    with pytest.raises(RepositoryError):
        job_id_for('  ')


def test_format_timestamp_is_utc():
    assert format_timestamp(0) == '19700101T000000Z'
    now = format_timestamp()
    assert validate_timestamp(now) == now and len(now) == 16
    assert format_timestamp(datetime.datetime(2026, 3, 15, 3, 15, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))) == '20260315T021500Z'
    with pytest.raises(RepositoryError, match='naive datetime'):
        format_timestamp(datetime.datetime(2026, 3, 15))


def test_not_a_repository(tmp_path):
    with pytest.raises(RepositoryError, match='is not a backup repository: it has no xo-vm-backups folder'):
        open_repository(str(tmp_path))
    with pytest.raises(RepositoryError, match='is not a backup repository: it does not exist'):
        open_repository(str(tmp_path / 'missing'))
    (tmp_path / 'file').write_text('x')
    with pytest.raises(RepositoryError, match='not a directory'):
        open_repository(str(tmp_path / 'file'))


# -- atomic writes and permissions -----------------------------------------------------------


def test_atomic_file_is_invisible_until_commit(repo, tmp_path):
    target = os.path.join(repo.backup_dir, 'x.bin')
    with AtomicFile(repo.storage, 'xo-vm-backups/x.bin') as writer:
        writer.write(b'abc')
        assert not os.path.exists(target)
        names = os.listdir(repo.backup_dir)
        assert len(names) == 1 and names[0].startswith('.') and names[0].endswith('.x.bin')
    assert open(target, 'rb').read() == b'abc'
    assert writer.sha256 == 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    assert os.listdir(repo.backup_dir) == ['x.bin']


def test_atomic_file_removes_temp_on_error_and_never_overwrites(repo):
    target = os.path.join(repo.backup_dir, 'y.bin')
    with pytest.raises(ZeroDivisionError):
        with AtomicFile(repo.storage, 'xo-vm-backups/y.bin') as writer:
            writer.write(b'partial')
            raise ZeroDivisionError
    assert os.listdir(repo.backup_dir) == []
    write_file_atomically(repo.storage, 'xo-vm-backups/y.bin', b'1')
    with pytest.raises(RepositoryError, match='%s already exists: refusing to overwrite' % target):
        write_file_atomically(repo.storage, 'xo-vm-backups/y.bin', b'2')
    assert open(target, 'rb').read() == b'1'


def test_default_permissions_ignore_umask(repo):
    old = os.umask(0o022)
    try:
        add_backup(repo, T1, {VDI_A: FULL})
    finally:
        os.umask(old)
    vm_dir = repo.vm_dir(VM)
    for folder in (vm_dir, os.path.join(vm_dir, 'vdis'), repo.vdi_dir(VM, JOB, VDI_A)):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for path in (repo.metadata_path(VM, T1), repo.vhd_path(VM, JOB, VDI_A, T1)):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_configured_permissions(tmp_path):
    repo = open_repository(str(tmp_path), create=True, file_mode=0o640, dir_mode=0o750)
    add_backup(repo, T1, {VDI_A: FULL})
    assert stat.S_IMODE(os.stat(repo.vm_dir(VM)).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(repo.metadata_path(VM, T1)).st_mode) == 0o640


def test_metadata_refuses_missing_vhd(repo):
    metadata = add_backup(repo, T1, {VDI_A: FULL}, write_json=False)
    os.unlink(repo.vhd_path(VM, JOB, VDI_A, T1))
    with pytest.raises(RepositoryError, match='references is missing'):
        repo.write_metadata(VM, T1, metadata)


# -- listing -----------------------------------------------------------------------------------


def test_listing_vms_and_points(repo):
    add_backup(repo, T2, {VDI_A: FULL, VDI_B: FULL})
    add_backup(repo, T1, {VDI_A: FULL})
    other = 'ffffffff-0000-4000-8000-000000000000'
    add_backup(repo, T1, {VDI_A: FULL}, vm=other)
    os.mkdir(os.path.join(repo.backup_dir, 'not-a-uuid'))
    os.mkdir(os.path.join(repo.backup_dir, '.queue'))
    with repo.lock(VM, 'nightly'):
        assert repo.list_vms() == sorted([VM, other])
    points = repo.list_backups(VM)
    assert [p.timestamp for p in points] == [T1, T2]
    disks = points[1].disks
    assert [d.vdi_uuid for d in disks] == [VDI_A, VDI_B]
    assert disks[0].sha256 and disks[0].virtual_size == 10 * 1024 ** 3 and disks[0].job_id == JOB
    assert repo.get_backup(VM, T2).metadata['mode'] == 'delta'
    assert repo.list_backups('ffffffff-0000-4000-8000-00000000000a') == []


def test_half_written_backup_is_invisible(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA}, write_json=False)
    open(os.path.join(repo.vm_dir(VM), '.123-abcd.%s.json' % T3), 'w').write('{"trunc')
    assert [p.timestamp for p in repo.list_backups(VM)] == [T1]


def test_chain_newest_to_full(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T3, {VDI_A: FULL})
    add_backup(repo, T4, {VDI_A: DELTA})
    points = {p.timestamp: p for p in repo.list_backups(VM)}

    def names(point):
        return [os.path.basename(p) for p in repo.vhd_chain(point, point.disks[0])]
    assert names(points[T2]) == [T2 + '.vhd', T1 + '.vhd']
    assert names(points[T4]) == [T4 + '.vhd', T3 + '.vhd']
    assert names(points[T1]) == [T1 + '.vhd']


def test_chain_through_a_vhd_whose_json_was_pruned(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    os.unlink(repo.metadata_path(VM, T1))  # retention removes only the JSON
    point = repo.list_backups(VM)[0]
    assert [os.path.basename(p) for p in repo.vhd_chain(point, point.disks[0])] == [T2 + '.vhd', T1 + '.vhd']


def test_broken_chain_is_reported(repo):
    add_backup(repo, T2, {VDI_A: DELTA})
    point = repo.list_backups(VM)[0]
    with pytest.raises(RepositoryError, match='chain of .* is broken'):
        repo.vhd_chain(point, point.disks[0])
    with open(point.disks[0].path, 'wb') as garbage:
        garbage.write(b'not a vhd at all')
    with pytest.raises(RepositoryError, match='cannot read the chain of .*footer'):
        repo.vhd_chain(point, point.disks[0])


def test_chain_follows_parent_names_not_time_order(repo):
    # T3's delta names T2 as parent; a stray delta T2b (a run that died before its JSON) lies in
    # between by name. It is not part of T3's disk, and clean-up removes it.
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T3, {VDI_A: DELTA})
    stray = '20260102T120000Z'
    assert T2 < stray < T3
    with open(repo.vhd_path(VM, JOB, VDI_A, stray), 'wb') as vhd:
        vhd.write(real_vhd(DELTA, T2 + '.vhd', 99))
    point = [p for p in repo.list_backups(VM) if p.timestamp == T3][0]
    assert [os.path.basename(p) for p in repo.vhd_chain(point, point.disks[0])] == [T3 + '.vhd', T2 + '.vhd', T1 + '.vhd']
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == [repo.vhd_path(VM, JOB, VDI_A, stray)]


@pytest.mark.parametrize('parent_name, problem', [
    ('../../../../etc/passwd', 'not a backup file of its folder'),
    ('20250101T000000Z.vhd', 'not a backup file of its folder'),
    (T4 + '.vhd', 'which is not older'),
])
def test_chain_refuses_parents_outside_the_folder_or_newer(repo, parent_name, problem):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T4, {VDI_A: FULL})
    with open(repo.vhd_path(VM, JOB, VDI_A, T2), 'wb') as vhd:
        vhd.write(real_vhd(DELTA, parent_name, 7))
    point = [p for p in repo.list_backups(VM) if p.timestamp == T2][0]
    with pytest.raises(RepositoryError, match=problem):
        repo.vhd_chain(point, point.disks[0])


@pytest.mark.parametrize('mutate, problem', [
    (lambda m: 'not json {', 'not valid JSON'),
    (lambda m: [], 'top level must be an object'),
    (lambda m: dict(m, vhds=[]), "field 'vhds' must be an object, got list"),
    (lambda m: dict(m, timestamp='yesterday'), "field 'timestamp' must be an integer"),
    (lambda m: dict(m, timestamp=True), "field 'timestamp' must be an integer"),
    (lambda m: dict(m, mode='mirror'), "only 'delta' backups"),
    (lambda m: dict(m, version='1.0.0'), 'unsupported metadata version'),
    (lambda m: dict(m, vhds={'r': '../../../etc/passwd'}), 'is not a vdis/'),
    (lambda m: dict(m, isVhdDifferencing={'r': 'yes'}), 'must be a boolean'),
    (lambda m: {k: v for k, v in m.items() if k != 'jobId'}, "field 'jobId' must be a uuid string, got nothing"),
    (lambda m: dict(m, xapi_delta_backup={'sha256': []}), 'xapi_delta_backup'),
])
def test_bad_metadata_names_the_file(repo, mutate, problem):
    metadata = add_backup(repo, T1, {VDI_A: FULL})
    path = repo.metadata_path(VM, T1)
    os.chmod(path, 0o600)
    changed = mutate(metadata)
    with open(path, 'w') as target:
        target.write(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(MetadataError) as caught:
        repo.list_backups(VM)
    assert path in str(caught.value) and problem in str(caught.value)


def test_xo_full_mode_backups_are_skipped(repo):
    add_backup(repo, T2, {VDI_A: FULL})
    with open(repo.metadata_path(VM, T1), 'w') as target:
        json.dump({'version': '2.0.0', 'mode': 'full', 'xva': './%s.xva' % T1, 'jobId': JOB, 'timestamp': 1}, target)
    assert [p.timestamp for p in repo.list_backups(VM)] == [T2]
    assert repo.cleanup_incomplete(VM) == {'temporary_files': [], 'unreferenced_vhds': []}


def test_integer_booleans_are_repaired(repo):
    metadata = add_backup(repo, T1, {VDI_A: FULL})
    metadata['isVhdDifferencing'] = {ref: 0 for ref in metadata['vhds']}
    with open(repo.metadata_path(VM, T1), 'w') as target:
        json.dump(metadata, target)
    assert repo.list_backups(VM)[0].disks[0].differencing is False


def test_reads_an_xo_written_json_without_our_fields(repo):
    metadata = add_backup(repo, T1, {VDI_A: FULL})
    del metadata['xapi_delta_backup']
    with open(repo.metadata_path(VM, T1), 'w') as target:
        json.dump(metadata, target)
    disk = repo.list_backups(VM)[0].disks[0]
    assert disk.sha256 is None and disk.virtual_size is None


# -- locks ---------------------------------------------------------------------------------------


def test_lock_contention_names_the_holder(repo):
    with repo.lock(VM, 'nightly') as held:
        assert os.path.isdir(held.path) and stat.S_IMODE(os.stat(held.path).st_mode) == 0o700
        with pytest.raises(RepositoryLockedError) as caught:
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


# -- clean-up ------------------------------------------------------------------------------------


def test_cleanup_removes_half_written_run_but_keeps_referenced_chain(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    os.unlink(repo.metadata_path(VM, T1))  # pruned: T1.vhd is still the full of T2's chain
    add_backup(repo, T3, {VDI_A: DELTA, VDI_B: FULL}, write_json=False)  # died before its JSON
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    temp_vhd = os.path.join(vdi_dir, '.1767229200000-abcd.%s.vhd' % T4)
    temp_json = os.path.join(repo.vm_dir(VM), '.1767229200000-abcd.%s.json' % T4)
    for path in (temp_vhd, temp_json):
        open(path, 'wb').write(b'partial')
    before = tree(repo.root)

    preview = repo.cleanup_incomplete(VM, dry_run=True)
    assert tree(repo.root) == before
    report = repo.cleanup_incomplete(VM)
    assert report == preview
    assert sorted(report['temporary_files']) == sorted([temp_vhd, temp_json])
    assert sorted(report['unreferenced_vhds']) == sorted([os.path.join(vdi_dir, T3 + '.vhd'), repo.vhd_path(VM, JOB, VDI_B, T3)])
    remaining = [p for p in tree(repo.root) if p.endswith('.vhd')]
    assert remaining == sorted('xo-vm-backups/%s/vdis/%s/%s/%s.vhd' % (VM, JOB, VDI_A, t) for t in (T1, T2))
    assert repo.cleanup_incomplete(VM) == {'temporary_files': [], 'unreferenced_vhds': []}


def test_cleanup_leaves_an_unfinished_merge_alone(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA})
    add_backup(repo, T3, {VDI_A: DELTA})
    # Retention removed T1 and T2's JSON, a merge of T2 into T1 was interrupted.
    os.unlink(repo.metadata_path(VM, T1))
    os.unlink(repo.metadata_path(VM, T2))
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    state = os.path.join(vdi_dir, '.%s.vhd.merge.json' % T1)
    with open(state, 'w') as target:
        json.dump({'chain': [T1 + '.vhd', T2 + '.vhd'], 'step': 'mergeBlocks', 'currentBlock': 3}, target)
    # The state file is a dot-file, yet never a temporary file to delete.
    report = repo.cleanup_incomplete(VM)
    assert report == {'temporary_files': [], 'unreferenced_vhds': []}
    assert os.path.exists(state)
    assert sorted(os.listdir(vdi_dir)) == sorted(['.%s.vhd.merge.json' % T1, T1 + '.vhd', T2 + '.vhd', T3 + '.vhd'])


def test_cleanup_protects_merge_named_files_outside_any_chain(repo):
    add_backup(repo, T3, {VDI_A: FULL})
    add_backup(repo, T1, {VDI_A: FULL}, write_json=False)
    add_backup(repo, T2, {VDI_A: DELTA}, write_json=False)
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    with open(os.path.join(vdi_dir, '.%s.vhd.merge.json' % T1), 'w') as target:
        json.dump({'chain': ['%s.vhd' % T1, '%s.vhd' % T2]}, target)
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == []


def test_cleanup_never_touches_anything_when_a_json_is_bad(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: DELTA}, write_json=False)
    with open(repo.metadata_path(VM, T1), 'w') as target:
        target.write('{')
    before = tree(repo.root)
    with pytest.raises(MetadataError):
        repo.cleanup_incomplete(VM)
    assert tree(repo.root) == before


def test_cleanup_keeps_older_files_when_a_referenced_chain_is_unreadable(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    add_backup(repo, T2, {VDI_A: b'garbage, not a VHD'})
    os.unlink(repo.metadata_path(VM, T1))
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == []


def test_cleanup_understands_the_vhd_engine_merge_state(repo):
    add_backup(repo, T4, {VDI_A: FULL})
    add_backup(repo, T1, {VDI_A: FULL}, write_json=False)
    add_backup(repo, T2, {VDI_A: DELTA}, write_json=False)
    add_backup(repo, T3, {VDI_A: DELTA}, write_json=False)
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    state = os.path.join(vdi_dir, '.%s.vhd.merge.json' % T1)
    with open(state, 'w') as target:
        json.dump({'parent': T1 + '.vhd', 'children': [T2 + '.vhd'], 'step': 'blocks', 'next_block': 7}, target)
    open(state + '.tmp', 'w').write('{')  # a state rewrite cut short: the engine rewrites it
    report = repo.cleanup_incomplete(VM)
    assert report['unreferenced_vhds'] == [os.path.join(vdi_dir, T3 + '.vhd')]
    assert report['temporary_files'] == [state + '.tmp']
    assert sorted(os.listdir(vdi_dir)) == sorted([os.path.basename(state), T1 + '.vhd', T2 + '.vhd', T4 + '.vhd'])


def test_cleanup_protects_the_folder_when_a_merge_state_is_unreadable(repo):
    add_backup(repo, T3, {VDI_A: FULL})
    add_backup(repo, T1, {VDI_A: FULL}, write_json=False)
    vdi_dir = repo.vdi_dir(VM, JOB, VDI_A)
    open(os.path.join(vdi_dir, '.%s.vhd.merge.json' % T1), 'w').write('{not json')
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == []


def test_writing_or_removing_a_point_drops_xo_cache(repo):
    add_backup(repo, T1, {VDI_A: FULL})
    cache = os.path.join(repo.vm_dir(VM), 'cache.json.gz')
    open(cache, 'wb').write(b'stale')
    add_backup(repo, T2, {VDI_A: DELTA})
    assert not os.path.exists(cache)
    open(cache, 'wb').write(b'stale')
    assert repo.remove_metadata(VM, T2) is True and repo.remove_metadata(VM, T2) is False
    assert not os.path.exists(cache)
    assert [p.timestamp for p in repo.list_backups(VM)] == [T1]
    assert os.path.exists(repo.vhd_path(VM, JOB, VDI_A, T2))  # VHDs go with the next clean-up
    assert repo.cleanup_incomplete(VM)['unreferenced_vhds'] == [repo.vhd_path(VM, JOB, VDI_A, T2)]


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


def test_listing_is_read_again_when_the_lock_is_taken(repo):
    # The listing is cached; a run that read it before taking the lock must not clean up with it,
    # or the VHDs of a point another run wrote meanwhile would look unreferenced.
    add_backup(repo, T1, {VDI_A: FULL})
    assert [point.timestamp for point in repo.list_backups(VM)] == [T1]
    other_run = open_repository(repo.root)
    add_backup(other_run, T2, {VDI_A: DELTA})
    assert [point.timestamp for point in repo.list_backups(VM)] == [T1]  # cached until the lock
    with repo.lock(VM, 'nightly'):
        assert [point.timestamp for point in repo.list_backups(VM)] == [T1, T2]
        assert repo.cleanup_incomplete(VM) == {'temporary_files': [], 'unreferenced_vhds': []}
    assert os.path.isfile(repo.vhd_path(VM, JOB, VDI_A, T2))
