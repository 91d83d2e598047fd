#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm_snapshot
short_description: Take a backup job's snapshot of a VM and keep only the job's reference snapshot
version_added: 0.1.0
description:
  - With O(state=present), takes the job's backup snapshot of a VM. Disks whose name contains C([NOBAK])
    are left out (XAPI's C(ignore_vdis); on XAPI before 21.4.0, which lacks it, their VBDs and VDIs are destroyed
    in the snapshot right after it is taken, see RV(excluded_by)). The snapshot VM and its disks are tagged in C(other_config) with
    the job, the VM and the date and time (Xen Orchestra's C(xo:backup:*) keys).
  - Reports the job's B(reference snapshot), its newest snapshot marked exported by
    M(xapi.delta_backup.delta_export), which is the base of the next delta export.
  - Removes the job's other snapshots of the VM, but always keeps the reference snapshot and the one just
    taken. Snapshots that do not carry this job's tags (manual snapshots, other jobs) are never touched.
  - With O(state=pruned), takes nothing and only removes the job's snapshots other than the reference; run it
    after an export (the newly exported snapshot becomes the reference) and after a failure (an unexported
    snapshot is removed, the previous reference stays so that the next run is still a delta).
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
extends_documentation_fragment:
  - xapi.delta_backup.connection
  - xapi.delta_backup.attributes
  - xapi.delta_backup.attributes.action_group
attributes:
  check_mode:
    support: full
    details: Reports the snapshot that would be taken and the snapshots that would be removed, changes nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details: O(state=present) takes a new snapshot on every run by design; O(state=pruned) is idempotent.
options:
  vm:
    description:
      - The VM, by uuid or name label. A uuid beats a name; a name shared by several VMs is refused.
    type: str
    required: true
  job:
    description:
      - Name of the backup job. The job id stored in the tags (and in the repository) is derived from it,
        so renaming a job starts a new chain.
    type: str
    required: true
  state:
    description:
      - V(present) takes a snapshot then prunes; V(pruned) only prunes.
    type: str
    choices: [present, pruned]
    default: present
  snapshot_timeout:
    description:
      - Seconds to wait for XAPI to take the snapshot; the XAPI task is cancelled after that.
    type: float
    default: 1800
  repositories:
    description:
      - The job's backup repositories. The repository is the truth about what was exported; when the job's newest backup
        in one of them holds a snapshot that is not marked exported (a run killed between writing the backup and marking
        its snapshot), that snapshot becomes the reference snapshot instead of being removed, so the next export is a delta.
      - Paths that hold no repository yet are ignored.
    type: list
    elements: path
    default: []
    version_added: 0.2.0
  block_migrations:
    description:
      - With O(state=present), block C(pool_migrate) and C(migrate_send) on the VM (XAPI C(blocked_operations), with a reason
        naming the job) until O(state=pruned) runs for the job. O(state=pruned) removes the blocks of this job, also those
        left by a killed run. Blocks set by anyone else are never changed or removed.
    type: bool
    default: true
    version_added: 0.2.0
  max_uncoalesced_vdis:
    description:
      - VDI chain protection, as in Xen Orchestra. With O(state=present), when a disk's VHD chain holds more than this many
        base copies waiting for the SR to coalesce them (or is one snapshot away from the SR's chain limit of 30), no
        snapshot is taken and RV(skipped) is true with RV(skip_reason). The default is Xen Orchestra's.
    type: int
    default: 1
    version_added: 0.2.0
  memory:
    description:
      - With O(state=present), take a checkpoint (XAPI C(VM.checkpoint), a snapshot with the memory) of a running VM instead
        of a plain snapshot, so that M(xapi.delta_backup.delta_export) also exports its memory image and
        M(xapi.delta_backup.vm_restore) can bring the VM back suspended. XAPI suspends the VM for the time of the
        checkpoint (the guest pauses for as long as writing its memory takes) and resumes it.
      - A running VM tagged C(xo-memory-backup) is checkpointed too, as Xen Orchestra does.
      - A VM that is suspended is always checkpointed, whatever this says, since its memory image is copied without touching it
        (a plain snapshot of a suspended VM has no memory).
      - A VM with C([NOBAK]) disks gets a plain snapshot without its memory (RV(memory_skipped_reason) says so). C(VM.checkpoint) has
        no C(ignore_vdis), XAPI refuses to destroy the still attached VBDs of a checkpoint, and a memory image resumed without one
        of its disks would lose it under the guest.
    type: bool
    default: false
    version_added: 0.2.0
requirements:
  - XenAPI
"""

EXAMPLES = r"""
- name: Take the nightly job's snapshot of web01
  xapi.delta_backup.vm_snapshot:
    hostname: pool.example.com
    password: "{{ xapi_password }}"
    vm: web01
    job: nightly
  delegate_to: localhost
  register: backup_snapshot

- name: After the export, keep only the job's reference snapshot
  xapi.delta_backup.vm_snapshot:
    vm: "{{ backup_snapshot.vm.uuid }}"
    job: nightly
    state: pruned
  delegate_to: localhost
"""

RETURN = r"""
vm:
  description: The VM.
  returned: always
  type: dict
  contains:
    uuid:
      description: VM uuid.
      type: str
      sample: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    name_label:
      description: VM name.
      type: str
      sample: web01
  sample: {"uuid": "5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d", "name_label": "web01"}
job_id:
  description: The job id derived from O(job), as stored in the tags and the repository.
  returned: always
  type: str
  sample: 8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a
snapshot:
  description: The snapshot taken (O(state=present)); in check mode its C(uuid) is null. Null with O(state=pruned).
  returned: always
  type: dict
  contains:
    uuid:
      description: uuid of the snapshot VM.
      type: str
      sample: 2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f
    name_label:
      description: Name of the snapshot VM.
      type: str
      sample: "[delta_backup nightly] web01"
    datetime:
      description: The job's date and time tag, C(%Y%m%dT%H:%M:%SZ), UTC.
      type: str
      sample: "20261126T02:00:00Z"
    exported:
      description: Whether every disk of the snapshot has been exported.
      type: bool
      sample: false
    delta_chain_length:
      description: Deltas since the last full, as recorded at export.
      type: int
      sample: 0
    disks:
      description: The snapshot's disks.
      type: list
      elements: dict
      contains:
        vdi_uuid:
          description: uuid of the snapshot VDI.
          type: str
          sample: 3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a
        live_vdi_uuid:
          description: uuid of the VM's disk it was taken of.
          type: str
          sample: 0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b
        virtual_size:
          description: Virtual size in bytes.
          type: int
          sample: 10737418240
        name_label:
          description: Disk name.
          type: str
          sample: web01 system
        userdevice:
          description: Device number.
          type: str
          sample: "0"
reference_snapshot:
  description:
    - The job's reference snapshot before this call (newest exported), shaped like RV(snapshot); null when the job has none,
      in which case the next export is a full.
  returned: always
  type: dict
  sample: null
removed_snapshots:
  description: uuids of the job's snapshot VMs removed (or that would be, in check mode), with their disks.
  returned: always
  type: list
  elements: str
  sample: ["9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"]
removed_orphan_disks:
  description:
    - uuids of snapshot VDIs of the job whose snapshot VM is gone (a prune interrupted between removing the VM and
      its disks), removed (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: []
excluded_disks:
  description: The VM's disks left out because their name contains C([NOBAK]).
  returned: always
  type: list
  elements: dict
  sample: [{"vdi_uuid": "4e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b", "name_label": "scratch [NOBAK]", "userdevice": "1"}]
excluded_by:
  description:
    - How the C([NOBAK]) disks were left out of the snapshot taken. V(ignore_vdis) (XAPI 21.4.0 and later),
      V(removed_after_snapshot) (older XAPI, such as XCP-ng 8.2 LTS, has no C(ignore_vdis), so their snapshot VBDs and
      VDIs were destroyed right after the snapshot, as Xen Orchestra does), or null when there was none to leave out.
  returned: always
  type: str
  sample: ignore_vdis
  version_added: 0.2.0
adopted_snapshot:
  description:
    - uuid of a job snapshot that was not marked exported but whose disks the newest backup of O(repositories) holds; it
      was marked exported and is now the reference snapshot. Null when none.
  returned: always
  type: str
  sample: null
  version_added: 0.2.0
removed_export_vbds:
  description:
    - Control-domain VBDs on the job's snapshot disks, left by an export that crashed, unplugged and destroyed (or that
      would be, in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    vbd_uuid:
      description: uuid of the VBD.
      type: str
    vdi_uuid:
      description: uuid of the snapshot VDI it plugged.
      type: str
    currently_attached:
      description: Whether it was still plugged.
      type: bool
  sample: []
  version_added: 0.2.0
skipped:
  description: True when VDI chain protection (O(max_uncoalesced_vdis)) kept the snapshot from being taken.
  returned: always
  type: bool
  sample: false
  version_added: 0.2.0
skip_reason:
  description: Why the snapshot was not taken (C(Job canceled to protect the VDI chain) and the disks concerned); null otherwise.
  returned: always
  type: str
  sample: null
  version_added: 0.2.0
blocked_operations:
  description: The operations blocked on the VM by this call (O(block_migrations)).
  returned: always
  type: list
  elements: str
  sample: [pool_migrate, migrate_send]
  version_added: 0.2.0
kept_blocked_operations:
  description: Blocks of these operations set by someone else, left as they are (operation to reason).
  returned: always
  type: dict
  sample: {}
  version_added: 0.2.0
unblocked_operations:
  description: The operations this job had blocked and O(state=pruned) unblocked.
  returned: always
  type: list
  elements: str
  sample: [migrate_send, pool_migrate]
  version_added: 0.2.0
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
checkpoint:
  description:
    - Whether the snapshot taken is (or, in check mode, would be) a checkpoint with the VM's memory image (O(memory), or a
      suspended VM). False with O(state=pruned) and when no snapshot was taken.
  returned: always
  type: bool
  sample: false
  version_added: 0.2.0
memory_skipped_reason:
  description:
    - Why no checkpoint was taken although O(memory) asked for one or the VM is suspended (the VM has C([NOBAK]) disks); null
      otherwise.
  returned: always
  type: str
  sample: null
  version_added: 0.2.0
"""

from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import ModuleFailure, connect, new_module, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import existing_repositories, manage_job_snapshots


def snapshot_vm(module) -> dict:
    params = module.params
    if params['max_uncoalesced_vdis'] < 0:
        raise ModuleFailure('max_uncoalesced_vdis must be 0 or more (Xen Orchestra uses 1), got %d' % params['max_uncoalesced_vdis'])
    repositories = existing_repositories(params['repositories'])
    with connect(module) as xapi:
        return manage_job_snapshots(xapi, params['vm'], Job(params['job']), take=params['state'] == 'present',
                                    check_mode=module.check_mode, timeout=params['snapshot_timeout'], repositories=repositories,
                                    block_migrations_while_backing_up=params['block_migrations'],
                                    max_uncoalesced_vdis=params['max_uncoalesced_vdis'], memory=params['memory'])


def main():
    module = new_module(dict(
        vm=dict(type='str', required=True),
        job=dict(type='str', required=True),
        state=dict(type='str', choices=['present', 'pruned'], default='present'),
        snapshot_timeout=dict(type='float', default=1800),
        repositories=dict(type='list', elements='path', default=[]),
        block_migrations=dict(type='bool', default=True),
        max_uncoalesced_vdis=dict(type='int', default=1),
        memory=dict(type='bool', default=False),
    ))
    run(module, snapshot_vm)


if __name__ == '__main__':
    main()
