# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Connection options shared by every module; they mirror connection_argument_spec() in module_utils/module_runner.py."""

    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - The pool coordinator (or any pool member) to connect to, as a host name or address, optionally with a port.
      - HTTPS is used unless the value starts with C(http://). Plain HTTP sends the password in clear text and many pools close port 80.
      - If a pool member answers, the module reconnects once to the coordinator it names.
      - If not set, the value of the E(XENSERVER_HOST) environment variable is used.
      - Required in effect. An empty value (for example from an AWX survey) counts as not set.
    type: str
    aliases: [ host, pool ]
  username:
    description:
      - The user to log in as.
      - If not set, the value of the E(XENSERVER_USER) environment variable is used, then V(root).
    type: str
    default: root
    aliases: [ user, admin ]
  password:
    description:
      - The password of O(username).
      - If not set, the value of the E(XENSERVER_PASSWORD) environment variable is used.
    type: str
    aliases: [ pass, pwd ]
  validate_certs:
    description:
      - Whether to verify the TLS certificate of the pool.
      - XCP-ng and XenServer hosts use self-signed certificates by default. Prefer O(ca_path) to V(false).
      - V(false) is honoured as given and disables verification, never the other way round.
      - If not set, the value of the E(XENSERVER_VALIDATE_CERTS) environment variable is used.
    type: bool
    default: true
  ca_path:
    description:
      - A PEM file (or a directory of hashed certificates) with the CA or self-signed certificate of the pool.
      - Used for both the XML-RPC API and the disk transfers.
      - Every XCP-ng or XenServer host makes its own self-signed certificate on first boot. A disk on storage
        that only one pool member sees (its local SR) is transferred with that member, to which XAPI redirects
        the request; give then a bundle, one PEM file holding the certificate of every host of the pool
        (see C(docs/connecting.md)). Pools with CA-signed certificates need only the CA.
      - If not set, the value of the E(XENSERVER_CA_PATH) environment variable is used, then the system trust store.
    type: path
  timeout:
    description:
      - Socket timeout in seconds for each API request to the pool.
      - Long operations have their own limits (O(operation_timeout), O(transfer_read_timeout), the modules' transfer
        and snapshot timeouts); this only bounds a single unresponsive request.
    type: float
    default: 60
  transfer_read_timeout:
    description:
      - Socket timeout in seconds for each read or write of a disk transfer (C(/export_raw_vdi), C(/import_raw_vdi));
        a transfer fails when no data moves for that long.
      - XAPI attaches the disk before it sends the first byte, which can take minutes on a busy SR.
    type: float
    default: 300
    version_added: 0.2.0
  operation_timeout:
    description:
      - How long to wait, in seconds, for a long XAPI operation (VM start and shutdown, VM and VDI destroy,
        VDI snapshot and clone). These run as XAPI tasks, so a busy host does not trip the socket O(timeout).
      - When the wait runs out, the task is cancelled if XAPI can cancel it (VM start and shutdown, snapshots);
        otherwise the error says that the operation may still complete.
    type: float
    default: 600
    version_added: 0.2.0
notes:
  - The modules run on the controller or in the execution environment (use C(delegate_to=localhost)), not on dom0.
  - Each run logs in with the session originator C(xapi.delta_backup) and always logs out, even on failure.
  - A session that XAPI expired during a run (idle longer than its inactive session timeout, 24 hours by default)
    is renewed by logging in again and the refused call is repeated; XAPI checks the session before it runs a call,
    so this never runs a call twice. A session with an unfinished task, such as a running disk transfer, never expires.
requirements:
  - XenAPI >= 26.21.1
"""
