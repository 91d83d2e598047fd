# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The root of every exception the collection raises (a leaf: imports nothing of ours).

Each subclass names its kind of failure in ``error_code``, a stable lowercase string that modules
return on failure (see docs/errors.md), so that playbooks and the inventory plugin can tell
failures apart without reading messages. ``message`` says what was wrong and what to do.
"""

from __future__ import annotations


class DeltaBackupError(Exception):
    """A failure of the collection, with a message saying what was wrong and what to do."""

    error_code = 'delta_backup_error'

    def __init__(self, message: str = '', *args):
        super().__init__(message, *args)
        self.message = str(message)
