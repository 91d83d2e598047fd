# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The roles' and playbooks' list options, read the same way wherever they are given.

AWX surveys send every variable as text, so a list option may arrive as a list, as a YAML list in
text, as comma or newline separated text, or blank (meaning the default, an empty list).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
---
name: option_list
short_description: A list option given as a list or as text, as a list of names
version_added: 0.1.0
description:
  - Reads a role or playbook option that holds a list of names (VMs, tags, repositories), however it was given.
  - A list stays a list; text that starts with C([) is read as a YAML list; other text is split at commas and
    new lines. A blank value (C(None) or empty text) gives an empty list.
  - Every item becomes text with its surrounding white space removed; empty items are dropped. Order and
    repeats are kept (add C(unique) when repeats must go).
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
options:
  _input:
    description: The option's value.
    type: raw
    required: true
  name:
    description: The option's name, used in the error raised for a value that is not a list.
    type: str
    default: the option
"""

EXAMPLES = r"""
- name: The VMs to back up, whether a survey sent "web01, db01" or a play gave a list
  ansible.builtin.set_fact:
    __backup_vms: "{{ backup_vms | xapi.delta_backup.option_list('backup_vms') }}"

# "web01, db01\n" -> ['web01', 'db01'];  '["web01", "db01"]' -> ['web01', 'db01'];  '' -> [];  None -> []
"""

RETURN = r"""
_value:
  description: The names, as text, in the order given, blank ones left out.
  type: list
  elements: str
"""

# Separators of the text form: a comma or a new line (names may contain spaces).
_TEXT_ITEM = re.compile(r'[^,\n]+')


def _builtin_type_name(value: Any) -> str:
    """The Python type a user would recognise (int, dict), not Ansible's tagged subclass of it."""
    return next(cls.__name__ for cls in type(value).__mro__ if cls.__module__ == 'builtins')


def option_list(value: Any, name: str = 'the option') -> list[str]:
    """Return the option's items as trimmed, non-empty strings (see DOCUMENTATION)."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith('['):
            try:
                items = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise AnsibleFilterError(
                    '%s: %r starts with "[" but is not a valid YAML list (%s); give a list such as ["a", "b"], '
                    'or names separated by commas or new lines' % (name, value, getattr(exc, 'problem', None) or exc)) from None
        else:
            items = _TEXT_ITEM.findall(text)
    else:
        items = value
    if not isinstance(items, (list, tuple)):
        raise AnsibleFilterError(
            '%s: expected a list, or names separated by commas or new lines, not %s %r'
            % (name, _builtin_type_name(items), items))
    names = (str(item).strip() for item in items)
    return [item for item in names if item]


class FilterModule:
    """The collection's filters."""

    def filters(self) -> dict[str, Any]:
        return {'option_list': option_list}
