# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Suspended VMs and checkpoints: the memory image (suspend VDI) through backup and restore (issue 13).

Backup: ``VM.checkpoint`` (a snapshot with memory) instead of ``VM.snapshot`` when asked (``memory``), and always for a
VM that is suspended (XAPI's plain snapshot of a suspended VM drops its suspend VDI, ocaml/xapi/xapi_vm_clone.ml clone;
a checkpoint of a suspended VM copies it without touching the VM). The snapshot's suspend VDI is exported full every
time, in a folder named after its own uuid as Xen Orchestra does: a memory image is rewritten whole at every suspend,
so a delta against the previous one would be as large and would chain points that have nothing in common. The metadata's
``vm`` record carries the suspended state (``power_state``, ``suspend_VDI`` = the key of the image in ``vdis``,
``last_booted_record``, ``last_boot_CPU_flags``): what Xen Orchestra's importIncrementalVm reads, and what XAPI's
VM.create needs to create a suspended VM (ocaml/xapi/xapi_vm.ml create).

Restore: the image becomes a VDI of type ``suspend`` and the VM is created Suspended with it, so ``VM.resume`` works;
or, with ``power_state: halted``, the image is left out and the VM is created Halted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import NULL_REF, XapiError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError

# The VM fields that make a suspended VM: XAPI's VM.create keeps power_state Suspended only with all of them
# (ocaml/xapi/xapi_vm.ml create: else VM_BAD_POWER_STATE).
SUSPENDED_STATE_FIELDS = ('power_state', 'suspend_VDI', 'last_booted_record', 'last_boot_CPU_flags')
SUSPENDED = 'suspended'
HALTED = 'halted'
POWER_STATES = (SUSPENDED, HALTED)
FULL_REASON = 'a suspend image is always exported full: it is rewritten whole at every suspend'
# The VM tag with which Xen Orchestra checkpoints a VM whatever its job says (@xen-orchestra/backups
# _runners/_vmRunners/_AbstractXapi.mjs: settings.checkpointSnapshot); honoured the same way.
MEMORY_TAG = 'xo-memory-backup'
# XAPI's VM.create ignores blocked_operations; these are blocked on a suspended restore until it is complete.
RESUME_OPERATIONS = ('resume', 'resume_on')


class SuspendRestoreError(RepositoryError):
    """A suspended restore that cannot work, refused before anything is created."""

    error_code = 'suspended_restore_refused'


# -- backup --------------------------------------------------------------------------------------


NOBAK_REASON = ('the VM has [NOBAK] disks: a checkpoint keeps them attached (XAPI refuses VBD.destroy of an attached VBD, '
                'and the memory image needs every disk), so a plain snapshot without its memory was taken')


def checkpoint_decision(vm_record: dict, memory: bool, has_excluded_disks: bool) -> tuple[bool, str | None]:
    """(take a checkpoint?, why the memory is left out although wanted, or None).

    Wanted for ``memory`` (or Xen Orchestra's MEMORY_TAG on the VM) of a running VM, and for a suspended VM (its image comes for free: XAPI's checkpoint of a
    suspended VM neither suspends nor resumes it). Not with [NOBAK] disks: the checkpoint is Suspended, so its VBDs stay
    currently_attached and XAPI refuses to destroy them (ocaml/xapi/xapi_vbd_helpers.ml destroy, OPERATION_NOT_ALLOWED
    "still attached"); a checkpoint has no ignore_vdis; and a memory image resumed without one of its disks would lose it
    under the guest. Xen Orchestra's checkpoint does not support [NOBAK] either (@xen-orchestra/xapi vm.mjs checkpoint).
    """
    state = vm_record.get('power_state')
    memory = memory or MEMORY_TAG in (vm_record.get('tags') or [])
    wanted = state == 'Suspended' or (memory and state == 'Running')
    if wanted and has_excluded_disks:
        return False, NOBAK_REASON
    return wanted, None


def wants_checkpoint(vm_record: dict, memory: bool, has_excluded_disks: bool = False) -> bool:
    """Whether the backup snapshot is a checkpoint (see checkpoint_decision)."""
    return checkpoint_decision(vm_record, memory, has_excluded_disks)[0]


