#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: restored_vm_destroy
short_description: Destroy a VM that vm_restore created, with its restored disks
version_added: 0.1.0
description:
  - Destroys a VM created by M(xapi.delta_backup.vm_restore), for example the temporary VM of a restore test, and the disks that
    restore created for it. A running VM is shut down hard first.
  - Only such VMs are touched. A VM without the C(xapi_delta_backup:restored_from) key that vm_restore sets in its other_config is
    refused, as are templates, snapshots and the control domain, so a wrong uuid never destroys a production VM.
  - Disks attached to the VM later by hand (without the same C(restored_from) value) are detached with the VM but kept
    (RV(kept_vdis)).
  - A VM that no longer exists is not an error; nothing changes.
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
extends_documentation_fragment:
  - xapi.delta_backup.connection
  - xapi.delta_backup.attributes
  - xapi.delta_backup.attributes.action_group
attributes:
  check_mode:
    support: full
    details: Reports the VM and the disks that would be destroyed, and refuses what a real run would refuse.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Once the VM is gone, later runs report no change.
options:
  vm:
    description:
      - uuid of the restored VM, as RV(xapi.delta_backup.vm_restore#module:vm.uuid) returns it.
    type: str
    required: true
  name:
    description:
      - When set, the VM must also have this name, or nothing is destroyed. A second guard for automation that names its
        temporary VMs.
    type: str
"""

EXAMPLES = r"""
- name: Restore the newest backup of web01 to a temporary VM and start it
  xapi.delta_backup.vm_restore:
    repository: /mnt/backups
    vm: web01
    name: web01 [restore test]
    start: true
  delegate_to: localhost
  register: restored

- name: Destroy the temporary VM and its disks
  xapi.delta_backup.restored_vm_destroy:
    vm: "{{ restored.vm.uuid }}"
    name: web01 [restore test]
  delegate_to: localhost
"""

RETURN = r"""
vm:
  description: The VM.
  returned: always
  type: dict
  contains:
    uuid:
      description: Its uuid.
      type: str
      sample: 5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d
    existed:
      description: Whether it existed when the module ran.
      type: bool
      sample: true
    name_label:
      description: Its name.
      type: str
      returned: when it existed
      sample: web01 [restore test]
    restored_from:
      description: The backup it was restored from, C(<backed-up VM uuid>@<timestamp>).
      type: str
      returned: when it existed
      sample: 8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a@20261124T020000Z
    power_state:
      description: Its power state before it was destroyed.
      type: str
      returned: when it existed
      sample: Running
destroyed_vdis:
  description: The disks destroyed with it (in check mode, those that would be), each with C(uuid) and C(name_label).
  returned: always
  type: list
  elements: dict
  sample: [{"uuid": "0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b", "name_label": "web01-root"}]
kept_vdis:
  description: Disks attached to the VM that the restore did not create; they are kept.
  returned: always
  type: list
  elements: dict
  sample: []
error_code:
  description:
    - The kind of failure that ended the task, a stable lowercase name to test in C(failed_when) or C(rescue) instead of
      the message (for example C(invalid_option), C(repository_locked), C(invalid_vhd)).
    - The collection's C(docs/errors.md) lists every code, what it means and what to do.
  returned: failure
  type: str
  sample: vm_not_found
xapi_error:
  description:
    - The error XAPI itself returned (its C(ErrorDescription)), when the failure came from XAPI; C(error_code) is then
      C(xapi_error). Failures XAPI never reports (network, timeouts, transfers, VM lookups) come without it.
  returned: failure, when XAPI returned an error
  type: dict
  contains:
    code:
      description: XAPI's error code.
      type: str
      sample: VDI_IN_USE
    params:
      description: XAPI's error parameters, as text.
      type: list
      elements: str
      sample: ["OpaqueRef:0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b", "snapshot"]
"""

from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import connect, new_module, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.restore import destroy_restored_vm


def destroy(module) -> dict:
    with connect(module) as xapi:
        return destroy_restored_vm(xapi, module.params['vm'], name_label=module.params['name'], check_mode=module.check_mode)


def main():
    module = new_module(dict(
        vm=dict(type='str', required=True),
        name=dict(type='str'),
    ))
    run(module, destroy)


if __name__ == '__main__':
    main()
