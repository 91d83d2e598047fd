#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vm_restore
short_description: Restore a VM, or one of its disks, as it was at a backup
version_added: 0.1.0
description:
  - Creates a new VM from a backup in a repository, as the VM was at the chosen backup. The original VM and its SR may be gone.
  - Each disk's chain (newest delta down to the full) is streamed as one VHD to a new VDI of the backup's virtual size. The stream
    goes through XAPI's C(/import_raw_vdi) with its exact length and holds one block in memory at a time.
  - The VM is created from the backed-up record with its start blocked. Its disks, VBDs, CD drives (empty) and VIFs are then
    recreated, the start is unblocked, and the VM is started when O(start=true).
  - The VM is created with every field XAPI's C(VM.create) requires, from the backed-up record (XAPI's defaults for its power
    state and for references to objects of the source pool). Its home host (affinity) is kept when this pool has that host.
    The backed-up blocked operations are set again once the restore is done.
  - Each VIF joins the network that O(network_map) names for its backed-up network. Otherwise it joins the network with the backed-up
    uuid, else the network with the backed-up name on the backed-up VLAN, else the first network with PIFs on that VLAN (untagged
    networks count as tag -1; first in PIF device order, then by name). These automatic rules never choose a network without PIFs
    (a private network, or the Host internal management network) unless O(allow_internal_networks=true). A VIF no network fits is
    not created and is listed in RV(not_restored) with the O(network_map) to pass. RV(vifs) says which rule chose each network.
  - Each disk goes to the SR O(sr_map) gives it, else to O(sr), else to the SR of the backed-up uuid when this pool has it, else to
    the pool's default SR.
  - VBDs and VIFs keep their backed-up settings (device numbers, bootable flags, modes, QoS, other_config, MTU, locking mode and
    allowed addresses).
  - What this pool cannot get back is listed in RV(not_restored) (vGPUs, PCI and USB passthrough, a disc in a CD drive, a missing SR
    or network that no option maps). With O(strict=true), any of them fails the restore before anything is created.
  - The collection's C(docs/restore.md) describes what is restored, what is not, and how to map SRs and networks.
  - With O(disk), restores only that disk, to a new VDI that is not attached to any VM.
  - Every chain is checked first, before anything is created. The check covers its structure and each file's block checksum file
    (identity, footer, header and BAT; a few KiB whatever the disk size). A damaged chain is refused, and the error names the bad
    file. A file written before block checksums existed is hashed whole against the sha256 in its metadata.
  - Every block read while the chain streams is checked against its recorded checksum, on threads reading ahead of the upload.
    A damaged block aborts the upload before the import completes, so the host fails the import. The error names the file, the
    block number and its virtual offset.
  - If a later step fails (for example an import cut midway, or a damaged block), everything the run created is destroyed again
    and the error says why.
  - Until it finishes, a restore marks its VM and VDIs with its host and process id (other_config key
    C(xapi_delta_backup:restore_in_progress)), and the VM's start stays blocked. A restore killed midway (kill -9, lost control node)
    cannot clean up after itself, so each run first destroys the VMs and VDIs of restores from this host whose process is gone
    (RV(removed_leftovers)). Those of another host, or of a process still running, are left alone.
  - Holds the VM's repository lock while it reads, so no merge rewrites a file being restored. A merge that a crash left unfinished
    (see M(xapi.delta_backup.backup_merge)) is finished first, so every backup that the interrupted retention was keeping restores.
  - What C(VM.create) does not take is set once the disks are in. BIOS strings go through C(VM.set_bios_strings), and
    C(ha_always_run) is set as Xen Orchestra does (XAPI turns it on when the VM starts). The new record is then compared with the
    backed-up one, and RV(vm_record) lists whatever this XAPI version could not take. UEFI NVRAM, Secure Boot and viridian platform
    flags, HVM boot parameters, the vendor device and the hardware platform version go through C(VM.create) itself.
  - The new VM is named after the backup (O(name_template)), and by default it does not get the backed-up tags (O(keep_tags)).
author:
  - xapi.delta_backup contributors (@xapi-delta-backup)
extends_documentation_fragment:
  - xapi.delta_backup.connection
  - xapi.delta_backup.attributes
  - xapi.delta_backup.attributes.action_group
attributes:
  check_mode:
    support: full
    details: Checks the chains and reports the VM, disks (with the bytes to stream and their SRs), networks and RV(not_restored) that
      would be created. A merge that a
      crash left unfinished is not finished in check mode, so such a backup is refused there.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run creates a new VM (or VDI) by design.
