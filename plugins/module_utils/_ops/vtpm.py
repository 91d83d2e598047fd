# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Virtual TPMs: read at backup, recreated at restore.

Backup. Xen Orchestra records a point's vTPMs as ``vtpms``, a list with the contents
(``VTPM.get_contents``) of each, read from the exported snapshot (``exportIncrementalVm`` in
@xen-orchestra/backups/_incrementalVm.mjs). We write the same list, so Xen Orchestra restores our
points and we restore its, and beside it ``xapi_delta_backup_vtpms``: per vTPM its uuid,
``is_unique`` and where the contents were read.

The contents are read from the snapshot: XAPI's VM.snapshot copies each vTPM with its contents
(ocaml/xapi/xapi_vm_clone.ml clone -> xapi_vtpm.ml copy), so they are those of the moment the
disks were snapshotted. A *unique* vTPM is the exception: XAPI never copies its contents
(xapi_vtpm.ml copy_or_create_contents: the copy starts empty), so its contents are read from the
live VM (the only place they are), at backup time rather than snapshot time.

Restore. ``VTPM.create(vM, is_unique)`` on the new, halted VM, then ``VTPM.set_contents``, as Xen
Orchestra's VTPM_create does (@xen-orchestra/xapi/vtpm.mjs) and as XAPI's own import does
(ocaml/xapi/import.ml, module VTPM). ``VTPM.destroy`` is not needed on failure: VM.destroy takes the
VM's vTPMs with it (ocaml/xapi/xapi_vm.ml destroy). A pool can create vTPMs when its
``restrictions`` hold ``restrict_vtpm: "false"`` (the check of ocaml/xapi/xapi_vtpm.ml create):
XAPI before 22.26 (XCP-ng 8.2) has no vTPM at all, and a licence may restrict them.

The contents are a secret: they are in the metadata JSON (written with the repository's file
mode) and nowhere else: never in a result, a message or a log.
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiError

# Xen Orchestra's metadata key: the contents of each vTPM, in order.
CONTENTS_KEY = 'vtpms'
# Ours, in the same order: {uuid, is_unique, read_from} of each vTPM (never the contents).
DETAILS_KEY = 'xapi_delta_backup_vtpms'
# pool.restrictions key that VTPM.create checks (ocaml/xapi/xapi_vtpm.ml assert_not_restricted).
RESTRICTION_KEY = 'restrict_vtpm'
# XAPI reads at most 300 KiB of an API request (ocaml/xapi-consts/constants.ml http_limit_max_rpc_size, applied by
# ocaml/xapi/api_server.ml callback): VTPM.set_contents' XML-RPC envelope must fit with the contents.
MAX_REQUEST_BYTES = 300 * 1024
REQUEST_ENVELOPE_BYTES = 1024


# -- backup ------------------------------------------------------------------------------------


def _vtpms_of(xapi, vm_ref: str) -> list:
    if not vm_ref:
        return []
    return list(xapi.call('VM.get_VTPMs', vm_ref) or [])


def read_vtpms(xapi, snapshot_ref: str, live_vtpm_refs: list | None = None) -> dict:
    """The metadata entries for the snapshot's vTPMs: {CONTENTS_KEY: [...], DETAILS_KEY: [...]}.

    ``live_vtpm_refs`` are the live VM's vTPMs (its record's ``VTPMs``), read for a unique vTPM whose
    snapshot copy is empty. An XAPI without vTPMs gives an empty VTPMs field: both lists are then empty.
    A contents read XAPI refuses (``VTPM.get_contents`` is for local superuser sessions: root) fails
    the backup, rather than writing a point whose vTPM could not be restored.
    """
    contents, details = [], []
    for ref in _vtpms_of(xapi, snapshot_ref):
        record = xapi.call('VTPM.get_record', ref)
        is_unique = bool(record.get('is_unique'))
        source, read_from = ref, 'snapshot'
        if is_unique and live_vtpm_refs:
            source, read_from = live_vtpm_refs[0], 'vm'
        try:
            value = xapi.call('VTPM.get_contents', source, what='reading the contents of vTPM %s' % record.get('uuid'))
        except XapiError as error:
            raise error.reworded('cannot back up vTPM %s of the VM: VTPM.get_contents failed (%s). XAPI lets only a local superuser '
                                 'session (root) read vTPM contents: connect as root' % (record.get('uuid'), error.code)) from error
        contents.append(value)
        details.append({'uuid': record.get('uuid'), 'is_unique': is_unique, 'read_from': read_from})
    return {CONTENTS_KEY: contents, DETAILS_KEY: details}


# -- restore -----------------------------------------------------------------------------------


