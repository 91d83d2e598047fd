# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input: each gets a message that says what is wrong, and nothing else is touched.

Malformed and mistyped task variables, a folder that is not a repository, a VHD with a flipped byte,
a truncated VHD, metadata edited by hand, and a VM whose name is a path. "Nothing touched" is checked
on the sha256 of every file of the repository (dot files included) and on the pool's object counts.
"""

from __future__ import annotations

import hashlib
import json
import os

from faults import failed, ok, run_play
from lifecycle import MIB, assert_point_matches_truth, backup, ground_truth, guest_write
from oracles import backup_points

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.structures import BAT_UNUSED

JOB = {'vm': 'app01', 'job': 'nightly'}


def tree(root) -> dict:
    """Every file below ``root`` with its sha256 and mode: what 'nothing touched' compares."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(folder, name)
            state[os.path.relpath(path, root) + '/'] = oct(os.stat(path).st_mode)
        for name in files:
            path = os.path.join(folder, name)
            with open(path, 'rb') as handle:
                state[os.path.relpath(path, root)] = (hashlib.sha256(handle.read()).hexdigest(), oct(os.stat(path).st_mode))
    return state


def pool_counts(sim) -> tuple[int, int]:
    session = sim.xenapi_session()
    session.xenapi.login_with_password('root', 'secret', '1.0', 'bad-input-tests')
    try:
        return len(session.xenapi.VM.get_all()), len(session.xenapi.VDI.get_all())
    finally:
        session.xenapi.session.logout()


def test_malformed_and_mistyped_variables_are_named(app):
    _snap, full = backup(app)
    repo = app['repo']
    before, counts = tree(repo), pool_counts(app['sim'])
    cases = [
        (('delta_export', dict(JOB, repositories=[repo], full_interval='every sunday')), "full_interval"),
        (('delta_export', {'vm': 'app01', 'repositories': [repo]}), 'missing required arguments: job'),
        (('delta_export', dict(JOB, repositories=[repo], file_mode='rw-------')), "file_mode must be octal permissions such as '0600'"),
        (('delta_export', dict(JOB, repositories=[repo], dir_mode='0o7777777')), "dir_mode must be octal permissions"),
        (('delta_export', dict(JOB, repositories=[repo, repo])), 'the same repository is listed twice'),
        (('delta_export', dict(JOB, repositories=[])), 'no repository given'),
        (('delta_export', dict(JOB, repositories=[repo], bogus_option=1)), 'Unsupported parameters'),
        (('vm_snapshot', dict(JOB, state='gone')), 'value of state must be one of: present, pruned'),
        (('vm_snapshot', {'vm': 'no-such-vm', 'job': 'nightly'}), 'no-such-vm'),
        (('backup_merge', {'repository': repo, 'job': 'nightly', 'keep': 0}), 'keep must be at least 1'),
        (('backup_merge', {'repository': repo, 'job': 'nightly', 'keep': 'seven'}), 'keep'),
        (('vm_restore', {'repository': repo, 'vm': 'app01', 'backup': 'last tuesday'}),
         "'last tuesday' is neither latest, an index nor a timestamp"),
        (('vm_restore', {'repository': repo, 'vm': 'app01', 'backup': '7'}), 'backup index 7 is out of range: there are 1 backups'),
        (('vm_restore', {'repository': repo, 'vm': 'app01', 'network_map': 'Network 0'}), 'network_map'),
        (('backup_info', {'repository': repo, 'verify': 'perhaps'}), 'verify'),
    ]
    results = run_play(app['ansible'], [(module, args, True) for (module, args), _text in cases])
    for ((module, args), text), result in zip(cases, results, strict=True):
        msg = failed(result)
        assert text in msg, (module, args, msg)
        assert result.get('error_code') in ('invalid_option', 'invalid_input', 'vm_not_found', 'repository_error', 'restore_failed'), result
    assert tree(repo) == before
    assert pool_counts(app['sim']) == counts
    assert_point_matches_truth(app, repo, full)


