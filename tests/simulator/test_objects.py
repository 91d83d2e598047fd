# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Object model: generated messages, qualifiers, errors, VM/VDI/VBD/VIF life cycle."""

import simhelpers as h


def _vm(api, name):
    return api.VM.get_by_name_label(name)[0]


def _vdi(api, name):
    return [r for r in api.VDI.get_by_name_label(name) if not api.VDI.get_is_a_snapshot(r)][0]


def test_pool_host_sr_network(xapi):
    api = xapi.xenapi
    pool = api.pool.get_all()[0]
    master = api.pool.get_master(pool)
    assert api.host.get_name_label(master) == 'xcp-host1'
    assert len(api.host.get_all()) == 2
    default_sr = api.pool.get_default_SR(pool)
    sr = api.SR.get_record(default_sr)
    assert sr['name_label'] == 'Local storage'
    assert int(sr['physical_size']) == 200 << 30
    assert 0 < int(sr['physical_utilisation']) < int(sr['physical_size'])
    assert set(sr['VDIs']) >= set(api.VDI.get_by_name_label('web01-root'))
    dom0 = api.host.get_control_domain(master)
    assert api.VM.get_is_control_domain(dom0)
    assert dom0 in api.host.get_resident_VMs(master)
    net = api.network.get_all()[0]
    assert len(api.network.get_VIFs(net)) == 2


