# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A backup repository as Xen Orchestra writes it: one VM, a full then a delta, two disks.

Built from XO's own code and the repository reference, never from this collection's writer:

- layout (docs ``/work/shared/reference/xo-repository.md`` §1): ``xo-vm-backups/<vm>/<date>.json`` and
  ``xo-vm-backups/<vm>/vdis/<job>/<live VDI uuid>/<date>.vhd``, ``<date>`` = ``%Y%m%dT%H%M%SZ`` of the
  metadata's ``timestamp`` (XO ``@xen-orchestra/backups/_runners/_writers/IncrementalRemoteWriter.mjs``
  ``_transfer``: ``vhds`` paths and ``metadataContent``);
- metadata fields (IncrementalRemoteWriter.mjs ``_transfer`` ``metadataContent``, and
  ``@xen-orchestra/backups/_incrementalVm.mjs`` ``exportIncrementalVm`` for ``vdis``/``vifs``/``vbds``):
  the records are XAPI's as XO receives them over JSON-RPC, where an ``int`` is a JSON number
  (xen-api ``doc/content/xen-api/wire-protocol.md``), so memory sizes above 2^31 are plain numbers;
  only Disk VBDs with a VDI; no ``sha256``, no ``xapi_delta_backup`` section, no ``xapi_delta_backup_job``;
- VHD identity (reference §5): footer unique id = the snapshot VDI uuid, a delta's header parent id =
  its parent's footer id and parent name = the parent's path relative to the child, no parent locators.