def test_a_folder_that_is_not_a_repository_is_refused_by_every_module(app, tmp_path):
    stranger = tmp_path / 'documents'
    (stranger / 'sub').mkdir(parents=True)
    (stranger / 'notes.txt').write_text('not backups')
    (stranger / 'sub' / 'a.vhd').write_bytes(b'conectix' + bytes(600))
    plain_file = tmp_path / 'plain.txt'
    plain_file.write_text('a file')
    before, file_before = tree(str(stranger)), plain_file.read_bytes()
    path = str(stranger)
    steps = [
        ('vm_snapshot', JOB, False),
        ('delta_export', dict(JOB, repositories=[path], snapshot='{{ result_0.snapshot.uuid }}'), True),
        ('backup_info', {'repository': path}, True),
        ('backup_merge', {'repository': path, 'job': 'nightly', 'keep': 1}, True),
        ('vm_restore', {'repository': path, 'vm': 'app01'}, True),
        ('seed_copy', {'source': path, 'destination': str(tmp_path / 'far')}, True),
        ('backup_info', {'repository': str(plain_file)}, True),
        ('backup_info', {'repository': str(tmp_path / 'nowhere')}, True),
    ]
    (tmp_path / 'far').mkdir()
    results = run_play(app['ansible'], steps)
    ok(results[0])
    for result in results[1:6]:
        msg = failed(result)
        assert '%s is not a backup repository' % path in msg, msg
    assert 'is not a directory' in failed(results[6])
    assert 'does not exist' in failed(results[7])
    assert tree(path) == before and plain_file.read_bytes() == file_before
    assert os.listdir(tmp_path / 'far') == []


def flip_byte(path, offset):
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def three_points(app):
    exports = []
    for number in range(3):
        if number:
            guest_write(app, 'app01-root', number * 7 * MIB + 512, 300 * 1024, 40 + number)
        _snap, export = backup(app)
        exports.append((export, ground_truth(app, export)))
    return exports


def block_holding(path: str, offset: int) -> int:
    """The number of the block whose stored span (bitmap and data) holds the file offset ``offset``."""
    with VhdFile(path) as vhd:
        span = vhd.bitmap_size + vhd.block_size
        return next(index for index in range(vhd.block_count)
                    if vhd.bat[index] != BAT_UNUSED and vhd.bat[index] * 512 <= offset < vhd.bat[index] * 512 + span)


def refusals(app, repo, far, merge: bool = True):
    """Every module that reads the repository, each expected to refuse: results in order.

    Without ``merge``, backup_merge is left out: it checks the deltas' blocks and the full's structures,
    never the full's data (its cost follows the change), so a damaged block of the full that no delta
    touches is for verify, restore and seed copy to find.
    """
    steps = [('backup_info', {'repository': repo, 'verify': True}, True)]
    if merge:
        steps.append(('backup_merge', {'repository': repo, 'job': 'nightly', 'keep': 1}, True))
    steps += [('vm_restore', {'repository': repo, 'vm': 'app01'}, True), ('seed_copy', {'source': repo, 'destination': far}, True)]
    return run_play(app['ansible'], steps)


