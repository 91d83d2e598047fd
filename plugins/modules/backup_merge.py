#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_merge
short_description: Apply retention to a job's backups in a repository by merging old deltas into the full
version_added: 0.1.0
description:
  - Keeps the newest O(keep) backups (restore points) of a job for one VM, or for every VM of the job in the repository.
  - Older points are retired the continuous way, as Xen Orchestra does. Their metadata is removed first. Then the full and the
    deltas up to the oldest kept point are merged into one file, which takes over the identity and the file name of the newest merged
    delta. No new full is ever exported for retention.
  - The metadata of the oldest kept point is updated. The merged file's block checksums are recorded, its C(size) is recomputed, and
    C(isVhdDifferencing) becomes false for the new full.
  - The cost follows what changed, not the disk size. Before merging, every file of the chain is checked for its structure and for the
    identity, footer, header and BAT recorded in its block checksum file (a few KiB per file), and every block of the deltas is read and
    checked against its checksum. The full's data is not read. A chain that fails is refused before anything changes, and the error names
    the file, and for a damaged block its number and virtual offset.
  - The merge keeps the merged file's block checksum file (C(<name>.vhd.blocksums)) true, crash-safely. Entries of the blocks the deltas
    provide are updated, the others are kept.
  - Files written before block checksums (a sha256 per whole file in the metadata) are migrated when a merge first touches their chain.
    Each such file is read once, its sha256 checked and its block checksums written in the same pass, so that one merge reads the chain
    once. A file whose sha256 does not match is refused, named. See RV(vms[].migrated).
  - The merge is crash-safe. If it is killed at any instant, every point the run was keeping stays restorable. A merge that a crash left
    unfinished is detected and finished before anything else, even when nothing is left to retire.
  - Takes the repository lock of each VM while it works on it.
  - Does not talk to the pool. The connection options are accepted so that C(module_defaults) for the C(xapi) group apply, and they are ignored.
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
extends_documentation_fragment:
  - xapi.delta_backup.connection
  - xapi.delta_backup.attributes
  - xapi.delta_backup.attributes.action_group
attributes:
  check_mode:
    support: full
    details: Reports the points that would be removed, the files that would be merged and deleted, and the bytes to merge. The chains
      are checked as in a real run, and nothing is written.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A second run with the same O(keep) finds nothing to merge or remove.
options:
  repository:
    description:
      - Path of the backup repository (a local or mounted file system holding C(xo-vm-backups)).
    type: path
    required: true
  job:
    description:
      - Name of the backup job, as given to M(xapi.delta_backup.delta_export). Only that job's backups are considered.
    type: str
    required: true
  vm:
    description:
      - uuid of the backed-up VM, or its name at its newest backup (the VM may no longer exist).
      - By default, every VM of the repository that has backups of O(job).
    type: str
  keep:
    description:
      - How many of the newest backups to keep for each VM. At least V(1).
    type: int
    required: true
requirements:
  - XenAPI (imported by the shared connection code, not used to connect)
"""

EXAMPLES = r"""
- name: Keep the 7 newest nightly backups of every VM
  xapi.delta_backup.backup_merge:
    repository: /mnt/backups
    job: nightly
    keep: 7
  delegate_to: localhost

- name: See what retention would do to web01
  xapi.delta_backup.backup_merge:
    repository: /mnt/backups
    job: nightly
    vm: web01
    keep: 3
  check_mode: true
  delegate_to: localhost
  register: plan
"""

RETURN = r"""
job_id:
  description: The job id derived from O(job).
  returned: always
  type: str
  sample: 8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a
