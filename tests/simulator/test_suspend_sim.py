# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Suspend, resume, checkpoint, VM.create of a suspended VM, set_suspend_VDI, hard_shutdown (issue 13), as XAPI does them."""

import simhelpers as h

NULL = 'OpaqueRef:NULL'


def _vm(api, name):
    return api.VM.get_by_name_label(name)[0]


def test_suspend_writes_a_suspend_vdi_and_resume_consumes_it(xapi, sim):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    flags = api.VM.get_last_boot_CPU_flags(vm)
    assert flags['vendor'] == 'GenuineIntel' and flags['features']  # set while running
    api.VM.suspend(vm)
    record = api.VM.get_record(vm)
    assert record['power_state'] == 'Suspended' and record['resident_on'] == NULL
    assert record['last_booted_record'] != ''
    vdi = record['suspend_VDI']
    vdi_record = api.VDI.get_record(vdi)
    assert vdi_record['type'] == 'suspend' and vdi_record['name_label'] == 'Suspend image'
    # memory_static_max * 1.2 * 1.05 + 100 MiB (xapi_xenops.ml suspend), rounded up to the SR's 2 MiB
    assert int(vdi_record['virtual_size']) >= int(int(record['memory_static_max']) * 1.26) + 104857600
    assert vdi_record['SR'] == api.pool.get_suspend_image_SR(api.pool.get_all()[0])
    assert sim.control.vdi_blocks(vdi_record['uuid'])  # the memory image is data like any disk
    assert h.xapi_failure(api.VM.start, vm, False, False)[0] == 'VM_BAD_POWER_STATE'
    api.VM.resume(vm, False, False)
    assert api.VM.get_power_state(vm) == 'Running'
    assert api.VM.get_suspend_VDI(vm) == NULL
    assert h.xapi_failure(api.VDI.get_record, vdi)[0] == 'HANDLE_INVALID'


def test_resume_refuses_another_cpu_unless_forced(xapi, sim):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    api.VM.suspend(vm)
    sim.control.set_host_cpu(vendor='AuthenticAMD')
    error = h.xapi_failure(api.VM.resume, vm, False, False)
    assert error[0] == 'VM_INCOMPATIBLE_WITH_THIS_HOST' and 'different vendor' in error[3]
    sim.control.set_host_cpu(vendor='GenuineIntel', features_hvm='00000001', features_pv='00000001')
    error = h.xapi_failure(api.VM.resume, vm, False, False)
    assert error[0] == 'VM_INCOMPATIBLE_WITH_THIS_HOST' and 'features' in error[3]
    assert api.VM.get_power_state(vm) == 'Suspended'
    api.VM.resume(vm, False, True)
    assert api.VM.get_power_state(vm) == 'Running'


