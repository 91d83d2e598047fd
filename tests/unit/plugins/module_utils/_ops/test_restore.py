# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Restore planning: point and disk selection, refusal of damaged chains before anything is created."""

from __future__ import annotations

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import restore
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import IntegrityError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import resolve_backup_vm
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import JOB, VM, RepoBuilder


@pytest.fixture
def history(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'repo'), disks=2)
    for number in range(4):
        builder.add_point(full=number == 0)
    return builder


@pytest.mark.parametrize('selector, expected', [
    (None, 3), ('latest', 3), (0, 0), ('-1', 3), ('1', 1), ('20260102T010000Z', 1), ('2026-01-03T12:00:00Z', 2), ('2026-01-03T01:00:00', 2),
])
def test_select_point(history, selector, expected):
    points = history.repo.list_backups(VM)
    assert restore.select_point(points, selector).timestamp == points[expected].timestamp


@pytest.mark.parametrize('selector, message', [
    ('7', 'out of range'), ('2025-01-01T00:00:00Z', 'at or before'), ('yesterday', 'neither'),
    ('20261340T010000Z', "timestamp '20261340T010000Z' is not a valid UTC time")])
def test_select_point_errors(history, selector, message):
    with pytest.raises(restore.RestoreError, match=message):
        restore.select_point(history.repo.list_backups(VM), selector)


def test_prepare_checks_every_chain_and_selects_disks(history):
    plan = restore.prepare_restore(history.repo, VM, JOB, 'latest', None)
    assert [len(item.chain) for item in plan.disks] == [4, 4]
    assert not plan.unverified and len(plan.verified) == 8
    one = restore.prepare_restore(history.repo, VM, None, 1, 'disk 1')
    assert [item.disk.vdi_uuid for item in one.disks] == [history.live[1]]
    with pytest.raises(restore.RestoreError, match='has no disk'):
        restore.prepare_restore(history.repo, VM, JOB, 1, 'nope')


def test_damaged_chain_is_refused_naming_the_file(history):
    victim = history.repo.list_backups(VM)[1].disks[0].path
    with open(victim, 'r+b') as handle:
        handle.seek(-600, 2)
        handle.write(b'\xff')
    with pytest.raises(IntegrityError) as caught:
        restore.prepare_restore(history.repo, VM, JOB, 'latest', None)
    assert victim in str(caught.value) and 'refusing to restore' in str(caught.value)


def test_backed_up_vm_by_name(history):
    assert resolve_backup_vm(history.repo, 'vm1') == VM
    assert resolve_backup_vm(history.repo, VM.upper()) == VM
    with pytest.raises(RepositoryError, match='no backed-up VM'):
        resolve_backup_vm(history.repo, 'other')
