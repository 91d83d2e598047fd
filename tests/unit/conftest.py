# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hypothesis profiles for the unit suites.

`make test` (ansible-test units, which passes no environment through) uses the ``repeatable``
profile: the same generated examples on every run, so a red run is a regression and reruns
reproduce it. To explore new examples, run the suites with plain pytest and
``HYPOTHESIS_PROFILE=explore`` (see docs/vhd-engine.md); add what it finds as explicit tests.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile('repeatable', derandomize=True, database=None)
settings.register_profile('explore')
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'repeatable'))