def test_get_by_uuid_and_errors(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    uuid = api.VM.get_uuid(vm)
    assert api.VM.get_by_uuid(uuid) == vm
    assert h.xapi_failure(api.VM.get_by_uuid, 'nope') == ['UUID_INVALID', 'VM', 'nope']
    assert h.xapi_failure(api.VDI.get_by_uuid, uuid) == ['UUID_INVALID', 'VDI', uuid]
    assert h.xapi_failure(api.VM.get_record, 'OpaqueRef:NULL') == ['HANDLE_INVALID', 'VM', 'OpaqueRef:NULL']
    assert h.xapi_failure(api.VDI.get_record, vm)[0] == 'HANDLE_INVALID'


def test_get_all_records_where(xapi):
    api = xapi.xenapi
    recs = api.VM.get_all_records_where('field "name_label"="web01"')
    assert [r['name_label'] for r in recs.values()] == ['web01']
    recs = api.VM.get_all_records_where('field "is_a_template"="false" and field "is_control_domain"="false"')
    assert sorted(r['name_label'] for r in recs.values()) == ['db01', 'small01', 'web01']
    recs = api.VM.get_all_records_where('field "name_label"="db01" or field "name_label"="small01"')
    assert len(recs) == 2
    assert len(api.VM.get_all_records_where('not (field "power_state"="Halted")')) == 2
    assert len(api.VM.get_all_records_where('true')) == 5


def test_setters_follow_qualifiers(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'db01')
    api.VM.set_name_label(vm, 'db01-renamed')
    assert api.VM.get_name_label(vm) == 'db01-renamed'
    api.VM.set_name_description(vm, 'described')
    assert h.xapi_failure(api.VM.set_power_state, vm, 'Running')[0] == 'MESSAGE_METHOD_UNKNOWN'
    assert h.xapi_failure(api.VM.set_uuid, vm, 'x')[0] == 'MESSAGE_METHOD_UNKNOWN'
    assert h.xapi_failure(api.VM.set_VBDs, vm, [])[0] == 'MESSAGE_METHOD_UNKNOWN'
    vdi = _vdi(api, 'db01-root')
    api.VDI.set_name_label(vdi, 'db01-root-2')
    assert api.VDI.get_name_label(vdi) == 'db01-root-2'
    assert h.xapi_failure(api.VDI.set_virtual_size, vdi, '1')[0] == 'MESSAGE_METHOD_UNKNOWN'
    api.VM.set_memory_static_max(vm, str(4 << 30))
    assert api.VM.get_memory_static_max(vm) == str(4 << 30)


def test_maps_and_sets(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'db01')
    api.VM.add_to_other_config(vm, 'xo:backup', 'yes')
    assert api.VM.get_other_config(vm)['xo:backup'] == 'yes'
    uuid = api.VM.get_uuid(vm)
    expected = ['MAP_DUPLICATE_KEY', 'VM', 'other_config', uuid, 'xo:backup']
    assert h.xapi_failure(api.VM.add_to_other_config, vm, 'xo:backup', 'no') == expected
    api.VM.remove_from_other_config(vm, 'xo:backup')
    api.VM.remove_from_other_config(vm, 'absent')
    assert 'xo:backup' not in api.VM.get_other_config(vm)
    api.VM.add_tags(vm, 'a')
    api.VM.add_tags(vm, 'a')
    api.VM.add_tags(vm, 'b')
    api.VM.remove_tags(vm, 'a')
    assert api.VM.get_tags(vm) == ['b']
    vdi = _vdi(api, 'db01-root')
    api.VDI.add_to_other_config(vdi, 'k', 'v')
    api.VDI.set_other_config(vdi, {'x': 'y'})
    assert api.VDI.get_other_config(vdi) == {'x': 'y'}


def _snapshot_checks(api, vm, snap, name):
    rec = api.VM.get_record(snap)
    orig = api.VM.get_record(vm)
    assert rec['name_label'] == name
    assert rec['is_a_snapshot'] and rec['is_a_template']
    assert rec['snapshot_of'] == vm and snap in orig['snapshots']
    assert rec['power_state'] == 'Halted'
    assert rec['snapshot_time'].value != '19700101T00:00:00Z'
    assert rec['snapshot_info']['power-state-at-snapshot'] == orig['power_state']
    assert rec['snapshot_info']['disk-snapshot-type'] == 'crash_consistent'
    assert rec['other_config'] == orig['other_config']
    assert rec['name_description'] == orig['name_description']
    return rec, orig


def test_vm_snapshot(xapi, sim):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    api.VM.add_to_other_config(vm, 'marker', '1')
    snap = api.VM.snapshot(vm, 'snap-a')
    rec, orig = _snapshot_checks(api, vm, snap, 'snap-a')
    vbds = [api.VBD.get_record(v) for v in rec['VBDs']]
    disks = [v for v in vbds if v['type'] == 'Disk']
    cds = [v for v in vbds if v['type'] == 'CD']
    assert len(disks) == 2 and len(cds) == 1 and cds[0]['empty']
    for vbd in disks:
        vdi = api.VDI.get_record(vbd['VDI'])
        assert vdi['is_a_snapshot']
        src = api.VDI.get_record(vdi['snapshot_of'])
        assert vbd['VDI'] in src['snapshots']
        assert vdi['name_label'] == src['name_label']
        assert vdi['virtual_size'] == src['virtual_size']
        assert sim.control.vdi_fingerprint(vbd["VDI"]) == sim.control.vdi_fingerprint(vdi["snapshot_of"])
    macs = sorted(api.VIF.get_MAC(v) for v in rec['VIFs'])
    assert macs == sorted(api.VIF.get_MAC(v) for v in orig['VIFs'])
    # hidden base copies: managed false
    hidden = [r for r in api.VDI.get_all_records().values() if not r['managed']]
    assert len(hidden) == 2 and all(r['name_label'] == 'base copy' for r in hidden)


def test_snapshot_ignore_vdis_and_nobak_not_special(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'db01')
    scratch = _vdi(api, 'db01-scratch [NOBAK]')
    full = api.VM.snapshot(vm, 'all')
    names = [api.VDI.get_name_label(api.VBD.get_VDI(v)) for v in api.VM.get_VBDs(full)]
    assert 'db01-scratch [NOBAK]' in names
    part = api.VM.snapshot(vm, 'some', [scratch])
    names = [api.VDI.get_name_label(api.VBD.get_VDI(v)) for v in api.VM.get_VBDs(part)]
    assert names == ['db01-root']


def test_snapshot_errors(xapi, sim):
    api = xapi.xenapi
    master = api.pool.get_master(api.pool.get_all()[0])
    dom0 = api.host.get_control_domain(master)
    assert h.xapi_failure(api.VM.snapshot, dom0, 'x')[0] == 'OPERATION_NOT_ALLOWED'
    vm = _vm(api, 'web01')
    snap = api.VM.snapshot(vm, 's')
    assert h.xapi_failure(api.VM.snapshot, snap, 'x')[0] == 'OPERATION_NOT_ALLOWED'
    sim.control.fill_sr('Local storage')
    details = h.xapi_failure(api.VM.snapshot, vm, 'y')
    assert details[0] == 'SR_FULL' and int(details[1]) > int(details[2])
    sim.control.unfill_sr('Local storage')
    api.VM.snapshot(vm, 'y')
    sim.control.fail_next('VM.snapshot', ['VM_BAD_POWER_STATE', vm, 'halted', 'running'])
    assert h.xapi_failure(api.VM.snapshot, vm, 'z')[0] == 'VM_BAD_POWER_STATE'
    api.VM.snapshot(vm, 'z')


def test_vm_destroy_keeps_vdis(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    snap = api.VM.snapshot(vm, 's')
    vdis = [api.VBD.get_VDI(v) for v in api.VM.get_VBDs(snap) if api.VBD.get_type(v) == 'Disk']
    vbds = api.VM.get_VBDs(snap)
    api.VM.destroy(snap)
    assert h.xapi_failure(api.VM.get_record, snap)[0] == 'HANDLE_INVALID'
    assert h.xapi_failure(api.VBD.get_record, vbds[0])[0] == 'HANDLE_INVALID'
    for vdi in vdis:
        assert api.VDI.get_is_a_snapshot(vdi)
        api.VDI.destroy(vdi)
    assert h.xapi_failure(api.VM.destroy, vm) == ['VM_BAD_POWER_STATE', vm, 'halted, suspended', 'running']
    assert not [r for r in api.VDI.get_all_records().values() if not r['managed']]


def test_power_states(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'db01')
    assert h.xapi_failure(api.VM.clean_shutdown, vm) == ['VM_BAD_POWER_STATE', vm, 'running', 'halted']
    api.VM.start(vm, False, False)
    rec = api.VM.get_record(vm)
    assert rec['power_state'] == 'Running' and int(rec['domid']) > 0
    assert all(api.VBD.get_currently_attached(v) for v in rec['VBDs'])
    vdi = _vdi(api, 'db01-root')
    assert h.xapi_failure(api.VDI.destroy, vdi) == ['VDI_IN_USE', vdi, 'destroy']
    assert h.xapi_failure(api.VM.start, vm, False, False)[0] == 'VM_BAD_POWER_STATE'
    api.VM.clean_shutdown(vm)
    api.VM.start(vm, True, False)
    assert api.VM.get_power_state(vm) == 'Paused'
    api.VM.hard_shutdown(vm)
    assert api.VM.get_power_state(vm) == 'Halted'
    template = _vm(api, 'Debian Bookworm 12')
    assert h.xapi_failure(api.VM.start, template, False, False)[0] == 'VM_IS_TEMPLATE'


def test_restore_style_creation(xapi, sim):
    api = xapi.xenapi
    sr = api.pool.get_default_SR(api.pool.get_all()[0])
    net = api.network.get_all()[0]
    vdi = api.VDI.create({'name_label': 'restored', 'name_description': '', 'SR': sr,
                          'virtual_size': str(10 * 1024 * 1024 + 1), 'type': 'user', 'sharable': False,
                          'read_only': False, 'other_config': {}, 'tags': ['t']})
    assert api.VDI.get_virtual_size(vdi) == str(12 * 1024 * 1024)
    assert api.VDI.get_sm_config(vdi)['vdi_type'] == 'vhd'
    source = api.VM.get_record(_vm(api, 'db01'))
    vm = api.VM.create(dict(source, name_label='restored-vm'))
    assert api.VM.get_power_state(vm) == 'Halted' and api.VM.get_VBDs(vm) == []
    api.VM.add_tags(vm, 'restored')
    vbd = api.VBD.create({'VM': vm, 'VDI': vdi, 'userdevice': '0', 'bootable': True, 'mode': 'RW', 'type': 'Disk',
                          'empty': False, 'other_config': {}, 'qos_algorithm_type': '', 'qos_algorithm_params': {}})
    assert api.VBD.get_device(vbd) == 'xvda'
    assert h.xapi_failure(api.VBD.create, {'VM': vm, 'VDI': vdi, 'userdevice': '0', 'bootable': True, 'mode': 'RW',
                                           'type': 'Disk', 'empty': False, 'other_config': {}, 'qos_algorithm_type': '',
                                           'qos_algorithm_params': {}})[0] == 'DEVICE_ALREADY_EXISTS'
    # XAPI reads every constructor field without default from the record (gen_server.ml): qos_* are required.
    assert h.xapi_failure(api.VBD.create, {'VM': vm, 'VDI': vdi, 'userdevice': '7', 'bootable': True, 'mode': 'RW',
                                           'type': 'Disk', 'empty': False, 'other_config': {}}) == [
        'INTERNAL_ERROR', 'Server_helpers.Dispatcher_FieldNotFound("qos_algorithm_type")']
    auto = api.VBD.create({'VM': vm, 'VDI': vdi, 'userdevice': 'autodetect', 'bootable': False, 'mode': 'RO',
                           'type': 'Disk', 'empty': False, 'other_config': {}, 'qos_algorithm_type': '',
                           'qos_algorithm_params': {}})
    assert api.VBD.get_userdevice(auto) == '1'
    api.VBD.destroy(auto)
    vif = api.VIF.create({'device': '0', 'network': net, 'VM': vm, 'MAC': '', 'MTU': '1500', 'other_config': {},
                          'qos_algorithm_type': '', 'qos_algorithm_params': {}})
    assert len(api.VIF.get_MAC(vif)) == 17
    api.VM.start(vm, False, False)
    assert api.VM.get_power_state(vm) == 'Running'
    assert h.xapi_failure(api.VM.create, {'name_label': 'x'})[0] == 'INTERNAL_ERROR'
    ro = api.VDI.create({'name_label': 'ro', 'name_description': '', 'SR': sr, 'virtual_size': '2097152',
                         'type': 'user', 'sharable': False, 'read_only': True, 'other_config': {}})
    assert h.xapi_failure(api.VBD.create, {'VM': vm, 'VDI': ro, 'userdevice': '5', 'bootable': False, 'mode': 'RW',
                                           'type': 'Disk', 'empty': False, 'other_config': {}, 'qos_algorithm_type': '',
                                           'qos_algorithm_params': {}}) == ['VDI_READONLY', ro]
    del sim


def test_vdi_resize(xapi):
    api = xapi.xenapi
    vdi = _vdi(api, 'db01-root')
    size = int(api.VDI.get_virtual_size(vdi))
    api.VDI.resize(vdi, str(size + (3 << 20)))
    assert int(api.VDI.get_virtual_size(vdi)) == size + (4 << 20)
    assert h.xapi_failure(api.VDI.resize, vdi, str(size))[0].startswith('SR_BACKEND_FAILURE')
    running = _vdi(api, 'web01-root')
    assert h.xapi_failure(api.VDI.resize, running, str(64 << 30)) == ['VDI_IN_USE', running, 'resize']
    # The datamodel marks VDI.resize_online removed since inverness (re-published only after 26.16.1).
    assert h.xapi_failure(api.VDI.resize_online, running, str(64 << 30)) == ['MESSAGE_REMOVED']


def test_async_tasks(xapi):
    api = xapi.xenapi
    vm = _vm(api, 'web01')
    task = api.Async.VM.snapshot(vm, 'async-snap')
    rec = h.wait_task(api, task)
    assert rec['status'] == 'success' and rec['name_label'] == 'Async.VM.snapshot'
    assert rec['progress'] == 1.0 and rec['error_info'] == []
    snap = h.task_value(rec)
    assert api.VM.get_snapshot_of(snap) == vm
    api.task.destroy(task)
    assert h.xapi_failure(api.task.get_record, task)[0] == 'HANDLE_INVALID'
    task = api.Async.VM.destroy(vm)
    rec = h.wait_task(api, task)
    assert rec['status'] == 'failure'
    assert rec['error_info'] == ['VM_BAD_POWER_STATE', vm, 'halted, suspended', 'running']
    task = api.Async.VDI.destroy(_vdi(api, 'db01-root'))
    assert h.task_value(h.wait_task(api, task)) == ''


def test_task_cancel_and_create(xapi, sim):
    api = xapi.xenapi
    sim.control.delay(0.5, 'VM.snapshot')
    task = api.Async.VM.snapshot(_vm(api, 'web01'), 'slow')
    api.task.cancel(task)
    rec = h.wait_task(api, task)
    sim.control.delay(0, 'VM.snapshot')
    assert rec['status'] == 'cancelled' and rec['error_info'][0] == 'TASK_CANCELLED'
    own = api.task.create('backup', 'our task')
    assert api.task.get_status(own) == 'pending'
    api.task.destroy(own)


def test_event_from(xapi):
    api = xapi.xenapi
    event_from = getattr(api.event, 'from')
    first = event_from(['vm'], '', 1.0)
    assert len(first['events']) == 5 and first['events'][0]['operation'] == 'add'
    assert first['valid_ref_counts']['vm'] == 5
    token = first['token']
    assert len(token) == 41 and ',' in token
    empty = event_from(['vm'], token, 0.2)
    assert empty['events'] == []
    task = api.Async.VM.snapshot(_vm(api, 'web01'), 'evt')
    deadline = token
    for _attempt in range(50):
        got = event_from(['task/%s' % task], deadline, 5.0)
        deadline = got['token']
        done = [e for e in got['events'] if e['snapshot']['status'] != 'pending']
        if done:
            assert done[0]['class'] == 'task' and done[0]['ref'] == task
            break
    else:
        raise AssertionError('no task completion event')
    assert h.xapi_failure(event_from, ['nosuchclass'], '', 0.1)[0] == 'EVENT_SUBSCRIPTION_PARSE_FAILURE'
    assert h.xapi_failure(event_from, ['vm'], 'garbage', 0.1)[0] == 'EVENT_FROM_TOKEN_PARSE_FAILURE'
    assert api.event_from(['vm'], '', 1.0)['events']


def test_fault_injection_delay_and_fail(xapi, sim):
    api = xapi.xenapi
    sim.control.fail_next('VM.get_all', ['SR_BACKEND_FAILURE_46', '', 'unavailable', ''], count=2)
    assert h.xapi_failure(api.VM.get_all)[0] == 'SR_BACKEND_FAILURE_46'
    assert h.xapi_failure(api.VM.get_all)[0] == 'SR_BACKEND_FAILURE_46'
    assert api.VM.get_all()
    sim.control.fail_next('VM.snapshot', ['OPERATION_NOT_ALLOWED', 'nope'])
    rec = h.wait_task(api, api.Async.VM.snapshot(_vm(api, 'web01'), 'x'))
    assert rec['error_info'] == ['OPERATION_NOT_ALLOWED', 'nope']


def test_more_errors_and_lifecycle(xapi):
    api = xapi.xenapi
    sr = api.pool.get_default_SR(api.pool.get_all()[0])
    record = {'name_label': 'huge', 'name_description': '', 'SR': sr, 'virtual_size': str(2041 << 30),
              'type': 'user', 'sharable': False, 'read_only': False, 'other_config': {}}
    assert h.xapi_failure(api.VDI.create, record)[0] == 'VDI_TOO_LARGE'
    vm = _vm(api, 'web01')
    root = _vdi(api, 'web01-root')
    assert api.VDI.get_sm_config(root)['host_%s' % api.VM.get_resident_on(vm)] == 'RW'
    clone = api.VDI.clone(_vdi(api, 'db01-root'))
    assert not api.VDI.get_is_a_snapshot(clone)
    vif = api.VM.get_VIFs(vm)[0]
    net = api.VIF.get_network(vif)
    assert h.xapi_failure(api.network.destroy, net)[0] == 'NETWORK_CONTAINS_VIF'
    assert h.xapi_failure(api.VIF.create, {'device': '0', 'network': net, 'VM': vm, 'MAC': '', 'MTU': '1500',
                                           'other_config': {}, 'qos_algorithm_type': '',
                                           'qos_algorithm_params': {}})[0] == 'DEVICE_ALREADY_EXISTS'
    api.VIF.destroy(vif)
    assert vif not in api.VM.get_VIFs(vm)
    vbd = [v for v in api.VM.get_VBDs(vm) if api.VBD.get_type(v) == 'CD'][0]
    api.VBD.destroy(vbd)
    disk_vbd = [v for v in api.VM.get_VBDs(vm) if api.VBD.get_type(v) == 'Disk'][0]
    assert h.xapi_failure(api.VBD.destroy, disk_vbd)[0] == 'OPERATION_NOT_ALLOWED'
    api.VBD.unplug(disk_vbd)
    assert h.xapi_failure(api.VBD.unplug, disk_vbd)[0] == 'DEVICE_ALREADY_DETACHED'
    api.VBD.plug(disk_vbd)
    api.VM.hard_shutdown(vm)
    assert 'host_' not in ''.join(api.VDI.get_sm_config(root))
    copy = api.VM.clone(vm, 'web01-clone')
    assert api.VM.get_name_label(copy) == 'web01-clone' and len(api.VM.get_VBDs(copy)) == 2
    # cbt_metadata VDIs cannot be attached or exported.
    data = _vdi(api, 'web01-data')
    snap = api.VDI.snapshot(data)
    api.VDI.data_destroy(snap)
    assert h.xapi_failure(api.VBD.create, {'VM': copy, 'VDI': snap, 'userdevice': '7', 'bootable': False, 'mode': 'RO',
                                           'type': 'Disk', 'empty': False, 'other_config': {}, 'qos_algorithm_type': '',
                                           'qos_algorithm_params': {}})[0] == 'VDI_INCOMPATIBLE_TYPE'
    assert h.xapi_failure(api.VDI.snapshot, snap)[0] == 'VDI_INCOMPATIBLE_TYPE'


def test_event_from_star_and_del(xapi):
    api = xapi.xenapi
    event_from = getattr(api.event, 'from')
    token = event_from(['*'], '', 0.1)['token']
    vm = _vm(api, 'db01')
    api.VM.set_name_label(vm, 'db01-x')
    got = event_from(['*'], token, 2.0)
    assert any(e['class'] == 'vm' and e['operation'] == 'mod' and e['snapshot']['name_label'] == 'db01-x'
               for e in got['events'])
    vdi = api.VDI.create({'name_label': 'tmp', 'name_description': '', 'SR': api.pool.get_default_SR(
        api.pool.get_all()[0]), 'virtual_size': '2097152', 'type': 'user', 'sharable': False, 'read_only': False,
        'other_config': {}})
    token = got['token']
    api.VDI.destroy(vdi)
    got = event_from(['vdi'], token, 2.0)
    dels = [e for e in got['events'] if e['ref'] == vdi]
    assert dels and dels[0]['operation'] == 'del' and 'snapshot' not in dels[0]


def test_old_xapi_without_ignore_vdis(sim):
    config = {'xapi': {'profile': 'xcp-ng-8.2'},
              'vms': [{'name': 'old', 'disks': [{'name': 'old-root', 'size': '4MiB'}]}]}
    sim.control.load_config(config)
    session = sim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'tests')
    api = session.xenapi
    vm = _vm(api, 'old')
    assert h.xapi_failure(api.VM.snapshot, vm, 'x', []) == ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.snapshot', '2', '3']
    assert api.VM.get_is_a_snapshot(api.VM.snapshot(vm, 'x'))
    session.xenapi.session.logout()
