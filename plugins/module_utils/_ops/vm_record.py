# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The restored VM's record: what VM.create gets, what is set after it, its name and its tags.

VM.create takes every constructor field of XAPI's datamodel (``_xapi/constructor.py``), so the record is
the backed-up one, field by field, with XAPI's defaults for the VM's state and without references to
objects of the source pool. A few fields VM.create does not take, or ignores, are set afterwards
through the setter XAPI has for them (``apply_server_owned_fields``); the restored record is then read
back and compared with the backed-up one, so whatever the target XAPI could not take is reported.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import random
import socket
import string

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import NULL_REF, XapiError
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import BLOCK_REASON_PATTERN
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.placement import PCI_OTHER_CONFIG_KEY
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.constructor import CONSTRUCTOR_FIELDS, REQUIRED
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.wire_types import WireTypeError, xmlrpc_value

RESTORED_FROM_KEY = 'xapi_delta_backup:restored_from'
BLOCK_REASON = 'xapi.delta_backup vm_restore in progress'
# On the VM and VDIs of a restore until it finishes: names the run (host, pid) so that a later
# vm_restore can tell a restore killed half-way from one still running, and remove the former.
IN_PROGRESS_KEY = 'xapi_delta_backup:restore_in_progress'
# Fields of the backed-up VM that are its state, or its place in the source pool, rather than its configuration:
# the new VM takes XAPI's default for them. Ref fields (objects of the source pool) are never copied either.
# blocked_operations is ignored by VM.create (ocaml/xapi/xapi_vm.ml create) and set right after it.
# ha_always_run goes on once the restore is done (as Xen Orchestra's importIncrementalVm does): a VM created with
# it on a pool with HA enabled would be one HA restarts while its disks are still being written.
VM_STATE_FIELDS = ('power_state', 'last_boot_CPU_flags', 'last_booted_record', 'is_snapshot_from_vmpp', 'is_vmss_snapshot',
                   'ha_always_run', 'blocked_operations')
# XAPI derives the MACs of VIFs created with MAC "" from this VM other_config key and the device number
# (ocaml/xapi/xapi_vif_helpers.ml gen_mac); VM.create adds a random one when it is absent (xapi_vm.ml).
MAC_SEED_KEY = 'mac_seed'
# Tags of a backup run that must not follow the VM into its restored copy (they would make it look like a job snapshot).
BACKUP_KEY_PREFIXES = ('xo:backup:', 'xo:base_delta_vdi', 'xo:copy_of', 'xapi_delta_backup:')

# The BIOS strings VM.set_bios_strings accepts (ocaml/xapi-consts/constants.ml settable_vm_bios_string_keys, the
# same list at v1.249.41), each non-empty, at most 512 printable ASCII characters (bios_string_limit_size;
# ocaml/xapi/xapi_vm_helpers.ml assert_valid_bios_strings). The others (hp-rombios, oem-1, oem-2) get XAPI's
# generic values (xapi_vm.ml set_bios_strings fills them from generic_bios_strings).
SETTABLE_BIOS_STRING_KEYS = ('bios-vendor', 'bios-version', 'system-manufacturer', 'system-product-name', 'system-version',
                             'system-serial-number', 'baseboard-manufacturer', 'baseboard-product-name', 'baseboard-version',
                             'baseboard-serial-number', 'baseboard-asset-tag', 'baseboard-location-in-chassis', 'enclosure-asset-tag')
BIOS_STRING_LIMIT = 512
# XAPI's values for the BIOS strings no one can set (constants.ml generic_bios_strings and standard_type11_strings):
# a backed-up VM holding exactly these loses nothing.
GENERIC_UNSETTABLE_BIOS_STRINGS = {'hp-rombios': '', 'oem-1': 'Xen', 'oem-2': 'MS_VM_CERT/SHA1/bdbeb6e0a816d43fa6d3fe8aaef04c2bad9d3e3d'}
# Fields the restore changes on purpose: never reported as "not restored" when they differ from the backup.
CHANGED_ON_PURPOSE = ('name_label', 'other_config', 'generation_id', 'affinity', 'tags', 'is_a_template', 'blocked_operations',
                      'ha_always_run')

