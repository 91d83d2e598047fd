#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm_info
short_description: List the VMs of a XAPI pool that can be backed up, with their disks
version_added: 0.1.0
description:
  - Lists the VMs of an XCP-ng or XenServer pool with their disks and networks, so that roles can
    choose what to back up.
  - Templates, snapshots and the control domain are never listed.
  - Disks whose name contains C([NOBAK]) are listed with RV(vms[].disks[].excluded=true).
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
extends_documentation_fragment:
  - xapi.delta_backup.connection
  - xapi.delta_backup.attributes
  - xapi.delta_backup.attributes.action_group
  - xapi.delta_backup.attributes.info_module
options:
  vms:
    description:
      - Only these VMs, each given by uuid or name label. A uuid beats a name.
      - Empty means every VM.
    type: list
    elements: str
    default: []
  tags:
    description:
      - Only VMs that carry every one of these tags.
    type: list
    elements: str
    default: []
  filter:
    description:
      - A JMESPath expression applied to the list of VMs (each shaped like RV(vms[])); it must return a list of VMs.
      - For example C([?power_state=='Running']) or C([?length(disks[?!excluded]) > `0`]).
    type: str
requirements:
  - XenAPI
  - jmespath (only with O(filter))
"""

EXAMPLES = r"""
- name: List the running VMs of the pool
  xapi.delta_backup.vm_info:
    hostname: pool.example.com
    username: root
    password: "{{ xapi_password }}"
    filter: "[?power_state=='Running']"
  delegate_to: localhost
  register: running

- name: The VMs tagged for nightly backups, connection taken from the environment
  xapi.delta_backup.vm_info:
    tags: [nightly]
  delegate_to: localhost
  register: nightly
"""

RETURN = r"""
vms:
  description: The VMs, sorted by name label then uuid; an empty list when none matches.
  returned: always
  type: list
  elements: dict
  contains:
    uuid:
      description: VM uuid.
      type: str
      sample: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    ref:
      description: XAPI reference of the VM (valid for this pool only).
      type: str
      sample: OpaqueRef:6f1c2d3e-4a5b-6c7d-8e9f-0a1b2c3d4e5f
    name_label:
      description: VM name.
      type: str
      sample: web01
    name_description:
      description: VM description.
      type: str
      sample: front web server
    power_state:
      description: C(Halted), C(Running), C(Paused) or C(Suspended).
      type: str
      sample: Running
    tags:
      description: The VM's tags.
      type: list
      elements: str
      sample: [nightly]
    other_config:
      description: The VM's other_config map.
      type: dict
      sample: {}
    memory_static_max:
      description: Memory in bytes.
      type: int
      sample: 2147483648
    vcpus_max:
      description: Maximum number of virtual CPUs.
      type: int
      sample: 2
    resident_on:
      description: Host reference where the VM runs, or C(OpaqueRef:NULL).
      type: str
      sample: OpaqueRef:NULL
    disks:
      description: The VM's disks (VBDs of type Disk with a VDI), by device number.
      type: list
      elements: dict
      contains:
        vdi_uuid:
          description: VDI uuid.
          type: str
          sample: 0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b
        vdi_ref:
          description: VDI reference.
          type: str
          sample: OpaqueRef:0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b
        name_label:
          description: VDI name.
          type: str
          sample: web01 system
        virtual_size:
          description: Virtual size in bytes.
          type: int
          sample: 10737418240
        sr_uuid:
          description: uuid of the SR holding the disk.
          type: str
          sample: 7a6b5c4d-3e2f-1a0b-9c8d-7e6f5a4b3c2d
        sr_name_label:
          description: Name of that SR.
          type: str
          sample: Local storage
        userdevice:
          description: Device number in the VM.
          type: str
          sample: "0"
        bootable:
          description: Whether the VBD is bootable.
          type: bool
          sample: true
        mode:
          description: C(RW) or C(RO).
          type: str
          sample: RW
        excluded:
          description: Whether the disk name contains C([NOBAK]), so backups leave it out.
          type: bool
          sample: false
        cbt_enabled:
          description: Whether changed block tracking is on.
          type: bool
          sample: false
    networks:
      description: The VM's network interfaces.
      type: list
      elements: dict
      contains:
        device:
          description: Interface number.
          type: str
          sample: "0"
        mac:
          description: MAC address.
          type: str
          sample: "aa:bb:cc:dd:ee:01"
        network_uuid:
          description: uuid of the network.
          type: str
          sample: 1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d
        network_name_label:
          description: Name of the network.
          type: str
          sample: Pool-wide network associated with eth0
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

import traceback

from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import ModuleFailure, connect, new_module, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.pool import PoolSnapshotOfRecords, select_vms

try:
    import jmespath
except ImportError:
    jmespath = None
    JMESPATH_IMPORT_ERROR = traceback.format_exc()
else:
    JMESPATH_IMPORT_ERROR = None


def apply_filter(vms: list[dict], expression: str) -> list[dict]:
    if jmespath is None:
        raise ModuleFailure('the jmespath Python library is required for filter: install jmespath on the controller',
                            error_code='missing_library', exception=JMESPATH_IMPORT_ERROR)
    try:
        selected = jmespath.search(expression, vms)
    except jmespath.exceptions.JMESPathError as error:
        raise ModuleFailure('filter %r is not a valid JMESPath expression: %s' % (expression, error)) from error
    if selected is None:
        return []
    if not isinstance(selected, list) or not all(isinstance(vm, dict) and 'uuid' in vm for vm in selected):
        raise ModuleFailure('filter %r must return a list of VMs (for example [?power_state==\'Running\']), not %s'
                            % (expression, type(selected).__name__))
    return selected


def list_vms(module) -> dict:
    with connect(module) as xapi:
        vms = PoolSnapshotOfRecords(xapi).backup_candidates()
    vms = select_vms(vms, module.params['vms'], module.params['tags'])
    if module.params['filter']:
        vms = apply_filter(vms, module.params['filter'])
    return {'changed': False, 'vms': vms}


def main():
    module = new_module(dict(
        vms=dict(type='list', elements='str', default=[]),
        tags=dict(type='list', elements='str', default=[]),
        filter=dict(type='str'),
    ))
    run(module, list_vms)


if __name__ == '__main__':
    main()