def snapshot_suspend_vdi(xapi, snapshot_ref: str) -> tuple[str, dict] | None:
    """The snapshot's suspend VDI (a checkpoint's memory image) as (ref, record), None when it has none."""
    ref = xapi.call('VM.get_suspend_VDI', snapshot_ref)
    if ref in (None, '', NULL_REF):
        return None
    try:
        return ref, xapi.call('VDI.get_record', ref)
    except XapiError as error:
        if error.code == 'HANDLE_INVALID':
            return None
        raise


def suspended_state(snapshot_record: dict, image_ref: str | None) -> dict:
    """The fields a point's ``vm`` record takes from a checkpoint whose image was exported (keyed ``image_ref`` in vdis)."""
    if image_ref is None or snapshot_record.get('power_state') != 'Suspended':
        return {}
    return {'power_state': 'Suspended', 'suspend_VDI': image_ref, 'last_booted_record': snapshot_record.get('last_booted_record', ''),
            'last_boot_CPU_flags': dict(snapshot_record.get('last_boot_CPU_flags') or {})}


# -- restore -------------------------------------------------------------------------------------


def is_suspend_image(point, vdi_ref: str) -> bool:
    """Whether the point's VHD keyed ``vdi_ref`` is the VM's memory image (the vm record's suspend_VDI, or a VDI of type suspend)."""
    vm = point.metadata.get('vm') or {}
    record = (point.metadata.get('vdis') or {}).get(vdi_ref) or {}
    return vdi_ref == vm.get('suspend_VDI') or (isinstance(record, dict) and record.get('type') == 'suspend')


def split_suspend_image(disks: list, point) -> tuple[list, object | None]:
    """(the disks to attach, the memory image among them or None): the image gets no VBD."""
    kept, image = [], None
    for item in disks:
        if is_suspend_image(point, item.disk.vdi_ref):
            image = item
        else:
            kept.append(item)
    return kept, image


def _features_key(vm: dict) -> str:
    """As XAPI's cpuid_helpers.ml get_flags_for_vm: features_pv for PV guests, features_hvm otherwise
    (domain_type unspecified: derived from HVM_boot_policy, xapi_vm_helpers.ml derive_domain_type)."""
    domain_type = vm.get('domain_type') or 'unspecified'
    if domain_type == 'unspecified':
        domain_type = 'hvm' if vm.get('HVM_boot_policy') else 'pv'
    return 'features_pv' if domain_type == 'pv' else 'features_hvm'


def _policy_words(text: str) -> list[int]:
    return [int(word, 16) for word in str(text).split('-') if word]


def cpu_problem(vm: dict, host_cpu_info: dict) -> str | None:
    """Why XAPI's VM.resume would refuse the image on a host with ``host_cpu_info`` (cpuid_helpers.ml assert_vm_is_compatible:
    same CPU vendor, and every feature the VM booted with present on the host), else None."""
    flags = vm.get('last_boot_CPU_flags') or {}
    key = _features_key(vm)
    vendor, features = host_cpu_info.get('vendor'), host_cpu_info.get(key)
    if vendor is None or features is None:
        return "the pool's host does not report its CPU vendor and %s (host.cpu_info), so XAPI refuses the resume" % key
    if 'vendor' in flags and flags['vendor'] != vendor:
        return 'the VM was suspended on a %s CPU and this pool has %s CPUs' % (flags['vendor'], vendor)
    if 'features' in flags:
        try:
            wanted, offered = _policy_words(flags['features']), _policy_words(features)
        except ValueError:
            return 'the recorded CPU features %r are not a CPU policy XAPI can compare' % flags['features']
        offered += [0] * max(0, len(wanted) - len(offered))
        if any(word & ~offered[num] for num, word in enumerate(wanted)):
            return "the VM was suspended on a CPU with features this pool's CPU does not have"
    return None


