# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Simulated guest agents: VM_guest_metrics appear when the OS on a VM's disks would run an agent.

A real guest agent reports because the operating system on the VM's disks runs it.  The simulator
decides the same way, from the disks: a VM whose disk holds the *agent marker* (``MARKER_MAGIC`` at
byte ``MARKER_OFFSET``, i.e. the start of sector 1, followed by a JSON object and NUL padding up to
``MARKER_SIZE`` bytes) gets, ``delay`` seconds after ``VM.start`` / ``VM.resume``, a guest metrics
object.  The pool YAML key ``guest_agent: {os: ..., pv_drivers: ..., ip: ...}`` of a VM writes that
marker on its first disk.  A restored copy of the disk therefore brings the agent up; a VM without
the marker never gets guest metrics.

What XAPI does, and what is copied here:
- ``VM.start`` deletes the VM's guest metrics before booting (ocaml/xapi/xapi_vm.ml ``start``:
  ``Xapi_vm_helpers.delete_guest_metrics``): addresses of a clone or of a previous boot are never shown.
- The first report of the agent creates the object (ocaml/xapi/xapi_xenops.ml ``update_vm``,
  ``create_guest_metrics_if_needed``; ocaml/xapi/xapi_guest_agent.ml ``create_and_set_guest_metrics``):
  ``live`` true, ``PV_drivers_up_to_date`` = ``PV_drivers_detected``, ``memory``, ``disks`` and
  ``other_config`` empty, ``last_updated`` = the report's time; ``os_version`` keys ``name``,
  ``distro``, ``major``, ``minor``, ``uname`` and ``PV_drivers_version`` keys ``major``, ``minor``,
  ``micro``, ``build`` (xapi_guest_agent.ml ``os_version``, ``pv_drivers_version``); ``networks``
  holds ``<n>/ip`` and ``<n>/ipv4/0`` for the IPv4 address of VIF ``n`` (xapi_guest_agent.ml ``networks``,
  read from the VIFs' xenstore entries): the simulator gives the address to the VM's first VIF, and a VM
  without VIFs reports no address.
- ``VM.resume`` does not delete them (xapi_vm.ml ``resume``); a resumed guest's agent reports again,
  which creates them when absent (``create_guest_metrics_if_needed``).
- A shutdown leaves the object as it was (xapi_xenops.ml ``update_vm``: the Halted branch resets VBDs,
  VIFs and resident_on only); the next start deletes it.  A client must therefore look at the power
  state as well, never at the guest metrics alone.
- ``VM.destroy`` destroys them (ocaml/xapi/xapi_vm_helpers.ml ``destroy``); ``VM.snapshot`` and
  ``VM.clone`` give the new VM a copy (ocaml/xapi/xapi_vm_clone.ml, xapi_vm_helpers.ml ``copy_guest_metrics``).
"""

from __future__ import annotations

import json
import threading
import time

from .model import NULL_REF, xapi_date

MARKER_MAGIC = b'XAPISIM-GUEST-AGENT/1\n'
MARKER_OFFSET = 512
MARKER_SIZE = 512
DEFAULT_DELAY = 0.5


def encode_marker(agent: dict) -> bytes:
    """The marker bytes for ``agent`` = {os, pv_drivers, ip} (all optional strings)."""
    known = {key: str(agent[key]) for key in ('os', 'pv_drivers', 'ip') if agent.get(key) not in (None, '')}
    unknown = set(agent) - {'os', 'pv_drivers', 'ip'}
    if unknown:
        raise ValueError('guest_agent: unknown key(s) %s; use os, pv_drivers, ip' % ', '.join(sorted(unknown)))
    body = MARKER_MAGIC + json.dumps(known, sort_keys=True).encode('utf-8')
    if len(body) > MARKER_SIZE:
        raise ValueError('guest_agent: description too long for the marker (%d bytes at most)' % MARKER_SIZE)
    return body + bytes(MARKER_SIZE - len(body))


def decode_marker(data: bytes) -> dict | None:
    """The agent description held by a disk's sector 1, or None when it holds no marker."""
    if not data.startswith(MARKER_MAGIC):
        return None
    text = data[len(MARKER_MAGIC):].split(b'\0', 1)[0]
    try:
        value = json.loads(text.decode('utf-8'))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _os_version(name: str) -> dict:
    """``os_version`` as a Linux agent reports it: name, distro, major, minor (from a name like "Debian 12.4")."""
    out = {'name': name, 'distro': name.split()[0].lower()}
    for word in name.split():
        numbers = word.split('.')
        if numbers[0].isdigit():
            out['major'] = numbers[0]
            out['minor'] = numbers[1] if len(numbers) > 1 and numbers[1].isdigit() else '0'
            break
    return out


def _pv_drivers_version(version: str) -> dict:
    """``PV_drivers_version`` keys major, minor, micro, build from ``9.3.3`` (or ``9.3.3-12``)."""
    main, _sep, build = version.partition('-')
    parts = main.split('.')
    out = {key: parts[num] for num, key in enumerate(('major', 'minor', 'micro')) if num < len(parts)}
    if build:
        out['build'] = build
    return out


class GuestAgents:
    """The guest agents of one simulated pool: reading markers, creating and removing VM_guest_metrics."""

    def __init__(self, sim):
        self.sim = sim
        self.delay = DEFAULT_DELAY
        self.default_ip = None      # an address for agents whose marker names none
        self.generation = 0         # bumped by reset: pending reports of a former pool are dropped

    def reset(self):
        """Back to the defaults; reports still pending are forgotten."""
        self.delay = DEFAULT_DELAY
        self.default_ip = None
        self.generation += 1

    def settings(self, delay=None, ip=None):
        """Change the report delay (seconds) and the default address; returns those in force."""
        if delay is not None:
            if float(delay) < 0:
                raise ValueError('guest agent delay must be >= 0')
            self.delay = float(delay)
        if ip is not None:
            self.default_ip = str(ip) or None
        return {'delay': self.delay, 'ip': self.default_ip}

    # --- what the disks say ----------------------------------------------
    def agent_of(self, vm: str) -> dict | None:
        """The agent the OS on ``vm``'s disks runs: the marker of its first disk holding one (bootable first)."""
        store = self.sim.store
        vbds = [o for o in store.objects['VBD'].values()
                if o['VM'] == vm and o['type'] == 'Disk' and not o['empty'] and o['VDI'] in self.sim.disks]
        vbds.sort(key=lambda o: (not o['bootable'], int(o['userdevice']) if str(o['userdevice']).isdigit() else 99))
        for vbd in vbds:
            found = decode_marker(self.sim.disks[vbd['VDI']].read(MARKER_OFFSET, MARKER_SIZE))
            if found is not None:
                return found
        return None

    # --- lifecycle hooks (called with the simulator's lock held) ---------------
    def on_start(self, vm: str):
        """VM.start: old metrics go (xapi_vm.ml start), then the agent, if any, reports after the delay."""
        self.delete(vm)
        self._schedule(vm)

    def on_resume(self, vm: str):
        """VM.resume: the metrics stay; an agent reports again and creates them when absent."""
        self._schedule(vm)

    def _schedule(self, vm: str):
        agent = self.agent_of(vm)
        if agent is None:
            return
        domid = self.sim.store.raw('VM', vm)['domid']
        generation = self.generation
        if self.delay <= 0:
            self.report(vm, agent)
            return
        timer = threading.Timer(self.delay, self._report_later, args=(vm, agent, domid, generation))
        timer.daemon = True
        timer.start()

    def _report_later(self, vm, agent, domid, generation):
        with self.sim.lock:
            if generation != self.generation or not self.sim.store.exists('VM', vm):
                return
            obj = self.sim.store.raw('VM', vm)
            # The domain that would have reported is gone (shut down, or restarted: a new domid).
            if obj['power_state'] != 'Running' or obj['domid'] != domid:
                return
            self.report(vm, agent)

    def report(self, vm: str, agent: dict):
        """The agent's first report: create the VM's guest metrics when it has none (create_guest_metrics_if_needed)."""
        store = self.sim.store
        if store.exists('VM_guest_metrics', store.raw('VM', vm)['guest_metrics']):
            return
        pv_drivers = agent.get('pv_drivers')
        address = agent.get('ip') or self.default_ip
        # The agent reports the addresses of the VM's network interfaces (xenstore attr/vif/<device>): the
        # address goes to its first VIF; without VIFs there is nothing to report.
        devices = sorted((o['device'] for o in store.objects['VIF'].values() if o['VM'] == vm),
                         key=lambda device: int(device) if str(device).isdigit() else 99)
        networks = {'%s/ip' % devices[0]: address, '%s/ipv4/0' % devices[0]: address} if address and devices else {}
        detected = bool(pv_drivers)
        gm = store.add('VM_guest_metrics', {
            'os_version': _os_version(agent['os']) if agent.get('os') else {},
            'PV_drivers_version': _pv_drivers_version(pv_drivers) if pv_drivers else {},
            'PV_drivers_up_to_date': detected, 'PV_drivers_detected': detected,
            'memory': {}, 'disks': {}, 'networks': networks, 'other': {}, 'other_config': {},
            'last_updated': xapi_date(time.time()), 'live': True,
            'can_use_hotplug_vbd': 'unspecified', 'can_use_hotplug_vif': 'unspecified'})
        store.set('VM', vm, 'guest_metrics', gm)

    def delete(self, vm: str):
        """xapi_vm_helpers.ml delete_guest_metrics: unlink, then destroy the object."""
        store = self.sim.store
        gm = store.raw('VM', vm)['guest_metrics']
        store.set('VM', vm, 'guest_metrics', NULL_REF)
        if store.exists('VM_guest_metrics', gm):
            store.remove('VM_guest_metrics', gm)

    def copy(self, vm: str) -> str:
        """xapi_vm_helpers.ml copy_guest_metrics: a new object with the same fields, or NULL when there is none."""
        store = self.sim.store
        gm = store.raw('VM', vm)['guest_metrics']
        if not store.exists('VM_guest_metrics', gm):
            return NULL_REF
        values = dict(store.record('VM_guest_metrics', gm))
        values.pop('uuid', None)
        return store.add('VM_guest_metrics', values)
