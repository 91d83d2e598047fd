# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""xapisim: an XAPI (XCP-ng/XenServer) simulator for tests.

State model (``model``, ``storage``, ``api``) apart from the wire layer
(``wire``, ``server``); test control in ``control``; helpers in ``testing``.
"""

from .api import Simulator
from .control import ControlError, SimulatorControl
from .model import XapiError
from .storage import BLOCK_SIZE, CBT_BLOCK, pattern

__all__ = ['Simulator', 'SimulatorControl', 'ControlError', 'XapiError', 'BLOCK_SIZE', 'CBT_BLOCK', 'pattern']
