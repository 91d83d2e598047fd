# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The root of every error this collection reports (see docs/errors.md for the codes)."""

from __future__ import annotations


class DeltaBackupError(Exception):
    """An error with a message saying what was wrong and what to do, and a stable ``error_code``."""

    error_code = 'error'

    def __init__(self, message: str = '', *args):
        super().__init__(message, *args)
        self.message = message