def test_hard_shutdown_of_a_suspended_vm_destroys_its_suspend_vdi(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    api.VM.suspend(vm)
    vdi = api.VM.get_suspend_VDI(vm)
    api.VM.hard_shutdown(vm)
    assert api.VM.get_power_state(vm) == 'Halted' and api.VM.get_suspend_VDI(vm) == NULL
    assert h.xapi_failure(api.VDI.get_uuid, vdi)[0] == 'HANDLE_INVALID'


def test_destroy_of_a_suspended_vm_leaves_its_suspend_vdi(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    api.VM.suspend(vm)
    vdi = api.VM.get_suspend_VDI(vm)
    api.VM.destroy(vm)
    assert api.VDI.get_type(vdi) == 'suspend'  # xapi_vm_helpers.ml destroy: VBDs, VIFs go; VDIs stay


def test_snapshot_of_a_suspended_vm_has_no_memory(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    api.VM.suspend(vm)
    snap = api.VM.snapshot(vm, 'plain')
    assert api.VM.get_power_state(snap) == 'Halted' and api.VM.get_suspend_VDI(snap) == NULL


def test_checkpoint_of_a_running_vm(xapi, sim):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    before = {r for r in api.VDI.get_all() if api.VDI.get_type(r) == 'suspend'}
    snap = api.VM.checkpoint(vm, 'with memory')
    record = api.VM.get_record(snap)
    assert record['is_a_snapshot'] and record['power_state'] == 'Suspended'
    assert record['snapshot_info']['power-state-at-snapshot'] == 'Running'
    assert record['last_booted_record'] and record['last_boot_CPU_flags']['vendor'] == 'GenuineIntel'
    suspend_vdi = api.VDI.get_record(record['suspend_VDI'])
    assert suspend_vdi['type'] == 'suspend' and suspend_vdi['is_a_snapshot']
    assert sim.control.vdi_blocks(suspend_vdi['uuid'])
    # the live VM runs again, without suspend VDI; the only suspend VDI left is the checkpoint's
    assert api.VM.get_power_state(vm) == 'Running' and api.VM.get_suspend_VDI(vm) == NULL
    after = {r for r in api.VDI.get_all() if api.VDI.get_type(r) == 'suspend'}
    assert after - before == {record['suspend_VDI']}
    # every disk is in a checkpoint: it has no ignore_vdis
    assert h.xapi_failure(api.VM.checkpoint, vm, 'x', [])[0] == 'MESSAGE_PARAMETER_COUNT_MISMATCH'
    assert len([v for v in record['VBDs'] if api.VBD.get_type(v) == 'Disk']) == 2


def test_checkpoint_of_a_halted_vm_is_halted(xapi):
    api = xapi.xenapi
    snap = api.VM.checkpoint(_vm(api, 'db01'), 'no memory')
    assert api.VM.get_power_state(snap) == 'Halted' and api.VM.get_suspend_VDI(snap) == NULL


def _create_record(api, source, **changes):
    record = dict(api.VM.get_record(source))
    record.update(name_label='copy', is_a_template=False, affinity=NULL, **changes)
    return record


def test_create_suspended_needs_suspend_vdi_boot_record_and_cpu_flags(xapi, sim):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    api.VM.suspend(vm)
    source = api.VM.get_record(vm)
    image = api.VDI.get_record(source['suspend_VDI'])
    copy_vdi = api.VDI.create({'name_label': 'image copy', 'name_description': '', 'SR': image['SR'], 'virtual_size': image['virtual_size'],
                               'type': 'suspend', 'sharable': False, 'read_only': False, 'other_config': {}, 'xenstore_data': {},
                               'sm_config': {}, 'tags': []})
    for missing in ({'suspend_VDI': NULL}, {'last_booted_record': ''}, {'last_boot_CPU_flags': {}}):
        error = h.xapi_failure(api.VM.create, _create_record(api, vm, **dict({'suspend_VDI': copy_vdi}, **missing)))
        assert error[0] == 'VM_BAD_POWER_STATE' and error[2:] == ['halted', 'suspended']
    # any other power_state becomes Halted without the suspend fields
    halted = api.VM.create(_create_record(api, vm, power_state='Running', suspend_VDI=copy_vdi))
    assert api.VM.get_power_state(halted) == 'Halted' and api.VM.get_suspend_VDI(halted) == NULL
    assert api.VM.get_last_boot_CPU_flags(halted) == {}
    created = api.VM.create(_create_record(api, vm, suspend_VDI=copy_vdi))
    assert api.VM.get_power_state(created) == 'Suspended' and api.VM.get_suspend_VDI(created) == copy_vdi
    # set_suspend_VDI: only Suspended, only an identical image
    other = api.VDI.create(dict(api.VDI.get_record(copy_vdi), name_label='other', SR=image['SR']))
    sim.control.write_vdi('other', 0, seed=9, length=2 << 20)
    assert h.xapi_failure(api.VM.set_suspend_VDI, created, other)[0] == 'SUSPEND_VDI_REPLACEMENT_IS_NOT_IDENTICAL'
    assert h.xapi_failure(api.VM.set_suspend_VDI, halted, other)[0] == 'VM_BAD_POWER_STATE'
    twin = api.VDI.create(dict(api.VDI.get_record(copy_vdi), name_label='twin', SR=image['SR']))
    api.VM.set_suspend_VDI(created, twin)  # both empty: identical
    assert api.VM.get_suspend_VDI(created) == twin
    api.VM.resume(created, False, False)
    assert api.VM.get_power_state(created) == 'Running'
    assert h.xapi_failure(api.VDI.get_uuid, twin)[0] == 'HANDLE_INVALID'


def test_resume_without_suspend_vdi_resets_to_halted(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    api.VM.suspend(vm)
    source = api.VM.get_record(vm)
    image = api.VDI.get_record(source['suspend_VDI'])
    lone = api.VDI.create({'name_label': 'lone', 'name_description': '', 'SR': image['SR'], 'virtual_size': '4194304', 'type': 'suspend',
                           'sharable': False, 'read_only': False, 'other_config': {}, 'xenstore_data': {}, 'sm_config': {}, 'tags': []})
    created = api.VM.create(_create_record(api, vm, suspend_VDI=lone))
    api.VDI.destroy(lone)
    assert h.xapi_failure(api.VM.resume, created, False, False) == ['VM_HAS_NO_SUSPEND_VDI', 'VM', created]
    assert api.VM.get_power_state(created) == 'Halted'


def _attached(api, vm):
    return sorted((api.VBD.get_userdevice(v), api.VBD.get_currently_attached(v)) for v in api.VM.get_VBDs(vm)) + \
        sorted((api.VIF.get_device(v), api.VIF.get_currently_attached(v)) for v in api.VM.get_VIFs(vm))


def test_devices_of_a_suspended_vm_and_its_checkpoint_stay_attached(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    running = _attached(api, vm)
    api.VM.suspend(vm)
    # only a Halted state detaches them (xapi_vm_lifecycle.ml force_state_reset)
    assert _attached(api, vm) == running
    api.VM.resume(vm, False, False)
    snap = api.VM.checkpoint(vm, 'with memory')
    assert _attached(api, snap) == running  # copied with currently_attached (xapi_vbd_helpers.ml copy)
    disk_vbd = [v for v in api.VM.get_VBDs(snap) if api.VBD.get_type(v) == 'Disk'][0]
    # XAPI refuses to destroy an attached VBD (xapi_vbd_helpers.ml destroy): a checkpoint's disks cannot be removed
    assert h.xapi_failure(api.VBD.destroy, disk_vbd)[0] == 'OPERATION_NOT_ALLOWED'
    plain = api.VM.snapshot(vm, 'plain')
    assert not any(attached for _dev, attached in _attached(api, plain))


def test_vbd_and_vif_create_keep_attachment_only_on_a_suspended_vm(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    api.VM.suspend(vm)
    source = api.VM.get_record(vm)
    image = api.VDI.get_record(source['suspend_VDI'])
    copy_vdi = api.VDI.create({'name_label': 'image copy', 'name_description': '', 'SR': image['SR'], 'virtual_size': image['virtual_size'],
                               'type': 'suspend', 'sharable': False, 'read_only': False, 'other_config': {}, 'xenstore_data': {},
                               'sm_config': {}, 'tags': []})
    created = api.VM.create(_create_record(api, vm, suspend_VDI=copy_vdi))
    disk = api.VDI.create(dict(api.VDI.get_record(copy_vdi), name_label='disk', type='user'))
    record = {'VM': created, 'VDI': disk, 'userdevice': '0', 'bootable': True, 'mode': 'RW', 'type': 'Disk', 'empty': False,
              'other_config': {}, 'qos_algorithm_type': '', 'qos_algorithm_params': {}, 'unpluggable': True}
    attached = api.VBD.create(dict(record, device='xvda', currently_attached=True))
    detached = api.VBD.create(dict(record, userdevice='1', VDI=api.VDI.create(dict(api.VDI.get_record(disk), name_label='disk 2'))))
    network = api.network.get_all()[0]
    vif = api.VIF.create({'device': '0', 'network': network, 'VM': created, 'MAC': '', 'MTU': '1500', 'other_config': {},
                          'qos_algorithm_type': '', 'qos_algorithm_params': {}, 'currently_attached': True})
    assert api.VBD.get_currently_attached(attached) and api.VBD.get_device(attached) == 'xvda'
    assert not api.VBD.get_currently_attached(detached) and api.VIF.get_currently_attached(vif)
    # xenopsd gets only the attached devices on resume (xapi_xenops.ml create_metadata): the other stays detached
    api.VM.resume(created, False, False)
    assert api.VBD.get_currently_attached(attached) and not api.VBD.get_currently_attached(detached)
    # on a halted VM currently_attached is not taken
    halted = api.VM.create(_create_record(api, vm, power_state='Halted'))
    vif = api.VIF.create({'device': '0', 'network': network, 'VM': halted, 'MAC': '', 'MTU': '1500', 'other_config': {},
                          'qos_algorithm_type': '', 'qos_algorithm_params': {}, 'currently_attached': True})
    assert not api.VIF.get_currently_attached(vif)
