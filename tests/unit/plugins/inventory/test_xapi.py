# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The xapi.delta_backup.xapi inventory plugin, run as users run it.

Most tests start ``ansible-inventory -i <file>.xapi.yml --list`` as a subprocess against the shared
XAPI simulator over HTTPS with certificate verification, and check the JSON it prints and that
every session was logged out. A few test the plugin's pure helpers directly.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

pytest.importorskip('XenAPI')

from ansible_collections.xapi.delta_backup.plugins.inventory.xapi import (  # noqa: E402
    InventoryModule, assign_hostnames, safe_group_part,
)

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COLLECTION_DIR = os.path.dirname(TESTS_DIR)
PLUGIN = 'xapi.delta_backup.xapi'
EXAMPLE_VMS = ['db01', 'small01', 'web01']


# -- fixtures and helpers ------------------------------------------------------------------------


def example_config() -> dict:
    # ansible-test units does not put tests/ on sys.path; the simulator lives there.
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    testing = pytest.importorskip('xapisim.testing')
    with open(testing.EXAMPLE_CONFIG, encoding='utf-8') as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope='module')
def simulator():
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    testing = pytest.importorskip('xapisim.testing')
    with testing.start_server(https=True) as running:
        yield running


@pytest.fixture
def sim(simulator):
    """The example pool, reset for this test; every session must be logged out at the end."""
    simulator.control.load_config(yaml.safe_dump(example_config()))
    yield simulator
    assert simulator.control.session_count() == 0, simulator.control.sessions()


@pytest.fixture(scope='module')
def collections_root(tmp_path_factory):
    """A collections root holding this checkout as ansible_collections/xapi/delta_backup."""
    root = tmp_path_factory.mktemp('collections')
    namespace = root / 'ansible_collections' / 'xapi'
    namespace.mkdir(parents=True)
    os.symlink(COLLECTION_DIR, str(namespace / 'delta_backup'))
    return str(root)


def ansible_command(name: str) -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(beside):
        return [beside]
    found = shutil.which(name)
    return [found] if found else [sys.executable, '-m', 'ansible.cli.%s' % name.split('-', 1)[1]]


def plain(value):
    """ansible-inventory marks strings from inventory plugins as unsafe ({'__ansible_unsafe': ...}): unwrap them."""
    if isinstance(value, dict):
        if set(value) == {'__ansible_unsafe'}:
            return value['__ansible_unsafe']
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


class Inventory:
    """Runs ansible-inventory on a source file written for one test."""

    def __init__(self, sim, workdir, collections):
        self.sim = sim
        self.workdir = workdir
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(('XENSERVER_', 'ANSIBLE_'))}
        self.env.update({
            'ANSIBLE_COLLECTIONS_PATH': collections,
            'ANSIBLE_COLLECTIONS_SCAN_SYS_PATH': 'false',
            'ANSIBLE_INVENTORY_UNPARSED_FAILED': 'true',
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_LOCAL_TEMP': os.path.join(workdir, 'tmp'),
            'HOME': workdir,
            'XENSERVER_HOST': sim.url,
            'XENSERVER_USER': 'root',
            'XENSERVER_PASSWORD': 'secret',
            'XENSERVER_CA_PATH': sim.ca_path,
        })
        self.stderr = ''

    def run(self, options: dict | None = None, env: dict | None = None, name: str = 'pool.xapi.yml', args=('--list',), extra_text=''):
        path = os.path.join(self.workdir, name)
        with open(path, 'w', encoding='utf-8') as handle:
            yaml.safe_dump(dict({'plugin': PLUGIN}, **(options or {})), handle)
            handle.write(extra_text)
        run_env = dict(self.env)
        for key, value in (env or {}).items():
            if value is None:
                run_env.pop(key, None)
            else:
                run_env[key] = value
        completed = subprocess.run(ansible_command('ansible-inventory') + ['-i', path] + list(args), env=run_env, cwd=self.workdir,
                                   capture_output=True, text=True, timeout=120, check=False)
        self.stderr = completed.stderr
        return completed

    def list(self, options: dict | None = None, env: dict | None = None, **kwargs) -> dict:
        completed = self.run(options, env, **kwargs)
        assert completed.returncode == 0, completed.stderr
        return plain(json.loads(completed.stdout))

    def fail(self, options: dict | None = None, env: dict | None = None, **kwargs) -> str:
        completed = self.run(options, env, **kwargs)
        assert completed.returncode != 0, completed.stdout
        return ' '.join(completed.stderr.split())


