# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Guest agents: what a backed-up VM's agent reported, and waiting for a VM's agent to report.

XAPI keeps what the guest agent reports in a ``VM_guest_metrics`` object (``VM.guest_metrics``).
``VM.start`` deletes it before the boot and the agent's first report creates it again, ``live``, with
the OS, the PV drivers and the addresses (xen-api ``ocaml/xapi/xapi_vm.ml`` start,
``ocaml/xapi/xapi_guest_agent.ml``). A shutdown leaves it in place, so the power state is checked too.

Backups record the object in the metadata's ``vm`` record under ``$guest_metrics`` (a derived key, like
Xen Orchestra's ``$network$uuid``), which tells a health check whether to expect an agent after a restore.
"""

from __future__ import annotations

import time

from ansible_collections.xapi.delta_backup.plugins.module_utils._errors import DeltaBackupError
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.pool import find_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import NULL_REF, XapiError

GUEST_METRICS_KEY = '$guest_metrics'
# event.from returns at the latest after this many seconds, so a deadline is never overshot by much.
EVENT_WAIT_CAP = 10.0
POLL_INTERVAL = 1.0
# The guest metrics fields a backup records (the rest are XAPI internals or empty on every release).
RECORDED_FIELDS = ('os_version', 'PV_drivers_version', 'PV_drivers_detected', 'PV_drivers_up_to_date', 'networks', 'live', 'last_updated')


class GuestAgentTimeoutError(DeltaBackupError):
    """The VM's guest agent did not report (or not with an address) within the time allowed."""

    error_code = 'guest_agent_timeout'


class VmNotRunningError(DeltaBackupError):
    """The VM whose guest agent was awaited is not running (never started, or stopped while waiting)."""

    error_code = 'vm_not_running'


def _text_map(value) -> dict:
    return {str(key): str(item) for key, item in (value or {}).items()} if isinstance(value, dict) else {}


def guest_metrics_record(xapi, ref) -> dict | None:
    """The guest metrics object ``ref`` as a backup records it, or None (NULL, destroyed meanwhile)."""
    if not ref or ref == NULL_REF:
        return None
    try:
        record = xapi.call('VM_guest_metrics.get_record', ref)
    except XapiError as error:
        if error.code == 'HANDLE_INVALID':
            return None
        raise
    out = {name: record[name] for name in RECORDED_FIELDS if name in record}
    if 'last_updated' in out:
        out['last_updated'] = str(out['last_updated'])
    return out


def backed_up_guest_metrics(xapi, snapshot_record: dict, vm_record: dict) -> dict | None:
    """What the agent had reported when the backup was taken: the snapshot's copy (VM.snapshot copies the
    guest metrics, xen-api xapi_vm_clone.ml), else the VM's own; None without an agent report."""
    for record in (snapshot_record, vm_record):
        found = guest_metrics_record(xapi, (record or {}).get('guest_metrics'))
        if found is not None:
            return found
    return None


def addresses(networks: dict) -> list[str]:
    """The IPv4 addresses of the ``networks`` map (``<vif>/ip``), in VIF order, without duplicates."""
    found = []
    keys = sorted((key for key in networks if key.endswith('/ip')), key=lambda key: (len(key), key))
    for key in keys:
        value = str(networks[key]).strip()
        if value and value not in found:
            found.append(value)
    return found


def describe_agent(metrics: dict | None) -> dict:
    """A guest agent as the modules return it (``seen`` false without metrics)."""
    metrics = metrics or {}
    networks = _text_map(metrics.get('networks'))
    found = addresses(networks)
    return {
        'seen': agent_reported(metrics),
        'os_version': _text_map(metrics.get('os_version')),
        'pv_drivers_version': _text_map(metrics.get('PV_drivers_version')),
        'pv_drivers_detected': bool(metrics.get('PV_drivers_detected')),
        'networks': networks,
        'addresses': found,
        'ip': found[0] if found else None,
    }


def agent_reported(metrics: dict | None) -> bool:
    """True when the metrics are those of a guest agent with PV drivers up (not an empty or dead record)."""
    if not metrics:
        return False
    return bool(metrics.get('live', True)) and bool(metrics.get('PV_drivers_detected') or metrics.get('PV_drivers_version'))


def backed_up_agent(source_vm: dict) -> dict | None:
    """The agent of the backed-up VM from its metadata record; None when the backup did not record it
    (written by Xen Orchestra or before the collection recorded agents)."""
    if GUEST_METRICS_KEY not in (source_vm or {}):
        return None
    return describe_agent(source_vm.get(GUEST_METRICS_KEY))


def _why_not_ready(power_state: str, metrics: dict | None, require_address: bool) -> str:
    if power_state != 'Running':
        return 'the VM is %s' % power_state
    if metrics is None:
        return 'no guest agent has reported since the VM started'
    if not agent_reported(metrics):
        return 'its guest metrics show no PV drivers (live: %s)' % bool(metrics.get('live'))
    if require_address and not addresses(_text_map(metrics.get('networks'))):
        return 'the agent reported no IPv4 address'
    return ''


def wait_for_guest_agent(xapi, vm: str, timeout: float, require_address: bool = False) -> dict:
    """Wait until ``vm`` (uuid or name) runs and its guest agent has reported (with an address when
    ``require_address``); return the VM and the agent.  Fails when the VM is not running (it cannot
    report) or after ``timeout`` seconds, saying what was last seen."""
    vm_ref, record = find_vm(xapi, vm)
    label = '%s (%s)' % (record.get('name_label'), record.get('uuid'))
    started = time.monotonic()
    deadline = started + float(timeout)
    token, events_work = '', True
    while True:
        record = xapi.call('VM.get_record', vm_ref)
        power_state = record.get('power_state')
        metrics = guest_metrics_record(xapi, record.get('guest_metrics'))
        reason = _why_not_ready(power_state, metrics, require_address)
        if not reason:
            return {'vm': {'uuid': record.get('uuid'), 'name_label': record.get('name_label'), 'power_state': power_state},
                    'guest_agent': describe_agent(metrics), 'waited': round(time.monotonic() - started, 3)}
        if power_state not in ('Running', 'Paused'):
            raise VmNotRunningError('cannot wait for the guest agent of VM %s: %s; start it first' % (label, reason))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestAgentTimeoutError('the guest agent of VM %s did not report within %s s (%s): check that the VM boots and runs '
                                         'its guest agent (xe-guest-utilities or the Windows PV tools), or raise the timeout'
                                         % (label, _seconds(timeout), reason))
        wait = min(remaining, EVENT_WAIT_CAP)
        if events_work:
            try:
                # A new guest metrics object changes VM.guest_metrics; an update changes the object itself.
                answer = xapi.call('event.from', ['vm/%s' % vm_ref, 'vm_guest_metrics'], token, float(wait))
                token = answer.get('token', token) if isinstance(answer, dict) else token
                continue
            except XapiError:
                events_work = False  # a server or role without event.from: poll instead
        time.sleep(min(remaining, POLL_INTERVAL))


def _seconds(value) -> str:
    number = float(value)
    return '%d' % number if number == int(number) else '%g' % number


__all__ = ['GUEST_METRICS_KEY', 'GuestAgentTimeoutError', 'VmNotRunningError', 'addresses', 'agent_reported', 'backed_up_agent',
           'backed_up_guest_metrics', 'describe_agent', 'guest_metrics_record', 'wait_for_guest_agent']
