# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""What the modules need of the repository layer: opening a repository and finding a VM's backups in it.

Modules import only ``_ops`` and ``module_runner`` (tests/unit/plugins/module_utils/test_layers.py);
these are the repository entry points they use, re-exported.
"""

from __future__ import annotations

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository, resolve_backup_vm

__all__ = ['open_repository', 'resolve_backup_vm']