@pytest.fixture
def inventory(sim, tmp_path, collections_root):
    return Inventory(sim, str(tmp_path), collections_root)


def hosts_of(listing: dict) -> list[str]:
    return sorted(listing['_meta']['hostvars'])


def group(listing: dict, name: str) -> list[str]:
    return listing.get(name, {}).get('hosts', [])


def vm_uuid(sim, name: str) -> str:
    return sim.control.record('VM', name)['uuid']


def xapi_session(sim):
    session = sim.xenapi_session()
    session.xenapi.login_with_password('root', 'secret', '1.0', 'inventory-tests')
    return session


# -- hosts and host variables --------------------------------------------------------------------


def test_vms_are_hosts_with_their_variables(inventory, sim):
    config = example_config()
    config['vms'][0]['other_config'] = {'backup-schedule': 'nightly'}
    sim.control.load_config(yaml.safe_dump(config))
    listing = inventory.list()
    assert hosts_of(listing) == EXAMPLE_VMS
    web01 = listing['_meta']['hostvars']['web01']
    assert web01['xapi_vm_uuid'] == vm_uuid(sim, 'web01')
    assert web01['xapi_vm_name'] == 'web01'
    assert web01['xapi_power_state'] == 'Running'
    assert web01['xapi_tags'] == ['backup-daily']
    assert web01['xapi_pool_name'] == 'demo-pool'
    # VM.create adds a mac_seed when the record has none (ocaml/xapi/xapi_vm.ml), as on a real pool.
    other_config = dict(web01['xapi_other_config'])
    assert re.fullmatch('[0-9a-f-]{36}', other_config.pop('mac_seed'))
    assert other_config == {'backup-schedule': 'nightly'}
    assert list(listing['_meta']['hostvars']['db01']['xapi_other_config']) == ['mac_seed']
    assert web01['xapi_memory_static_max'] == 2 * 1024 ** 3 and web01['xapi_vcpus_max'] == 2
    assert [(disk['name'], disk['size'], disk['excluded'], disk['cbt_enabled']) for disk in web01['xapi_disks']] == [
        ('web01-root', 10 * 1024 ** 3, False, False), ('web01-data', 100 * 1024 ** 3, False, True)]
    assert web01['xapi_networks'][0]['mac'] == '02:16:3e:00:00:01'
    db01 = listing['_meta']['hostvars']['db01']
    assert [(disk['name'], disk['excluded']) for disk in db01['xapi_disks']] == [('db01-root', False), ('db01-scratch [NOBAK]', True)]
    assert all(disk['uuid'] and disk['sr_name'] == 'Local storage' for disk in db01['xapi_disks'])
    for variables in listing['_meta']['hostvars'].values():
        # The roles run on the controller: the plugin must not make Ansible log in to the VMs.
        assert not [key for key in variables if key.startswith('ansible_')]


def test_templates_snapshots_and_dom0_never_appear(inventory, sim):
    session = xapi_session(sim)
    try:
        web01 = session.xenapi.VM.get_by_name_label('web01')[0]
        session.xenapi.VM.snapshot(web01, 'web01-before-upgrade')
    finally:
        session.xenapi.session.logout()
    listing = inventory.list()
    assert hosts_of(listing) == EXAMPLE_VMS
    names = {variables['xapi_vm_name'] for variables in listing['_meta']['hostvars'].values()}
    assert not names & {'web01-before-upgrade', 'Debian Bookworm 12'}
    assert not [name for name in names if 'Control domain' in name or name.startswith('dom0')]


def test_plugin_groups(inventory):
    listing = inventory.list()
    assert group(listing, 'xapi_tag_backup_daily') == ['web01']
    assert group(listing, 'xapi_power_running') == ['web01']
    assert sorted(group(listing, 'xapi_power_halted')) == ['db01', 'small01']
    assert sorted(group(listing, 'xapi_pool_demo_pool')) == EXAMPLE_VMS


def test_group_prefix_and_group_by(inventory):
    listing = inventory.list({'group_prefix': 'xcp_', 'group_by': ['tags']})
    assert group(listing, 'xcp_tag_backup_daily') == ['web01']
    assert not [name for name in listing if name.startswith(('xapi_', 'xcp_power', 'xcp_pool'))]


