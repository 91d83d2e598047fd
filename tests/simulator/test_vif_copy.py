# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM.snapshot and VM.clone copy a VIF whole, locking rules included, as ocaml/xapi/xapi_vif_helpers.ml copy does:
the backup reads a snapshot's VIFs, so what the snapshot drops a restore could never give back."""

COPIED = ('MTU', 'other_config', 'qos_algorithm_type', 'qos_algorithm_params', 'locking_mode', 'ipv4_allowed', 'ipv6_allowed')


def test_snapshot_and_clone_keep_the_vif_locking_rules(xapi):
    api = xapi.xenapi
    vm = api.VM.get_by_name_label('db01')[0]
    network = api.network.get_by_name_label('Pool-wide network associated with eth0')[0]
    api.VIF.create({'device': '7', 'network': network, 'VM': vm, 'MAC': '', 'MTU': '9000', 'other_config': {'ethtool-tx': 'off'},
                    'qos_algorithm_type': 'ratelimit', 'qos_algorithm_params': {'kbps': '1000'}, 'locking_mode': 'locked',
                    'ipv4_allowed': ['10.0.0.5', '10.0.0.6'], 'ipv6_allowed': ['fd00::5']})
    [source] = [api.VIF.get_record(ref) for ref in api.VM.get_VIFs(vm) if api.VIF.get_device(ref) == '7']
    assert source['locking_mode'] == 'locked' and source['ipv4_allowed'] == ['10.0.0.5', '10.0.0.6']
    if api.VM.get_power_state(vm) != 'Halted':
        api.VM.hard_shutdown(vm)
    for copy in (api.VM.snapshot(vm, 'db01 snap'), api.VM.clone(vm, 'db01 clone')):
        [copied] = [api.VIF.get_record(ref) for ref in api.VM.get_VIFs(copy) if api.VIF.get_device(ref) == '7']
        assert {name: copied[name] for name in COPIED} == {name: source[name] for name in COPIED}