@dataclass
class PowerStatePlan:
    """How the VM comes back: suspended with its image, or halted (and why)."""

    power_state: str  # SUSPENDED or HALTED
    image: object | None  # the DiskRestore of the memory image when restored suspended
    reason: str

    @property
    def suspended(self) -> bool:
        return self.power_state == SUSPENDED

    def as_result(self) -> dict:
        return {'power_state': self.power_state, 'reason': self.reason,
                'suspend_vdi_uuid': getattr(self.image, 'vdi_uuid', None) if self.image is not None else None}


def plan_power_state(point, image, requested: str | None, host_cpu_info: dict | None, disk_only: bool) -> PowerStatePlan:
    """Decide, before anything is created, whether the VM comes back suspended.

    ``requested`` None: suspended when the point holds a memory image, else halted. V(suspended) without an image, or with
    an image this pool's CPU cannot resume (``host_cpu_info`` of the pool coordinator), raises SuspendRestoreError
    saying what to do.
    """
    if requested not in (None, '') and requested not in POWER_STATES:
        raise SuspendRestoreError('power_state must be one of %s, got %r' % (', '.join(POWER_STATES), requested))
    vm = point.metadata.get('vm') or {}
    if disk_only:
        return PowerStatePlan(HALTED, None, 'a disk restore creates no VM')
    if image is None:
        if requested == SUSPENDED:
            raise SuspendRestoreError('backup %s holds no memory image (it was not taken from a suspended VM or with memory: true), '
                                      'so it cannot be restored suspended: restore it with power_state: halted' % point.timestamp)
        return PowerStatePlan(HALTED, None, 'the backup holds no memory image')
    missing = [name for name in ('last_booted_record', 'last_boot_CPU_flags') if not vm.get(name)]
    if vm.get('power_state') != 'Suspended' or missing:
        # XAPI's VM.create refuses a suspended VM without them (ocaml/xapi/xapi_vm.ml create)
        why = 'its VM record is not Suspended' if vm.get('power_state') != 'Suspended' else 'its VM record lacks %s' % ', '.join(missing)
        if requested == SUSPENDED:
            raise SuspendRestoreError('backup %s holds a memory image but %s, which XAPI needs to create a suspended VM: restore it with '
                                      'power_state: halted' % (point.timestamp, why))
        return PowerStatePlan(HALTED, None, 'the backup holds a memory image but %s: the VM is restored halted' % why)
    if requested == HALTED:
        return PowerStatePlan(HALTED, None, 'power_state: halted asked: the memory image is not restored')
    problem = cpu_problem(vm, host_cpu_info or {})
    if problem:
        raise SuspendRestoreError('backup %s holds a memory image that this pool cannot resume: %s. Restore it with power_state: '
                                  'halted (the VM then boots from its disks), or restore it on a pool with the same CPUs'
                                  % (point.timestamp, problem))
    return PowerStatePlan(SUSPENDED, image, 'the backup holds a memory image')


def coordinator_cpu_info(xapi) -> dict:
    """host.cpu_info of the pool coordinator, where XAPI resumes a VM that has no affinity."""
    pool = xapi.call('pool.get_all')[0]
    return xapi.call('host.get_cpu_info', xapi.call('pool.get_master', pool)) or {}


def attached_state(backed_up: dict) -> dict:
    """``device`` and ``currently_attached`` of a backed-up VBD or VIF of a checkpoint, for its VBD/VIF.create on the suspended VM.

    XAPI keeps both only on a suspended VM (ocaml/xapi/xapi_vbd.ml and xapi_vif.ml create), and VM.resume hands xenopsd
    only the currently attached devices (xapi_xenops.ml create_metadata): without them the VM would resume without
    its disks and networks.
    """
    return {'device': str(backed_up.get('device') or ''), 'currently_attached': bool(backed_up.get('currently_attached'))}


def suspended_create_fields(point, image_vdi_ref: str) -> dict:
    """What VM.create needs, beyond the configuration, to create the VM Suspended on the restored image."""
    vm = point.metadata.get('vm') or {}
    return {'power_state': 'Suspended', 'suspend_VDI': image_vdi_ref, 'last_booted_record': str(vm.get('last_booted_record')),
            'last_boot_CPU_flags': {str(k): str(v) for k, v in (vm.get('last_boot_CPU_flags') or {}).items()}}