def test_compose_groups_and_keyed_groups(inventory):
    listing = inventory.list({
        'compose': {'backup_bytes': "xapi_disks | rejectattr('excluded') | map(attribute='size') | sum",
                    'ansible_host': 'xapi_vm_name ~ ".lan"'},
        'groups': {'has_nobak_disk': "xapi_disks | selectattr('excluded') | list | length > 0"},
        'keyed_groups': [{'key': 'xapi_power_state | lower', 'prefix': 'state'},
                         {'key': 'xapi_tags', 'prefix': 'tag', 'separator': '__'}],
    })
    hostvars = listing['_meta']['hostvars']
    assert hostvars['db01']['backup_bytes'] == 8 * 1024 ** 3
    assert hostvars['web01']['backup_bytes'] == 110 * 1024 ** 3
    assert hostvars['small01']['ansible_host'] == 'small01.lan'
    assert group(listing, 'has_nobak_disk') == ['db01']
    assert group(listing, 'state_running') == ['web01']
    assert sorted(group(listing, 'state_halted')) == ['db01', 'small01']
    assert group(listing, 'tag__backup_daily') == ['web01']


def test_strict_reports_a_broken_compose(inventory):
    options = {'compose': {'broken': 'no_such_variable.attribute'}}
    listing = inventory.list(options)
    assert hosts_of(listing) == EXAMPLE_VMS and 'broken' not in listing['_meta']['hostvars']['web01']
    message = inventory.fail(dict(options, strict=True))
    assert 'Could not set broken for host' in message


# -- selecting VMs -------------------------------------------------------------------------------


def pool_with_extra_vms(*vms: dict) -> dict:
    config = copy.deepcopy(example_config())
    config['vms'].extend(vms)
    return config


def test_tag_and_power_state_selection(inventory, sim):
    sim.control.load_config(yaml.safe_dump(pool_with_extra_vms(
        {'name': 'scratch01', 'power_state': 'Running', 'tags': ['xo:no-bak', 'backup-daily']})))
    assert hosts_of(inventory.list()) == ['db01', 'scratch01', 'small01', 'web01']
    listing = inventory.list({'exclude_tags': ['xo:no-bak']})
    assert hosts_of(listing) == EXAMPLE_VMS
    assert hosts_of(inventory.list({'include_tags': ['backup-daily'], 'exclude_tags': ['xo:no-bak']})) == ['web01']
    assert hosts_of(inventory.list({'power_states': ['Halted']})) == ['db01', 'small01']
    listing = inventory.list()
    assert group(listing, 'xapi_tag_xo_no_bak') == ['scratch01']


def test_jinja_filters(inventory):
    listing = inventory.list({'filters': ["xapi_disks | selectattr('excluded') | list | length == 0",
                                          "xapi_vm_name is match('s|w')"]})
    assert hosts_of(listing) == ['small01', 'web01']
    message = inventory.fail({'filters': ['no_such_variable > 1']})
    assert "filter 'no_such_variable > 1' failed for VM db01" in message


def test_duplicate_names_never_collide(inventory, sim):
    sim.control.load_config(yaml.safe_dump(pool_with_extra_vms({'name': 'web01', 'power_state': 'Halted'})))
    uuids = sorted(record['uuid'] for record in (sim.control.record('VM', ref) for ref in xapi_vm_refs(sim, 'web01')))
    listing = inventory.list()
    assert hosts_of(listing) == ['db01', 'small01'] + ['web01_%s' % uuid for uuid in uuids]
    assert "2 VMs are named 'web01': VM %s is named web01_%s" % (uuids[0], uuids[0]) in ' '.join(inventory.stderr.split())
    for uuid in uuids:
        assert listing['_meta']['hostvars']['web01_%s' % uuid]['xapi_vm_uuid'] == uuid
    # Leaving one of them out removes the clash.
    assert hosts_of(inventory.list({'power_states': ['Running']})) == ['web01']


def xapi_vm_refs(sim, name: str) -> list[str]:
    session = xapi_session(sim)
    try:
        return session.xenapi.VM.get_by_name_label(name)
    finally:
        session.xenapi.session.logout()


def test_pool_data_is_never_templated(inventory, sim):
    # Names and tags come from whoever may edit VMs in the pool: they must stay plain text.
    sim.control.load_config(yaml.safe_dump(pool_with_extra_vms({'name': '{{ 6 * 7 }}', 'tags': ["{{ lookup('env', 'HOME') }}"]})))
    listing = inventory.list({'compose': {'shown': 'xapi_vm_name', 'first_tag': 'xapi_tags | first | default("")'}})
    variables = listing['_meta']['hostvars']['{{ 6 * 7 }}']
    assert variables['shown'] == '{{ 6 * 7 }}' and variables['first_tag'] == "{{ lookup('env', 'HOME') }}"


