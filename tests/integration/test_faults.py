# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fault matrix: every lifecycle step under a XAPI error, a cut stream, kill -9, a full repository and a full SR.

One test per step builds a short history, then injects each fault that applies to the step, in turn.
After each fault: every point that existed before reads byte for byte as its snapshot did (libvhdi through
the chain, against ground truth recorded right after its backup), no new point is visible, backup_info
verify is clean, and the next normal run succeeds, as a delta wherever its base survived, leaving no
temporary file, lock or unreferenced VHD behind. Each outcome goes into the table printed at the end
(also saved as fault-matrix.txt in pytest's base temporary folder).
"""

from __future__ import annotations

import os
import random
import shutil
import time

import pytest

from faults import (
    MIB, Points, SmallFilesystem, expire_orphan_sessions, failed, killed_by_sigkill, mark_test_done, ok, real_files, record_outcome,
    run_and_kill, run_play, show, strays, table_dir, table_if_complete,
)
from lifecycle import guest_write

KILL_ENV = 'XAPI_DELTA_BACKUP_VHD_MERGE_KILL_AFTER'
JOB = {'vm': 'app01', 'job': 'nightly'}


def assert_kill_landed(killed: dict, step: str) -> None:
    """A kill -9 cell proves something only if the module died of it mid-run, not after it finished."""
    assert killed['killed'], '%s: the SIGKILL did not land (delay %s s, result %s)\n%s' % (
        step, killed['delay'], killed['result'], killed['output'][-3000:])


@pytest.fixture(scope='module')
def matrix(request, tmp_path_factory):
    folder = table_dir(tmp_path_factory)
    total = len([item for item in request.session.items if item.module is request.module])
    yield folder
    table = table_if_complete(folder, total)
    if table:
        show(request.config, table)


@pytest.fixture
def cell(matrix, request):
    """record(step, fault, outcome): one row of the table; the test is counted as finished whatever happens."""
    yield lambda step, fault, outcome='ok', count=1: record_outcome(matrix, step, fault, outcome, count)
    mark_test_done(matrix, request.node.nodeid)


@pytest.fixture
def small_fs(tmp_path, request):
    # the merge test keeps a longer history: more room, filled on purpose later
    fs = SmallFilesystem(str(tmp_path / 'small'), size_mib=256 if 'merge' in request.node.name else 64)
    yield fs
    fs.close()


def writes(app, rng, count=2):
    for _number in range(count):
        disk = rng.choice(['app01-root', 'app01-data'])
        size = 96 * MIB if disk == 'app01-root' else 64 * MIB
        length = rng.choice([4096, 300 * 1024, MIB])
        guest_write(app, disk, rng.randrange(0, size - length, 512), length, rng.randrange(1 << 30))


def export_args(repo, snapshot='{{ result_0.snapshot.uuid }}', **extra):
    return dict(JOB, repositories=[repo], snapshot=snapshot, **extra)


def normal_run(app, points: Points, repo=None, first=False, before=(), expect_delta=True) -> dict:
    """``before`` steps, then (verify,) snapshot, export, verify in one playbook; records the new point."""
    repo = repo or points.repo
    steps = list(before)
    offset = len(steps)
    if not first:
        steps.append(('backup_info', {'repository': repo, 'verify': True}, False))
    snap_index = len(steps)
    steps += [('vm_snapshot', JOB, False),
              ('delta_export', export_args(repo, '{{ result_%d.snapshot.uuid }}' % snap_index), False),
              ('backup_info', {'repository': repo, 'verify': True}, False)]
    results = run_play(app['ansible'], steps)
    for result in results:
        ok(result)
    for result in results[offset:]:
        if 'problems' in result:
            assert result['problems'] == [], result['problems']
    export = results[-2]
    if not first and expect_delta:
        assert export['mode'] == 'delta', export['reason']
    points.record(export)
    assert strays(repo) == [], 'left behind after a normal run'
    return export


def settle(app, points: Points, before_names: list, expect_delta=True, repo=None, recovery=(), files=None, engine_before=False) -> dict:
    """What every fault must leave: old points intact, nothing new visible; then a clean normal run.

    ``files``: the repository listing before a run that failed (not killed): it must have removed its VHDs itself.
    ``engine_before``: the points are read by our engine until the recovery ran (a merge killed between its footer
    step and its rename, see test_merge_faults); after it, by libvhdi as always.
    """
    assert points.names() == before_names, 'a failed run changed the list of backup points'
    if files is not None:
        assert real_files(points.repo) == files, 'a failed run left files behind'
    points.assert_intact(engine=engine_before)
    export = normal_run(app, points, repo=repo, before=recovery, expect_delta=expect_delta)
    points.assert_intact()
    return export


def snapshots_of(app) -> list:
    return app['sim'].control.record('VM', 'app01')['snapshots']


def orphan_snapshot_vdis(app) -> int:
    """Snapshot VDIs that no VM uses any more (left by a prune cut short)."""
    session = app['sim'].xenapi_session()
    session.xenapi.login_with_password('root', 'secret', '1.0', 'fault-tests')
    try:
        vdis = session.xenapi.VDI.get_all_records()
        return len([vdi for vdi in vdis.values() if vdi['is_a_snapshot'] and vdi['managed'] and not vdi['VBDs']])
    finally:
        session.xenapi.session.logout()


def pool_counts(app) -> tuple[int, int]:
    session = app['sim'].xenapi_session()
    session.xenapi.login_with_password('root', 'secret', '1.0', 'fault-tests')
    try:
        return len(session.xenapi.VM.get_all()), len(session.xenapi.VDI.get_all())
    finally:
        session.xenapi.session.logout()


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'timed out waiting'
        time.sleep(0.02)


def new_vhds(repo, known):
    return [path for path in real_files(repo) if path.endswith('.vhd') and path not in known]


def sidecar_problems(repo: str) -> list[str]:
    """Block checksum files without their VHD, and VHDs a point's block_checksums lists without their sidecar."""
    from oracles import backup_points  # pylint: disable=import-outside-toplevel
    files = set(real_files(repo))
    problems = ['%s: no VHD' % path for path in sorted(files) if path.endswith('.vhd.blocksums') and path[:-len('.blocksums')] not in files]
    for vm in os.listdir(os.path.join(repo, 'xo-vm-backups')):
        if vm.endswith('.lock') or not os.path.isdir(os.path.join(repo, 'xo-vm-backups', vm)):
            continue
        for point in backup_points(repo, vm):
            for relative in point['xapi_delta_backup'].get('block_checksums', {}):
                path = os.path.join('xo-vm-backups', vm, relative)
                if path + '.blocksums' not in files:
                    problems.append('%s (in %s): no block checksum file' % (path, os.path.basename(point['_path'])))
    return problems


# -- snapshot ------------------------------------------------------------------------------------------


def test_snapshot_faults(app, small_fs, cell):
    rng = random.Random(1)
    repo = small_fs.repo
    points = Points(app, repo)
    normal_run(app, points, first=True)
    # XAPI error
    names = points.names()
    app['sim'].control.fail_next('VM.snapshot', ['SR_BACKEND_FAILURE_44', '', 'injected: insufficient space'])
    msg = failed(run_play(app['ansible'], [('vm_snapshot', JOB, True)])[0])
    assert 'snapshot of VM app01' in msg and 'out of space' in msg, msg
    assert len(snapshots_of(app)) == 1
    settle(app, points, names)
    cell('snapshot', 'XAPI error')
    # kill -9 while XAPI takes the snapshot: once the snapshot task exists, before it completes
    for _attempt in range(2):
        writes(app, rng)
        names = points.names()
        tasks = app['sim'].control.info()['counts'].get('task', 0)
        app['sim'].control.delay(1.0, 'VM.snapshot')
        killed = run_and_kill(app['ansible'], 'vm_snapshot', JOB, rng, (0.0, 0.7),
                              on_start=lambda tasks=tasks: wait_for(lambda: app['sim'].control.info()['counts'].get('task', 0) > tasks))
        app['sim'].control.delay(0, 'VM.snapshot')
        time.sleep(1.2)   # the snapshot task finishes on the host after the client died
        expire_orphan_sessions(app['sim'], 1)
        time.sleep(4)     # the next run must see the leftover as older than ORPHAN_MIN_AGE (5 s)
        settle(app, points, names)
        left = len(snapshots_of(app))
        # reference + the new snapshot; a third one is a snapshot the killed run never tagged
        cell('snapshot', 'kill -9', 'ok' if killed['killed'] and left <= 2 else
             'LEAKED untagged snapshot' if left > 2 else 'finished before kill')
        assert_kill_landed(killed, 'snapshot')
    assert len(snapshots_of(app)) <= 2, 'a killed vm_snapshot left an untagged snapshot that no prune will ever remove'


# -- export stream ---------------------------------------------------------------------------------------


def test_export_stream_faults(app, small_fs, cell):
    rng = random.Random(2)
    repo = small_fs.repo
    points = Points(app, repo)
    normal_run(app, points, first=True)
    # XAPI error on the HTTP handler
    writes(app, rng)
    names, files = points.names(), real_files(repo)
    app['sim'].control.fail_next('export_raw_vdi', ['VDI_IO_ERROR', 'injected device error'])
    results = run_play(app['ansible'], [('vm_snapshot', JOB, False), ('delta_export', export_args(repo), True)])
    assert 'injected device error' in failed(results[1]) and results[1]['xapi_error']['code'] == 'VDI_IO_ERROR', results[1]['msg']
    settle(app, points, names, files=files)
    assert sidecar_problems(repo) == []
    cell('export stream', 'XAPI error')
    # stream cut at seeded random offsets: in the VHD header, early in a block, late in a block
    writes(app, rng)
    names, files = points.names(), real_files(repo)
    offsets = [rng.randrange(1, 3072), rng.randrange(3072, MIB), rng.randrange(MIB, 2 * MIB)]
    for offset in offsets:
        app['sim'].control.cut_export(offset)
    results = run_play(app['ansible'], [('vm_snapshot', JOB, False)] + [('delta_export', export_args(repo), True)] * 3)
    for result, offset in zip(results[1:], offsets, strict=True):
        assert 'export' in failed(result), (offset, result.get('msg'))
    settle(app, points, names, files=files)
    assert sidecar_problems(repo) == []
    cell('export stream', 'stream cut', count=len(offsets))
    # kill -9 at a random moment of the export (each disk's stream starts 0.5 s late)
    for _attempt in range(2):
        writes(app, rng)
        names = points.names()
        snap = ok(run_play(app['ansible'], [('vm_snapshot', JOB, False)])[0])
        app['sim'].control.delay(0.5, 'export_raw_vdi')
        killed = run_and_kill(app['ansible'], 'delta_export', export_args(repo, snap['snapshot']['uuid']), rng, (0.1, 1.3))
        app['sim'].control.delay(0, 'export_raw_vdi')
        expire_orphan_sessions(app['sim'], 1)
        settle(app, points, names)
        # A kill between a sidecar and its VHD leaves the sidecar alone: the next run removed it.
        assert sidecar_problems(repo) == []
        cell('export stream', 'kill -9', 'ok' if killed['killed'] else 'finished before kill')
        assert_kill_landed(killed, 'export stream')
    # full repository file system while the VHDs are written
    writes(app, rng, 3)
    names, files = points.names(), real_files(repo)
    small_fs.fill(leave=rng.choice([64 * 1024, 512 * 1024, MIB]))
    results = run_play(app['ansible'], [('vm_snapshot', JOB, False), ('delta_export', export_args(repo), True)])
    msg = failed(results[1])
    small_fs.unfill()
    assert 'No space left on device' in msg, msg
    settle(app, points, names, files=files)
    assert sidecar_problems(repo) == []
    cell('export stream', 'full repo fs')


# -- metadata write ----------------------------------------------------------------------------------------


def test_metadata_write_faults(app, small_fs, cell):
    rng = random.Random(3)
    repo = small_fs.repo
    points = Points(app, repo)
    normal_run(app, points, first=True)
    # XAPI error while the records for the JSON are read (after both VHDs are in place)
    writes(app, rng)
    names, files = points.names(), real_files(repo)
    app['sim'].control.fail_next('VIF.get_record', ['INTERNAL_ERROR', 'injected'])
    results = run_play(app['ansible'], [('vm_snapshot', JOB, False), ('delta_export', export_args(repo), True)])
    assert 'INTERNAL_ERROR' in failed(results[1]) or 'injected' in results[1]['msg'], results[1]['msg']
    settle(app, points, names, files=files)
    assert sidecar_problems(repo) == []
    cell('metadata write', 'XAPI error')
    # kill -9 between the VHDs and the JSON
    for _attempt in range(2):
        writes(app, rng)
        names = points.names()
        known = real_files(repo)
        snap = ok(run_play(app['ansible'], [('vm_snapshot', JOB, False)])[0])
        app['sim'].control.delay(1.0, 'VIF.get_record')
        killed = run_and_kill(app['ansible'], 'delta_export', export_args(repo, snap['snapshot']['uuid']), rng, (0.0, 0.8),
                              on_start=lambda known=known: wait_for(lambda: len(new_vhds(repo, known)) == 2))
        app['sim'].control.delay(0, 'VIF.get_record')
        expire_orphan_sessions(app['sim'], 1)
        settle(app, points, names)
        assert sidecar_problems(repo) == []
        cell('metadata write', 'kill -9', 'ok' if killed['killed'] else 'finished before kill')
        assert_kill_landed(killed, 'metadata write')
    # the file system fills up after the VHDs, before the JSON
    writes(app, rng)
    names = points.names()
    known = real_files(repo)
    snap = ok(run_play(app['ansible'], [('vm_snapshot', JOB, False)])[0])
    app['sim'].control.delay(1.0, 'VIF.get_record')

    def fill_when_vhds_are_written():
        wait_for(lambda: len(new_vhds(repo, known)) == 2)
        small_fs.fill(leave=0)

    outcome = run_and_kill(app['ansible'], 'delta_export', export_args(repo, snap['snapshot']['uuid']), rng, (0.0, 0.0),
                           on_start=fill_when_vhds_are_written, kill=False)
    app['sim'].control.delay(0, 'VIF.get_record')
    small_fs.unfill()
    msg = failed(outcome['result'])
    assert 'No space left on device' in msg, msg
    settle(app, points, names)
    assert sidecar_problems(repo) == []
    cell('metadata write', 'full repo fs')


# -- snapshot rotation ---------------------------------------------------------------------------------------


def test_snapshot_prune_faults(app, small_fs, cell):
    rng = random.Random(4)
    repo = small_fs.repo
    points = Points(app, repo)
    normal_run(app, points, first=True)
    writes(app, rng)
    normal_run(app, points)
    assert len(snapshots_of(app)) == 2   # the reference and the one before, to be pruned
    # XAPI error while removing the old snapshot
    names = points.names()
    orphans = orphan_snapshot_vdis(app)
    app['sim'].control.fail_next('VM.destroy', ['OPERATION_NOT_ALLOWED', 'injected'])
    msg = failed(run_play(app['ansible'], [('vm_snapshot', dict(JOB, state='pruned'), True)])[0])
    assert 'OPERATION_NOT_ALLOWED' in msg, msg
    assert len(snapshots_of(app)) == 2
    writes(app, rng)
    settle(app, points, names)
    assert orphan_snapshot_vdis(app) == orphans
    cell('snapshot prune', 'XAPI error')
    # kill -9 while XAPI removes the old snapshot (VM.destroy, then its VDIs)
    for _attempt in range(2):
        names = points.names()
        # VM.destroy answers 1.5 s late: a kill 0.2 to 1 s after the module logged in lands between it and VDI.destroy
        app['sim'].control.delay(1.5, 'VM.destroy')
        killed = run_and_kill(app['ansible'], 'vm_snapshot', dict(JOB, state='pruned'), rng, (0.2, 1.0),
                              on_start=lambda: wait_for(lambda: app['sim'].control.session_count() > 0))
        app['sim'].control.delay(0, 'VM.destroy')
        time.sleep(1.6)
        expire_orphan_sessions(app['sim'], 1)
        writes(app, rng)
        settle(app, points, names)
        # the normal run's vm_snapshot removed the disks the killed prune left without their snapshot VM
        leaked = orphan_snapshot_vdis(app) - orphans
        cell('snapshot prune', 'kill -9', 'ok' if killed['killed'] and not leaked else
             'LEAKED %d snapshot VDIs' % leaked if leaked else 'finished before kill')
        assert_kill_landed(killed, 'snapshot prune')
        orphans += leaked
    assert orphans == 0, 'a killed prune left snapshot VDIs without their snapshot VM, which no later prune finds'


# -- merge ---------------------------------------------------------------------------------------------


def merge_step(repo, keep=2):
    return ('backup_merge', {'repository': repo, 'job': 'nightly', 'keep': keep}, False)


def intact_or_in_footer_window(points: Points, repo: str, was_killed: bool) -> bool:
    """Check every kept point after a killed merge; True when libvhdi read them all.

    False when the merge was killed between its footer step and its rename (docs/vhd-engine.md, step 5): the parent
    already carries the merged delta's id, a link libvhdi refuses. Only a killed, unfinished merge may leave that;
    our reader accepts it (checked here), and the recovery finishes the merge before libvhdi checks every point again.
    """
    try:
        points.assert_intact()
        return True
    except OSError as error:
        assert 'mismatch in identifier' in str(error) and was_killed, error
        assert [name for _folder, _dirs, files in os.walk(repo) for name in files if name.endswith('.merge.json')], error
        points.assert_intact(engine=True)
        return False


def test_merge_faults(app, small_fs, cell):
    rng = random.Random(5)
    repo = small_fs.repo
    points = Points(app, repo)
    normal_run(app, points, first=True)
    for _number in range(3):
        writes(app, rng)
        normal_run(app, points)
    # kill -9 inside the merge engine at random write/fsync/rename counts, then a plain SIGKILL at a random time.
    # This merge (two disks, a full and three deltas) makes about 29 of those operations: a later kill would never land.
    for kill_after in (rng.randint(2, 12), rng.randint(12, 24)):
        names = points.names()
        results = run_play(app['ansible'], [('backup_merge', {'repository': repo, 'job': 'nightly', 'keep': 2}, True)],
                           env={KILL_ENV: str(kill_after)})
        was_killed = killed_by_sigkill(results[0])
        assert set(names[-2:]) <= set(points.names()), 'a kept point disappeared'
        in_footer_window = not intact_or_in_footer_window(points, repo, was_killed)
        writes(app, rng)
        settle(app, points, points.names(), recovery=[merge_step(repo)], engine_before=in_footer_window)
        cell('merge', 'kill -9', 'ok' if was_killed else 'finished before kill')
        assert was_killed, 'merge: the engine\'s kill after %d operations did not land: %s' % (kill_after, results[0])
        for _number in range(2):
            writes(app, rng)
            normal_run(app, points)
    names = points.names()
    killed = run_and_kill(app['ansible'], 'backup_merge', {'repository': repo, 'job': 'nightly', 'keep': 2}, rng, (0.0, 0.25))
    assert set(names[-2:]) <= set(points.names())
    in_footer_window = not intact_or_in_footer_window(points, repo, killed['killed'])
    writes(app, rng)
    settle(app, points, points.names(), recovery=[merge_step(repo)], engine_before=in_footer_window)
    cell('merge', 'kill -9', 'ok' if killed['killed'] else 'finished before kill')
    assert_kill_landed(killed, 'merge')
    # full repository while merging
    for _number in range(2):
        writes(app, rng, 3)
        normal_run(app, points)
    names = points.names()
    small_fs.fill(leave=0)
    result = run_play(app['ansible'], [('backup_merge', {'repository': repo, 'job': 'nightly', 'keep': 1}, True)])[0]
    small_fs.unfill()
    refused = bool(result.get('failed'))
    if refused:
        assert 'No space left on device' in result['msg'], result['msg']
    assert names[-1] in points.names()
    points.assert_intact()
    writes(app, rng)
    settle(app, points, points.names(), recovery=[merge_step(repo, 1)])
    cell('merge', 'full repo fs', 'ok' if refused else 'ok (merged without new space)')


# -- seed copy ------------------------------------------------------------------------------------------


def seed_args(source, destination):
    return {'source': source, 'destination': destination, 'vms': ['app01'], 'job': 'nightly'}


def test_seed_copy_faults(app, small_fs, cell):
    rng = random.Random(6)
    source = app['repo']
    points = Points(app, source)
    normal_run(app, points, first=True)
    writes(app, rng)
    normal_run(app, points)
    source_files = real_files(source)
    far = small_fs.repo
    # kill -9 at random moments of the copy. The copy checks blocks as they pass (no whole-file hashing), so
    # it may finish inside the kill window: then the far repository is emptied and the window narrowed, until
    # two kills have landed mid-copy.
    landed, window, finished = 0, (0.0, 0.4), None
    for _attempt in range(8):
        killed = run_and_kill(app['ansible'], 'seed_copy', seed_args(source, far), rng, window)
        assert real_files(source) == source_files
        # No point is visible in the far repository unless its VHDs are all there (JSON written last).
        if os.path.isdir(os.path.join(far, 'xo-vm-backups', points.vm_uuid)):
            points.assert_intact(far)
        if killed['killed']:
            landed += 1
            cell('seed copy', 'kill -9', 'ok')
            if landed == 2:
                break
        else:
            finished = killed
            window = (0.0, max(killed['delay'] / 2, 0.01))
            for name in os.listdir(far):
                path = os.path.join(far, name)
                if name == 'lost+found':
                    continue
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
    if landed < 2:
        assert_kill_landed(finished, 'seed copy')
    # full destination
    small_fs.fill(leave=rng.choice([MIB, 3 * MIB]))
    result = run_play(app['ansible'], [('seed_copy', seed_args(source, far), True)])[0]
    small_fs.unfill()
    if result.get('failed'):
        assert 'No space left on device' in result['msg'], result['msg']
    if os.path.isdir(os.path.join(far, 'xo-vm-backups', points.vm_uuid)):
        points.assert_intact(far)
    assert real_files(source) == source_files
    # recovery: the copy completes, then the job continues in the far repository with a delta
    ok(run_play(app['ansible'], [('seed_copy', seed_args(source, far), False)])[0])
    assert points.names() == [os.path.basename(p) for p in sorted(os.listdir(os.path.join(far, 'xo-vm-backups', points.vm_uuid)))
                              if p.endswith('.json')]
    points.assert_intact(far)
    writes(app, rng)
    far_points = Points(app, far)
    far_points.entries = list(points.entries)
    normal_run(app, far_points, repo=far)
    far_points.assert_intact()
    cell('seed copy', 'full repo fs', 'ok' if result.get('failed') else 'ok (fitted)')


# -- restore import ----------------------------------------------------------------------------------------


def restore_step(repo, ignore=False, **extra):
    return ('vm_restore', dict({'repository': repo, 'vm': 'app01', 'name': 'restored'}, **extra), ignore)


def assert_restored(app, points, result):
    truth = {export['timestamp']: {disk['vdi_uuid']: t[disk['snapshot_vdi_uuid']] for disk in export['disks']}
             for export, t in points.entries}[result['backup']['timestamp']]
    for disk in result['disks']:
        assert app['sim'].control.vdi_sha256(disk['vdi_uuid']) == truth[disk['source_vdi_uuid']]


def test_restore_import_faults(app, cell):
    rng = random.Random(7)
    repo = app['repo']
    points = Points(app, repo)
    normal_run(app, points, first=True)
    writes(app, rng)
    normal_run(app, points)
    files = real_files(repo)

    def attempt(fault_steps, expect_in_msg):
        """Failing restores then one that succeeds, in one playbook: the pool gains exactly one VM and its two disks."""
        vms, vdis = pool_counts(app)
        results = run_play(app['ansible'], fault_steps + [restore_step(repo)])
        for result in results[:-1]:
            msg = failed(result)
            assert 'removed' in msg and expect_in_msg in msg, msg
        restored = ok(results[-1])
        assert_restored(app, points, restored)
        assert pool_counts(app) == (vms + 1, vdis + 2)
        assert real_files(repo) == files
        points.assert_intact()

    app['sim'].control.fail_next('import_raw_vdi', ['VDI_IO_ERROR', 'injected'])
    attempt([restore_step(repo, True)], 'transfer failed on the host (injected)')
    cell('restore import', 'XAPI error')
    offsets = [rng.randrange(1, 4096), rng.randrange(4096, 2 * MIB), rng.randrange(2 * MIB, 5 * MIB)]
    for offset in offsets:
        app['sim'].control.cut_import(offset)
    attempt([restore_step(repo, True)] * 3, 'import')
    cell('restore import', 'stream cut', count=len(offsets))
    app['sim'].control.fill_sr('Local storage', MIB)
    vms, vdis = pool_counts(app)
    result = run_play(app['ansible'], [restore_step(repo, True)])[0]
    app['sim'].control.unfill_sr('Local storage')
    msg = failed(result)
    assert 'SR_FULL' in msg or 'space' in msg, msg
    assert pool_counts(app) == (vms, vdis)
    attempt([], '')
    cell('restore import', 'full SR')
    # kill -9 during the import (once the VM exists): the pool keeps what was created so far, marked
    # as an unfinished restore of a dead process; the next restore removes it before it starts.
    vms, vdis = pool_counts(app)
    app['sim'].control.delay(1.0, 'import_raw_vdi')
    killed = run_and_kill(app['ansible'], 'vm_restore', restore_step(repo)[1], rng, (0.0, 0.6),
                          on_start=lambda: wait_for(lambda: pool_counts(app)[0] > vms))
    app['sim'].control.delay(0, 'import_raw_vdi')
    time.sleep(1.2)
    expire_orphan_sessions(app['sim'], 1)
    leftover_vms, leftover_vdis = pool_counts(app)[0] - vms, pool_counts(app)[1] - vdis
    assert leftover_vms <= 1
    if leftover_vms:
        # the half-restored VM cannot be started by mistake and says why
        records = [app['sim'].control.record('VM', ref) for ref in all_vms(app)]
        leftover = [record for record in records if record['name_label'] == 'restored' and record['blocked_operations']]
        assert leftover and leftover[0]['blocked_operations'].get('start') == 'xapi.delta_backup vm_restore in progress', leftover
        assert 'xapi_delta_backup:restore_in_progress' in leftover[0]['other_config']
    assert real_files(repo) == files
    points.assert_intact()
    restored = ok(run_play(app['ansible'], [restore_step(repo)])[0])
    assert_restored(app, points, restored)
    removed = restored['removed_leftovers']
    assert (len(removed['vms']), len(removed['vdis']), removed['problems']) == (leftover_vms, leftover_vdis, []), removed
    # exactly the new VM and its two disks remain: nothing of the killed run
    assert pool_counts(app) == (vms + 1, vdis + 2)
    assert real_files(repo) == files
    cell('restore import', 'kill -9', ('ok' if not leftover_vms else 'ok, half-restored VM removed by the next run')
         if killed['killed'] else 'finished before kill')
    assert_kill_landed(killed, 'restore import')


def all_vms(app) -> list:
    session = app['sim'].xenapi_session()
    session.xenapi.login_with_password('root', 'secret', '1.0', 'fault-tests')
    try:
        return session.xenapi.VM.get_all()
    finally:
        session.xenapi.session.logout()