options:
  repository:
    description:
      - Path of the backup repository.
    type: path
    required: true
  vm:
    description:
      - The backed-up VM, by uuid or by its name at its newest backup.
    type: str
    required: true
  job:
    description:
      - Consider only the backups of this job. By default, backups of every job count.
    type: str
  backup:
    description:
      - The backup to restore. V(latest) (the default) is the newest one.
      - An index counts from the oldest, V(0), or from the newest, V(-1).
      - A timestamp, either C(YYYYMMDDTHHMMSSZ) or ISO 8601 such as V(2026-11-24T02:00:00Z), selects the newest backup taken at or before that moment.
    type: str
    default: latest
  sr:
    description:
      - The SR for every disk that O(sr_map) does not place, by uuid or name.
      - By default, each such disk goes to the SR it was on at the backup when this pool has an SR of that uuid, else to the
        pool's default SR (listed in RV(not_restored), since the disk's own SR is missing). RV(disks) says which rule placed each disk.
    type: str
  name:
    description:
      - Name of the new VM, exactly. By default, O(name_template) names it. With O(disk), this is the name of the new VDI (by
        default, the name of the disk at the time of the backup).
    type: str
  network_map:
    description:
      - Maps a backed-up network (uuid or name) to a network of the pool (uuid or name).
    type: dict
    default: {}
  allow_internal_networks:
    description:
      - Let the automatic network rules choose a network without PIFs, such as the Host internal management network or a private
        network. A network named in O(network_map) is always used.
    type: bool
    default: false
    version_added: 0.2.0
  keep_mac:
    description:
      - Give the VIFs the MAC addresses of the backup, and keep the backed-up C(mac_seed) of the VM's other_config.
      - By default the C(mac_seed) is dropped and the VIFs are created without a MAC, so XAPI draws a new seed and gives them new MACs
        (XAPI derives a MAC from the seed and the device number, so keeping the seed would give the original MACs again). A restored
        copy can then run beside the original.
    type: bool
    default: false
  start:
    description:
      - Start the VM once it is restored. Ignored with O(disk).
    type: bool
    default: false
  disk:
    description:
      - Restore only this disk to a new, unattached VDI. Give the live VDI uuid (as in the repository), the snapshot VDI uuid,
        the userdevice (V(0), V(1)...), the device (V(xvdb)) or the disk name.
    type: str
  transfer_timeout:
    description:
      - Seconds to wait for XAPI to finish each disk import after its last byte.
    type: float
    default: 3600
  sr_map:
    description:
      - Places single disks. Maps a disk to an SR of the pool (uuid or name). The disk is named by its backed-up VDI uuid, its live VDI
        uuid (as in the repository), its name, its userdevice (V(0), V(1)...) or its device (V(xvda)).
      - A key that names no disk of the backup, or several, or an SR this pool does not have, fails the restore before anything is created.
      - Disks it does not name go by O(sr) and the rules above.
    type: dict
    default: {}
    version_added: 0.2.0
  strict:
    description:
      - Fail, before anything is created, when anything of the backup cannot be restored as it was (see RV(not_restored)),
        including BIOS strings XAPI will not set (listed in RV(vm_record)). A vTPM dropped with O(allow_vtpm_loss) does not count,
        since that option consents to it.
    type: bool
    default: false
    version_added: 0.2.0
  name_template:
    description:
      - Name of the new VM when O(name) is not given, so that it says which backup it is. Placeholders, each written
        plainly as C({placeholder}) (a literal brace is C({{) or C(})), are C(name_label) (the VM's name at the backup),
        C(timestamp) (the backup's timestamp, C(YYYYMMDDTHHMMSSZ)), C(vm_uuid) (the backed-up VM's uuid) and C(job) (the job id).
      - Any other placeholder, or a format such as C({timestamp:>20}), is refused before anything is created.
      - An empty value names the VM as it was at the backup. Ignored with O(disk).
    type: str
    default: "{name_label} ({timestamp})"
    version_added: 0.2.0
  keep_tags:
    description:
      - Give the new VM the tags of the backup.
      - By default its tags are dropped (listed in RV(tags)), because a backup job selects VMs by tags (the C(backup) role's
        C(backup_tags), Xen Orchestra's smart mode), and any tag may be one, so a job would otherwise back the copy up as a second
        VM. The exclusion tag C(xo:no-bak) (also C(xo:no-bak=<reason>)), which keeps jobs away, is kept in every case.
    type: bool
    default: false
    version_added: 0.2.0
  allow_vtpm_loss:
    description:
      - Restore a VM whose backup has a vTPM even where the vTPM cannot be recreated, without it. This is the case on a pool
        without vTPM support (XAPI before 22.26, such as XCP-ng 8.2), on a pool whose licence restricts vTPMs, and for a vTPM
        whose contents the backup could not read. RV(vtpms) then says which vTPM was dropped and why.
      - By default such a restore fails before creating anything. A VM that loses its vTPM loses what the TPM sealed (BitLocker
        asks for its recovery key).
      - The vTPM contents are a secret. They are kept only in the backup's metadata file, which has the repository's file mode,
        and never appear in a result or a log.
    type: bool
    default: false
    version_added: 0.2.0
  vifs:
    description:
      - Recreate the backed-up VIFs. With V(false) the VM is restored without network interfaces, so it joins no network
        (a restore test that must not appear on production networks); O(network_map) is then not used.
    type: bool
    default: true
    version_added: 0.2.0
  power_state:
    description:
      - How a VM backed up with its memory (suspended, or checkpointed with O(xapi.delta_backup.vm_snapshot#module:memory))
        comes back. V(suspended) restores its memory image and creates it suspended; with O(start) it is then resumed
        (C(VM.resume)) instead of started. V(halted) leaves the memory image out, and the VM boots from its disks.
      - Default (null) V(suspended) when the backup holds a memory image, else V(halted). V(suspended) for a backup without
        a memory image is refused.
      - A suspended restore is refused before anything is created when the pool coordinator's CPU cannot resume the image
        (another CPU vendor, or CPU features the VM was running with that it lacks, which is what XAPI checks on C(VM.resume)).
    type: str
    choices: [suspended, halted]
    version_added: 0.2.0
requirements:
  - XenAPI
"""

EXAMPLES = r"""
- name: Restore web01 as it was last night, under a new name, on the SR "Local storage"
  xapi.delta_backup.vm_restore:
    repository: /mnt/backups
    vm: web01
    backup: "2026-11-24T03:00:00Z"
    sr: Local storage
    name: web01 (restored)
    network_map:
      Pool-wide network associated with eth0: isolated-test-net
  delegate_to: localhost
  register: restored

- name: Restore web01 into another pool, whose network on VLAN 20 has another name (matched by its VLAN tag)
  xapi.delta_backup.vm_restore:
    repository: /mnt/backups
    vm: web01
    name: web01 (DR copy)
  delegate_to: localhost
  register: restored

- name: Show how each VIF was mapped
  ansible.builtin.debug:
    msg: "VIF {{ item.device }}: {{ item.source_network_name_label }} -> {{ item.network_name_label }} (by {{ item.matched_by }})"
  loop: "{{ restored.vifs }}"

- name: Restore web01 into another pool, its system disk on fast storage and the others on the default SR; fail if anything is left out
  xapi.delta_backup.vm_restore:
    repository: /mnt/backups
    vm: web01
    sr_map:
      xvda: SSD pool
      web01 logs: 0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f
    network_map:
      dmz-prod: dmz-dr
    strict: true
  delegate_to: localhost
  register: restored

- name: Restore only the data disk of the newest backup
  xapi.delta_backup.vm_restore:
    repository: /mnt/backups
    vm: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    disk: "1"
  delegate_to: localhost

- name: Restore web01 to replace it, with its tags, named "web01 (DR 20261124T020000Z)"; show what XAPI could not take
  xapi.delta_backup.vm_restore:
    repository: /mnt/backups
    vm: web01
    name_template: "{name_label} (DR {timestamp})"
    keep_tags: true
  delegate_to: localhost
  register: replaced

- name: Fields of the VM record not restored as they were (for example on an older XAPI)
  ansible.builtin.debug:
    msg: "{{ replaced.vm_record.not_restored }}"
"""

RETURN = r"""
backup:
  description: The backup restored.
  returned: always
  type: dict
  contains:
    vm_uuid:
      description: uuid of the backed-up VM.
      type: str
      sample: 5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d
    timestamp:
      description: Timestamp of the backup.
      type: str
      sample: "20261124T020000Z"
    job_id:
      description: Job id of the backup.
      type: str
      sample: 8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a
    vm_name_label:
      description: Name of the VM at the time of the backup.
      type: str
      sample: web01
  sample: {"vm_uuid": "5b7a5c41-7f3c-4a8b-9c1d-2e6f8a9b0c1d", "timestamp": "20261124T020000Z",
           "job_id": "8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a", "vm_name_label": "web01"}
vm:
  description: The new VM (its uuid is null in check mode); null with O(disk).
  returned: always
  type: dict
  contains:
    uuid:
      description: uuid of the new VM.
      type: str
      sample: 7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f
    name_label:
      description: Its name.
      type: str
      sample: web01 (restored)
    started:
      description: Whether it was started.
      type: bool
      sample: false
    affinity_kept:
      description: Whether the new VM keeps the backed-up home host (affinity); false when this pool does not have that host.
      type: bool
      sample: false
      version_added: 0.2.0
  sample: {"uuid": "7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f", "name_label": "web01 (restored)", "started": false, "affinity_kept": false}
sr:
  description: The SR given by O(sr), else the pool's default SR (empty when the pool has none). RV(disks) gives each disk's own SR.
  returned: always
  type: dict
  sample: {"uuid": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "name_label": "Local storage"}
disks:
  description: The disks restored (or that would be).
  returned: always
  type: list
  elements: dict
  contains:
    source_vdi_uuid:
      description: uuid of the backed-up live disk.
      type: str
      sample: 0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b
    vdi_uuid:
      description: uuid of the new VDI (null in check mode).
      type: str
      sample: 9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d
    name_label:
      description: Name of the new VDI.
      type: str
      sample: web01 system
    userdevice:
      description: Device number of the VBD.
      type: str
      sample: "0"
    virtual_size:
      description: Virtual size of the new VDI, in bytes.
      type: int
      sample: 10737418240
    bytes:
      description: Length of the VHD stream sent for it.
      type: int
      sample: 4203008
    chain_length:
      description: Number of VHD files read (newest delta down to the full).
      type: int
      sample: 3
    duration:
      description: Seconds its import took (absent in check mode).
      type: float
      sample: 0.8
    sr_uuid:
      description: uuid of the SR of the new VDI.
      type: str
      sample: a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d
      version_added: 0.2.0
    sr_name_label:
      description: Name of that SR.
      type: str
      sample: Local storage
      version_added: 0.2.0
    placed_by:
      description:
        - The rule that chose the SR. V(sr_map) (O(sr_map)), V(sr) (O(sr)), V(same_sr) (the SR of the backed-up uuid), V(default) (the
          pool's default SR).
      type: str
      sample: same_sr
      version_added: 0.2.0
vifs:
  description: The VIFs created (or that would be), with the network chosen for each and how it was chosen.
  returned: always
  type: list
  elements: dict
  contains:
    device:
      description: Device number of the VIF.
      type: str
      sample: "0"
    network_uuid:
      description: uuid of the network it joins.
      type: str
      sample: b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e
    network_name_label:
      description: Name of that network.
      type: str
      sample: vlan20-test
    vlan:
      description: VLAN tag of that network (-1 untagged; null without PIFs).
      type: int
      sample: 20
      version_added: 0.2.0
    matched_by:
      description:
        - The rule that chose the network. V(map) (O(network_map)), V(uuid) (same network), V(name) (same name on the same VLAN),
          V(vlan) (the first network with PIFs on the same VLAN).
      type: str
      sample: vlan
    source_network_uuid:
      description: uuid of the backed-up network.
      type: str
      sample: 0d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a
      version_added: 0.2.0
    source_network_name_label:
      description: Name of the backed-up network.
      type: str
      sample: vlan20-prod
      version_added: 0.2.0
    mac:
      description: MAC address of the new VIF (absent in check mode).
      type: str
      sample: "6e:3b:0a:91:5c:27"
      version_added: 0.2.0
  sample: [{"device": "0", "network_uuid": "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e", "network_name_label": "vlan20-test", "vlan": 20,
            "matched_by": "vlan", "source_network_uuid": "0d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a", "source_network_name_label": "vlan20-prod",
            "mac": "6e:3b:0a:91:5c:27"}]
checksums:
  description:
    - C(verified) lists the VHD files that are checked. A file with block checksums has its structures checked before the restore
      and each block it provides checked as it streams. A file written before block checksums existed has its whole-file sha256
      checked before the restore.
    - C(legacy) lists the files of C(verified) that were checked by their whole-file sha256.
    - C(unverified) lists files with no recorded checksum (for example written by Xen Orchestra), checked for structure only.
  returned: always
  type: dict
  sample: {"verified": ["vdis/8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a/0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b/20261124T020000Z.vhd"],
           "unverified": [], "legacy": []}
finished_merges:
  description: State files of merges a crash had left unfinished, which were finished before the restore (never in check mode).
  returned: always
  type: list
  elements: str
  sample: []
cd_drives:
  description:
    - CD drives recreated on the new VM, as the backed-up VM had them (empty in every case; C(had_disc) says whether a disc was
      inserted at the backup, which you may insert again). In check mode, those that would be. Empty with O(disk).
  returned: always
  type: list
  elements: dict
  sample: [{"userdevice": "3", "bootable": false, "had_disc": true}]
removed_leftovers:
  description:
    - VMs (C(vms)) and VDIs (C(vdis)) of restores killed before they finished, destroyed before this restore (in check mode, those
      that would be). Each names its uuid, name and the backup it was restoring (C(restored_from), C(<vm uuid>@<timestamp>)).
    - C(problems) lists those XAPI refused to destroy; the restore goes on regardless.
  returned: always
  type: dict
  sample:
    vms:
      - uuid: 5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d
        name_label: web01
        restored_from: 8d9f0e1a-2b3c-5d4e-8f6a-7b8c9d0e1f2a@20261124T020000Z
    vdis: []
    problems: []
bytes_transferred:
  description: Bytes streamed to the pool (0 in check mode).
  returned: always
  type: int
  sample: 4203008
duration:
  description: Seconds the restore took.
  returned: always
  type: float
  sample: 3.2
throughput_mib_s:
  description: RV(bytes_transferred) per second, in MiB/s.
  returned: success and not in check mode
  type: float
  sample: 190.4
not_restored:
  description:
    - What of the backup this pool does not get back, each with C(what) and C(reason) (what to do about it), in check mode as well.
    - vGPUs, PCI passthrough (C(other_config:pci), attached PCIs), USB passthrough (VUSBs), a disc in a CD drive (recreated empty),
      a VIF no network fits (not created), a disk whose SR is missing and not mapped (placed on the default SR).
    - With O(strict=true) a restore that would list anything fails instead, before anything is created.
  returned: always
  type: list
  elements: dict
  sample: [{"what": "the disc in CD drive 3 (debian-12.iso)", "reason": "the CD drive is recreated empty (the ISO may not exist in this pool): insert
            it again with VBD.insert"}]
  version_added: 0.2.0
error_code:
  description:
    - The kind of failure that ended the task, a stable lowercase name to test in C(failed_when) or C(rescue) instead of
      the message (for example C(invalid_option), C(repository_locked), C(invalid_vhd)).
    - The collection's C(docs/errors.md) lists every code, what it means and what to do.
  returned: failure
  type: str
  sample: restore_failed
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
tags:
  description:
    - Tags of the new VM (C(kept)) and backed-up tags it did not get (C(dropped)); see O(keep_tags). Both empty with O(disk).
  returned: always
  type: dict
  sample: {"kept": ["xo:no-bak=test copy"], "dropped": ["backup-daily", "web"]}
  version_added: 0.2.0
vm_record:
  description:
    - The fields of the VM record set after C(VM.create), which does not take them (C(set_after_create), for example
      C(bios_strings) through C(VM.set_bios_strings) and C(ha_always_run)), and those not restored as they were backed up
      (C(not_restored), each with C(field), a C(key) for one BIOS string, and C(reason)).
    - C(not_restored) lists the fields this XAPI version does not have (for example C(actions_after_softreboot) on XCP-ng 8.2),
      the values XAPI changed, and the BIOS strings no one can set. In check mode, those known before anything is created.
    - Empty with O(disk).
  returned: always
  type: dict
  sample: {"set_after_create": ["bios_strings"], "not_restored": [{"field": "actions_after_softreboot",
           "reason": "this XAPI version has no VM field actions_after_softreboot"}]}
  version_added: 0.2.0
vtpms:
  description:
    - The backed-up VM's vTPMs and what the restore did with each (in check mode, what it would do). Empty with O(disk). Never
      holds their contents.
  returned: always
  type: list
  elements: dict
  version_added: 0.2.0
  contains:
    source_uuid:
      description: uuid of the backed-up vTPM (null for a backup written by Xen Orchestra, which does not record it).
      type: str
      sample: 3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b
    is_unique:
      description: Whether the vTPM is unique (XAPI never copies the contents of a unique vTPM to a snapshot or clone).
      type: bool
      sample: false
    action:
      description: V(recreate) (created on the new VM with the backed-up contents) or V(drop) (left out, see O(allow_vtpm_loss)).
      type: str
      sample: recreate
    restored:
      description: Whether it was recreated (false in check mode and when dropped).
      type: bool
      sample: true
    uuid:
      description: uuid of the new vTPM (null when not created).
      type: str
      sample: 9f8e7d6c-5b4a-4392-8a1b-0c9d8e7f6a5b
    reason:
      description: Why it was dropped (null otherwise).
      type: str
      sample: null
  sample: [{"source_uuid": "3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b", "is_unique": false, "action": "recreate", "restored": true,
            "uuid": "9f8e7d6c-5b4a-4392-8a1b-0c9d8e7f6a5b", "reason": null}]
backed_up_guest_agent:
  description:
    - What the backed-up VM's guest agent had reported when the backup was taken (its C(VM_guest_metrics)), in the form
      M(xapi.delta_backup.vm_guest_wait) returns; C(seen) says whether an agent with PV drivers had reported.
    - Null when the backup did not record it (written by Xen Orchestra, or by an older version of the collection).
    - The role C(xapi.delta_backup.health_check) waits for the restored VM's agent only when C(seen) is true.
  returned: always
  type: dict
  sample: {"seen": true, "os_version": {"name": "Debian GNU/Linux 12"}, "pv_drivers_version": {"major": "9", "minor": "3", "micro": "3"},
           "pv_drivers_detected": true, "networks": {"0/ip": "192.0.2.10"}, "addresses": ["192.0.2.10"], "ip": "192.0.2.10"}
  version_added: 0.2.0
power_state:
  description: How the VM came back (or, in check mode, would). Null with O(disk).
  returned: success
  type: dict
  contains:
    power_state:
      description: V(suspended) (memory image restored, VM created suspended) or V(halted).
      type: str
    reason:
      description: Why.
      type: str
    suspend_vdi_uuid:
      description: uuid of the restored memory image (null when none was restored, and in check mode).
      type: str
  sample: {"power_state": "suspended", "reason": "the backup holds a memory image", "suspend_vdi_uuid": "6f5e4d3c-2b1a-4098-8765-43210fedcba9"}
  version_added: 0.2.0
"""

from ansible_collections.xapi.delta_backup.plugins.module_utils.module_runner import connect, new_module, run
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.repositories import open_repository, resolve_backup_vm
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.job import Job
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.restore import restore


def restore_vm(module) -> dict:
    params = module.params
    repo = open_repository(params['repository'])
    vm_uuid = resolve_backup_vm(repo, params['vm'])
    with connect(module) as xapi:
        return restore(xapi, repo, vm_uuid, job=Job(params['job']) if params['job'] else None, point=params['backup'],
                       sr=params['sr'], name_label=params['name'], network_map=params['network_map'], start=params['start'],
                       disk=params['disk'], check_mode=module.check_mode, keep_mac=params['keep_mac'],
                       transfer_timeout=params['transfer_timeout'], allow_internal_networks=params['allow_internal_networks'],
                       sr_map=params['sr_map'], strict=params['strict'], name_template=params['name_template'],
                       keep_tags=params['keep_tags'], allow_vtpm_loss=params['allow_vtpm_loss'],
                       restore_vifs=params['vifs'], power_state=params['power_state'])


def main():
    module = new_module(dict(
        repository=dict(type='path', required=True),
        vm=dict(type='str', required=True),
        job=dict(type='str'),
        backup=dict(type='str', default='latest'),
        sr=dict(type='str'),
        name=dict(type='str'),
        network_map=dict(type='dict', default={}),
        keep_mac=dict(type='bool', default=False),
        allow_internal_networks=dict(type='bool', default=False),
        start=dict(type='bool', default=False),
        disk=dict(type='str'),
        transfer_timeout=dict(type='float', default=3600),
        sr_map=dict(type='dict', default={}),
        strict=dict(type='bool', default=False),
        name_template=dict(type='str', default='{name_label} ({timestamp})'),
        keep_tags=dict(type='bool', default=False),
        allow_vtpm_loss=dict(type='bool', default=False),
        vifs=dict(type='bool', default=True),
        power_state=dict(type='str', choices=['suspended', 'halted']),
    ))
    run(module, restore_vm)


if __name__ == '__main__':
    main()
