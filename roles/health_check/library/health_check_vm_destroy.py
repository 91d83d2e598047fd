#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role-private module of xapi.delta_backup.health_check: destroy the temporary VM and its disks."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: health_check_vm_destroy
short_description: Destroy the health check's temporary VM and its disks (private to the health_check role)
description:
  - Stops the VM (hard shutdown) when it is not halted, destroys it, then destroys the VDIs of its disks.
  - Refuses a VM whose name is not O(name_label), a template, a snapshot or the control domain, so that a wrong uuid never
    destroys anything else.
  - A VM that no longer exists is not an error (nothing changes).
options:
  vm:
    description: uuid of the temporary VM.
    type: str
    required: true
  name_label:
    description: The name the temporary VM must carry.
    type: str
    required: true
extends_documentation_fragment:
  - xapi.delta_backup.connection
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
"""

RETURN = r"""
destroyed_vdis:
  description: uuids of the VDIs destroyed (or that would be, in check mode).
  returned: always
  type: list
  elements: str
"""

from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import ModuleFailure, connect, new_module, run


def destroy_vm(module) -> dict:
    params = module.params
    with connect(module) as xapi:
        refs = xapi.call('VM.get_all_records_where', 'field "uuid"="%s"' % params['vm'].replace('"', ''))
        if not refs:
            return {'changed': False, 'destroyed_vdis': [], 'msg': 'VM %s does not exist (already destroyed)' % params['vm']}
        vm_ref, vm = next(iter(refs.items()))
        if vm.get('is_a_template') or vm.get('is_a_snapshot') or vm.get('is_control_domain'):
            raise ModuleFailure('refusing to destroy %s: it is a template, a snapshot or the control domain' % params['vm'])
        if vm.get('name_label') != params['name_label']:
            raise ModuleFailure('refusing to destroy %s: it is named %r, not %r' % (params['vm'], vm.get('name_label'), params['name_label']))
        vdis = []
        for vbd_ref in vm.get('VBDs') or []:
            vbd = xapi.call('VBD.get_record', vbd_ref)
            if vbd.get('type') == 'Disk' and vbd.get('VDI') not in (None, '', 'OpaqueRef:NULL'):
                vdis.append((vbd['VDI'], xapi.call('VDI.get_uuid', vbd['VDI'])))
        if not module.check_mode:
            if vm.get('power_state') != 'Halted':
                xapi.call('VM.hard_shutdown', vm_ref)
            xapi.call('VM.destroy', vm_ref)
            for vdi_ref, _uuid in vdis:
                xapi.call('VDI.destroy', vdi_ref)
        return {'changed': True, 'destroyed_vdis': [uuid for _ref, uuid in vdis]}


def main():
    module = new_module(dict(vm=dict(type='str', required=True), name_label=dict(type='str', required=True)))
    run(module, destroy_vm)


if __name__ == '__main__':
    main()