The VHD files are written with the simulator's independent ``xapisim.vhd_stream`` structures.
``legacy_booleans`` writes booleans as 0/1, as XenServer < 7.1 era backups hold them (XO repairs them
on read: ``@xen-orchestra/backups/RemoteAdapter.mjs`` ``readVmBackupMetadata``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
import sys
import uuid

TESTS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..'))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from xapisim import vhd_stream  # noqa: E402  pylint: disable=wrong-import-position

BLOCK = vhd_stream.VHD_BLOCK
SECTOR = vhd_stream.SECTOR
GIB = 1024 ** 3

VM_UUID = '5a1c0e2b-8d3f-4b6a-9c1e-2f7a8b9c0d1e'
JOB_ID = '9e3b1f40-7c2d-4e5a-8b6c-1d2e3f4a5b6c'
SCHEDULE_ID = 'c4d5e6f7-0a1b-4c2d-9e3f-4a5b6c7d8e9f'
NETWORK_UUID = '6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0'
NETWORK_NAME = 'Pool-wide network associated with eth0'
SR_UUID = '3b2a1c0d-9e8f-4a7b-8c6d-5e4f3a2b1c0d'
MEMORY = 4 * GIB  # above 2^31: a JSON number XML-RPC cannot carry as an int

# The two disks: live VDI uuid, name, userdevice, virtual size, blocks of the full, blocks the delta changes.
DISKS = (
    {'live': '1d2c3b4a-5f6e-4d7c-8b9a-0f1e2d3c4b5a', 'name': 'xo-vm root', 'userdevice': '0', 'size': 8 * BLOCK,
     'full': (0, 1, 5), 'delta': (1, 6)},
    {'live': '2e3d4c5b-6a7f-4e8d-9cab-1a2b3c4d5e6f', 'name': 'xo-vm data', 'userdevice': '1', 'size': 5 * BLOCK,
     'full': (2,), 'delta': (0, 2)},
)


def block_data(seed: str) -> bytes:
    """2 MiB of content that differs for every seed."""
    unit = hashlib.sha256(seed.encode('ascii')).digest() * 128
    return (unit * (BLOCK // len(unit) + 1))[:BLOCK]


def filename_date(timestamp_ms: int) -> str:
    """XO's formatFilenameDate: UTC ``%Y%m%dT%H%M%SZ``."""
    return datetime.datetime.fromtimestamp(timestamp_ms / 1000, datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')


def _header_without_locators(max_entries: int, parent_id: bytes, parent_name: str) -> bytes:
    """A differencing header as XO writes it: parent id and relative name, no parent locator entries."""
    header = bytearray(vhd_stream.make_header(max_entries, parent_id, parent_name))
    header[576:576 + 8 * 24] = bytes(8 * 24)
    header[36:40] = bytes(4)
    struct.pack_into('>I', header, 36, (~sum(header)) & 0xFFFFFFFF)
    return bytes(header)


def write_vhd(path: str, size: int, blocks: dict, unique_id: str, parent_id: str | None = None, parent_name: str = '') -> None:
    """A dynamic (or, with a parent, differencing) VHD holding ``blocks`` (index -> 2 MiB of data)."""
    layout = vhd_stream.ExportLayout(size, sorted(blocks), unique_id=uuid.UUID(unique_id).bytes,
                                     parent_id=uuid.UUID(parent_id).bytes if parent_id else None, parent_name=parent_name)
    head = bytearray(layout.head)
    if parent_id:
        head[SECTOR:SECTOR + 1024] = _header_without_locators(layout.max_entries, uuid.UUID(parent_id).bytes, parent_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as handle:
        handle.write(head)
        for index in sorted(blocks):
            handle.write(vhd_stream.BITMAP_FULL)
            handle.write(blocks[index])
        handle.write(layout.footer)


def _flag(value: bool, legacy: bool):
    return int(value) if legacy else value


def vm_record(name_label: str, snapshot: bool, legacy: bool, suspend_vdi: str = 'OpaqueRef:NULL') -> dict:
    """A VM record as XAPI's JSON-RPC VM.get_record gives it to XO (ints as numbers)."""
    record = {
        'uuid': VM_UUID if not snapshot else '7b8c9d0e-1f2a-4b3c-8d4e-5f6a7b8c9d0e',
        'allowed_operations': [], 'current_operations': {}, 'name_label': name_label, 'name_description': 'restored from an XO backup',
        'power_state': 'Halted' if snapshot else 'Running', 'user_version': 1, 'is_a_template': _flag(snapshot, legacy),
        'is_default_template': _flag(False, legacy), 'suspend_VDI': suspend_vdi, 'resident_on': 'OpaqueRef:host-of-xo-pool',
        'scheduled_to_be_resident_on': 'OpaqueRef:NULL', 'affinity': 'OpaqueRef:host-of-xo-pool',
        'memory_overhead': 35651584, 'memory_target': MEMORY, 'memory_static_max': MEMORY, 'memory_dynamic_max': MEMORY,
        'memory_dynamic_min': 2 * GIB, 'memory_static_min': GIB,
        'VCPUs_params': {'weight': '256'}, 'VCPUs_max': 4, 'VCPUs_at_startup': 2,
        'actions_after_softreboot': 'soft_reboot', 'actions_after_shutdown': 'destroy', 'actions_after_reboot': 'restart',
        'actions_after_crash': 'restart', 'consoles': [], 'VIFs': [], 'VBDs': [], 'VUSBs': [], 'crash_dumps': [], 'VTPMs': [],
        'PV_bootloader': '', 'PV_kernel': '', 'PV_ramdisk': '', 'PV_args': '', 'PV_bootloader_args': '', 'PV_legacy_args': '',
        'HVM_boot_policy': 'BIOS order', 'HVM_boot_params': {'order': 'cdn'}, 'HVM_shadow_multiplier': 1,
        'platform': {'timeoffset': '0', 'device-model': 'qemu-upstream-compat', 'viridian': 'true', 'acpi': '1', 'apic': 'true',
                     'pae': 'true', 'nx': 'true', 'vga': 'std', 'videoram': '8', 'cores-per-socket': '2'},
        'PCI_bus': '', 'other_config': {'mac_seed': '0e1d2c3b-4a59-4867-8f9e-a0b1c2d3e4f5', 'vgpu_pci': '', 'base_template_name': 'Other install media'},
        'domid': -1 if snapshot else 3, 'domarch': '', 'last_boot_CPU_flags': {}, 'is_control_domain': _flag(False, legacy),
        'metrics': 'OpaqueRef:NULL', 'guest_metrics': 'OpaqueRef:NULL', 'last_booted_record': '', 'recommendations': '',
        'xenstore_data': {'vm-data': ''}, 'ha_always_run': _flag(False, legacy), 'ha_restart_priority': '',
        'is_a_snapshot': _flag(snapshot, legacy), 'snapshot_of': 'OpaqueRef:vm-of-xo-pool' if snapshot else 'OpaqueRef:NULL',
        'snapshots': [], 'snapshot_time': '20260314T02:15:00Z' if snapshot else '19700101T00:00:00Z', 'transportable_snapshot_id': '',
        'blobs': {}, 'tags': ['prod'], 'blocked_operations': {}, 'snapshot_info': {}, 'snapshot_metadata': '', 'parent': 'OpaqueRef:NULL',
        'children': [], 'bios_strings': {'bios-vendor': 'Xen', 'system-manufacturer': 'Xen'}, 'protection_policy': 'OpaqueRef:NULL',
        'is_snapshot_from_vmpp': _flag(False, legacy), 'snapshot_schedule': 'OpaqueRef:NULL', 'is_vmss_snapshot': _flag(False, legacy),
        'appliance': 'OpaqueRef:NULL', 'start_delay': 0, 'shutdown_delay': 0, 'order': 0, 'VGPUs': [], 'attached_PCIs': [],
        'suspend_SR': 'OpaqueRef:NULL', 'version': 0, 'generation_id': '0:0', 'hardware_platform_version': 0, 'has_vendor_device': _flag(False, legacy),
        'requires_reboot': _flag(False, legacy), 'reference_label': '', 'domain_type': 'hvm', 'NVRAM': {}, 'pending_guidances': [],
    }
    return record


def vdi_record(disk: dict, snapshot_vdi_uuid: str, ref: str, base_uuid: str | None, legacy: bool) -> dict:
    """A snapshot VDI record as exportIncrementalVm stores it (with $snapshot_of$uuid, $SR$uuid and its other_config keys)."""
    other = {'xo:backup:vm': VM_UUID}
    if base_uuid is not None:
        other['xo:base_delta_vdi'] = base_uuid  # undefined (absent from the JSON) for a full
    return {
        'uuid': snapshot_vdi_uuid, 'name_label': disk['name'], 'name_description': 'disk of xo-vm', 'allowed_operations': [],
        'current_operations': {}, 'SR': 'OpaqueRef:sr-of-xo-pool', 'VBDs': [ref.replace('vdi', 'vbd')], 'crash_dumps': [],
        'virtual_size': disk['size'], 'physical_utilisation': disk['size'] + 3 * SECTOR, 'type': 'user', 'sharable': _flag(False, legacy),
        'read_only': _flag(False, legacy), 'other_config': other, 'storage_lock': _flag(False, legacy), 'location': snapshot_vdi_uuid,
        'managed': _flag(True, legacy), 'missing': _flag(False, legacy), 'parent': 'OpaqueRef:NULL', 'xenstore_data': {},
        'sm_config': {'vhd-parent': 'a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d'}, 'is_a_snapshot': _flag(True, legacy),
        'snapshot_of': 'OpaqueRef:live-%s' % disk['live'], 'snapshots': [], 'snapshot_time': '20260314T02:15:00Z', 'tags': [],
        'allow_caching': _flag(False, legacy), 'on_boot': 'persist', 'metadata_of_pool': 'OpaqueRef:NULL', 'metadata_latest': _flag(False, legacy),
        'is_tools_iso': False, 'cbt_enabled': False,
        '$snapshot_of$uuid': disk['live'], '$SR$uuid': SR_UUID,
    }


def vbd_record(disk: dict, vdi_ref: str, legacy: bool) -> dict:
    return {
        'uuid': str(uuid.uuid5(uuid.NAMESPACE_URL, vdi_ref)), 'allowed_operations': [], 'current_operations': {},
        'VM': 'OpaqueRef:snapshot-vm', 'VDI': vdi_ref, 'device': 'xvd' + 'abcdefgh'[int(disk['userdevice'])],
        'userdevice': disk['userdevice'], 'bootable': _flag(disk['userdevice'] == '0', legacy), 'mode': 'RW', 'type': 'Disk',
        'unpluggable': _flag(True, legacy), 'storage_lock': _flag(False, legacy), 'empty': _flag(False, legacy), 'other_config': {'owner': 'true'},
        'currently_attached': _flag(False, legacy), 'status_code': 0, 'status_detail': '', 'runtime_properties': {},
        'qos_algorithm_type': '', 'qos_algorithm_params': {}, 'qos_supported_algorithms': [], 'metrics': 'OpaqueRef:NULL',
    }


def vif_record(legacy: bool) -> dict:
    return {
        'uuid': '8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f', 'allowed_operations': [], 'current_operations': {}, 'device': '0',
        'network': 'OpaqueRef:network-of-xo-pool', 'VM': 'OpaqueRef:snapshot-vm', 'MAC': '7e:2a:4f:11:22:33', 'MTU': 1500,
        'other_config': {}, 'currently_attached': _flag(False, legacy), 'status_code': 0, 'status_detail': '', 'runtime_properties': {},
        'qos_algorithm_type': 'ratelimit', 'qos_algorithm_params': {'kbps': '102400'}, 'qos_supported_algorithms': [], 'metrics': 'OpaqueRef:NULL',
        'MAC_autogenerated': _flag(False, legacy), 'locking_mode': 'network_default', 'ipv4_allowed': [], 'ipv6_allowed': [],
        'ipv4_configuration_mode': 'None', 'ipv4_addresses': [], 'ipv4_gateway': '', 'ipv6_configuration_mode': 'None',
        'ipv6_addresses': [], 'ipv6_gateway': '', 'reserved_pci': 'OpaqueRef:NULL',
        '$network$uuid': NETWORK_UUID, '$network$name_label': NETWORK_NAME, '$network$VLAN': -1,
    }


class XoRepository:
    """The repository on disk and what each of its points must restore to."""

    def __init__(self, root: str, legacy_booleans: bool = False):
        self.root = root
        self.legacy = legacy_booleans
        self.points: list[str] = []  # file dates, oldest first
        self.content: dict[str, dict[str, bytes]] = {}  # date -> live VDI uuid -> whole disk
        self.snapshot_vdis: dict[str, dict[str, str]] = {}  # date -> live VDI uuid -> snapshot VDI uuid
        self.metadata: dict[str, dict] = {}
        self._blocks = {disk['live']: {} for disk in DISKS}

    @property
    def vm_folder(self) -> str:
        return os.path.join(self.root, 'xo-vm-backups', VM_UUID)

    def add_point(self, timestamp_ms: int) -> str:
        """One XO run: a full at first, then a delta of the blocks each disk's ``delta`` names."""
        date = filename_date(timestamp_ms)
        previous = self.points[-1] if self.points else None
        vdis, vbds, vhds, differencing, snapshots = {}, {}, {}, {}, {}
        size = 0
        for number, disk in enumerate(DISKS):
            live = disk['live']
            snapshot_uuid = str(uuid.uuid5(uuid.NAMESPACE_OID, '%s@%s' % (live, date)))
            changed = disk['delta'] if previous else disk['full']
            written = {index: block_data('%s/%s/%d' % (live, date, index)) for index in changed}
            self._blocks[live].update(written)
            relative = 'vdis/%s/%s/%s.vhd' % (JOB_ID, live, date)
            base_uuid = self.snapshot_vdis[previous][live] if previous else None
            write_vhd(os.path.join(self.vm_folder, relative), disk['size'], written, snapshot_uuid,
                      parent_id=base_uuid, parent_name='%s.vhd' % previous if previous else '')
            ref = 'OpaqueRef:vdi-%s-%d' % (date, number)
            vdis[ref] = vdi_record(disk, snapshot_uuid, ref, base_uuid, self.legacy)
            vbds[ref.replace('vdi', 'vbd')] = vbd_record(disk, ref, self.legacy)
            vhds[ref] = relative
            differencing[ref] = bool(previous)
            snapshots[live] = snapshot_uuid
            size += os.path.getsize(os.path.join(self.vm_folder, relative))
        metadata = {
            'includeNonNbdQcow2Fix': True, 'isVhdDifferencing': {ref: _flag(flag, self.legacy) for ref, flag in differencing.items()},
            'jobId': JOB_ID, 'mode': 'delta', 'scheduleId': SCHEDULE_ID, 'timestamp': timestamp_ms,
            'vbds': vbds, 'vdis': vdis, 'version': '2.0.0', 'vifs': {'OpaqueRef:vif-%s' % date: vif_record(self.legacy)}, 'vhds': vhds,
            'vm': vm_record('xo-vm', False, self.legacy), 'vmSnapshot': vm_record('xo-vm', True, self.legacy), 'vtpms': [],
            'tags': [], 'size': size,
        }
        with open(os.path.join(self.vm_folder, '%s.json' % date), 'w', encoding='utf-8') as handle:
            json.dump(metadata, handle)  # XO writes compact JSON (JSON.stringify)
        self.points.append(date)
        self.snapshot_vdis[date] = snapshots
        self.metadata[date] = metadata
        self.content[date] = {disk['live']: self.disk_bytes(disk) for disk in DISKS}
        return date

    def disk_bytes(self, disk: dict) -> bytes:
        """The whole virtual disk as it is after the points written so far."""
        data = bytearray(disk['size'])
        for index, block in self._blocks[disk['live']].items():
            data[index * BLOCK:(index + 1) * BLOCK] = block
        return bytes(data)


def build_xo_repository(root: str, legacy_booleans: bool = False) -> XoRepository:
    """A full (2026-03-14 02:15 UTC) then a delta a day later."""
    repository = XoRepository(root, legacy_booleans)
    first = int(datetime.datetime(2026, 3, 14, 2, 15, tzinfo=datetime.timezone.utc).timestamp() * 1000)
    repository.add_point(first)
    repository.add_point(first + 86400 * 1000)
    return repository
