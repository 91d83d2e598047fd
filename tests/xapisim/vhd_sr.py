# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHD SR behaviour around snapshots and exports (state model only, no wire code).

- The control-domain VBD an export plugs its VDI (and its base) with, removed afterwards.
- The VHD chain depth limit of a snapshot.
- Base copies coalesced by the SR's garbage collector after a delay, not at once.

Every function expects ``sim.lock`` held by the caller unless it says otherwise.
"""

from __future__ import annotations

import threading

from .model import XapiError

# xapi-project/sm libs/sm/vhdutil.py MAX_CHAIN_SIZE; FileSR/LVHDSR refuse a snapshot of a VHD whose
# depth (vhd-util query -d: the leaf counts as 1) is at least this.
MAX_CHAIN_SIZE = 30
# xapi-project/sm libs/sm/core/XE_SR_ERRORCODES.xml SnapshotChainTooLong (109), raised by
# libs/sm/drivers/FileSR.py _snapshot; XAPI turns SR errors into SR_BACKEND_FAILURE_<code> [""; text; ""].
SNAPSHOT_CHAIN_TOO_LONG = ('SR_BACKEND_FAILURE_109', '', 'The snapshot chain is too long', '')


def control_domain(sim):
    """The coordinator's control domain (ocaml/xapi/helpers.ml get_domain_zero)."""
    host = sim.store.raw('host', sim.master_ref)
    return host['control_domain']


def attach_to_control_domain(sim, vdi):
    """Plug ``vdi`` read-only into the control domain as an export does.

    ocaml/xapi/export_raw_vdi.ml calls sm_fs_ops.ml with_block_attached_device, which calls
    attach_helpers.ml with_vbds: VBD.create on dom0 (userdevice autodetect, bootable false, mode RO,
    type Disk, unpluggable true, other_config {} -- nothing marks it as an export's), then VBD.plug.
    """
    vbd = sim.create_vbd({'VM': control_domain(sim), 'VDI': vdi, 'userdevice': 'autodetect', 'bootable': False,
                          'mode': 'RO', 'type': 'Disk', 'unpluggable': True, 'empty': False, 'other_config': {},
                          'qos_algorithm_type': '', 'qos_algorithm_params': {}, 'device': ''})
    sim.store.set('VBD', vbd, 'currently_attached', True)
    return vbd


def detach_from_control_domain(sim, vbds):
    """attach_helpers.ml with_vbds' clean-up: unplug, then destroy, each VBD (already gone: ignored)."""
    for vbd in vbds:
        if sim.store.exists('VBD', vbd):
            sim.store.set('VBD', vbd, 'currently_attached', False)
            sim.store.remove('VBD', vbd)


def chain_depth(sim, vdi):
    """Depth of the VDI's VHD chain on its SR: 1 for a VHD without parent, +1 per ``vhd-parent`` link."""
    by_uuid = {obj['uuid']: obj for obj in sim.store.objects['VDI'].values()}
    depth, obj = 1, sim.store.raw('VDI', vdi)
    while obj['sm_config'].get('vhd-parent') in by_uuid and depth <= 2 * MAX_CHAIN_SIZE:
        obj = by_uuid[obj['sm_config']['vhd-parent']]
        depth += 1
    return depth


def check_snapshot_depth(sim, vdi):
    """Refuse a snapshot of a VHD chain at the limit, as sm does."""
    if chain_depth(sim, vdi) >= MAX_CHAIN_SIZE:
        raise XapiError(*SNAPSHOT_CHAIN_TOO_LONG)


class Coalescer:
    """The SR garbage collector's timing: each SR coalesces ``delay`` seconds after it got garbage.

    Real SRs merge a base copy left with one child (or none) in the background (sm's cleanup.py,
    started after VDI.destroy), minutes later on a busy SR; meanwhile the base copy stays in the
    chain, visible through ``sm_config['vhd-parent']``. A delay of 0 (the default) coalesces at once.
    """

    def __init__(self, sim):
        self.sim = sim
        self.delays = {}
        self.held = set()
        self.timers = {}

    def reset(self):
        """Forget every SR (timers cancelled)."""
        for timer in self.timers.values():
            timer.cancel()
        self.delays.clear()
        self.held.clear()
        self.timers.clear()

    def set_delay(self, sr, seconds):
        """Coalesce ``sr`` this many seconds after garbage appears (0: at once)."""
        self.delays[sr] = max(0.0, float(seconds))

    def hold(self, sr, held):
        """Stop (or let go) the SR's garbage collector; held garbage waits for ``run``."""
        if held:
            self.held.add(sr)
        else:
            self.held.discard(sr)
            self.garbage_appeared(sr)

    def garbage_appeared(self, sr):
        """Called when a VDI was destroyed on ``sr``: coalesce now or schedule it."""
        if sr in self.held:
            return
        delay = self.delays.get(sr, 0.0)
        if not delay:
            self.sim.coalesce(sr)
            return
        if sr in self.timers:
            return  # already scheduled: one GC pass handles all garbage
        timer = threading.Timer(delay, self._run_later, (sr,))
        timer.daemon = True
        self.timers[sr] = timer
        timer.start()

    def _run_later(self, sr):
        with self.sim.lock:
            if self.timers.pop(sr, None) is None:
                return  # cancelled meanwhile (run or reset)
            if sr in self.held or not self.sim.store.exists('SR', sr):
                return
            self.sim.coalesce(sr)
            self.sim.sr_refresh(sr)

    def run(self, sr):
        """Coalesce ``sr`` now, held or not; returns the uuids of the base copies removed."""
        timer = self.timers.pop(sr, None)
        if timer is not None:
            timer.cancel()
        removed = self.sim.coalesce(sr)
        self.sim.sr_refresh(sr)
        return removed


def waiting_base_copies(sim, sr):
    """Uuids of hidden base copies on ``sr`` that a GC pass would coalesce (fewer than two children)."""
    vdis = sim.store.objects['VDI']
    found = []
    for obj in vdis.values():
        if obj['managed'] or obj['SR'] != sr:
            continue
        children = [o for o in vdis.values() if o['sm_config'].get('vhd-parent') == obj['uuid']]
        if len(children) < 2:
            found.append(obj['uuid'])
    return sorted(found)
