# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: xapi
short_description: The VMs of an XCP-ng or XenServer pool as inventory hosts
version_added: 0.1.0
description:
  - Reads the VMs of one pool through XAPI and adds each as an inventory host, with its uuid, power state,
    tags, disks and other configuration as host variables.
  - Templates, snapshots and the control domain never appear.
  - Groups the hosts by tag, by power state and by pool, and supports the standard C(compose), C(groups),
    C(keyed_groups) and C(strict) options and inventory caching.
  - No connection variables are set on the hosts. The VMs are backup subjects, not machines Ansible logs in to,
    so plays over these hosts run their tasks on the controller, with C(connection=local) or C(delegate_to=localhost)
    and C(gather_facts=false).
  - The inventory source file name must end in C(xapi.yml) or C(xapi.yaml).
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
extends_documentation_fragment:
  - xapi.delta_backup.inventory_connection
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description:
      - The name of this plugin. It must be set for the plugin to read the file.
    type: str
    required: true
    choices: [ xapi.delta_backup.xapi ]
  hostnames:
    description:
      - What names the inventory hosts.
      - With V(name_label), a VM whose name label another selected VM shares, or which has an empty name label,
        is named C(<name_label>_<uuid>) (or by its uuid) instead, and a warning says so. Names never collide.
      - A VM named C(localhost), C(127.0.0.1), C(::1), C(all) or C(ungrouped) is named C(<name_label>_<uuid>) too,
        so that it never takes the place of the controller in C(delegate_to=localhost).
      - With V(uuid), hosts are named by VM uuid, which never changes over a VM's life.
    type: str
    choices: [ name_label, uuid ]
    default: name_label
  group_prefix:
    description:
      - Prefix of the groups this plugin creates itself (not those of O(groups) or O(keyed_groups)).
      - The groups are C(<prefix>tag_<tag>), C(<prefix>power_<power state in lower case>) and C(<prefix>pool_<pool name>).
      - In tag and pool names, every character other than a letter, a digit or C(_) becomes C(_), so tag C(backup-daily)
        gives group C(xapi_tag_backup_daily).
    type: str
    default: xapi_
  group_by:
    description:
      - Which of the plugin's own groups to create.
    type: list
    elements: str
    choices: [ tags, power_state, pool ]
    default: [ tags, power_state, pool ]
  include_tags:
    description:
      - Keep only the VMs that carry at least one of these tags. An empty list keeps every VM.
    type: list
    elements: str
    default: []
  exclude_tags:
    description:
      - Leave out the VMs that carry any of these tags, for example V(xo:no-bak).
      - Applied after O(include_tags).
    type: list
    elements: str
    default: []
  power_states:
    description:
      - Keep only the VMs in one of these power states. An empty list keeps every VM.
    type: list
    elements: str
    choices: [ Running, Halted, Suspended, Paused ]
    default: []
  filters:
    description:
      - Jinja2 conditionals, evaluated for each VM against its C(xapi_*) host variables (before O(compose)).
        A VM is kept only if every conditional is true.
      - A conditional that cannot be evaluated is an error, whatever O(strict) says, so that a typo never
        silently empties the inventory.
    type: list
    elements: str
    default: []
notes:
  - Host variables, all prefixed C(xapi_) - C(xapi_vm_uuid), C(xapi_vm_name), C(xapi_vm_description), C(xapi_power_state),
    C(xapi_tags), C(xapi_other_config), C(xapi_memory_static_max) (bytes), C(xapi_vcpus_max), C(xapi_disks),
    C(xapi_networks), C(xapi_pool_name) and C(xapi_pool_uuid).
  - Each entry of C(xapi_disks) has C(uuid), C(name), C(size) (virtual size in bytes), C(excluded) (true when the
    disk name contains C([NOBAK]), so backups skip it), C(sr_uuid), C(sr_name), C(userdevice), C(bootable) and C(cbt_enabled).
  - Each entry of C(xapi_networks) has C(device), C(mac), C(network_uuid) and C(network_name).
  - Hosts are added in sorted order of their names, so repeated runs give the same inventory (AWX job slicing
    relies on a stable host list).
  - ansible-inventory and ansible-playbook only warn when an inventory source fails to parse; set
    E(ANSIBLE_INVENTORY_UNPARSED_FAILED=true) to turn a pool that cannot be read into a failure.
