#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_info
short_description: List and verify the backups held by a backup repository
version_added: 0.1.0
description:
  - Lists the jobs, VMs and backup points of a repository laid out like Xen Orchestra's delta backups,
    with each disk's VHD chain (newest file first, down to the full) and sizes.
  - With O(verify=true), reads every VHD once and hashes on every core, checking each block against the
    checksum recorded next to the file when it was written (its C(.vhd.blocksums) file), and its footer,
    header and block table; files written by versions before block checksums are checked by their whole-file
    SHA-256. It checks every chain structurally (footers, headers, block tables, bitmaps, parent identities,
    sizes) and reports every problem found, each naming the file; a damaged block is named by its number and
    virtual offset, with every backup point that reads it (RV(damaged_blocks)).
  - A file merged by another tool (Xen Orchestra's retention on a shared repository) is checked block by block
    against the checksums of the files it was merged from and listed in RV(foreign_merges), not as damage
    unless a block does not match. Verification changes nothing; M(xapi.delta_backup.backup_merge) records
    such a merge as checked, and until then restores and merges refuse the file.
  - Needs no connection to a pool; run it wherever the repository is mounted. The connection options are accepted
    (so that C(module_defaults) for the collection's action group applies to it) and ignored.
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
extends_documentation_fragment:
  - xapi.delta_backup.connection
  - xapi.delta_backup.attributes
  - xapi.delta_backup.attributes.action_group
  - xapi.delta_backup.attributes.info_module
options:
  repository:
    description:
      - Path of the backup repository (the folder holding C(xo-vm-backups)).
    type: path
    required: true
  vm:
    description:
      - Only this VM, by uuid or by the name recorded in its newest backup.
    type: str
  job:
    description:
      - Only the backups of this job (by name).
    type: str
  verify:
    description:
      - Read and check every block of every file and every chain. Reads every byte of the repository's VHDs.
    type: bool
    default: false
  fail_on_problems:
    description:
      - With O(verify=true), fail when a problem is found (the result still lists them all).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: What does the repository hold?
  xapi.delta_backup.backup_info:
    repository: /mnt/backups/near
  register: catalog

- name: Verify every backup of web01 (fails, naming each damaged file, if any)
  xapi.delta_backup.backup_info:
    repository: /mnt/backups/near
    vm: web01
    verify: true
"""

RETURN = r"""
repository:
  description: Absolute path of the repository.
  returned: always
  type: str
  sample: /mnt/backups/near
jobs:
  description: The jobs found, by id, with their name when recorded by this collection.
  returned: always
  type: list
  elements: dict
  sample: [{"id": "8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a", "name": "nightly"}]
vms:
  description: The VMs with backups; an empty list when there are none.
  returned: always
  type: list
  elements: dict
  contains:
    uuid:
      description: uuid of the backed-up VM.
      type: str
      sample: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    name_label:
      description: Name of the VM at its newest backup.
      type: str
      sample: web01
    size:
      description: Bytes written by all of its backups, as recorded in the metadata.
      type: int
      sample: 1073741824
    problems:
      description: Problems found in this VM's backups (with O(verify=true), or a broken chain).
      type: list
      elements: str
      sample: []
    damaged_blocks:
      description: This VM's entries of the top-level RV(damaged_blocks).
      type: list
      elements: dict
      sample: []
    foreign_merges:
      description: This VM's entries of the top-level RV(foreign_merges).
      type: list
      elements: dict
      sample: []
    backups:
      description: The backup points, oldest first.
      type: list
      elements: dict
      contains:
        timestamp:
          description: The point's timestamp (names its files).
          type: str
          sample: 20261126T020000Z
        job_id:
          description: Job id.
          type: str
          sample: 8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a
        job:
          description: Job name when written by this collection, else null.
          type: str
          sample: nightly
        size:
          description: Bytes written for this point.
          type: int
          sample: 4194304
        collection_version:
          description: Version of this collection that wrote it, null for other tools.
          type: str
          sample: 0.1.0
        written_by:
          description: Which tool wrote the point.
          type: str
          sample: xapi.delta_backup
        disks:
          description: The point's disks.
          type: list
          elements: dict
          contains:
            vdi_uuid:
              description: uuid of the VM's disk.
              type: str
              sample: 0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b
            name_label:
              description: Disk name.
              type: str
              sample: web01 system
            path:
              description: The point's own VHD, relative to the VM folder.
              type: str
              sample: vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/20261126T020000Z.vhd
            differencing:
              description: Whether that VHD is a delta.
              type: bool
              sample: true
            virtual_size:
              description: Disk size at this point, in bytes.
              type: int
              sample: 10737418240
            file_size:
              description: Size of the VHD file in bytes.
              type: int
              sample: 4196864
            sha256:
              description: Recorded SHA-256 of the VHD file, for files written before block checksums; else null.
              type: str
              sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
            checksums:
              description:
                - How the point's own VHD is checked. C(blocks) per-block checksums, C(sha256) one whole-file
                  checksum (written before block checksums), C(none) nothing recorded (written by another tool).
              type: str
              sample: blocks
            chain:
              description: The files read to restore this disk at this point, newest first.
              type: list
              elements: str
              sample: ["vdis/8d9f.../0f1e.../20261126T020000Z.vhd", "vdis/8d9f.../0f1e.../20261125T020000Z.vhd"]
problems:
  description: Every problem found, each naming its file (a damaged block also by number and virtual offset, with the points reading it).
  returned: always
  type: list
  elements: str
  sample: ["/mnt/backups/near/xo-vm-backups/5b7a.../vdis/.../20261125T020000Z.vhd: block 3 (virtual offset 6291456): does not match
    its recorded checksum (the block is damaged); read by backup points 20261125T020000Z, 20261126T020000Z"]
damaged_blocks:
  description: With O(verify=true), every damaged block (also in RV(problems)); also per VM in RV(vms).
  returned: always
  type: list
  elements: dict
  contains:
    vm_uuid:
      description: uuid of the backed-up VM.
      type: str
      sample: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    file:
      description: The damaged VHD, relative to the VM folder.
      type: str
      sample: vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/20261125T020000Z.vhd
    block:
      description: Block number in the file's block table.
      type: int
      sample: 3
    virtual_offset:
      description: Where the block lies in the virtual disk, in bytes.
      type: int
      sample: 6291456
    problem:
      description: What is wrong with it.
      type: str
      sample: does not match its recorded checksum (the block is damaged)
    points:
      description:
        - Timestamps of every backup point that reads this block (the file is in the point's chain and no newer
          file of that chain holds the block); restoring any of them would read the damage.
      type: list
      elements: str
      sample: ["20261125T020000Z", "20261126T020000Z"]
foreign_merges:
  description:
    - With O(verify=true), the files another tool (Xen Orchestra) merged since this collection wrote them, each
      checked block by block against the checksums of the files merged into it; not damage when RV(foreign_merges[].ok).
  returned: always
  type: list
  elements: dict
  contains:
    vm_uuid:
      description: uuid of the backed-up VM.
      type: str
      sample: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    file:
      description: The merged VHD (at the name of the newest file merged into it), relative to the VM folder.
      type: str
      sample: vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/20261126T020000Z.vhd
    merged_from:
      description: Names of the files merged into it, oldest (the rewritten parent) first.
      type: list
      elements: str
      sample: ["20261125T020000Z.vhd", "20261126T020000Z.vhd"]
    blocks_checked:
      description: Blocks read and compared.
      type: int
      sample: 512
    unknown_blocks:
      description: Blocks whose content could not be predicted (recorded as unknown), not checked.
      type: list
      elements: int
      sample: []
    ok:
      description: Whether every block matched (the damaged ones are also in RV(damaged_blocks)).
      type: bool
      sample: true
    problems:
      description: What did not match.
      type: list
      elements: str
      sample: []
unverified_files:
  description:
    - With O(verify=true), the files read and checked structurally but with no checksum to compare (no block checksums,
      no SHA-256 recorded, for example written by Xen Orchestra).
  returned: always
  type: list
  elements: dict
  contains:
    vm_uuid:
      description: uuid of the backed-up VM.
      type: str
      sample: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    file:
      description: The file, relative to the VM folder.
      type: str
      sample: vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/20261125T020000Z.vhd
verified:
  description: Whether O(verify) was requested.
  returned: always
  type: bool
  sample: true
files_verified:
  description: VHD files read and checked.
  returned: always
  type: int
  sample: 12
error_code:
  description:
    - The kind of failure that ended the task, a stable lowercase name to test in C(failed_when) or C(rescue) instead of
      the message (for example C(invalid_option), C(repository_locked), C(invalid_vhd)).
    - The collection's C(docs/errors.md) lists every code, what it means and what to do.
  returned: failure
  type: str
  sample: integrity_check_failed
"""

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.catalog import describe_repository
from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import ModuleFailure, new_module, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.repositories import open_repository


def list_backups(module) -> dict:
    params = module.params
    result = describe_repository(open_repository(params['repository']), vm=params['vm'], job=params['job'], verify=params['verify'])
    result['changed'] = False
    if params['verify'] and result['problems'] and params['fail_on_problems']:
        raise ModuleFailure('%d problem(s) found in %s: %s' % (len(result['problems']), result['repository'], '; '.join(result['problems'])),
                            error_code='integrity_check_failed', **result)
    return result


def main():
    module = new_module(dict(
        repository=dict(type='path', required=True),
        vm=dict(type='str'),
        job=dict(type='str'),
        verify=dict(type='bool', default=False),
        fail_on_problems=dict(type='bool', default=True),
    ), with_connection=False)
    run(module, list_backups)


if __name__ == '__main__':
    main()