# The restored VM's name (vm_restore name_template) and the placeholders it may hold.
DEFAULT_NAME_TEMPLATE = '{name_label} ({timestamp})'
NAME_PLACEHOLDERS = ('name_label', 'timestamp', 'vm_uuid', 'job')
# Tags that keep a backup job away from a VM (the backup role's backup_exclude_tag default, Xen Orchestra's
# "xo:no-bak" and "xo:no-bak=<reason>"): kept on the copy even when its other tags are dropped.
EXCLUSION_TAG_PREFIXES = ('xo:no-bak',)


class RestoreError(RepositoryError):
    """A restore that cannot start or did not finish (whatever it created is removed again)."""

    error_code = 'restore_failed'


class NameTemplateError(RestoreError):
    """A name_template vm_restore cannot fill in (refused before anything is created)."""

    error_code = 'invalid_name_template'


def clean_other_config(other) -> dict:
    """An other_config without the keys of a backup run (BACKUP_KEY_PREFIXES)."""
    return {key: value for key, value in (other or {}).items() if not str(key).startswith(BACKUP_KEY_PREFIXES)}


def in_progress_marker() -> str:
    return json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                       'started': datetime.datetime.now(datetime.timezone.utc).isoformat()}, sort_keys=True)


def _wire_value(kind: str, value):
    """A recorded value as XAPI's XML-RPC wants it, by its datamodel type, whoever wrote it (see wire_types)."""
    return xmlrpc_value(kind, value)


def constructor_record(cls: str, given: dict, what: str) -> dict:
    """Every field ``<cls>.create`` reads: from ``given``, else XAPI's default (xapi_constructor.py, from XAPI's datamodel).

    A field XAPI requires (no default) that ``given`` lacks raises RestoreError naming it: XAPI would refuse
    the call with INTERNAL_ERROR Dispatcher_FieldNotFound.
    """
    record, missing = {}, []
    for name, (kind, default, _release) in CONSTRUCTOR_FIELDS[cls].items():
        if given.get(name) is not None:
            try:
                record[name] = _wire_value(kind, given[name])
            except WireTypeError as error:
                raise RestoreError('%s has %s = %r, which is no %s for XAPI (%s): correct it in the backup metadata JSON'
                                   % (what, name, given[name], kind, error)) from None
        elif default is not REQUIRED:
            record[name] = copy.deepcopy(default)
        else:
            missing.append(name)
    if missing:
        raise RestoreError('%s lacks %s, which XAPI needs to create the %s' % (what, ', '.join(missing), cls))
    return record


def recorded_fields(cls: str, source: dict, skip=()) -> dict:
    """The constructor fields of a backed-up record, without refs of the source pool and the fields in ``skip``."""
    fields = CONSTRUCTOR_FIELDS[cls]
    return {name: value for name, value in source.items() if name in fields and name not in skip and not fields[name][0].endswith(' ref')}


def resolve_affinity(xapi, source_vm: dict) -> str:
    """The backed-up VM's home host when this pool has it (same pool), else OpaqueRef:NULL."""
    ref = source_vm.get('affinity')
    if ref in (None, '', NULL_REF):
        return NULL_REF
    try:
        xapi.call('host.get_uuid', ref)
    except XapiError:
        return NULL_REF
    return ref


def fresh_generation_id(current) -> str:
    """A new VM generation id, as XAPI's import gives one (xapi_vm_helpers.ml fresh_genid): "" stays "", else two random int64."""
    if current == '':
        return ''
    return '%d:%d' % (random.SystemRandom().randrange(1 << 63), random.SystemRandom().randrange(1 << 63))


def vm_create_record(point, name_label: str, affinity: str = NULL_REF, keep_mac: bool = False, tags: list | None = None) -> dict:
    """The whole VM.create record: the backed-up configuration, XAPI's defaults for state, our markers.

    Without ``keep_mac`` the backed-up other_config:mac_seed is dropped, so XAPI draws a new seed and
    the VIFs (created with MAC "") get new MACs; with it, the seed stays. ``tags`` replaces the backed-up
    tags when given (see restored_tags).
    """
    source = point.metadata.get('vm') or {}
    given = recorded_fields('VM', source, VM_STATE_FIELDS)
    other = clean_other_config(source.get('other_config'))
    if not keep_mac:
        other.pop(MAC_SEED_KEY, None)
    other.pop(PCI_OTHER_CONFIG_KEY, None)  # a device of the source host: listed in not_restored (placement.unrestorable_devices)
    other.update({RESTORED_FROM_KEY: '%s@%s' % (point.vm_uuid, point.timestamp), IN_PROGRESS_KEY: in_progress_marker()})
    given.update(name_label=name_label, is_a_template=False, affinity=affinity, other_config=other,
                 generation_id=fresh_generation_id(source.get('generation_id')))
    if tags is not None:
        given['tags'] = list(tags)
    return constructor_record('VM', given, 'the VM record of backup %s' % point.timestamp)


