# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Job: the id always comes from the name."""

from __future__ import annotations

import dataclasses

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError


def test_the_id_is_derived_from_the_name_and_cannot_be_given():
    nightly = Job('nightly')
    assert nightly.id == Job(' nightly ').id and nightly.id != Job('weekly').id
    assert nightly == Job('nightly') and nightly.name == 'nightly'
    with pytest.raises(TypeError):
        Job('nightly', id='7d5e1b2a-0000-4000-8000-000000000000')  # pylint: disable=unexpected-keyword-arg
    with pytest.raises(dataclasses.FrozenInstanceError):
        nightly.id = Job('weekly').id


def test_a_blank_name_is_refused():
    with pytest.raises(RepositoryError, match='a job name is required'):
        Job('  ')
