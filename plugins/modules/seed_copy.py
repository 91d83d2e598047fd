#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: seed_copy
short_description: Copy backups from one repository to another, verified, for the initial seed of a remote repository
version_added: 0.1.0
description:
  - Copies the backups of one VM, several, or all of them from O(source) to O(destination). Use it for the initial seed.
    First export a full to a repository near the pool. Then copy it to the far repository with this module, and point the job at
    the far repository. The next run of M(xapi.delta_backup.delta_export) there sends only a delta.
  - The VHD files are copied first, each under a temporary name that is renamed once complete, with its block checksum file
    (C(<name>.vhd.blocksums), one digest per data block). Each block is hashed once as it passes, and must match the source's
    recorded checksum before the file is published. A damaged block stops the copy, and the error names the file, the block number
    and its virtual offset. Each copy is then read back and checked block by block on every core, which catches a destination
    storage that changes data.
  - A file written before block checksums existed is checked against the sha256 recorded in its metadata as it is copied, and its
    copy is read back and hashed whole. A file with neither (written by Xen Orchestra) is read back and compared with what was
    written. RV(vms[].checksums) lists the files under each kind of check.
    The metadata files are copied last, oldest first, byte for byte. A backup shows at the destination only once every file of its chain
    is there and verified. An interrupted copy never leaves a point that a backup run would misread.
  - Files already at the destination with the same content are skipped, so a rerun finishes an interrupted copy. When both files
    have block checksum files, these are compared (and the destination's checked against its file's identity, footer, header
    and BAT) without reading the data. Otherwise both files are hashed whole.
    A destination file with the same name but different content is never overwritten; the copy stops and names it.
  - The source chains are checked before they are copied. The check covers their structure, and each block checksum file against
    its file. A missing block checksum file of a file whose metadata says it was written with one counts as damage. A damaged
    source file is refused, and the error names it.
  - Takes the repository lock of each VM in both repositories while it copies it.
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
    details: Reports the files and backups that would be copied or skipped. Nothing is written, and an empty destination is not initialised.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A second run finds every file already copied and reports no change.
options:
  source:
    description:
      - Path of the repository to copy from.
    type: path
    required: true
  destination:
    description:
      - Path of the repository to copy to. An existing empty directory is set up as a new repository. A non-empty directory
        without C(xo-vm-backups) is refused.
    type: path
    required: true
  vms:
    description:
      - The backed-up VMs to copy, by uuid or by name at their newest backup. By default, every VM of the source.
    type: list
    elements: str
    default: []
  job:
    description:
      - Copy only the backups of this job (the name given to M(xapi.delta_backup.delta_export)). By default, every job.
      - Seeding works only when the job at the destination has the same name, so that its job id and folders match.
    type: str
  file_mode:
    description:
      - Permissions of the files written at the destination.
    type: raw
    default: '0600'
  dir_mode:
    description:
      - Permissions of the folders created at the destination.
    type: raw
    default: '0700'
requirements:
  - XenAPI (imported by the shared connection code, not used to connect)
notes:
  - The job's reference snapshot must still exist on the pool, and the job name must stay the same. Otherwise the next export
    to the destination is a full.
"""

EXAMPLES = r"""
- name: Seed the remote repository with web01's backups
  xapi.delta_backup.seed_copy:
    source: /mnt/usb-seed
    destination: /mnt/remote-site
    vms: [web01]
    job: nightly
  delegate_to: localhost
  register: seeded

- name: Then export the next backup to the remote repository; it is a delta
  xapi.delta_backup.delta_export:
    vm: web01
    job: nightly
    repositories: [/mnt/remote-site]
  delegate_to: localhost
"""

RETURN = r"""
vms:
  description: What was copied (or, in check mode, would be copied) for each VM.
  returned: always
  type: list
  elements: dict
  contains:
    vm_uuid:
      description: uuid of the backed-up VM.
      type: str
      sample: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    copied_files:
      description: VHD files copied, relative to the VM folder.
      type: list
      elements: str
      sample: ["vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b/20261124T020000Z.vhd"]
    skipped_files:
      description: VHD files already at the destination with the same content.
      type: list
      elements: str
      sample: []
    copied_points:
      description: Timestamps of the backups whose metadata was copied.
      type: list
      elements: str
      sample: ["20261124T020000Z"]
    skipped_points:
      description: Timestamps of the backups already at the destination.
      type: list
      elements: str
      sample: []
    bytes_copied:
      description: Bytes of VHD data copied for this VM.
      type: int
      sample: 1073742336
    removed_temporary_files:
      description: Temporary files that an interrupted copy had left at the destination and that were removed.
      type: int
      sample: 0
    checksums:
      description:
        - The VHD files of the VM (copied or skipped), relative to the VM folder, by how they were checked.
        - C(block_checksums) lists files checked block by block against their block checksum files.
        - C(sha256) lists files written before block checksums existed, checked against the sha256 in their metadata.
        - C(unverified) lists files with neither, for example written by Xen Orchestra. They are only checked to read back as written.
      type: dict
      sample: {"block_checksums": ["vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b/20261124T020000Z.vhd"],
               "sha256": [], "unverified": []}
copied_files:
  description: Number of VHD files copied.
  returned: always
  type: int
  sample: 4
skipped_files:
  description: Number of VHD files skipped because they were already there.
  returned: always
  type: int
  sample: 0
copied_points:
  description: Number of backups whose metadata was copied.
  returned: always
  type: int
  sample: 2
bytes_copied:
  description: Bytes of VHD data copied.
  returned: always
  type: int
  sample: 1073742336
duration:
  description: Seconds the copy took.
  returned: always
  type: float
  sample: 12.5
throughput_mib_s:
  description: RV(bytes_copied) per second, in MiB/s.
  returned: always
  type: float
  sample: 81.9
error_code:
  description:
    - The kind of failure that ended the task, a stable lowercase name to test in C(failed_when) or C(rescue) instead of
      the message (for example C(invalid_option), C(repository_locked), C(invalid_vhd)).
    - The collection's C(docs/errors.md) lists every code, what it means and what to do.
  returned: failure
  type: str
  sample: seed_conflict
"""

from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import new_module, parse_mode, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.seed import seed_copy


def copy_backups(module) -> dict:
    params = module.params
    return seed_copy(params['source'], params['destination'], vms=params['vms'],
                     job_id=Job(params['job']).id if params['job'] else None, check_mode=module.check_mode,
                     file_mode=parse_mode(params['file_mode'], 'file_mode'), dir_mode=parse_mode(params['dir_mode'], 'dir_mode'))


def main():
    # new_module adds the connection options (accepted, ignored) so that group/xapi module_defaults apply.
    spec = dict(
        source=dict(type='path', required=True),
        destination=dict(type='path', required=True),
        vms=dict(type='list', elements='str', default=[]),
        job=dict(type='str'),
        file_mode=dict(type='raw', default='0600'),
        dir_mode=dict(type='raw', default='0700'),
    )
    module = new_module(spec, with_connection=False)
    run(module, copy_backups)


if __name__ == '__main__':
    main()
