# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Virtual TPMs as XAPI keeps them (issue 13).

Sources, in xapi-project/xen-api at e2ee48d6: ocaml/idl/datamodel_vtpm.ml (class, messages),
ocaml/xapi/xapi_vtpm.ml (create, copy, destroy, get_contents, set_contents),
ocaml/xapi/message_forwarding.ml (module VTPM: create runs as the VM operation ``create_vtpm``),
ocaml/xapi/xapi_vm_lifecycle.ml (allowed power states of ``create_vtpm``, VTPM_MAX_AMOUNT_REACHED,
vtpm_update_allowed_operations), ocaml/xapi/xapi_vm_clone.ml (clone and snapshot copy the VTPMs),
ocaml/xapi/xapi_vm.ml (destroy takes the VTPMs with the VM).

XAPI keeps the contents in a Secret object (the VTPM's internal-only ``contents`` field); the
simulator keeps them in the stored VTPM under the same name, which no record shows (records only
carry datamodel fields). The Secret class itself is not simulated.
"""

from __future__ import annotations

from . import datamodel
from .model import XapiError

BAD_POWER = 'VM_BAD_POWER_STATE'
# The stored VTPM's key for its contents: the internal-only field of datamodel_vtpm.ml.
CONTENTS = 'contents'


def default_restrictions(sim) -> dict:
    """pool.restrictions of a pool running the selected XAPI version (supplement pool_restrictions)."""
    out = {}
    for key, spec in (datamodel.load().supplement.get('pool_restrictions') or {}).items():
        if sim.api.published(str(spec['since'])):
            out[key] = str(spec['value'])
    return out


def supported(sim) -> bool:
    """True when the selected version publishes VTPM.create (22.26.0 and later)."""
    return sim.api.message('VTPM', 'create') is not None


def _vtpms_of(sim, vm):
    return [ref for ref, obj in sim.store.objects['VTPM'].items() if obj['VM'] == vm]


def _introduce(sim, vm, is_unique, contents, persistence_backend='xapi'):
    """xapi_vtpm.ml introduce: a VTPM with backend null, is_protected false, no operations."""
    ref = sim.store.add('VTPM', {'VM': vm, 'is_unique': bool(is_unique), 'persistence_backend': persistence_backend,
                                 'is_protected': False, 'allowed_operations': [], 'current_operations': {}})
    sim.store.raw('VTPM', ref)[CONTENTS] = contents
    refresh_allowed_operations(sim, vm)
    return ref


def refresh_allowed_operations(sim, vm):
    """xapi_vm_lifecycle.ml vtpm_update_allowed_operations: ``destroy`` only while the VM is Halted."""
    if not sim.store.exists('VM', vm):
        return
    halted = sim.store.raw('VM', vm)['power_state'] == 'Halted'
    for ref in _vtpms_of(sim, vm):
        sim.store.set('VTPM', ref, 'allowed_operations', ['destroy'] if halted else [])


def create(sim, vm, is_unique, check_power=True):
    """VTPM.create(vM, is_unique).

    message_forwarding.ml runs it as the VM operation create_vtpm, whose check
    (xapi_vm_lifecycle.ml check_operation_error) wants the VM Halted (VM_BAD_POWER_STATE
    [vm, "halted", actual]) and no VTPM yet (VTPM_MAX_AMOUNT_REACHED [count]); then
    xapi_vtpm.ml create' refuses a pool whose restrictions lack restrict_vtpm="false"
    (FEATURE_RESTRICTED [restrict_vtpm]) and creates the VTPM with empty contents (a new Secret
    of value ""). ``check_power`` False is the import path (xapi_vtpm.ml import).
    """
    obj = sim.store.raw('VM', vm)
    if check_power and obj['power_state'] != 'Halted':
        raise XapiError(BAD_POWER, vm, 'halted', obj['power_state'].lower())
    existing = _vtpms_of(sim, vm)
    if existing:
        raise XapiError('VTPM_MAX_AMOUNT_REACHED', str(len(existing)))
    restrictions = sim.store.raw('pool', sim.pool_ref)['restrictions'] if sim.pool_ref else {}
    if restrictions.get('restrict_vtpm') != 'false':
        raise XapiError('FEATURE_RESTRICTED', 'restrict_vtpm')
    return _introduce(sim, vm, is_unique, '')


def destroy(sim, vtpm):
    """VTPM.destroy: the VM must be Halted or Suspended (xapi_vtpm.ml destroy, assert_initial_power_state_in:
    VM_BAD_POWER_STATE [vm, "halted;suspended", actual]); the contents go with it."""
    vm = sim.store.raw('VTPM', vtpm)['VM']
    if sim.store.exists('VM', vm):
        state = sim.store.raw('VM', vm)['power_state']
        if state not in ('Halted', 'Suspended'):
            raise XapiError(BAD_POWER, vm, 'halted;suspended', state.lower())
    sim.store.remove('VTPM', vtpm)
    return ''


def get_contents(sim, vtpm):
    """VTPM.get_contents: the Secret's value."""
    return sim.store.raw('VTPM', vtpm)[CONTENTS]


def set_contents(sim, vtpm, contents):
    """VTPM.set_contents: any power state. xapi_vtpm.ml set_contents calls Base64.decode but ignores its
    result (``let _ = ...``; only an Invalid_argument would fail, which decode raises for bad offsets, not
    for bad text), so any string is stored as it is, in a new Secret replacing the old one."""
    sim.store.raw('VTPM', vtpm)
    sim.store.raw('VTPM', vtpm)[CONTENTS] = contents
    sim.store.emit('VTPM', vtpm, 'mod')
    return ''


def copy_all(sim, source_vm, target_vm):
    """The VTPMs of a clone or snapshot (xapi_vm_clone.ml clone -> xapi_vtpm.ml copy): same is_unique and
    persistence_backend; the contents are copied, except for a unique VTPM, whose copy starts empty
    (copy_or_create_contents: "Contents from unique vtpms cannot be copied")."""
    for ref in _vtpms_of(sim, source_vm):
        obj = sim.store.raw('VTPM', ref)
        _introduce(sim, target_vm, obj['is_unique'], '' if obj['is_unique'] else obj[CONTENTS], obj['persistence_backend'])


def destroy_all(sim, vm):
    """VM.destroy destroys the VM's VTPMs first (xapi_vm.ml destroy)."""
    for ref in _vtpms_of(sim, vm):
        destroy(sim, ref)


def add_from_config(sim, vm, spec):
    """A pool YAML ``vtpm: {contents: ..., is_unique: false}`` (or ``vtpm: true``): created as VTPM.create then
    VTPM.set_contents would, whatever the power state the VM gets afterwards."""
    if not supported(sim):
        raise XapiError('INTERNAL_ERROR', 'config: VM %s has a vtpm, but XAPI %s has no VTPM.create (added in 22.26.0)'
                        % (sim.store.raw('VM', vm)['name_label'], sim.xapi_version))
    spec = spec if isinstance(spec, dict) else {}
    ref = _introduce(sim, vm, bool(spec.get('is_unique', False)), str(spec.get('contents', '')))
    return ref


def ground_truth(sim, vm):
    """Every VTPM of ``vm`` with its contents, for tests (control op ``vtpms``)."""
    return [{'uuid': sim.store.raw('VTPM', ref)['uuid'], 'is_unique': sim.store.raw('VTPM', ref)['is_unique'],
             'contents': sim.store.raw('VTPM', ref)[CONTENTS]} for ref in _vtpms_of(sim, vm)]