def test_hostnames_by_uuid(inventory, sim):
    listing = inventory.list({'hostnames': 'uuid'})
    assert hosts_of(listing) == sorted(vm_uuid(sim, name) for name in EXAMPLE_VMS)
    assert group(listing, 'xapi_tag_backup_daily') == [vm_uuid(sim, 'web01')]


# -- connection options and errors ---------------------------------------------------------------


def test_connection_from_the_file_beats_the_environment(inventory, sim):
    options = {'hostname': sim.url, 'username': 'backup', 'password': 'backup-pass', 'ca_path': sim.ca_path}
    env = {'XENSERVER_HOST': 'https://127.0.0.1:1', 'XENSERVER_USER': 'nobody', 'XENSERVER_PASSWORD': 'wrong', 'XENSERVER_CA_PATH': None}
    assert hosts_of(inventory.list(options, env)) == EXAMPLE_VMS


def test_vaulted_password_in_the_file(inventory, tmp_path):
    secret_file = tmp_path / 'vault-pass'
    secret_file.write_text('inventory-tests\n')
    encrypted = subprocess.run(ansible_command('ansible-vault') + ['encrypt_string', '--vault-password-file', str(secret_file),
                                                                   'backup-pass', '--name', 'password'],
                               env=inventory.env, capture_output=True, text=True, timeout=60, check=True).stdout
    listing = inventory.list({'username': 'backup'}, env={'XENSERVER_PASSWORD': 'wrong', 'XENSERVER_USER': None}, extra_text=encrypted,
                             args=('--list', '--vault-password-file', str(secret_file)))
    assert hosts_of(listing) == EXAMPLE_VMS


def test_blank_environment_values_count_as_unset(inventory):
    # AWX injects '' for credential fields left empty: '' must not mean "validate_certs: false" nor "ca_path: cwd".
    assert hosts_of(inventory.list(env={'XENSERVER_USER': '', 'XENSERVER_VALIDATE_CERTS': ''})) == EXAMPLE_VMS
    message = inventory.fail(env={'XENSERVER_VALIDATE_CERTS': '', 'XENSERVER_CA_PATH': ''})
    assert 'certificate verify failed' in message
    assert hosts_of(inventory.list(env={'XENSERVER_VALIDATE_CERTS': 'false', 'XENSERVER_CA_PATH': ''})) == EXAMPLE_VMS


def test_blank_values_in_the_file_count_as_unset(inventory, sim):
    blank = {'hostname': '', 'username': ' ', 'password': '', 'validate_certs': '', 'ca_path': ''}
    # The environment still applies to options left blank in the file.
    assert hosts_of(inventory.list(blank)) == EXAMPLE_VMS
    # Without it, the defaults apply: root, and certificates verified (against the system store here).
    message = inventory.fail(blank, env={'XENSERVER_CA_PATH': None, 'XENSERVER_USER': None})
    assert 'certificate verify failed' in message
    message = inventory.fail(blank, env={'XENSERVER_HOST': None})
    assert 'no pool to connect to' in message


def test_pool_member_redirects_to_the_coordinator(inventory, sim):
    # The member has its own certificate (as XAPI's gencert makes): trust the bundle of every host's.
    assert hosts_of(inventory.list(env={'XENSERVER_HOST': sim.slave_url, 'XENSERVER_CA_PATH': sim.ca_bundle_path})) == EXAMPLE_VMS


def test_wrong_password(inventory, sim):
    message = inventory.fail(env={'XENSERVER_PASSWORD': 'Not-The-Pa55word'})
    assert 'cannot read the pool %s' % sim.url.rstrip('/') in message
    assert 'login failed for user root on host 127.0.0.1: check username and password' in message
    assert 'XENSERVER_USER and XENSERVER_PASSWORD' in message
    assert 'Not-The-Pa55word' not in message


def test_bad_certificate(inventory):
    message = inventory.fail(env={'XENSERVER_CA_PATH': None})
    assert 'certificate verify failed for host 127.0.0.1' in message
    assert 'option ca_path or XENSERVER_CA_PATH' in message


def test_missing_ca_file(inventory, tmp_path):
    message = inventory.fail(env={'XENSERVER_CA_PATH': str(tmp_path / 'absent.pem')})
    assert 'ca_path %s does not exist' % (tmp_path / 'absent.pem') in message
    assert 'give the path of the pool CA certificate (PEM) (option ca_path or XENSERVER_CA_PATH)' in message


