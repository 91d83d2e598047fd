#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm_guest_wait
short_description: Wait until a running VM's guest agent reports, and return its addresses, OS and PV drivers
version_added: 0.2.0
description:
  - Waits until the VM runs and its guest agent (xe-guest-utilities on Linux, the PV tools on Windows) has reported to XAPI,
    that is until the VM's C(VM_guest_metrics) are live and show PV drivers. XAPI deletes them at every VM start, so what this module
    returns was reported by the VM's current boot.
  - With O(require_address=true), also waits until the agent reports an IPv4 address, for example to reach the VM
    with Ansible afterwards.
  - Fails with error code C(guest_agent_timeout) when the agent does not report within O(wait_timeout) seconds (the message
    names the VM and says what was last seen), and at once with C(vm_not_running) when the VM is halted or suspended.
  - Used by the role C(xapi.delta_backup.health_check) to prove that a restored VM boots its operating system.
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
extends_documentation_fragment:
  - xapi.delta_backup.connection
  - xapi.delta_backup.attributes
  - xapi.delta_backup.attributes.action_group
attributes:
  check_mode:
    support: full
    details: The module only reads; it waits and reports in check mode as in a real run.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Nothing is changed.
options:
  vm:
    description:
      - The VM, by uuid or name label. A uuid beats a name; a name several VMs share is refused.
    type: str
    required: true
  wait_timeout:
    description:
      - Seconds to wait for the guest agent. V(0) checks once without waiting.
    type: float
    default: 300
  require_address:
    description:
      - Also wait until the agent reports an IPv4 address.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Wait for the guest agent of the restored VM, with an address
  xapi.delta_backup.vm_guest_wait:
    vm: "{{ restored.vm.uuid }}"
    wait_timeout: 600
    require_address: true
  delegate_to: localhost
  register: agent

- name: Reach the restored VM over SSH
  ansible.builtin.add_host:
    name: restored-web01
    ansible_host: "{{ agent.guest_agent.ip }}"
"""

RETURN = r"""
vm:
  description: The VM.
  returned: success
  type: dict
  contains:
    uuid:
      description: Its uuid.
      type: str
      sample: 7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f
    name_label:
      description: Its name.
      type: str
      sample: web01 [health check 20261124T020000Z]
    power_state:
      description: Its power state (always C(Running) on success).
      type: str
      sample: Running
  sample: {"uuid": "7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f", "name_label": "web01 [health check 20261124T020000Z]", "power_state": "Running"}
guest_agent:
  description: What the guest agent reported.
  returned: success
  type: dict
  contains:
    seen:
      description: Whether a guest agent with PV drivers reported (always true on success).
      type: bool
      sample: true
    os_version:
      description: The OS as the agent reports it (C(name), C(distro), C(major), C(minor), C(uname)...).
      type: dict
      sample: {"name": "Debian GNU/Linux 12", "distro": "debian", "major": "12", "minor": "4"}
    pv_drivers_version:
      description: Version of the PV drivers (C(major), C(minor), C(micro), C(build)).
      type: dict
      sample: {"major": "9", "minor": "3", "micro": "3"}
    pv_drivers_detected:
      description: Whether XAPI detected PV drivers.
      type: bool
      sample: true
    networks:
      description: The agent's C(networks) map, as XAPI returns it (C(<VIF device>/ip), C(<VIF device>/ipv4/<n>), C(<VIF device>/ipv6/<n>)).
      type: dict
      sample: {"0/ip": "192.0.2.10", "0/ipv4/0": "192.0.2.10"}
    addresses:
      description: The IPv4 addresses reported, in VIF order.
      type: list
      elements: str
      sample: ["192.0.2.10"]
    ip:
      description: The first of RV(guest_agent.addresses), or null.
      type: str
      sample: 192.0.2.10
waited:
  description: Seconds spent waiting.
  returned: success
  type: float
  sample: 12.5
error_code:
  description:
    - The kind of failure that ended the task, a stable lowercase name to test in C(failed_when) or C(rescue) instead of
      the message (for example C(guest_agent_timeout), C(vm_not_running), C(vm_not_found)).
    - The collection's C(docs/errors.md) lists every code, what it means and what to do.
  returned: failure
  type: str
  sample: guest_agent_timeout
xapi_error:
  description:
    - The error XAPI itself returned (its C(ErrorDescription)), when the failure came from XAPI; C(error_code) is then
      C(xapi_error).
  returned: failure, when XAPI returned an error
  type: dict
  contains:
    code:
      description: XAPI's error code.
      type: str
      sample: HANDLE_INVALID
    params:
      description: XAPI's error parameters, as text.
      type: list
      elements: str
      sample: ["VM", "OpaqueRef:0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b"]
"""

from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import ModuleFailure, connect, new_module, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.guest import wait_for_guest_agent


def wait(module) -> dict:
    timeout = module.params['wait_timeout']
    if timeout < 0:
        raise ModuleFailure('wait_timeout must be 0 or more seconds, not %s' % timeout)
    with connect(module) as xapi:
        result = wait_for_guest_agent(xapi, module.params['vm'], timeout, require_address=module.params['require_address'])
    return dict(result, changed=False)


def main():
    module = new_module(dict(
        vm=dict(type='str', required=True),
        wait_timeout=dict(type='float', default=300),
        require_address=dict(type='bool', default=False),
    ))
    run(module, wait)


if __name__ == '__main__':
    main()
