# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_restore creates the VM as real XAPI requires: every VM.create field, blocked_operations set afterwards,
fresh MACs unless keep_mac, networks mapped by uuid, name on the VLAN or the first network on the VLAN, never a network without
PIFs unless asked (such a VIF is listed in not_restored, or refused with strict).
Real ansible-playbook against the simulator, whose VM.create/VIF.create follow XAPI (mac_seed, MAC derivation)."""

from __future__ import annotations

import glob
import json
import os

import pytest

from lifecycle import backup

SOURCE_POOL = """
pool: {name: production}
xapi: {profile: %s}
hosts: [{name: prod-host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 8GiB, default: true}]
networks:
  - {name: lan, bridge: xenbr0}
  - {name: vlan20-prod, bridge: xapi1, vlan: 20, pif_device: eth1}
vms:
  - name: app01
    power_state: Running
    disks:
      - name: app01-root
        size: 32MiB
        data: [{offset: 0, length: 2MiB, seed: 5}]
    vifs:
      - {network: lan, mac: "02:16:3e:00:00:07"}
      - {network: vlan20-prod}
      - {network: Host internal management network}
"""
# Another pool: the VLAN 20 network has another name, and two untagged networks exist (eth0 and eth1).
OTHER_POOL = """
pool: {name: disaster-recovery}
xapi: {profile: %s}
hosts: [{name: dr-host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 8GiB, default: true}]
networks:
  - {name: Network 0, bridge: xenbr0}
  - {name: vlan20-test, bridge: xapi7, vlan: 20, pif_device: eth1}
