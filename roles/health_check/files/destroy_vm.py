# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Destroy the health check's temporary VM and its disks (private to the xapi.delta_backup.health_check role).

Usage: destroy_vm.py VM_UUID NAME_LABEL. The pool comes from XENSERVER_HOST, XENSERVER_USER, XENSERVER_PASSWORD,
XENSERVER_VALIDATE_CERTS and XENSERVER_CA_PATH, like the collection's modules. Refuses a VM whose name is not
NAME_LABEL, a template, a snapshot or the control domain, so a wrong uuid never destroys anything else. Prints one
JSON object: {"changed": bool, "destroyed_vdis": [...], "msg": ...}; exits 1 on failure.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import xmlrpc.client

import XenAPI  # pylint: disable=import-error


def session():
    host = os.environ.get('XENSERVER_HOST', '').strip()
    if not host:
        raise RuntimeError('no pool given: set XENSERVER_HOST')
    if '://' not in host:
        host = 'https://' + host
    if host.startswith('https://'):
        if os.environ.get('XENSERVER_VALIDATE_CERTS', 'true').strip().lower() in ('0', 'false', 'no', 'off', 'n', 'f'):
            # The user turned verification off.
            context = ssl._create_unverified_context()  # pylint: disable=protected-access
        else:
            context = ssl.create_default_context(cafile=os.environ.get('XENSERVER_CA_PATH') or None)
        transport = xmlrpc.client.SafeTransport(context=context)
    else:
        transport = xmlrpc.client.Transport()
    xapi = XenAPI.Session(host, transport=transport)
    xapi.xenapi.login_with_password(os.environ.get('XENSERVER_USER') or 'root', os.environ.get('XENSERVER_PASSWORD', ''),
                                    '2.20', 'xapi.delta_backup health_check')
    return xapi


def destroy(xapi, uuid: str, name_label: str) -> dict:
    records = xapi.xenapi.VM.get_all_records_where('field "uuid"="%s"' % uuid.replace('"', ''))
    if not records:
        return {'changed': False, 'destroyed_vdis': [], 'msg': 'VM %s does not exist (already destroyed)' % uuid}
    vm_ref, vm = next(iter(records.items()))
    if vm.get('is_a_template') or vm.get('is_a_snapshot') or vm.get('is_control_domain'):
        raise RuntimeError('refusing to destroy %s: it is a template, a snapshot or the control domain' % uuid)
    if vm.get('name_label') != name_label:
        raise RuntimeError('refusing to destroy %s: it is named %r, not %r' % (uuid, vm.get('name_label'), name_label))
    vdis = []
    for vbd_ref in vm.get('VBDs') or []:
        vbd = xapi.xenapi.VBD.get_record(vbd_ref)
        if vbd.get('type') == 'Disk' and vbd.get('VDI') not in (None, '', 'OpaqueRef:NULL'):
            vdis.append((vbd['VDI'], xapi.xenapi.VDI.get_uuid(vbd['VDI'])))
    if vm.get('power_state') != 'Halted':
        xapi.xenapi.VM.hard_shutdown(vm_ref)
    xapi.xenapi.VM.destroy(vm_ref)
    for vdi_ref, _uuid in vdis:
        xapi.xenapi.VDI.destroy(vdi_ref)
    return {'changed': True, 'destroyed_vdis': [vdi_uuid for _ref, vdi_uuid in vdis],
            'msg': 'destroyed VM %s and %d disk(s)' % (uuid, len(vdis))}


def main() -> int:
    if len(sys.argv) != 3:
        print(json.dumps({'failed': True, 'msg': 'usage: destroy_vm.py VM_UUID NAME_LABEL'}))
        return 2
    xapi = None
    try:
        xapi = session()
        print(json.dumps(destroy(xapi, sys.argv[1], sys.argv[2])))
        return 0
    except Exception as error:  # pylint: disable=broad-except
        # Any failure is reported as JSON to the role.
        print(json.dumps({'failed': True, 'msg': '%s: %s' % (type(error).__name__, error)}))
        return 1
    finally:
        if xapi is not None:
            try:
                xapi.xenapi.session.logout()
            except Exception:  # pylint: disable=broad-except
                pass


if __name__ == '__main__':
    sys.exit(main())