def test_flipped_byte_and_truncated_vhd_are_named_and_nothing_changes(app, tmp_path):
    exports = three_points(app)
    repo = app['repo']
    vm_dir = os.path.join(repo, 'xo-vm-backups', exports[0][0]['vm']['uuid'])
    full_root = os.path.join(vm_dir, next(d['path'] for d in exports[0][0]['disks'] if d['name_label'] == 'app01-root'))
    newest_root = os.path.join(vm_dir, next(d['path'] for d in exports[2][0]['disks'] if d['name_label'] == 'app01-root'))
    far = tmp_path / 'far'
    far.mkdir()
    counts = pool_counts(app['sim'])
    # a flipped byte in the middle of the full (inside a data block: only the block's checksum can tell)
    flipped = os.path.getsize(full_root) // 2
    block = block_holding(full_root, flipped)
    flip_byte(full_root, flipped)
    before = tree(repo)
    results = refusals(app, repo, str(far), merge=False)
    for result in results:
        msg = failed(result)
        assert full_root in msg, msg
        # each names the damaged block by number and virtual offset (block checksums, not one sha256 per file)
        assert 'block %d (virtual offset %d)' % (block, block * 2 * MIB) in msg, msg
    assert tree(repo) == before and pool_counts(app['sim']) == counts
    assert not any(name.endswith('.json') for _f, _d, names in os.walk(far) for name in names)
    flip_byte(full_root, os.path.getsize(full_root) // 2)
    # a truncated newest delta: its own point is refused, older points still restore
    with open(newest_root, 'r+b') as handle:
        handle.truncate(os.path.getsize(newest_root) - 3000)
    before = tree(repo)
    results = refusals(app, repo, str(far))
    for result in results[:3]:
        assert newest_root in failed(result), result['msg']
    assert tree(repo) == before and pool_counts(app['sim']) == counts
    for export, truth in exports[:2]:
        assert_point_matches_truth(app, repo, export, truth)


def test_hand_edited_metadata_is_named_with_the_problem(app, tmp_path):
    exports = three_points(app)
    repo = app['repo']
    points = backup_points(repo, exports[0][0]['vm']['uuid'])
    middle = points[1]['_path']
    with open(middle, encoding='utf-8') as handle:
        original = handle.read()
    far = tmp_path / 'far'
    far.mkdir()
    edits = [
        (lambda data: dict(data, timestamp='yesterday'), "field 'timestamp' must be an integer (ms since the epoch), got str"),
        (lambda data: dict(data, vhds={ref: '../../../etc/passwd' for ref in data['vhds']}),
         "is not a vdis/<job uuid>/<vdi uuid>/<timestamp>.vhd path"),
        (lambda data: dict(data, mode='full-ish'), "mode is 'full-ish', only 'delta' backups are handled"),
        (lambda data: dict(data, isVhdDifferencing={ref: 'yes' for ref in data['isVhdDifferencing']}), 'must be a boolean'),
        (lambda data: dict(data, xapi_delta_backup=dict(data['xapi_delta_backup'], virtual_sizes={ref: 'big' for ref in data['vhds']})),
         'xapi_delta_backup.virtual_sizes must map VDI refs to sizes in bytes'),
        (None, 'not valid JSON'),
    ]
    restore_refusals = []
    for edit, problem in edits:
        with open(middle, 'w', encoding='utf-8') as handle:
            if edit is None:
                handle.write(original[:len(original) // 2])
            else:
                json.dump(edit(json.loads(original)), handle)
        before = tree(repo)
        results = run_play(app['ansible'], [
            ('backup_info', {'repository': repo}, True),
            ('backup_merge', {'repository': repo, 'job': 'nightly', 'keep': 1}, True),
            ('vm_restore', {'repository': repo, 'vm': 'app01', 'backup': exports[0][0]['timestamp']}, True),
            ('vm_snapshot', JOB, False),
            ('delta_export', dict(JOB, repositories=[repo], snapshot='{{ result_3.snapshot.uuid }}'), True),
        ])
        for index in (1, 4):
            msg = failed(results[index])
            assert 'backup metadata %s is invalid' % middle in msg and problem in msg, msg
        info = results[0]
        assert any(middle in text and problem in text for text in info.get('problems', [info.get('msg', '')])), info
        # the restore of another point may go on or refuse, but must name the file if it refuses (checked last)
        if results[2].get('failed'):
            restore_refusals.append((problem, results[2]['msg']))
        assert tree(repo) == before
    with open(middle, 'w', encoding='utf-8') as handle:
        handle.write(original)
    for export, truth in exports:
        assert_point_matches_truth(app, repo, export, truth)
    for problem, msg in restore_refusals:
        assert middle in msg and problem in msg, 'vm_restore hides the invalid metadata (%s): %s' % (problem, msg)


PATH_POOL = """
pool: {name: path-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
vms:
  - name: ../../etc
    disks:
      - name: ../../../etc/passwd
        size: 8MiB
        data: [{offset: 0, length: 1MiB, seed: 5}]
  - name: /tmp/evil
    disks:
      - name: "evil/disk"
        size: 8MiB
        data: [{offset: 0, length: 1MiB, seed: 6}]
"""


def test_vm_names_with_path_characters_land_only_under_uuid_paths(ansible, pool, tmp_path):
    pool.control.load_config(PATH_POOL)
    repo = tmp_path / 'nest' / 'repo'
    repo.mkdir(parents=True)
    outside_before = tree(str(tmp_path / 'nest'))
    steps = []
    for name in ('../../etc', '/tmp/evil'):
        first = len(steps)
        steps += [('vm_snapshot', {'vm': name, 'job': '../job'}, False),
                  ('delta_export', {'vm': name, 'job': '../job', 'repositories': [str(repo)],
                                    'snapshot': '{{ result_%d.snapshot.uuid }}' % first}, False)]
    results = run_play(ansible, steps + [('backup_info', {'repository': str(repo), 'verify': True}, False)])
    for result in results:
        ok(result)
    assert results[-1]['problems'] == []
    uuids = {results[1]['vm']['uuid'], results[3]['vm']['uuid']}
    # everything new is inside the repository, under xo-vm-backups/<vm uuid>/ (paths from uuids and timestamps only)
    after = tree(str(tmp_path / 'nest'))
    new = sorted(set(after) - set(outside_before))
    assert new and all(path.startswith('repo/') for path in new), new
    for path in new:
        parts = path.rstrip('/').split('/')[1:]
        assert parts[0] == 'xo-vm-backups'
        if len(parts) > 1:
            assert parts[1] in uuids or parts[1].rsplit('.', 1)[0] in uuids, path
        for part in parts[2:]:
            assert part == 'vdis' or len(part) == 36 or part.endswith(('Z.json', 'Z.vhd', 'Z.vhd.blocksums')), path
    assert not os.path.exists('/tmp/evil') and not os.path.exists(tmp_path / 'etc')
    for result in (results[1], results[3]):
        truth = {disk['snapshot_vdi_uuid']: pool.control.vdi_sha256(disk['snapshot_vdi_uuid']) for disk in result['disks']}
        assert_point_matches_truth({'sim': pool}, str(repo), result, truth)
