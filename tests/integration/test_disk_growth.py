# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disks that grow between backups: deltas stay deltas, merges cross resizes, every point restores at its own size."""

from __future__ import annotations

import hashlib
import os

from lifecycle import MIB, backup, ground_truth, guest_write
from oracles import chain_of, chain_sha256

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdChain, VhdFile


def grow_disk(app, disk, new_size):
    """Grow a disk of the running VM as an operator must on these XAPI versions.

    VDI.resize_online was removed in inverness ("Online VDI resize is not supported by any of the storage
    backends", ocaml/idl/datamodel.ml), and VDI.resize refuses an attached disk: the VM is shut down, the
    disk resized, the VM started again.
    """
    session = app['sim'].xenapi_session()
    session.xenapi.login_with_password('root', 'secret', '1.0', 'integration-tests')
    try:
        vdi = session.xenapi.VDI.get_by_uuid(app['live'][disk])
        vm = session.xenapi.VBD.get_VM(session.xenapi.VDI.get_VBDs(vdi)[0])
        session.xenapi.VM.hard_shutdown(vm)
        session.xenapi.VDI.resize(vdi, str(new_size))
        session.xenapi.VM.start(vm, False, False)
    finally:
        session.xenapi.session.logout()


def file_size(path):
    with VhdFile(path) as vhd:
        return vhd.size


def engine_sha256(chain_paths, length=None):
    """The chain's disk (its first ``length`` bytes if given) as our own engine reads it."""
    digest = hashlib.sha256()
    chain = VhdChain.from_paths(chain_paths)
    try:
        size = chain.size if length is None else length
        for offset in range(0, size, 4 * MIB):
            digest.update(chain.read(offset, min(4 * MIB, size - offset)))
        return digest.hexdigest(), size
    finally:
        chain.close()


def restore_and_hash(app, timestamp, name):
    restored = app['ansible'].run_task('vm_restore', {'repository': app['repo'], 'vm': 'app01', 'backup': timestamp, 'name': name})
    return {disk['source_vdi_uuid']: (app['sim'].control.vdi_sha256(disk['vdi_uuid']), disk['virtual_size']) for disk in restored['disks']}


def expected(export, truth):
    return {disk['vdi_uuid']: (truth[disk['snapshot_vdi_uuid']], disk['virtual_size']) for disk in export['disks']}


def test_growth_keeps_deltas_and_every_point_restores_at_its_size(app):
    exports, truths = [], []

    def run_backup():
        _snap, export = backup(app)
        exports.append(export)
        truths.append(ground_truth(app, export))
        return export

    assert run_backup()['mode'] == 'full'
    guest_write(app, 'app01-root', 8 * MIB, 64 * 1024, 41)
    assert run_backup()['mode'] == 'delta'

    # +50%, with writes in the new area and in the old last block (which straddles nothing: 96 MiB is block aligned).
    grow_disk(app, 'app01-root', 144 * MIB)
    guest_write(app, 'app01-root', 120 * MIB + 512, 3000, 42)
    guest_write(app, 'app01-root', 95 * MIB, 8192, 43)
    grown = run_backup()
    assert grown['mode'] == 'delta', grown['reason']
    assert {disk['name_label']: disk['virtual_size'] for disk in grown['disks']}['app01-root'] == 144 * MIB

    # A size that is not a multiple of 2 MiB rounds up (as SM does); write across the old end.
    grow_disk(app, 'app01-root', 201 * MIB)
    guest_write(app, 'app01-root', 143 * MIB, 3 * MIB, 44)
    regrown = run_backup()
    assert regrown['mode'] == 'delta', regrown['reason']
    assert {disk['name_label']: disk['virtual_size'] for disk in regrown['disks']}['app01-root'] == 202 * MIB

    vm_dir = os.path.join(app['repo'], 'xo-vm-backups', grown['vm']['uuid'])
    # Before any merge: the point before the resize restores at the old size, the others at theirs.
    assert restore_and_hash(app, exports[1]['timestamp'], 'before-resize') == expected(exports[1], truths[1])
    for export, truth in zip(exports, truths, strict=True):
        for disk in export['disks']:
            chain = chain_of(os.path.join(vm_dir, disk['path']))
            assert engine_sha256(chain) == (truth[disk['snapshot_vdi_uuid']], disk['virtual_size'])

    merged = app['ansible'].run_task('backup_merge', {'repository': app['repo'], 'job': 'nightly', 'keep': 2})
    assert merged['changed'] is True
    for export, truth in zip(exports[2:], truths[2:], strict=True):
        assert restore_and_hash(app, export['timestamp'], 'after-merge-' + export['timestamp']) == expected(export, truth)
        for disk in export['disks']:
            chain = chain_of(os.path.join(vm_dir, disk['path']))
            ours = engine_sha256(chain)
            assert ours == (truth[disk['snapshot_vdi_uuid']], disk['virtual_size'])
            # libvhdi refuses to read past a smaller parent's end: compare what it can read.
            readable = min(file_size(path) for path in chain)
            assert chain_sha256(chain, readable) == engine_sha256(chain, readable)
    verified = app['ansible'].run_task('backup_info', {'repository': app['repo'], 'verify': True})
    assert verified['problems'] == []
