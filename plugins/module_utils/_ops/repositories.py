# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What the modules need of the repository layer: a job's id from its name, and opening a repository.

Modules import only ``_ops`` and ``module_runner`` (tests/unit/plugins/module_utils/test_layers.py);
these are the repository entry points they use, re-exported.
"""

from __future__ import annotations

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import job_id_for, open_repository

__all__ = ['job_id_for', 'open_repository']