seealso:
  - module: xapi.delta_backup.vm_info
"""

EXAMPLES = r"""
# pool.xapi.yml: connection from XENSERVER_HOST, XENSERVER_USER, XENSERVER_PASSWORD and XENSERVER_CA_PATH
plugin: xapi.delta_backup.xapi

---
# prod.xapi.yml: everything in the file, the password encrypted with ansible-vault
plugin: xapi.delta_backup.xapi
hostname: xcp-pool1.example.com
username: backup
password: !vault |
  $ANSIBLE_VAULT;1.1;AES256
  ...
ca_path: /etc/pki/xcp-pool1-ca.pem
exclude_tags:
  - xo:no-bak
power_states:
  - Running
  - Halted
filters:
  - xapi_disks | rejectattr('excluded') | list | length > 0
compose:
  backup_size: xapi_disks | rejectattr('excluded') | map(attribute='size') | sum
keyed_groups:
  - key: xapi_other_config['backup-schedule'] | default('none')
    prefix: schedule
groups:
  big_vms: xapi_memory_static_max > 8 * 1024 ** 3
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /tmp/xapi-inventory-cache
cache_timeout: 600
"""

import os
import re

from ansible.config.manager import ensure_type
from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.vars import combine_vars

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import (
    CertificateVerifyError, ConnectionOptionError, XapiError, XapiTransportError,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiConnection
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.pool import PoolSnapshotOfRecords

# Where each connection option can be set, for errors that name the option to fix.
OPTION_HINTS = {
    'hostname': ' (option hostname or XENSERVER_HOST)',
    'ca_path': ' (option ca_path or XENSERVER_CA_PATH)',
    'timeout': ' (option timeout)',
}
INVALID_GROUP_CHARACTERS = re.compile(r'[^A-Za-z0-9_]')
# Options whose blank value (AWX injects '' for unset credential fields) must mean "not set".
BLANK_MEANS_UNSET = ('hostname', 'username', 'password', 'validate_certs', 'ca_path')
# A VM host named localhost would capture delegate_to: localhost (and have no connection: local);
# all and ungrouped are Ansible's implicit groups.
RESERVED_HOSTNAMES = ('localhost', '127.0.0.1', '::1', 'all', 'ungrouped')


def _blank(value) -> bool:
    """None or whitespace-only text (values from files and the environment are str subclasses carrying origin tags).

    A vaulted value is no str: it is never decrypted here just to look at it.
    """
    return value is None or (isinstance(value, str) and not value.strip())


def safe_group_part(text: str) -> str:
    """A tag or pool name as part of a group name: anything but letters, digits and _ becomes _."""
    return INVALID_GROUP_CHARACTERS.sub('_', str(text))


def disk_vars(disk: dict) -> dict:
    return {
        'uuid': disk.get('vdi_uuid'),
        'name': disk.get('name_label', ''),
        'size': disk.get('virtual_size', 0),
        'excluded': bool(disk.get('excluded')),
        'sr_uuid': disk.get('sr_uuid'),
        'sr_name': disk.get('sr_name_label'),
        'userdevice': disk.get('userdevice'),
        'bootable': bool(disk.get('bootable')),
        'cbt_enabled': bool(disk.get('cbt_enabled')),
    }


def host_vars(vm: dict, pool: dict) -> dict:
    """The host variables of one described VM (see module_utils/_ops/pool.py describe_vm)."""
    return {
        'xapi_vm_uuid': vm['uuid'],
        'xapi_vm_name': vm.get('name_label', ''),
        'xapi_vm_description': vm.get('name_description', ''),
        'xapi_power_state': vm.get('power_state'),
        'xapi_tags': list(vm.get('tags') or []),
        'xapi_other_config': dict(vm.get('other_config') or {}),
        'xapi_memory_static_max': vm.get('memory_static_max', 0),
        'xapi_vcpus_max': vm.get('vcpus_max', 0),
        'xapi_disks': [disk_vars(disk) for disk in vm.get('disks') or []],
        'xapi_networks': [{'device': nic.get('device'), 'mac': nic.get('mac'), 'network_uuid': nic.get('network_uuid'),
                           'network_name': nic.get('network_name_label')} for nic in vm.get('networks') or []],
        'xapi_pool_name': pool.get('name'),
        'xapi_pool_uuid': pool.get('uuid'),
    }


def assign_hostnames(vms: list[dict], by: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """Pair each VM's host variables with a unique inventory host name, sorted by name.

    Returns the pairs and the warnings to show (shared or empty name labels).
    """
    if by == 'uuid':
        return sorted(((vm['xapi_vm_uuid'], vm) for vm in vms), key=lambda pair: pair[0]), []
    counts = {}
    for vm in vms:
        counts[vm['xapi_vm_name']] = counts.get(vm['xapi_vm_name'], 0) + 1
    named, warnings = [], []
    for vm in vms:
        name, uuid = vm['xapi_vm_name'], vm['xapi_vm_uuid']
        if not name.strip():
            warnings.append('VM %s has an empty name label: it is named by its uuid in the inventory' % uuid)
            name = uuid
        elif counts[name] > 1:
            warnings.append('%d VMs are named %r: VM %s is named %s_%s in the inventory (or set hostnames: uuid)'
                            % (counts[name], name, uuid, name, uuid))
            name = '%s_%s' % (name, uuid)
        elif name in RESERVED_HOSTNAMES:
            warnings.append('VM %s is named %r, which Ansible reserves: it is named %s_%s in the inventory' % (uuid, name, name, uuid))
            name = '%s_%s' % (name, uuid)
        named.append((name, vm))
    return sorted(named, key=lambda pair: (pair[0], pair[1]['xapi_vm_uuid'])), warnings


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Inventory source: the backup candidates of one XAPI pool."""

    NAME = 'xapi.delta_backup.xapi'

    def verify_file(self, path):
        if not super().verify_file(path):
            return False
        if path.endswith(('xapi.yml', 'xapi.yaml')):
            return True
        self.display.vvv('Skipping %s: xapi.delta_backup.xapi inventory files must end in xapi.yml or xapi.yaml' % path)
        return False

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        config = self._read_config_data(path)

        cache_key = self.get_cache_key(path)
        use_cache = self.get_option('cache')
        data = None
        update_cache = False
        if use_cache and cache:
            try:
                data = self._cache[cache_key]
            except KeyError:
                update_cache = True
        elif use_cache:
            update_cache = True  # --flush-cache / meta: refresh_inventory: read the pool again
        if data is None:
            data = self._read_pool(path, config)
        if update_cache:
            self._cache[cache_key] = data
        self._populate(data)

    # -- reading the pool ----------------------------------------------------------------------

    def _setting(self, option: str, config: dict):
        """The option's value, with a blank value in the file or the environment counting as not set.

        Ansible would turn '' into False for a bool and into the current directory for a path.
        """
        value, origin = self.get_option_and_origin(option)
        if option not in BLANK_MEANS_UNSET:
            return value
        if origin == 'Direct':
            raw = config.get(option)
        elif isinstance(origin, str) and origin.startswith('env: '):
            raw = os.environ.get(origin[len('env: '):])
        else:
            return value
        if not _blank(raw):
            return value
        definition = self.option_definitions.get(option) or {}
        if origin == 'Direct':
            # Blank in the file: the environment still applies, as if the option were left out.
            for entry in definition.get('env') or []:
                from_env = os.environ.get(entry.get('name'))
                if not _blank(from_env):
                    return ensure_type(from_env, definition.get('type'), origin='env: %s' % entry.get('name'))
        default = definition.get('default')
        return ensure_type(default, definition.get('type')) if default is not None else None

    def _connection(self, config: dict) -> XapiConnection:
        settings = {option: self._setting(option, config) for option in BLANK_MEANS_UNSET + ('timeout',)}
        for option in ('hostname', 'username', 'password', 'ca_path'):
            # Values from files and the environment carry Ansible's origin tags; XML-RPC marshals only plain str.
            if settings[option] is not None:
                settings[option] = str(to_native(settings[option]))
        return XapiConnection(**settings)

    def _read_pool(self, path: str, config: dict) -> dict:
        """Log in, read the pool and its VMs, log out. Returns plain (cacheable) data."""
        xapi = None
        try:
            xapi = self._connection(config)
            with xapi:
                pool = self._pool_identity(xapi)
                vms = PoolSnapshotOfRecords(xapi).backup_candidates()
        except XapiError as error:
            where = ' %s' % xapi.endpoint.url if xapi is not None else ''
            raise AnsibleParserError('xapi.delta_backup.xapi inventory %s: cannot read the pool%s: %s%s'
                                     % (path, where, error.message, self._hint(error))) from None
        return {'pool': pool, 'vms': [host_vars(vm, pool) for vm in vms]}

    @staticmethod
    def _hint(error: XapiError) -> str:
        """The options to look at, chosen by the kind of error (never by its message)."""
        if error.code == 'SESSION_AUTHENTICATION_FAILED':
            return ' (options username and password, or XENSERVER_USER and XENSERVER_PASSWORD)'
        if isinstance(error, CertificateVerifyError):
            return ' (option ca_path or XENSERVER_CA_PATH; validate_certs or XENSERVER_VALIDATE_CERTS)'
        if isinstance(error, ConnectionOptionError):
            return OPTION_HINTS.get(error.option, ' (option %s)' % error.option)
        if isinstance(error, XapiTransportError):
            return OPTION_HINTS['hostname']
        return ''

    @staticmethod
    def _pool_identity(xapi) -> dict:
        """Name and uuid of the pool; an unnamed pool takes its coordinator's name, as XCP-ng tools show it."""
        pools = xapi.call('pool.get_all_records')
        record = next(iter(pools.values()), {}) if pools else {}
        name = (record.get('name_label') or '').strip()
        if not name and record.get('master'):
            try:
                name = xapi.call('host.get_name_label', record['master'])
            except XapiError:
                name = ''
        return {'name': name or record.get('uuid', ''), 'uuid': record.get('uuid', '')}

    # -- building the inventory ----------------------------------------------------------------

    def _selected(self, vms: list[dict]) -> list[dict]:
        include = set(self.get_option('include_tags') or [])
        exclude = set(self.get_option('exclude_tags') or [])
        states = set(self.get_option('power_states') or [])
        selected = []
        for vm in vms:
            tags = set(vm['xapi_tags'])
            if include and not tags & include:
                continue
            if tags & exclude:
                continue
            if states and vm['xapi_power_state'] not in states:
                continue
            if self._passes_filters(vm):
                selected.append(vm)
        return selected

    def _passes_filters(self, vm: dict) -> bool:
        filters = self.get_option('filters') or []
        if not filters:
            return True
        variables = combine_vars(vm, self._vars) if self.get_option('use_extra_vars') else vm
        self.templar.available_variables = variables
        for conditional in filters:
            try:
                if not self.templar.evaluate_conditional(conditional):
                    return False
            except Exception as exc:  # any templating failure: report which filter and VM
                raise AnsibleParserError('xapi.delta_backup.xapi inventory: filter %r failed for VM %s (%s): %s'
                                         % (conditional, vm['xapi_vm_name'], vm['xapi_vm_uuid'], to_native(exc))) from None
        return True

    def _own_groups(self, vm: dict) -> list[str]:
        prefix = self.get_option('group_prefix') or ''
        group_by = self.get_option('group_by') or []
        groups = []
        if 'pool' in group_by and vm.get('xapi_pool_name'):
            groups.append('%spool_%s' % (prefix, safe_group_part(vm['xapi_pool_name'])))
        if 'power_state' in group_by and vm.get('xapi_power_state'):
            groups.append('%spower_%s' % (prefix, safe_group_part(vm['xapi_power_state']).lower()))
        if 'tags' in group_by:
            groups.extend('%stag_%s' % (prefix, safe_group_part(tag)) for tag in vm['xapi_tags'] if str(tag).strip())
        return groups

    def _populate(self, data: dict) -> None:
        strict = self.get_option('strict')
        named, warnings = assign_hostnames(self._selected(data.get('vms') or []), self.get_option('hostnames'))
        for warning in warnings:
            self.display.warning('xapi.delta_backup.xapi inventory: %s' % warning)
        for hostname, variables in named:
            self.inventory.add_host(hostname)
            for key, value in variables.items():
                self.inventory.set_variable(hostname, key, value)
            for group in self._own_groups(variables):
                self.inventory.add_group(group)
                self.inventory.add_child(group, hostname)
            all_vars = self.inventory.get_host(hostname).get_vars()
            self._set_composite_vars(self.get_option('compose'), all_vars, hostname, strict=strict)
            self._add_host_to_composed_groups(self.get_option('groups'), variables, hostname, strict=strict)
            self._add_host_to_keyed_groups(self.get_option('keyed_groups'), variables, hostname, strict=strict)
