# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The modules' one exit path: a real AnsibleModule, its printed JSON read back.

Each of our error types leaves through fail_json with its message (and the raw XAPI error for XAPI
ones); a result leaves through exit_json; permissions options are parsed or refused clearly.
"""

from __future__ import annotations

import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import ModuleFailure, new_module, parse_mode, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.store import open_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdChain
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

SECRET = 'not-to-be-seen-8c1f'
POOL = """
pool: {name: runner-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 1GiB, default: true}]
"""


def module_output(capsys, body, args=None, with_connection=False) -> tuple[int, dict]:
    """Run ``body`` through ``run`` in a real AnsibleModule; the exit status and the JSON it printed."""
    arguments = dict({'hostname': 'https://pool.example', 'password': SECRET}, **(args or {}))
    with patch_module_args(arguments):
        module = new_module({'path': {'type': 'str', 'default': '/nonexistent'}}, with_connection=with_connection)
        with pytest.raises(SystemExit) as leaving:
            run(module, body)
    out = capsys.readouterr().out
    assert SECRET not in out, 'the password reached the module output'
    return leaving.value.code, json.loads(out)


def test_a_result_leaves_through_exit_json(capsys):
    status, result = module_output(capsys, lambda module: {'changed': True, 'path': module.params['path'], 'echo': SECRET})
    assert status == 0 and result['changed'] is True and result['path'] == '/nonexistent'
    assert 'failed' not in result
    assert result['echo'] != SECRET  # no_log values are masked wherever they appear


def test_a_xapi_error_leaves_with_its_message_and_the_raw_error(capsys):
    with running_pool(POOL) as sim:
        with connect(sim) as xapi:
            status, result = module_output(capsys, lambda module: xapi.call('VM.get_by_uuid', '00000000-0000-4000-8000-000000000000'))
    assert status == 1 and result['failed'] is True
    assert 'no VM with uuid 00000000-0000-4000-8000-000000000000 exists' in result['msg']
    assert result['xapi_error'] == {'code': 'UUID_INVALID', 'params': ['VM', '00000000-0000-4000-8000-000000000000']}


def test_a_module_failure_leaves_with_its_message_and_details(capsys):
    def body(module):
        raise ModuleFailure('keep must be at least 1, got 0: set keep to how many backups to keep', keep=0)
    status, result = module_output(capsys, body)
    assert status == 1 and result['failed'] is True
    assert result['msg'] == 'keep must be at least 1, got 0: set keep to how many backups to keep' and result['keep'] == 0


def test_a_repository_error_leaves_with_its_message(capsys, tmp_path):
    missing = str(tmp_path / 'nowhere')
    status, result = module_output(capsys, lambda module: open_repository(missing))
    assert status == 1 and result['msg'] == '%s is not a backup repository: it does not exist' % missing


def test_a_vhd_error_leaves_with_its_message(capsys, tmp_path):
    not_vhd = tmp_path / 'plain.vhd'
    not_vhd.write_bytes(b'this is not a VHD' * 100)
    status, result = module_output(capsys, lambda module: VhdChain.from_paths([str(not_vhd)]))
    assert status == 1 and str(not_vhd) in result['msg'] and 'conectix' in result['msg']


def test_an_os_error_leaves_with_its_reason_and_file(capsys, tmp_path):
    missing = str(tmp_path / 'missing.json')
    status, result = module_output(capsys, lambda module: os.stat(missing))
    assert status == 1 and result['msg'] == 'No such file or directory: %s' % missing


def test_a_pool_facing_module_without_hostname_is_refused(capsys):
    with patch_module_args({}):
        with pytest.raises(SystemExit, match='^1$'):
            new_module({}, with_connection=True)
    result = json.loads(capsys.readouterr().out)
    assert result['failed'] is True
    assert result['msg'] == 'no pool given: set hostname (or the XENSERVER_HOST environment variable) to the pool coordinator'


@pytest.mark.parametrize('value, mode', [('0600', 0o600), (384, 0o600), ('750', 0o750), (' 0o700 ', 0o700), (0, 0), ('7777', 0o7777)])
def test_parse_mode_accepts_octal_text_and_integers(value, mode):
    assert parse_mode(value, 'file_mode') == mode


@pytest.mark.parametrize('value', ['0800', 'rw-------', '', None, True, -1, 0o10000, '17777'])
def test_parse_mode_refuses_other_values_saying_what_it_wants(value):
    with pytest.raises(ModuleFailure, match=r"^dir_mode must be octal permissions such as '0600', got %s$" % repr(value).replace('(', r'\(')):
        parse_mode(value, 'dir_mode')