def backed_up_blocked_operations(point) -> dict:
    """The backed-up VM's blocked_operations without ours: the migration blocks of the backup run that took the
    point (snapshot.BLOCK_REASON_PATTERN) and a restore's start block (a point taken of a restored VM)."""
    blocked = (point.metadata.get('vm') or {}).get('blocked_operations') or {}
    return {operation: reason for operation, reason in blocked.items()
            if reason != BLOCK_REASON and not BLOCK_REASON_PATTERN.match(str(reason or ''))}


def blocked_while_restoring(point) -> dict:
    """The backed-up blocked_operations plus our start block, set right after VM.create (which ignores them)."""
    return dict(backed_up_blocked_operations(point), start=BLOCK_REASON, start_on=BLOCK_REASON)


# -- name and tags -----------------------------------------------------------------------------


def check_name_template(template: str) -> list:
    """The placeholders of ``template``; NameTemplateError when one is unknown, formatted or the braces do not pair."""
    used = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise NameTemplateError('name_template %r is not a valid template (%s): write placeholders as {name_label} and a literal '
                                'brace as {{ or }}' % (template, error)) from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in NAME_PLACEHOLDERS or spec or conversion:
            raise NameTemplateError('name_template %r holds {%s%s%s}: the placeholders are %s, each written plainly as {name}'
                                    % (template, field, '!' + conversion if conversion else '', ':' + spec if spec else '',
                                       ', '.join('{%s}' % name for name in NAME_PLACEHOLDERS)))
        used.append(field)
    return used


def restored_name(point, name: str | None, name_template: str | None) -> str:
    """The restored VM's name: ``name`` as given, else ``name_template`` filled in, else the backed-up name."""
    source_name = (point.metadata.get('vm') or {}).get('name_label') or 'restored VM %s' % point.vm_uuid
    if name:
        return name
    if not name_template:
        return source_name
    check_name_template(name_template)
    values = {'name_label': source_name, 'timestamp': point.timestamp, 'vm_uuid': point.vm_uuid, 'job': point.job_id}
    filled = name_template.format(**values).strip()
    if not filled:
        raise NameTemplateError('name_template %r gives an empty name: put {name_label} or some text in it' % name_template)
    return filled


def restored_tags(point, keep_tags: bool) -> tuple[list, list]:
    """(tags of the restored VM, backed-up tags dropped).

    A backup job picks VMs by tag (the backup role's backup_tags, Xen Orchestra's smart mode): any user tag
    may be one, so all are dropped unless ``keep_tags``, except the exclusion tags (``xo:no-bak``), which keep
    jobs away from the copy.
    """
    tags = [str(tag) for tag in (point.metadata.get('vm') or {}).get('tags') or []]
    if keep_tags:
        return tags, []
    kept = [tag for tag in tags if tag.split('=', 1)[0] in EXCLUSION_TAG_PREFIXES]
    return kept, [tag for tag in tags if tag not in kept]


# -- after VM.create ---------------------------------------------------------------------------


def settable_bios_strings(bios_strings: dict) -> tuple[dict, dict]:
    """(what VM.set_bios_strings will take, {key: why not} for the backed-up strings it would refuse or ignore)."""
    settable, skipped = {}, {}
    for key, value in sorted((bios_strings or {}).items()):
        value = str(value)
        if key not in SETTABLE_BIOS_STRING_KEYS:
            if GENERIC_UNSETTABLE_BIOS_STRINGS.get(key) == value:
                continue
            skipped[key] = 'XAPI lets no one set this BIOS string: the restored VM has XAPI\'s generic value'
        elif value == '':
            continue  # XAPI keeps its generic value, which is what an empty string is
        elif len(value) > BIOS_STRING_LIMIT:
            skipped[key] = 'longer than the %d characters VM.set_bios_strings takes' % BIOS_STRING_LIMIT
        elif any(not 32 <= ord(char) < 127 for char in value):
            skipped[key] = 'holds characters other than printable ASCII, which VM.set_bios_strings refuses'
        else:
            settable[key] = value
    return settable, skipped