@dataclass
class VtpmRestore:
    """One backed-up vTPM and what the restore does with it."""

    index: int
    source_uuid: str | None
    is_unique: bool
    contents: str | None  # None: the backup holds no contents for it (Xen Orchestra could not read them)
    action: str  # 'recreate' or 'drop'
    reason: str | None = None  # why it is dropped
    uuid: str | None = None  # of the new vTPM, once created

    def as_result(self) -> dict:
        """The result entry: never the contents."""
        return {'source_uuid': self.source_uuid, 'is_unique': self.is_unique, 'action': self.action,
                'restored': self.uuid is not None, 'uuid': self.uuid, 'reason': self.reason}

    def __repr__(self) -> str:
        # The contents are a secret: keep them out of any repr a traceback or a debug print shows.
        return 'VtpmRestore(index=%d, source_uuid=%r, is_unique=%r, action=%r, uuid=%r)' % (
            self.index, self.source_uuid, self.is_unique, self.action, self.uuid)


def backed_up_vtpms(metadata: dict) -> list[VtpmRestore]:
    """The point's vTPMs (our metadata or Xen Orchestra's), all planned as 'recreate'.

    Raises ValueError (saying what is wrong, never the contents) for a ``vtpms`` that is not a list of
    strings (null allowed: a vTPM Xen Orchestra could not read).
    """
    contents = metadata.get(CONTENTS_KEY)
    if contents is None:
        return []
    if not isinstance(contents, list) or any(item is not None and not isinstance(item, str) for item in contents):
        raise ValueError('its %r field must be a list of vTPM contents (strings)' % CONTENTS_KEY)
    details = metadata.get(DETAILS_KEY)
    if not isinstance(details, list) or len(details) != len(contents):
        details = [{}] * len(contents)  # Xen Orchestra's points: contents only (is_unique false, as its restore creates them)
    details = [detail if isinstance(detail, dict) else {} for detail in details]
    return [VtpmRestore(index=num, source_uuid=detail.get('uuid'), is_unique=bool(detail.get('is_unique', False)), contents=value,
                        action='recreate')
            for num, (value, detail) in enumerate(zip(contents, details, strict=True))]


def pool_vtpm_support(restrictions: dict) -> str | None:
    """None when a pool with these ``pool.restrictions`` can create vTPMs, else why not."""
    value = (restrictions or {}).get(RESTRICTION_KEY)
    if value == 'false':
        return None
    if value is None:
        return 'this pool\'s XAPI has no vTPM support (VTPM.create came with XAPI 22.26: XCP-ng 8.3, XenServer 8)'
    return 'this pool\'s licence does not allow vTPMs (pool restrictions %s=%s)' % (RESTRICTION_KEY, value)


def plan_vtpms(vtpms: list[VtpmRestore], unsupported: str | None, allow_loss: bool) -> tuple[list[VtpmRestore], str | None]:
    """(the vTPMs with their action, a refusal or None): pure.

    A vTPM the pool cannot recreate (``unsupported`` says why) or that the backup holds no contents
    for is refused, unless ``allow_loss``: then it is dropped, with the reason in the result. Contents
    too big for one XAPI request are refused whatever ``allow_loss`` says (the backup is not what XAPI
    wrote: something is wrong with it).
    """
    planned = []
    for item in vtpms:
        if item.contents is not None and len(item.contents.encode('utf-8')) + REQUEST_ENVELOPE_BYTES > MAX_REQUEST_BYTES:
            return vtpms, ('vTPM %s of the backup holds %d bytes of contents, more than XAPI takes in one request (%d): the backup '
                           'is damaged' % (item.source_uuid or '#%d' % item.index, len(item.contents.encode('utf-8')), MAX_REQUEST_BYTES))
        reason = unsupported
        if reason is None and item.contents is None:
            reason = 'the backup holds no contents for it (the backup tool could not read them)'
        if reason is None:
            planned.append(item)
            continue
        if not allow_loss:
            return vtpms, ('the backed-up VM had a vTPM (%s), which this restore cannot recreate: %s. Restore to a pool with vTPM '
                           'support, or set allow_vtpm_loss=true to restore the VM without it (BitLocker and other TPM-sealed '
                           'secrets will ask for their recovery keys)' % (item.source_uuid or '#%d' % item.index, reason))
        planned.append(VtpmRestore(index=item.index, source_uuid=item.source_uuid, is_unique=item.is_unique, contents=None,
                                   action='drop', reason=reason))
    return planned, None


def recreate_vtpms(xapi, vm_ref: str, planned: list[VtpmRestore]) -> None:
    """VTPM.create then VTPM.set_contents for each planned vTPM on the new (halted) VM; sets each ``uuid``.

    Nothing to undo on failure beyond the VM: VM.destroy destroys its vTPMs.
    """
    for item in planned:
        if item.action != 'recreate':
            continue
        ref = xapi.call('VTPM.create', vm_ref, item.is_unique)
        if item.contents:
            xapi.call('VTPM.set_contents', ref, item.contents, what='setting the contents of the new vTPM')
        item.uuid = xapi.call('VTPM.get_uuid', ref)


__all__ = ['CONTENTS_KEY', 'DETAILS_KEY', 'VtpmRestore', 'backed_up_vtpms', 'plan_vtpms', 'pool_vtpm_support', 'read_vtpms', 'recreate_vtpms']