vms:
  description: What was done (or, in check mode, would be done) for each VM.
  returned: always
  type: list
  elements: dict
  contains:
    vm_uuid:
      description: uuid of the backed-up VM.
      type: str
      sample: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    kept_points:
      description: Timestamps of the kept backups, oldest first.
      type: list
      elements: str
      sample: ["20261124T020000Z", "20261125T020000Z"]
    removed_points:
      description: Timestamps of the retired backups, whose metadata was removed.
      type: list
      elements: str
      sample: ["20261123T020000Z"]
    merged:
      description: One entry per disk whose chain was merged.
      type: list
      elements: dict
      contains:
        vdi_uuid:
          description: uuid of the live disk (the disk folder).
          type: str
          sample: 0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b
        point:
          description: Timestamp of the oldest kept backup, now a full.
          type: str
          sample: "20261124T020000Z"
        full:
          description: The full VHD that received the deltas, relative to the VM folder.
          type: str
          sample: vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b/20261123T020000Z.vhd
        deltas:
          description: The deltas merged into it, oldest first.
          type: list
          elements: str
          sample: ["vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b/20261124T020000Z.vhd"]
        result:
          description: Name of the merged full (the newest delta's name).
          type: str
          sample: vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b/20261124T020000Z.vhd
        bytes:
          description: Bytes of the blocks the deltas hold, which the merge reads and writes.
          type: int
          sample: 16777216
    removed_files:
      description: VHD files that no kept backup needed and that were deleted.
      type: list
      elements: str
      sample: []
    resumed_merges:
      description: State files of merges a crash had left unfinished, which were finished first.
      type: list
      elements: str
      sample: []
    reconciled:
      description: VHDs merged by an interrupted run whose metadata was brought up to date.
      type: list
      elements: str
      sample: []
    migrated:
      description:
        - VHDs written before block checksums (with a whole-file sha256) that this run read once, checked and gave their block checksum
          file, relative to the VM folder. Later merges of these files read only what changed.
        - Empty once a repository is migrated, and always in check mode.
      type: list
      elements: str
      sample: ["vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b/20261123T020000Z.vhd"]
    foreign_merges:
      description:
        - Merges another tool (Xen Orchestra's retention on a shared repository) made of this job's chains, found before planning.
        - Each is checked block by block for the blocks it wrote (each must equal the newest merged child's block, recorded in
          that child's block checksums); one that checks out gets its block checksum file (not in check mode) and is no damage,
          one that does not stays damage (RV(vms[].foreign_merges[].ok) false) and the chain reading it is refused.
      type: list
      elements: dict
      contains:
        file:
          description: The merged file, relative to the VM folder.
          type: str
        merged_from:
          description: Names of the files merged into it, the rewritten parent first.
          type: list
          elements: str
        blocks_checked:
          description: Blocks read and compared.
          type: int
        unknown_blocks:
          description: Blocks whose content could not be predicted from whole-block checksums (left unknown).
          type: list
          elements: int
        ok:
          description: Whether every block checked matched.
          type: bool
        problems:
          description: What did not match, each naming file and block.
          type: list
          elements: str
      sample: [{"file": "vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b/20261124T020000Z.vhd",
                "merged_from": ["20261123T020000Z.vhd", "20261124T020000Z.vhd"], "blocks_checked": 12, "unknown_blocks": [],
                "ok": true, "problems": []}]
    bytes_merged:
      description: Total of RV(vms[].merged[].bytes) for this VM.
      type: int
      sample: 16777216
    duration:
      description: Seconds spent on this VM.
      type: float
      sample: 1.42
merged_points:
  description: Number of disk chains merged, over all VMs.
  returned: always
  type: int
  sample: 2
removed_points:
  description: Number of backups retired, over all VMs.
  returned: always
  type: int
  sample: 3
bytes_merged:
  description: Bytes moved by the merges, over all VMs.
  returned: always
  type: int
  sample: 33554432
duration:
  description: Seconds the whole run took.
  returned: always
  type: float
  sample: 2.7
error_code:
  description:
    - The kind of failure that ended the task, a stable lowercase name to test in C(failed_when) or C(rescue) instead of
      the message (for example C(invalid_option), C(repository_locked), C(invalid_vhd)).
    - The collection's C(docs/errors.md) lists every code, what it means and what to do.
  returned: failure
  type: str
  sample: repository_locked
"""

from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import new_module, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.repositories import open_repository, resolve_backup_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.retention import job_vms, retention_for_vms


def merge_backups(module) -> dict:
    params = module.params
    repo = open_repository(params['repository'])
    job = Job(params['job'])
    vm_uuids = [resolve_backup_vm(repo, params['vm'])] if params['vm'] else job_vms(repo, job)
    return retention_for_vms(repo, vm_uuids, job, params['keep'], check_mode=module.check_mode)


def main():
    # new_module adds the connection options (accepted, ignored) so that group/xapi module_defaults apply.
    spec = dict(
        repository=dict(type='path', required=True),
        job=dict(type='str', required=True),
        vm=dict(type='str'),
        keep=dict(type='int', required=True),
    )
    module = new_module(spec, with_connection=False)
    run(module, merge_backups)


if __name__ == '__main__':
    main()
