# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Standard attribute wording; each module adds C(support) (and C(details) when partial)."""

    # Use as xapi.delta_backup.attributes together with xapi.delta_backup.attributes.action_group.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in C(check_mode) and return a changed status prediction without changing the pool or the repository.
  diff_mode:
    description: Returns details on what has changed (or would change in C(check_mode)) as C(diff) when run with C(--diff).
  idempotent:
    description:
      - When run twice in a row with the same arguments, the second run reports no change.
      - A module that always starts a new backup or snapshot cannot be idempotent and says so.
"""

    ACTION_GROUP = r"""
attributes:
  action_group:
    description: Use C(group/xapi.delta_backup.xapi) in C(module_defaults) to set the connection options once for every module of the collection.
    support: full
    membership:
      - xapi.delta_backup.xapi
"""

    # For modules that only read (the *_info modules).
    INFO_MODULE = r"""
attributes:
  check_mode:
    description: This module only reads, so it runs normally in C(check_mode).
    support: full
  diff_mode:
    description: This module changes nothing, so there is nothing to show in diff mode.
    support: N/A
  idempotent:
    description: This module changes nothing and always reports no change.
    support: full
"""