def plan_server_owned_fields(point) -> dict:
    """What apply_server_owned_fields will do for ``point``: pure, for check mode and the result."""
    source = point.metadata.get('vm') or {}
    settable, skipped = settable_bios_strings(source.get('bios_strings') or {})
    setters = []
    if settable:
        setters.append('bios_strings')
    if _recorded_true(source.get('ha_always_run')):
        setters.append('ha_always_run')
    return {'set_after_create': setters, 'bios_strings': settable,
            'not_restored': [{'field': 'bios_strings', 'key': key, 'reason': reason} for key, reason in skipped.items()]}


def _recorded_true(value) -> bool:
    """A recorded bool, whoever wrote it (Xen Orchestra's older metadata holds 0/1)."""
    try:
        return value is not None and xmlrpc_value('bool', value) is True
    except WireTypeError:
        return False


def _same(kind: str, backed_up, restored) -> bool:
    """Equal once both are in XAPI's wire form (metadata may hold ints as numbers, XAPI returns strings)."""
    try:
        return _wire_value(kind, backed_up) == _wire_value(kind, restored)
    except (TypeError, ValueError):
        return backed_up == restored


def apply_server_owned_fields(xapi, vm_ref: str, point, planned: dict | None = None) -> dict:
    """Set what VM.create did not take, then compare the restored record with the backed-up one.

    BIOS strings go through VM.set_bios_strings (VM.create always stores none), ha_always_run through
    VM.set_ha_always_run (as Xen Orchestra does, once the disks are in). A setter the target XAPI does not
    have (MESSAGE_METHOD_UNKNOWN) is reported, not fatal. Returns ``planned`` completed with ``not_restored``:
    every backed-up configuration field whose restored value differs or that the target XAPI lacks.
    """
    planned = copy.deepcopy(planned if planned is not None else plan_server_owned_fields(point))
    source = point.metadata.get('vm') or {}
    done = []
    for field, call, value in (('bios_strings', 'VM.set_bios_strings', planned['bios_strings']),
                               ('ha_always_run', 'VM.set_ha_always_run', True)):
        if field not in planned['set_after_create']:
            continue
        try:
            xapi.call(call, vm_ref, value)
            done.append(field)
        except XapiError as error:
            if error.code != 'MESSAGE_METHOD_UNKNOWN':
                raise
            planned['not_restored'].append({'field': field, 'reason': 'this XAPI version has no %s' % call})
    planned['set_after_create'] = done
    restored = xapi.call('VM.get_record', vm_ref)
    for name, (kind, _default, _release) in CONSTRUCTOR_FIELDS['VM'].items():
        if name not in source or name in VM_STATE_FIELDS or name in CHANGED_ON_PURPOSE or kind.endswith(' ref'):
            continue
        if name not in restored:
            planned['not_restored'].append({'field': name, 'reason': 'this XAPI version has no VM field %s' % name})
        elif not _same(kind, source[name], restored[name]):
            planned['not_restored'].append({'field': name, 'reason': 'XAPI gave the restored VM %r instead of the backed-up %r'
                                            % (restored[name], source[name])})
    if 'bios_strings' in done:
        # XAPI stores its 16 keys whatever it was given: only the backed-up keys are compared.
        reported = {item.get('key') for item in planned['not_restored'] if item['field'] == 'bios_strings'}
        restored_strings = restored.get('bios_strings') or {}
        for key, value in sorted((source.get('bios_strings') or {}).items()):
            if key not in reported and restored_strings.get(key) != str(value):
                planned['not_restored'].append({'field': 'bios_strings', 'key': key, 'reason': 'XAPI gave it %r' % restored_strings.get(key)})
    del planned['bios_strings']
    return planned


__all__ = ['RestoreError', 'NameTemplateError', 'apply_server_owned_fields', 'backed_up_blocked_operations', 'blocked_while_restoring',
           'check_name_template', 'constructor_record', 'fresh_generation_id', 'plan_server_owned_fields', 'resolve_affinity',
           'restored_name', 'restored_tags', 'settable_bios_strings', 'vm_create_record']
