# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_info and vm_snapshot through ansible-playbook against the simulator."""

from __future__ import annotations

import XenAPI


def xenapi_session(sim):
    session = sim.xenapi_session()
    session.xenapi.login_with_password('root', 'secret', '1.0', 'integration-tests')
    return session


def job_snapshot_uuids(sim, vm_name):
    session = xenapi_session(sim)
    try:
        vm_ref = session.xenapi.VM.get_by_name_label(vm_name)[0]
        return sorted(session.xenapi.VM.get_uuid(ref) for ref in session.xenapi.VM.get_snapshots(vm_ref))
    finally:
        session.xenapi.session.logout()


def test_vm_info_lists_only_real_vms_with_nobak_marked(ansible):
    result = ansible.run_task('vm_info', {})
    names = [vm['name_label'] for vm in result['vms']]
    assert names == sorted(['web01', 'db01', 'small01'])
    assert result['changed'] is False
    db01 = next(vm for vm in result['vms'] if vm['name_label'] == 'db01')
    excluded = {disk['name_label']: disk['excluded'] for disk in db01['disks']}
    assert excluded == {'db01-root': False, 'db01-scratch [NOBAK]': True}
    web01 = next(vm for vm in result['vms'] if vm['name_label'] == 'web01')
    assert {disk['virtual_size'] for disk in web01['disks']} == {10 * 2**30, 100 * 2**30}
    assert web01['networks'][0]['mac'] == '02:16:3e:00:00:01'


def test_vm_info_filters(ansible):
    running = ansible.run_task('vm_info', {'filter': "[?power_state=='Running']"})
    assert [vm['name_label'] for vm in running['vms']] == ['web01']
    tagged = ansible.run_task('vm_info', {'tags': ['backup-daily']})
    assert [vm['name_label'] for vm in tagged['vms']] == ['web01']
    named = ansible.run_task('vm_info', {'vms': ['db01']})
    assert [vm['name_label'] for vm in named['vms']] == ['db01']


def test_vm_info_bad_filter_and_unknown_vm_are_clear(ansible):
    bad = ansible.run_task('vm_info', {'filter': '[?power_state=='}, expect_failure=True)
    assert 'not a valid JMESPath expression' in bad['msg']
    not_list = ansible.run_task('vm_info', {'filter': 'length(@)'}, expect_failure=True)
    assert 'must return a list of VMs' in not_list['msg']
    unknown = ansible.run_task('vm_info', {'vms': ['no-such-vm']}, expect_failure=True)
    assert "'no-such-vm'" in unknown['msg']


def test_wrong_password_is_a_clear_failure(ansible):
    result = ansible.run_task('vm_info', {}, env={'XENSERVER_PASSWORD': 'wrong'}, expect_failure=True)
    assert 'login failed for user root' in result['msg']
    assert 'secret' not in ansible.last_output and 'wrong' not in result['msg']


def test_untrusted_certificate_is_refused(ansible):
    result = ansible.run_task('vm_info', {}, env={'XENSERVER_CA_PATH': ''}, expect_failure=True)
    assert 'certificate' in result['msg']


def test_vm_snapshot_excludes_nobak_and_tags_the_snapshot(ansible, pool):
    result = ansible.run_task('vm_snapshot', {'vm': 'db01', 'job': 'nightly'})
    assert result['changed'] is True
    assert result['reference_snapshot'] is None
    snapshot = result['snapshot']
    assert [disk['name_label'] for disk in snapshot['disks']] == ['db01-root']
    assert [disk['name_label'] for disk in result['excluded_disks']] == ['db01-scratch [NOBAK]']
    session = xenapi_session(pool)
    try:
        ref = session.xenapi.VM.get_by_uuid(snapshot['uuid'])
        record = session.xenapi.VM.get_record(ref)
        assert record['is_a_snapshot'] is True
        assert record['other_config']['xo:backup:job'] == result['job_id']
        assert record['other_config']['xo:backup:vm'] == result['vm']['uuid']
        assert record['other_config']['xo:backup:datetime'] == snapshot['datetime']
        for vbd in record['VBDs']:
            vdi = session.xenapi.VBD.get_VDI(vbd)
            if vdi != 'OpaqueRef:NULL':
                assert session.xenapi.VDI.get_other_config(vdi)['xo:backup:job'] == result['job_id']
    finally:
        session.xenapi.session.logout()


def test_vm_snapshot_check_mode_changes_nothing(ansible, pool):
    before = job_snapshot_uuids(pool, 'web01')
    result = ansible.run_task('vm_snapshot', {'vm': 'web01', 'job': 'nightly'}, check=True)
    assert result['changed'] is True
    assert result['snapshot']['uuid'] is None
    assert job_snapshot_uuids(pool, 'web01') == before


def test_prune_keeps_unrelated_snapshots_and_removes_unexported_ones(ansible, pool):
    session = xenapi_session(pool)
    try:
        vm_ref = session.xenapi.VM.get_by_name_label('web01')[0]
        manual = session.xenapi.VM.get_uuid(session.xenapi.VM.snapshot(vm_ref, 'manual snapshot'))
    finally:
        session.xenapi.session.logout()
    first = ansible.run_task('vm_snapshot', {'vm': 'web01', 'job': 'nightly'})
    second = ansible.run_task('vm_snapshot', {'vm': 'web01', 'job': 'nightly'})
    # Neither was exported: the second run removes the first (no reference to keep), never the manual one.
    assert second['removed_snapshots'] == [first['snapshot']['uuid']]
    assert second['snapshot']['datetime'] > first['snapshot']['datetime']
    pruned = ansible.run_task('vm_snapshot', {'vm': 'web01', 'job': 'nightly', 'state': 'pruned'})
    assert pruned['removed_snapshots'] == [second['snapshot']['uuid']]
    assert job_snapshot_uuids(pool, 'web01') == [manual]
    again = ansible.run_task('vm_snapshot', {'vm': 'web01', 'job': 'nightly', 'state': 'pruned'})
    assert again['changed'] is False


def test_snapshot_of_a_template_is_refused(ansible):
    result = ansible.run_task('vm_snapshot', {'vm': 'Debian Bookworm 12', 'job': 'nightly'}, expect_failure=True)
    assert 'no VM named' in result['msg'] or 'template' in result['msg']


def test_snapshot_failure_from_xapi_is_reported_and_leaves_nothing(ansible, pool):
    pool.control.fail_next('VM.snapshot', ['SR_FULL', '1073741824', '0'])
    result = ansible.run_task('vm_snapshot', {'vm': 'web01', 'job': 'nightly'}, expect_failure=True)
    assert 'out of space' in result['msg']
    assert result['xapi_error']['code'] == 'SR_FULL'
    assert job_snapshot_uuids(pool, 'web01') == []


def test_xenapi_importable():
    assert hasattr(XenAPI, 'Session')
