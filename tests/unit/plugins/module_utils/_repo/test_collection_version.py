# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The collection version recorded in every backup is the one galaxy.yml publishes."""

from __future__ import annotations

import pathlib

import yaml

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.metadata import COLLECTION_VERSION, build_metadata

GALAXY = pathlib.Path(__file__).resolve().parents[5] / 'galaxy.yml'
JOB = '2f0c6b1e-6a8a-4d8e-a3a4-0c4f1b9d7e10'


def test_recorded_version_is_galaxy_version():
    assert COLLECTION_VERSION == yaml.safe_load(GALAXY.read_text())['version']


def test_new_metadata_records_it():
    metadata = build_metadata(JOB, JOB, 0, {}, {}, {}, {}, {}, {}, {}, size=0, block_checksums={}, virtual_sizes={})
    assert metadata['xapi_delta_backup']['collection_version'] == COLLECTION_VERSION
