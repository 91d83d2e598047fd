#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: delta_export
short_description: Export a VM's backup snapshot to backup repositories, as a delta whenever possible
version_added: 0.1.0
description:
  - Exports the disks of a job's backup snapshot (taken by M(xapi.delta_backup.vm_snapshot)) into one or more
    backup repositories laid out like Xen Orchestra's delta backups, then writes the backup's metadata JSON.
  - The export is a B(delta) (only the 2 MiB blocks changed since the job's reference snapshot, through XAPI's
    C(/export_raw_vdi) with C(base=)) when every repository's newest backup of the VM by this job ends in that
    reference snapshot; otherwise it is a B(full), and RV(reason) says why. A disk added since the reference
    snapshot is exported in full on its own.
  - Each disk is read once from the pool and written to every repository. Its VHD identity is rewritten in passing
    (footer uuid = snapshot VDI uuid, parent uuid = the reference snapshot's VDI uuid, parent name relative to the file).
  - As the bytes pass, a digest (BLAKE3, or SHA-256 without the blake3 package) of every 2 MiB block and of the footer, header and BAT is computed, once for all
    repositories, and written next to each VHD as C(<name>.vhd.blocksums), made durable just before the VHD itself;
    the metadata lists it under C(xapi_delta_backup.block_checksums). Merges, restores, seed copies and C(verify)
    check each block they read against it.
  - Receiving, rewriting, checksumming and writing run as a pipeline on threads of their own, the stream landing in a
    bounded ring of buffers (12 MiB) with no copy by Python; the written file is handed to the disk every 32 MiB, so
    the final C(fsync) waits for little. Memory stays bounded whatever the disk size.
  - Files appear atomically and the metadata JSON is written last, so an interrupted export leaves no visible backup;
    its leftovers are removed by the next run. The snapshot is marked exported (it becomes the job's reference snapshot)
    only once every disk has landed in every repository.
  - A lock per VM and repository stops two runs from writing the same chain; the second fails at once naming the holder.
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
extends_documentation_fragment:
  - xapi.delta_backup.connection
  - xapi.delta_backup.attributes
  - xapi.delta_backup.attributes.action_group
attributes:
  check_mode:
    support: full
    details: Reports the mode (full or delta), the reason and the disks that would be exported; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details: Exporting an already exported snapshot fails with a message; a new snapshot is always exported.
options:
  vm:
    description:
      - The VM, by uuid or name label. A uuid beats a name.
    type: str
    required: true
  job:
    description:
      - Name of the backup job, as given to M(xapi.delta_backup.vm_snapshot).
    type: str
    required: true
  repositories:
    description:
      - Paths of the backup repositories (local or mounted file systems). An existing empty directory is set up as a
        new repository; a non-empty directory without C(xo-vm-backups) is refused as not being a repository.
    type: list
    elements: path
    required: true
    aliases: [repository]
  snapshot:
    description:
      - uuid of the job's snapshot to export. By default the job's newest snapshot that is not exported yet.
    type: str
  full_interval:
    description:
      - Force a full export every O(full_interval) backups (V(1) means always full); V(0) never forces one.
    type: int
    default: 0
  file_mode:
    description:
      - Permissions of the files written in the repositories.
    type: raw
    default: '0600'
  dir_mode:
    description:
      - Permissions of the folders created in the repositories.
    type: raw
    default: '0700'
  transfer_timeout:
    description:
      - Seconds to wait for XAPI to finish each disk's export task once its stream has ended.
    type: float
    default: 3600
  delta_only:
    description:
      - When the delta from the reference snapshot cannot be made (its disk is gone from the pool, is not a VHD, or XAPI
        refuses it as C(base=)), fail instead of exporting a full in the same run.
      - Fulls chosen for other reasons (first backup, O(full_interval), a new or changed repository) are not affected.
    type: bool
    default: false
    version_added: 0.2.0
requirements:
  - XenAPI
"""

EXAMPLES = r"""
- name: Snapshot then export web01 for the nightly job
  module_defaults:
    group/xapi.delta_backup.xapi:
      hostname: pool.example.com
      password: "{{ xapi_password }}"
  delegate_to: localhost
  block:
    - name: Take the snapshot
      xapi.delta_backup.vm_snapshot:
        vm: web01
        job: nightly
      register: snap

    - name: Export it (a delta when the repository holds the reference snapshot)
      xapi.delta_backup.delta_export:
        vm: web01
        job: nightly
        snapshot: "{{ snap.snapshot.uuid }}"
        repositories:
          - /mnt/backups/near
          - /mnt/backups/far
        full_interval: 30
      register: export

    - name: Say what happened
      ansible.builtin.debug:
        msg: "{{ export.mode }} ({{ export.reason }}): {{ export.bytes_transferred | human_readable }}"
"""

RETURN = r"""
vm:
  description: The VM.
  returned: always
  type: dict
  sample: {"uuid": "5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d", "name_label": "web01"}
snapshot:
  description: The exported snapshot, as returned by M(xapi.delta_backup.vm_snapshot).
  returned: always
  type: dict
  sample: {"uuid": "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "datetime": "20261126T02:00:00Z", "exported": true}
base_snapshot:
  description: The reference snapshot the delta was computed from; null for a full.
  returned: always
  type: dict
  sample: null
mode:
  description: V(full) or V(delta).
  returned: always
  type: str
  sample: delta
reason:
  description: Why this mode was chosen.
  returned: always
  type: str
  sample: delta from the reference snapshot 20261125T02:00:00Z
timestamp:
  description: The backup's timestamp, which names its metadata and VHD files.
  returned: always
  type: str
  sample: 20261126T020000Z
delta_chain_length:
  description: Deltas since the last full, this backup included (0 for a full).
  returned: always
  type: int
  sample: 3
repositories:
  description: Absolute paths of the repositories written.
  returned: always
  type: list
  elements: str
  sample: ["/mnt/backups/near"]
disks:
  description:
    - One entry per exported disk.
    - A checkpoint (O(xapi.delta_backup.vm_snapshot#module:memory)) adds its memory image, named C(Suspend image), always a
      full, with an empty C(userdevice) and its own uuid as C(vdi_uuid) (its folder, as Xen Orchestra names it).
  returned: always
  type: list
  elements: dict
  contains:
    vdi_uuid:
      description: uuid of the VM's disk (names the disk's folder in the repository).
      type: str
      sample: 0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b
    snapshot_vdi_uuid:
      description: uuid of the snapshot VDI exported (the VHD's footer uuid).
      type: str
      sample: 3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a
    name_label:
      description: Disk name.
      type: str
      sample: web01 system
    userdevice:
      description: Device number.
      type: str
      sample: "0"
    mode:
      description: V(full) or V(delta) for this disk.
      type: str
      sample: delta
    reason:
      description: Why.
      type: str
      sample: the repositories hold the reference snapshot 20261125T02:00:00Z
    virtual_size:
      description: Virtual size of the disk in bytes.
      type: int
      sample: 10737418240
    size:
      description: Bytes of the VHD file written (not in check mode).
      type: int
      sample: 44049408
    blocks:
      description: 2 MiB blocks in the VHD (not in check mode).
      type: int
      sample: 21
    path:
      description: Path of the VHD relative to the VM's folder (not in check mode).
      type: str
      sample: vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/20261126T020000Z.vhd
    block_checksums:
      description:
        - Path, relative to the VM's folder, of the VHD's block checksum file (not in check mode).
        - It holds a digest (BLAKE3, or SHA-256 without the blake3 package) of every block and of the footer, header and BAT,
          computed as the bytes were written.
          Every reader (merge, restore, seed copy, verify) checks each block it reads against it.
      type: str
      sample: vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/20261126T020000Z.vhd.blocksums
    duration:
      description: Seconds spent on this disk (not in check mode).
      type: float
      sample: 1.52
    throughput_mib_s:
      description: MiB written per second for this disk (not in check mode).
      type: float
      sample: 27.6
delta_fallback:
  description:
    - XAPI's error when the planned delta failed because of its base and a full was exported instead in the same run
      (RV(mode) is then V(full) and RV(reason) says so); null otherwise.
  returned: always
  type: str
  sample: null
  version_added: 0.2.0
bytes_transferred:
  description: Bytes received from the pool (0 in check mode).
  returned: always
  type: int
  sample: 44049408
duration:
  description: Seconds for the whole export.
  returned: always
  type: float
  sample: 1.9
throughput_mib_s:
  description: Overall MiB per second.
  returned: always
  type: float
  sample: 22.1
cleaned_up:
  description: Leftovers of interrupted runs removed before writing, per repository.
  returned: success and not check mode
  type: dict
  sample: {"/mnt/backups/near": {"temporary_files": [], "unreferenced_vhds": []}}
error_code:
  description:
    - The kind of failure that ended the task, a stable lowercase name to test in C(failed_when) or C(rescue) instead of
      the message (for example C(invalid_option), C(repository_locked), C(invalid_vhd)).
    - The collection's C(docs/errors.md) lists every code, what it means and what to do.
  returned: failure
  type: str
  sample: task_destroyed
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

from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import export_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import ModuleFailure, connect, new_module, parse_mode, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job


def export(module) -> dict:
    params = module.params
    if params['full_interval'] < 0:
        raise ModuleFailure('full_interval must be 0 (never force a full) or a positive number of backups, got %d' % params['full_interval'])
    with connect(module) as xapi:
        return export_vm(xapi, params['repositories'], params['vm'], Job(params['job']), snapshot_uuid=params['snapshot'],
                         full_interval=params['full_interval'], file_mode=parse_mode(params['file_mode'], 'file_mode'),
                         dir_mode=parse_mode(params['dir_mode'], 'dir_mode'), check_mode=module.check_mode, timeout=params['transfer_timeout'],
                         delta_only=params['delta_only'])


def main():
    module = new_module(dict(
        vm=dict(type='str', required=True),
        job=dict(type='str', required=True),
        repositories=dict(type='list', elements='path', required=True, aliases=['repository']),
        snapshot=dict(type='str'),
        full_interval=dict(type='int', default=0),
        file_mode=dict(type='raw', default='0600'),
        dir_mode=dict(type='raw', default='0700'),
        transfer_timeout=dict(type='float', default=3600),
        delta_only=dict(type='bool', default=False),
    ))
    run(module, export)


if __name__ == '__main__':
    main()
