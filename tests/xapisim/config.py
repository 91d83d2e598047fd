# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build a simulated pool from a YAML (or dict) description.  See README.md."""

from __future__ import annotations

import os
import re

import yaml

from .model import FIELDS, NULL_REF, XapiError
from .storage import pattern
from . import vtpm

UNITS = {'': 1, 'b': 1, 'k': 1 << 10, 'kib': 1 << 10, 'm': 1 << 20, 'mib': 1 << 20, 'g': 1 << 30, 'gib': 1 << 30,
         't': 1 << 40, 'tib': 1 << 40}
INTERNAL_NETWORK_NAME = 'Host internal management network'
DEFAULT_CONFIG = {
    'pool': {'name': 'xapisim-pool'},
    'users': [{'name': 'root', 'password': 'secret'}],
    'srs': [{'name': 'Local storage', 'size': '100GiB', 'default': True}],
    'networks': [{'name': 'Pool-wide network associated with eth0', 'bridge': 'xenbr0'}],
    'vms': [],
}


def parse_size(value):
    """``10GiB``, ``512M``, ``1048576`` to bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r'\s*(\d+)\s*([a-zA-Z]*)\s*', str(value))
    if not match or match.group(2).lower() not in UNITS:
        raise ValueError('bad size %r' % (value,))
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def load(text_or_dict):
    """A config dict from YAML text, a path-less dict or None (defaults)."""
    if text_or_dict is None:
        return dict(DEFAULT_CONFIG)
    if isinstance(text_or_dict, dict):
        return text_or_dict
    return yaml.safe_load(text_or_dict) or {}


def _vm_record(spec, name):
    memory = parse_size(spec.get('memory', '1GiB'))
    vcpus = int(spec.get('vcpus', 1))
    return {'name_label': name, 'name_description': spec.get('description', ''),
            'is_a_template': bool(spec.get('template', False)),
            'memory_static_max': memory, 'memory_dynamic_max': memory, 'memory_dynamic_min': memory,
            'memory_static_min': min(memory, 512 << 20), 'memory_target': memory,
            'VCPUs_max': vcpus, 'VCPUs_at_startup': vcpus,
            'HVM_boot_policy': 'BIOS order', 'HVM_boot_params': {'order': 'cd'},
            'platform': {'device-model': 'qemu-upstream-compat', 'viridian': 'false'},
            'other_config': {str(k): str(v) for k, v in (spec.get('other_config') or {}).items()},
            'tags': list(spec.get('tags') or []), 'domain_type': 'hvm',
            # enum fields without a datamodel default: XAPI VMs get them from their template
            'actions_after_shutdown': 'destroy', 'actions_after_reboot': 'restart', 'actions_after_crash': 'restart'}


# A pool description without an ``xapi:`` section gets this profile when the variable is set: one suite can
# then run every pool it loads on another XAPI version (make test runs the integration suites on XCP-ng 8.2 too).
PROFILE_VARIABLE = 'XAPISIM_PROFILE'


def _select_xapi(sim, spec):
    """``xapi: {profile: xcp-ng-8.2}`` or ``xapi: {version: "1.249.41"}`` (default: $XAPISIM_PROFILE, else the default profile)."""
    if not spec and os.environ.get(PROFILE_VARIABLE):
        spec = {'profile': os.environ[PROFILE_VARIABLE]}
    unknown = set(spec) - {'profile', 'version'}
    if unknown:
        raise ValueError('xapi: unknown key(s) %s; use profile or version' % ', '.join(sorted(unknown)))
    version = spec.get('version')
    sim.select_xapi(profile=spec.get('profile'), version=None if version is None else str(version))


def build(sim, config):  # pylint: disable=too-many-locals,too-many-branches
    """Populate ``sim`` (assumed empty) from ``config``; returns {kind: {name: ref}}."""
    config = load(config)
    names = {'host': {}, 'SR': {}, 'network': {}, 'VM': {}, 'VDI': {}}
    with sim.lock:
        for user in config.get('users') or DEFAULT_CONFIG['users']:
            sim.users[str(user['name'])] = str(user['password'])
        limits = config.get('limits') or {}
        sim.session_limit = int(limits.get('sessions', 400))
        sim.originator_limit = int(limits.get('sessions_per_originator', 500))
        sim.auth_delay = float(limits.get('auth_failure_delay', 0.05))
        # Task and session lifetimes of the database GC (xapi_globs.ml, db_gc_util.ml): seconds.
        sim.task_lifetime = float(limits.get('task_lifetime', sim.task_lifetime))
        sim.completed_task_lifetime = float(limits.get('completed_task_lifetime', sim.completed_task_lifetime))
        sim.session_timeout = float(limits.get('session_timeout', sim.session_timeout))
        sim.gc_interval = float(limits.get('gc_interval', sim.gc_interval))
        _select_xapi(sim, config.get('xapi') or {})
        pool = config.get('pool') or {}
        hosts = config.get('hosts') or [{'name': 'xcp-host1', 'address': '127.0.0.1'}]
        sim.add_pool(pool.get('name', 'xapisim-pool'), hosts[0]['name'], hosts[0].get('address', '127.0.0.1'))
        if pool.get('restrictions'):
            # Licence features (e.g. restrict_vtpm: "true" for a pool whose licence forbids vTPMs).
            restrictions = dict(sim.store.raw('pool', sim.pool_ref)['restrictions'])
            restrictions.update({str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in pool['restrictions'].items()})
            sim.store.set('pool', sim.pool_ref, 'restrictions', restrictions)
        names['host'][hosts[0]['name']] = sim.master_ref
        for host in hosts[1:]:
            names['host'][host['name']] = sim.add_slave_host(host['name'], host.get('address', '127.0.0.2'))
        default_sr = None
        for spec in config.get('srs') or DEFAULT_CONFIG['srs']:
            host = spec.get('host')
            if host is not None and host not in names['host']:
                raise XapiError('INTERNAL_ERROR', 'SR %s: unknown host %s (hosts: %s)' % (spec['name'], host, ', '.join(names['host'])))
            ref = sim.add_sr(spec['name'], parse_size(spec.get('size', '100GiB')), spec.get('type', 'ext'),
                             bool(spec.get('shared', False)), spec.get('description', ''),
                             host=names['host'][host] if host is not None else None)
            names['SR'][spec['name']] = ref
            # Seconds before the SR's garbage collector coalesces base copies (0: at once); see vhd_sr.Coalescer.
            sim.coalescer.set_delay(ref, float(spec.get('coalesce_delay', 0)))
            if spec.get('default') or default_sr is None:
                default_sr = ref
        sim.store.set('pool', sim.pool_ref, 'default_SR', default_sr or NULL_REF)
        _make_networks(sim, config.get('networks') or DEFAULT_CONFIG['networks'], names)
        for spec in config.get('templates') or []:
            spec = dict(spec, template=True)
            names['VM'][spec['name']] = _make_vm(sim, spec, names, default_sr)
        for spec in config.get('vms') or []:
            names['VM'][spec['name']] = _make_vm(sim, spec, names, default_sr)
    return names


def _make_networks(sim, specs, names):
    """Networks with their PIFs on every host, then the Host internal management network.

    A plain network gets a physical PIF (VLAN -1) per host on ``pif_device`` (default ``eth<n>``);
    ``vlan: <tag>`` puts it on a VLAN of the physical PIF ``pif_device`` (default eth0), created with
    a ``Pool-wide network associated with <device>`` when no network holds that PIF yet;
    ``private: true`` gives a network without PIFs (a single-server private network).
    """
    hosts = list(names['host'].values())
    physical = {}    # device -> {host: PIF}

    def physical_pifs(device, network=None, mtu=1500):
        if device not in physical:
            if network is None:
                network = sim.create_network({'name_label': 'Pool-wide network associated with %s' % device,
                                              'bridge': 'xenbr%s' % device.lstrip('eth'), 'MTU': mtu, 'other_config': {}})
                names['network'][sim.store.raw('network', network)['name_label']] = network
            physical[device] = {host: sim.add_physical_pif(host, network, device, mtu) for host in hosts}
        return physical[device]

    created = []
    for num, spec in enumerate(specs):
        network = sim.create_network({
            'name_label': spec['name'], 'name_description': spec.get('description', ''),
            'bridge': spec.get('bridge', 'xenbr%d' % num), 'MTU': int(spec.get('mtu', 1500)),
            'other_config': {str(k): str(v) for k, v in (spec.get('other_config') or {}).items()}})
        names['network'][spec['name']] = network
        created.append((spec, network))
    plain = [(spec, net) for spec, net in created if not spec.get('private') and spec.get('vlan') is None]
    for num, (spec, network) in enumerate(plain):
        device = str(spec.get('pif_device', 'eth%d' % num))
        if device in physical:
            raise XapiError('INTERNAL_ERROR', 'config: two networks on the physical device %s' % device)
        physical_pifs(device, network, int(spec.get('mtu', 1500)))
    for spec, network in created:
        if not spec.get('private') and spec.get('vlan') is not None:
            for host, pif in physical_pifs(str(spec.get('pif_device', 'eth0'))).items():
                sim.add_vlan(host, pif, network, int(spec['vlan']))
    # ocaml/xapi/create_networks.ml: every host start makes sure the Host internal management network
    # exists: bridge xenapi, these other_config keys, no PIF.
    names['network'][INTERNAL_NETWORK_NAME] = sim.create_network({
        'name_label': INTERNAL_NETWORK_NAME, 'MTU': 1500, 'bridge': 'xenapi',
        'name_description': 'Network on which guests will be assigned a private link-local IP address which can be used to talk XenAPI',
        'other_config': {'is_guest_installer_network': 'true', 'is_host_internal_management_network': 'true',
                         'ip_begin': '169.254.0.1', 'ip_end': '169.254.255.254', 'netmask': '255.255.0.0'}})


def _set_record_fields(sim, vm, fields, name):
    """``record:`` of a VM spec: VM fields by their XAPI names, stored as a VM that has lived would hold them
    (bios_strings, NVRAM, platform, HVM_boot_params, has_vendor_device, ha_restart_priority...), after VM.create."""
    for field, value in (fields or {}).items():
        known = FIELDS['VM'].get(field)
        if known is None or known.inverse or known.kind == 'ref':
            raise XapiError('INTERNAL_ERROR', 'config: VM %s: record field %r is not a VM field the config may set' % (name, field))
        sim.store.set('VM', vm, field, dict(value) if isinstance(value, dict) else value)


def _make_vm(sim, spec, names, default_sr):
    vm = sim.create_vm(_vm_record(spec, spec['name']))
    _set_record_fields(sim, vm, spec.get('record'), spec['name'])
    for num, disk in enumerate(spec.get('disks') or []):
        sr = names['SR'][disk['sr']] if disk.get('sr') else default_sr
        vdi = sim.create_vdi({'name_label': disk.get('name', '%s disk %d' % (spec['name'], num)),
                              'name_description': disk.get('description', ''), 'SR': sr,
                              'virtual_size': parse_size(disk.get('size', '1GiB')), 'type': 'user',
                              'sharable': False, 'read_only': False,
                              'other_config': {str(k): str(v) for k, v in (disk.get('other_config') or {}).items()}})
        names['VDI'][disk.get('name', '%s disk %d' % (spec['name'], num))] = vdi
        sim.create_vbd({'VM': vm, 'VDI': vdi, 'userdevice': str(disk.get('userdevice', num)),
                        'bootable': num == 0, 'mode': 'RW', 'type': 'Disk', 'empty': False, 'other_config': {}})
        if disk.get('cbt'):
            sim.m_VDI__enable_cbt(vdi)
        for write in disk.get('data') or []:
            length = parse_size(write.get('length', '2MiB'))
            sim.disk(vdi).write(parse_size(write.get('offset', 0)), pattern(write.get('seed', 0), length))
        sim.sr_refresh(sr)
    if spec.get('cdrom'):
        sim.create_vbd({'VM': vm, 'VDI': NULL_REF, 'userdevice': '3', 'bootable': False, 'mode': 'RO',
                        'type': 'CD', 'empty': True, 'other_config': {}})
    for num, nic in enumerate(spec.get('vifs') or []):
        net = names['network'].get(nic.get('network')) or next(iter(names['network'].values()))
        sim.create_vif({'device': str(nic.get('device', num)), 'network': net, 'VM': vm, 'MAC': nic.get('mac', ''),
                        'MTU': 1500, 'other_config': {}})
    if spec.get('vtpm'):
        vtpm.add_from_config(sim, vm, spec['vtpm'])
    state = spec.get('power_state', 'Halted')
    if state in ('Running', 'Paused') and not spec.get('template'):
        sim.m_VM__start(vm, state == 'Paused', False)
    elif state not in ('Halted', 'Running', 'Paused'):
        raise XapiError('INTERNAL_ERROR', 'unsupported power_state %s' % state)
    return vm
