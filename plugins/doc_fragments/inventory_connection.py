# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Connection options of the inventory (and future lookup) plugins.

    Plugins read their options through Ansible's configuration system, not through an argument
    spec, so the environment variables the modules use as fallbacks are declared here as C(env:)
    sources. The names match the modules' fallbacks, so one AWX credential serves both.
    """

    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - The pool coordinator (or any pool member) to connect to, as a host name or address, optionally with a port.
      - HTTPS is used unless the value starts with C(http://). Plain HTTP sends the password in clear text and many pools close port 80.
      - If a pool member answers, the plugin reconnects once to the coordinator it names.
      - Required in effect. An empty value counts as not set.
    type: str
    env:
      - name: XENSERVER_HOST
  username:
    description:
      - The user to log in as.
      - An empty value counts as not set, so V(root) is used.
    type: str
    default: root
    env:
      - name: XENSERVER_USER
  password:
    description:
      - The password of O(username).
      - Prefer the environment variable (for example from an AWX credential) or an Ansible Vault encrypted value
        to a clear text password in the inventory file.
    type: str
    secret: true
    env:
      - name: XENSERVER_PASSWORD
  validate_certs:
    description:
      - Whether to verify the TLS certificate of the pool.
      - XCP-ng and XenServer hosts use self-signed certificates by default. Prefer O(ca_path) to V(false).
      - An empty value counts as not set, so certificates are verified.
    type: bool
    default: true
    env:
      - name: XENSERVER_VALIDATE_CERTS
  ca_path:
    description:
      - A PEM file (or a directory of hashed certificates) with the CA or self-signed certificate of the pool.
      - If not set (or empty), the system trust store is used.
    type: path
    env:
      - name: XENSERVER_CA_PATH
  timeout:
    description:
      - Socket timeout in seconds for each request to the pool.
    type: float
    default: 60
    env:
      - name: XENSERVER_TIMEOUT
notes:
  - Values set in the inventory source file win over the environment variables.
  - The plugin logs in with the session originator C(xapi.delta_backup) and always logs out, even on failure.
requirements:
  - XenAPI >= 26.21.1
"""