"""
BLOCKED = {'suspend': 'no suspend for app01', 'pause': 'no pause'}


class Sim:
    """A logged-in XenAPI session to the simulator."""

    def __init__(self, sim):
        self.session = sim.xenapi_session()
        self.session.login_with_password('root', 'secret', '1.0', 'integration-tests')
        self.api = self.session.xenapi

    def __enter__(self):
        return self.api

    def __exit__(self, *exc):
        self.session.xenapi.session.logout()


def vm_state(sim, vm_uuid):
    """The VM record and its VIFs by device (MAC, network name)."""
    with Sim(sim) as api:
        ref = api.VM.get_by_uuid(vm_uuid)
        record = api.VM.get_record(ref)
        vifs = {}
        for vif in record['VIFs']:
            vif_record = api.VIF.get_record(vif)
            vifs[vif_record['device']] = (vif_record['MAC'], api.network.get_name_label(vif_record['network']))
        return record, vifs


def object_counts(sim):
    with Sim(sim) as api:
        return len(api.VM.get_all()), len(api.VDI.get_all()), len(api.VIF.get_all())


@pytest.fixture
def prod(ansible, pool, tmp_path):
    """app01 on the production pool (XCP-ng 8.3) with blocked operations and a home host, backed up once."""
    pool.control.load_config(SOURCE_POOL % 'xcp-ng-8.3')
    with Sim(pool) as api:
        vm = api.VM.get_by_name_label('app01')[0]
        api.VM.set_blocked_operations(vm, BLOCKED)
        host = api.host.get_by_name_label('prod-host1')[0]
        api.VM.set_affinity(vm, host)
        source = api.VM.get_record(vm)
    repository = tmp_path / 'repo'
    repository.mkdir()
    app = {'ansible': ansible, 'sim': pool, 'repo': str(repository)}
    _snap, export = backup(app)
    _record, vifs = vm_state(pool, source['uuid'])
    return dict(app, source=source, source_vifs=vifs, host=host, export=export)


def restore(app, expect_failure=False, check=False, **options):
    return app['ansible'].run_task('vm_restore', dict({'repository': app['repo'], 'vm': 'app01'}, **options), expect_failure=expect_failure,
                                   check=check)


def test_same_pool_restore(prod):
    sim = prod['sim']
    assert sorted(prod['source_vifs']) == ['0', '1', '2']
    # The VIF on the Host internal management network: with strict, refused before anything is created
    counts = object_counts(sim)
    refused = restore(prod, expect_failure=True, strict=True)
    assert "strict: 1 thing(s) of backup" in refused['msg'], refused['msg']
    assert "VIF 2 of the backup was on network 'Host internal management network'" in refused['msg'], refused['msg']
    assert 'allow_internal_networks=true' in refused['msg'] and 'network_map' in refused['msg']
    assert object_counts(sim) == counts
    # without strict, the VM comes back without that VIF, which not_restored names
    partial = restore(prod, name='app01 partial')
    assert [vif['device'] for vif in partial['vifs']] == ['0', '1'] and sorted(vm_state(sim, partial['vm']['uuid'])[1]) == ['0', '1']
    assert [item['what'] for item in partial['not_restored']] == ['VIF 2']
    assert "VIF 2 of the backup was on network 'Host internal management network'" in partial['not_restored'][0]['reason']

    fresh = restore(prod, name='app01 copy', allow_internal_networks=True)
    assert [(vif['device'], vif['matched_by'], vif['network_name_label']) for vif in fresh['vifs']] == [
        ('0', 'uuid', 'lan'), ('1', 'uuid', 'vlan20-prod'), ('2', 'uuid', 'Host internal management network')]
    assert [vif['vlan'] for vif in fresh['vifs']] == [-1, 20, None]
    record, vifs = vm_state(sim, fresh['vm']['uuid'])
    # VM.create ignores blocked_operations: they were set afterwards (and our start block lifted)
    assert record['blocked_operations'] == BLOCKED
    # same pool: the home host exists, so it is kept
    assert record['affinity'] == prod['host'] and fresh['vm']['affinity_kept'] is True
    assert record['power_state'] == 'Halted' and record['is_a_template'] is False
    # keep_mac false: a new mac_seed, and MACs unlike the source's (it can run beside it)
    assert record['other_config']['mac_seed'] != prod['source']['other_config']['mac_seed']
    for device, (mac, network) in vifs.items():
        assert mac != prod['source_vifs'][device][0] and network == prod['source_vifs'][device][1]
    assert {vif['device']: vif['mac'] for vif in fresh['vifs']} == {device: mac for device, (mac, _net) in vifs.items()}

    same = restore(prod, name='app01 twin', allow_internal_networks=True, keep_mac=True)
    record, vifs = vm_state(sim, same['vm']['uuid'])
    assert vifs == prod['source_vifs']
    assert record['other_config']['mac_seed'] == prod['source']['other_config']['mac_seed']
    assert record['blocked_operations'] == BLOCKED


# VM.create records carry fields newer than XCP-ng 8.2's xapi (actions_after_softreboot, 23.1.0): XAPI ignores
# record keys it does not look up, so a restore into an 8.2 pool must work as well.
@pytest.mark.parametrize('profile', ['xcp-ng-8.3', 'xcp-ng-8.2'])
def test_restore_into_another_pool_maps_by_vlan_tag(prod, profile):
    sim = prod['sim']
    # delta_export recorded each VIF's network VLAN tag, as Xen Orchestra does ($network$VLAN; left out without a PIF,
    # as XO's JSON.stringify drops its undefined value)
    [metadata_path] = glob.glob(os.path.join(prod['repo'], 'xo-vm-backups', prod['source']['uuid'], '*.json'))
    with open(metadata_path, encoding='utf-8') as handle:
        recorded = {vif['device']: vif.get('$network$VLAN', 'absent') for vif in json.load(handle)['vifs'].values()}
    assert recorded == {'0': -1, '1': 20, '2': 'absent'}

    sim.control.load_config(OTHER_POOL % profile)
    assert sim.control.record('host', 'dr-host1')['software_version']['xapi'].startswith('1.249' if profile == 'xcp-ng-8.2' else '2')
    counts = object_counts(sim)
    # lan is untagged: both physical networks of this pool (eth0, eth1) carry no tag; the first in PIF device order (eth0) is chosen
    checked = restore(prod, check=True, allow_internal_networks=True)
    assert [(vif['device'], vif['matched_by'], vif['network_name_label']) for vif in checked['vifs']] == [
        ('0', 'vlan', 'Network 0'), ('1', 'vlan', 'vlan20-test'), ('2', 'name', 'Host internal management network')]
    assert object_counts(sim) == counts
    # the SR of the disk is not in this pool either: the default SR, which not_restored says
    assert [item['what'].split(' (VDI')[0] for item in checked['not_restored']] == ["the SR of disk 0 'app01-root'"]
    assert [(disk['sr_name_label'], disk['placed_by']) for disk in checked['disks']] == [('Local storage', 'default')]
    # without allow_internal_networks the VIF of the internal network is refused with strict
    refused = restore(prod, expect_failure=True, network_map={'lan': 'Network 0'}, strict=True)
    assert "VIF 2 of the backup was on network 'Host internal management network'" in refused['msg'], refused['msg']
    assert object_counts(sim) == counts

    result = restore(prod, network_map={'lan': 'Network 0', 'Host internal management network': 'Network 0'})
    assert [(vif['device'], vif['matched_by'], vif['network_name_label'], vif['source_network_name_label']) for vif in result['vifs']] == [
        ('0', 'map', 'Network 0', 'lan'), ('1', 'vlan', 'vlan20-test', 'vlan20-prod'), ('2', 'map', 'Network 0', 'Host internal management network')]
    record, vifs = vm_state(sim, result['vm']['uuid'])
    # another pool: the home host does not exist here
    assert record['affinity'] == 'OpaqueRef:NULL' and result['vm']['affinity_kept'] is False
    assert record['blocked_operations'] == BLOCKED
    assert {device: network for device, (_mac, network) in vifs.items()} == {'0': 'Network 0', '1': 'vlan20-test', '2': 'Network 0'}
