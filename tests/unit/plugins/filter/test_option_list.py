# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The option_list filter: each form a list option arrives in (play, AWX survey text), and bad input.

The last test renders it through Ansible's own templar by its FQCN, as the roles use it.
"""

from __future__ import annotations

import pathlib
import sys

import pytest

from ansible.errors import AnsibleFilterError
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template
from ansible.utils.collection_loader import AnsibleCollectionConfig

from ansible_collections.xapi.delta_backup.plugins.filter.option_list import FilterModule, option_list


@pytest.mark.parametrize('value, expected', [
    (None, []),
    ('', []),
    ('   \n ', []),
    ([], []),
    (['web01', ' db01 ', ''], ['web01', 'db01']),
    (('web01', 'db01'), ['web01', 'db01']),
    ([5, 'db01'], ['5', 'db01']),
    ('web01', ['web01']),
    ('web01, db 01', ['web01', 'db 01']),
    ('web01\ndb01\n\n,app01,', ['web01', 'db01', 'app01']),
    ('["web01", " db01", ""]', ['web01', 'db01']),
    ('  [web01, web01]  ', ['web01', 'web01']),
    ('[]', []),
], ids=repr)
def test_forms_give_the_names_in_order(value, expected):
    assert option_list(value) == expected


def test_repeats_are_kept_for_the_caller_to_drop():
    assert option_list('a, b, a') == ['a', 'b', 'a']


@pytest.mark.parametrize('value, match', [
    ('[web01, db01', r'backup_vms: .*not a valid YAML list \(expected .*\); give a list such as'),
    (5, r'backup_vms: expected a list, or names separated by commas or new lines, not int 5'),
    ({'web01': 1}, r'backup_vms: expected a list.* not dict'),
])
def test_bad_input_names_the_option_and_the_fix(value, match):
    with pytest.raises(AnsibleFilterError, match=match):
        option_list(value, 'backup_vms')


def test_registered_under_its_name():
    assert FilterModule().filters() == {'option_list': option_list}


def test_roles_fqcn_through_the_templar(monkeypatch):
    # ansible-test units installs Ansible's collection finder before any import. A plain pytest run has
    # imported ansible_collections as a bare namespace package: install the finder and, for this test,
    # hide those modules so that the collection is imported through it.
    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader([str(pathlib.Path(__file__).resolve().parents[7])])
        for module_name in [name for name in sys.modules if name.split('.')[0] == 'ansible_collections']:
            monkeypatch.delitem(sys.modules, module_name)
    templar = Templar(loader=DataLoader(), variables={'backup_vms': 'web01,\n db01'})
    rendered = templar.template(trust_as_template("{{ backup_vms | xapi.delta_backup.option_list('backup_vms') }}"))
    assert rendered == ['web01', 'db01']
