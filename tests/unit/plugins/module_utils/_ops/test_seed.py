# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Seed copy between two repositories: verified, idempotent, resumable, metadata last."""

from __future__ import annotations

import os

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops import seed
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.retention import apply_retention
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.integrity import IntegrityError
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.repo_builder import (
    JOB, VM, RepoBuilder, assert_points_restorable,
)


@pytest.fixture
def source(tmp_path):
    builder = RepoBuilder(str(tmp_path / 'near'), disks=2)
    for number in range(3):
        builder.add_point(full=number == 0)
    return builder


def tree(root):
    found = []
    for folder, _dirs, files in os.walk(root):
        found.extend(os.path.relpath(os.path.join(folder, name), root) for name in files)
    return sorted(found)


def test_copy_is_verified_idempotent_and_readable(source, tmp_path):
    far = tmp_path / 'far'
    far.mkdir()
    planned = seed.seed_copy(source.repo.root, str(far), check_mode=True)
    assert planned['changed'] and planned['copied_files'] == 6 and planned['copied_points'] == 3
    assert tree(str(far)) == []
    done = seed.seed_copy(source.repo.root, str(far), vms=[VM])
    assert done['changed'] and done['copied_files'] == 6 and done['bytes_copied'] > 0
    assert tree(str(far)) == [name for name in tree(source.repo.root) if not name.endswith('.lock')]
    again = seed.seed_copy(source.repo.root, str(far))
    assert again['changed'] is False and again['skipped_files'] == 6
    copy = RepoBuilder.__new__(RepoBuilder)
    copy.__dict__.update(source.__dict__, repo=open_repository(str(far)))
    assert_points_restorable(copy, sorted(source.truth))


def test_interrupted_copy_resumes_and_hides_incomplete_points(source, tmp_path, monkeypatch):
    far = tmp_path / 'far'
    far.mkdir()
    real = seed._copy_vhd
    calls = []

    def dying(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(seed, '_copy_vhd', dying)
    with pytest.raises(KeyboardInterrupt):
        seed.seed_copy(source.repo.root, str(far))
    monkeypatch.undo()
    assert open_repository(str(far)).list_backups(VM) == []
    resumed = seed.seed_copy(source.repo.root, str(far))
    assert resumed['skipped_files'] == 3 and resumed['copied_files'] == 3


def test_damaged_source_is_refused_naming_the_file(source, tmp_path):
    point = source.repo.list_backups(VM)[0]
    victim = point.disks[1].path
    with open(victim, 'r+b') as handle:
        handle.seek(4096)
        handle.write(b'\x00\x01\x02')
    far = tmp_path / 'far'
    far.mkdir()
    with pytest.raises(IntegrityError) as caught:
        seed.seed_copy(source.repo.root, str(far))
    assert victim in str(caught.value)
    assert open_repository(str(far)).list_backups(VM) == []


def test_a_different_history_at_the_destination_is_never_overwritten(source, tmp_path):
    far = tmp_path / 'far'
    far.mkdir()
    seed.seed_copy(source.repo.root, str(far))
    apply_retention(source.repo, VM, JOB, 1)
    with pytest.raises(seed.SeedConflictError, match='different content'):
        seed.seed_copy(source.repo.root, str(far))


def test_refuses_a_non_repository_destination(source, tmp_path):
    junk = tmp_path / 'junk'
    junk.mkdir()
    (junk / 'file').write_text('x')
    with pytest.raises(seed.RepositoryError, match='not a backup repository'):
        seed.seed_copy(source.repo.root, str(junk))


@pytest.mark.parametrize('check_mode', [True, False])
def test_refuses_a_missing_destination_in_check_mode_too(source, tmp_path, check_mode):
    missing = tmp_path / 'not-mounted'
    with pytest.raises(seed.RepositoryError, match='%s is not a backup repository: it does not exist' % missing):
        seed.seed_copy(source.repo.root, str(missing), check_mode=check_mode)
    assert not missing.exists()
