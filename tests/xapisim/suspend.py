# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Suspend images, checkpoints and CPU compatibility, as XAPI does them (issue 13).

Pure helpers for ``api.Simulator``'s VM.suspend / resume / checkpoint / create / set_suspend_VDI / hard_shutdown.
Every rule cites the XAPI source it copies (xapi-project/xen-api, ocaml/xapi/...).
"""

from __future__ import annotations

import json

from .storage import pattern

MIB = 1024 * 1024
# ocaml/xapi/xapi_xenops.ml suspend: the suspend VDI is sized memory_static_max * 1.2 * 1.05, plus vGPU framebuffers
# (none here), plus 100 MiB (104857600).
SUSPEND_OVERHEAD = 104857600
SUSPEND_IMAGE_NAME = 'Suspend image'
# The simulated memory image written into a suspend VDI (a real one holds the guest's RAM): two runs of bytes,
# different at every suspend, so that export/import of it can be checked byte for byte.
IMAGE_WRITES = ((0, 2 * MIB), (32 * MIB, 2 * MIB))

# What host.cpu_info holds (ocaml/xapi/create_misc.ml create_host_cpu; keys ocaml/xapi-consts/constants.ml
# cpu_info_*_key). Features are Xen CPU policies: 32-bit hex words joined by '-'.
DEFAULT_CPU_INFO = {
    'cpu_count': '4', 'socket_count': '1', 'vendor': 'GenuineIntel', 'speed': '2394.374', 'modelname': 'Intel(R) Xeon(R) CPU (simulated)',
    'family': '6', 'model': '85', 'stepping': '7', 'flags': 'fpu de tsc msr pae mce cx8 apic sep mca cmov pat clflush mmx fxsr sse sse2',
    'features_pv': '1fc9cbf5-f6f83203-2991cbf5-00000123-00000007-009c0bbf-00000000-00000000-00100000-9c000400',
    'features_hvm': '1fcbfbff-f7fa3223-2d93fbff-00000523-0000000f-019c0fbf-00000000-00000000-00101000-bc000400',
    'features_pv_host': '1fc9cbf5-f6f83203-2991cbf5-00000123-00000007-009c0bbf-00000000-00000000-00100000-9c000400',
    'features_hvm_host': '1fcbfbff-f7fa3223-2d93fbff-00000523-0000000f-019c0fbf-00000000-00000000-00101000-bc000400',
}


def suspend_vdi_size(vm_record: dict) -> int:
    """ocaml/xapi/xapi_xenops.ml suspend ``space_needed``."""
    return int(int(vm_record['memory_static_max']) * 1.2 * 1.05) + SUSPEND_OVERHEAD


def suspend_vdi_record(vm_record: dict, sr: str, domid: int) -> dict:
    """The VDI.create record xapi_xenops.ml suspend sends: type suspend, on the suspend SR, sm_config hints."""
    size = suspend_vdi_size(vm_record)
    return {'name_label': SUSPEND_IMAGE_NAME, 'name_description': SUSPEND_IMAGE_NAME, 'SR': sr, 'virtual_size': size,
            'sharable': False, 'read_only': False, 'type': 'suspend', 'other_config': {}, 'xenstore_data': {},
            # Constants._sm_vm_hint (vmhint: the xenopsd id = VM uuid) and _sm_initial_allocation
            'sm_config': {'vmhint': vm_record['uuid'], 'initial_allocation': str(size)}, 'tags': []}


def image_writes(vm_uuid: str, serial: str) -> list[tuple[int, bytes]]:
    """(offset, bytes) of the simulated memory image of one suspend of a VM."""
    return [(offset, pattern('suspend:%s:%s:%d' % (vm_uuid, serial, offset), length)) for offset, length in IMAGE_WRITES]


def last_booted_record(vm_record: dict) -> str:
    """What xenopsd hands back at suspend (ocaml/xapi/xapi_xenops.ml update_vm: ``Db.VM.set_last_booted_record`` with
    the domain metadata once the VM is Suspended): never empty, opaque to clients."""
    return json.dumps({'simulated_xenopsd_domain': vm_record['uuid'], 'memory_static_max': str(vm_record['memory_static_max'])},
                      sort_keys=True)


def domain_features_key(vm_record: dict) -> str:
    """ocaml/xapi/cpuid_helpers.ml get_flags_for_vm: features_hvm for hvm, pvh, pv_in_pvh; features_pv for pv.
    An unspecified domain_type is derived as xapi_vm_helpers.ml derive_domain_type: HVM_boot_policy "" is pv."""
    domain_type = vm_record.get('domain_type') or 'unspecified'
    if domain_type == 'unspecified':
        domain_type = 'hvm' if vm_record.get('HVM_boot_policy') else 'pv'
    return 'features_pv' if domain_type == 'pv' else 'features_hvm'


def boot_cpu_flags(vm_record: dict, host_cpu_info: dict) -> dict:
    """VM.last_boot_CPU_flags once running: the host's vendor and the featureset the domain got
    (ocaml/xapi/xapi_xenops.ml update_vm, ``Db.VM.set_last_boot_CPU_flags`` [vendor; features])."""
    return {'vendor': host_cpu_info.get('vendor', ''), 'features': host_cpu_info.get(domain_features_key(vm_record), '')}


def _words(policy: str) -> list[int]:
    return [int(word, 16) for word in policy.split('-') if word]


def policy_is_compatible(vm_policy: str, host_policy: str) -> bool:
    """xenopsd HOST.is_compatible: every feature bit of the VM's policy is in the host's (missing words are zero)."""
    vm_words, host_words = _words(vm_policy), _words(host_policy)
    host_words += [0] * max(0, len(vm_words) - len(host_words))
    return all(word & ~host_words[num] == 0 for num, word in enumerate(vm_words))


def incompatibility(vm_record: dict, host_cpu_info: dict) -> str | None:
    """ocaml/xapi/cpuid_helpers.ml assert_vm_is_compatible: why a non-halted VM cannot run on the host, else None."""
    flags = vm_record.get('last_boot_CPU_flags') or {}
    key = domain_features_key(vm_record)
    if 'vendor' not in host_cpu_info or key not in host_cpu_info:
        return "Host does not have new leveling feature keys - not comparing VM's flags"
    if 'vendor' in flags and flags['vendor'] != host_cpu_info['vendor']:
        return 'VM last booted on a host which had a CPU from a different vendor.'
    if 'features' in flags and not policy_is_compatible(flags['features'], host_cpu_info[key]):
        return "VM last booted on a CPU with features this host's CPU does not have."
    return None