def test_unreachable_pool(inventory):
    message = inventory.fail(env={'XENSERVER_HOST': 'https://127.0.0.1:1'})
    assert 'connection refused by 127.0.0.1:1' in message and 'option hostname or XENSERVER_HOST' in message


def test_no_pool_configured(inventory):
    message = inventory.fail(env={'XENSERVER_HOST': None})
    assert 'no pool to connect to: set hostname or the XENSERVER_HOST environment variable (option hostname or XENSERVER_HOST)' in message


def test_bad_hostname_points_to_the_option(inventory):
    message = inventory.fail(env={'XENSERVER_HOST': 'https://pool.example/some/path'})
    assert 'give only a host name or address, optionally with scheme and port (option hostname or XENSERVER_HOST)' in message


def test_file_name_must_end_in_xapi_yml(inventory):
    completed = inventory.run(name='pool.yml')
    assert completed.returncode != 0


# -- cache and AWX -------------------------------------------------------------------------------


def test_cache_serves_the_pool_until_flushed(inventory, sim, tmp_path):
    options = {'cache': True, 'cache_plugin': 'ansible.builtin.jsonfile', 'cache_connection': str(tmp_path / 'cache'),
               'cache_timeout': 3600}
    first = inventory.list(options)
    logins = sim.control.sessions()['logins']
    # Served from the cache: no login at all, so a now wrong password does not matter.
    assert inventory.list(options, env={'XENSERVER_PASSWORD': 'wrong'}) == first
    assert sim.control.sessions()['logins'] == logins
    message = inventory.fail(options, env={'XENSERVER_PASSWORD': 'wrong'}, args=('--list', '--flush-cache'))
    assert 'login failed for user root' in message


def test_stable_sorted_hosts_for_awx_job_slicing(inventory, sim):
    sim.control.load_config(yaml.safe_dump(pool_with_extra_vms(*[{'name': 'vm%02d' % number} for number in (7, 3, 11, 1)])))
    # AWX inventory updates run ansible-inventory --list --export with ANSIBLE_INVENTORY_UNPARSED_FAILED set.
    first = inventory.run(args=('--list', '--export'))
    second = inventory.run(args=('--list', '--export'))
    assert first.returncode == 0 and first.stdout == second.stdout
    listing = plain(json.loads(first.stdout))
    names = group(listing, 'xapi_pool_demo_pool')
    assert names == sorted(names) and len(names) == 7
    # A job split into 3 slices takes every 3rd host of the list: each VM lands in exactly one slice, every time.
    slices = [names[index::3] for index in range(3)]
    assert sorted(sum(slices, [])) == sorted(names)
    graph = inventory.run(args=('--graph',))
    assert graph.returncode == 0 and 'xapi_pool_demo_pool' in graph.stdout


# -- the plugin's helpers, directly --------------------------------------------------------------


@pytest.mark.parametrize('text, expected', [
    ('backup-daily', 'backup_daily'), ('xo:no-bak', 'xo_no_bak'), ('Prod 1', 'Prod_1'), ('ok_2', 'ok_2'), ('été', '_t_'),
])
def test_safe_group_part(text, expected):
    assert safe_group_part(text) == expected


def described(name, uuid):
    return {'xapi_vm_name': name, 'xapi_vm_uuid': uuid}


def test_assign_hostnames():
    vms = [described('b', 'u3'), described('a', 'u2'), described('a', 'u1'), described('', 'u0'), described('localhost', 'u4')]
    named, warnings = assign_hostnames(vms, 'name_label')
    assert [name for name, dummy in named] == ['a_u1', 'a_u2', 'b', 'localhost_u4', 'u0']
    assert len(warnings) == 4 and 'empty name label' in warnings[2] and "named 'localhost', which Ansible reserves" in warnings[3]
    named, warnings = assign_hostnames(vms, 'uuid')
    assert [name for name, dummy in named] == ['u0', 'u1', 'u2', 'u3', 'u4'] and not warnings


@pytest.mark.parametrize('name, accepted', [
    ('pool.xapi.yml', True), ('xapi.yaml', True), ('pool.yml', False), ('xapi.yml.bak', False),
])
def test_verify_file(tmp_path, name, accepted):
    path = tmp_path / name
    path.write_text('plugin: %s\n' % PLUGIN)
    assert InventoryModule().verify_file(str(path)) is accepted
