# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Merges made by another tool (Xen Orchestra's retention on a shared repository): detected, checked block by block, recorded.

What Xen Orchestra does (``packages/vhd-lib/merge.js``, class ``Merger``; the same steps in
``@xen-orchestra/backup-archive/src/disks/MergeRemoteDisk.mjs``):

- the chain ``[parent, child_1, ..., child_n]`` is merged into the *parent* file: each block any
  child holds is written whole into the parent (``VhdAbstract.mergeBlock`` -> ``VhdFile.writeEntireBlock``:
  the newest child's bitmap and data, read through ``VhdSynthetic.readBlock``); the parent's BAT
  may grow (``ensureBatSize``, which moves the first blocks to the end: their content is unchanged);
- the parent's footer takes the newest child's size, geometry, timestamp and *unique id*
  (``Merger.#updateHeaders``); its disk type and dynamic header (parent unique id) stay the parent's;
- the parent is renamed to the newest child's name and the other children are deleted
  (``Merger.#step_cleanVhds``). The kept point's JSON gets its ``size`` and every VDI marked not
  differencing, even when the merged file still is a delta (``VmIncrementalBackupArchive.updateMetadata``);
  the rest of the JSON, our own section included, is written back as it was read.
- our ``.vhd.blocksums`` files survive its cleaning: only names ending in ``.vhd`` are disks
  (``backup-archive/src/disks/index.mjs`` ``isDisk``), and orphaned data files are only looked for in
  the data folders of VHD directories, never in the VDI folder itself
  (``RemoteDiskLineage.mts`` ``#cleanOrphanDataFiles``).

So after it, the file at the newest child's name carries the child's unique id but is no longer what
the child's sidecar describes (a dynamic file where a differencing one was, other footer/header/BAT),
and the sidecars of the merged parent and children stay behind under their old names. From them,
block ``i`` of the merged file is predictable: the newest merged child's block where a child had one,
else the old parent's. :func:`find_foreign_merges` checks exactly that (reading every present
block); :func:`record_foreign_merge` writes the file's new sidecar (flag ``FLAG_FOREIGN_MERGE``) and
removes the stale ones. A block that does not match stays damage, named by file and block.

XO's newer ``RemoteVhdDisk.writeBlock`` writes an all-ones bitmap with the child's data: for a child
block whose own bitmap was not full that block cannot be predicted from whole-block digests; it is then
reported as a mismatch (damage), never silently accepted.
"""

from __future__ import annotations

import dataclasses
import posixpath

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import is_merge_state_name
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import (
    ABSENT, FLAG_FOREIGN_MERGE, SUFFIX, UNKNOWN, BlockProblem, BlockSums, BlockSumsError, hash_blocks, is_sidecar_name,
    read_structures, sidecar_name, structure_digests,
)
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.structures import BAT_UNUSED


MERGED_BY_ANOTHER_TOOL = ('merged by another tool (Xen Orchestra?) since it was written: run backup_info with verify=true to check it '
                          'block by block, then backup_merge to record it')


@dataclasses.dataclass
class ForeignMerge:
    """A file merged by another tool: what it was merged from, and what checking it block by block found."""

    path: str  # storage path of the merged file (the newest merged child's name)
    shown: str  # the same, as shown to users
    merged_from: list  # names (in its folder) of the files merged into it, oldest (the rewritten parent) first
    sums: BlockSums  # its new sidecar (the predicted digests, structures of the file as it is now)
    problems: list  # BlockProblem / str: what does not match (damage)
    unknown: list  # block indices whose content could not be predicted (left UNKNOWN)
    checked_blocks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self, vm_folder_relative: str) -> dict:
        return {'file': vm_folder_relative, 'merged_from': list(self.merged_from), 'blocks_checked': self.checked_blocks,
                'unknown_blocks': list(self.unknown), 'ok': self.ok, 'problems': [str(problem) for problem in self.problems]}


def _orphan_sidecars(storage, folder: str) -> dict:
    """Sidecars in ``folder`` whose VHD is gone: unique id -> (name of the VHD it described, BlockSums).

    Empty while a merge is unfinished in the folder (ours or XO's leave ``.<parent>.merge.json``, XO's
    ``Merger.#statePath``): files in the middle of a merge are the unfinished merge's business, not a
    finished foreign merge.
    """
    try:
        names = set(storage.list_dir(folder))
    except OSError:
        return {}
    if any(is_merge_state_name(name) for name in names):
        return {}
    orphans = {}
    for name in sorted(names):
        if not is_sidecar_name(name):
            continue
        vhd_name = name[:-len(SUFFIX)]
        if vhd_name in names:
            continue
        try:
            sums = BlockSums.load(storage, posixpath.join(folder, name))
        except BlockSumsError:
            continue  # a damaged stale sidecar cannot vouch for anything; the merged file then stays damage
        orphans[sums.unique_id] = (vhd_name, sums)
    return orphans


def looks_merged_by_another_tool(vhd: VhdFile, sums: BlockSums) -> bool:
    """Cheap test: the file at this name is no longer the one its sidecar describes, in the way a foreign merge leaves it.

    Same unique id (XO gives the merged file the child's), and the disk type or parent link changed,
    or its structures differ from the recorded ones (a recorded foreign merge matches its new sidecar).
    """
    if sums.unique_id != vhd.unique_id:
        return False
    if sums.disk_type != vhd.disk_type or sums.parent_unique_id != vhd.header.parent_unique_id:
        return True
    footer, header, bat = structure_digests(*read_structures(vhd), hash_name=sums.hash_name)
    return (footer, header, bat) != (sums.footer_digest, sums.header_digest, sums.bat_digest)


def merged_members(storage, path: str, vhd: VhdFile, sums: BlockSums):
    """The sidecars of the files merged into ``vhd``, oldest first (ending with its own), or None when they cannot be found.

    Walks from the file's own sidecar through the stale sidecars of its folder by parent unique id,
    until one whose parent link and disk type are those the merged file carries (the rewritten parent).
    """
    orphans = _orphan_sidecars(storage, posixpath.dirname(path))
    members = [(posixpath.basename(path), sums)]
    current = sums
    while current.disk_type != vhd.disk_type or current.parent_unique_id != vhd.header.parent_unique_id:
        if current.parent_unique_id not in orphans:
            return None
        name, current = orphans.pop(current.parent_unique_id)  # popped: a loop of stale sidecars ends the walk
        members.append((name, current))
    members.reverse()
    return members if len(members) > 1 else None


def predicted_sums(vhd: VhdFile, members: list) -> tuple[BlockSums, list, set]:
    """The sidecar the merged file must match: per block, the newest member's digest that is not absent.

    Returns it, the blocks left UNKNOWN, and the blocks that came from a child (the others are the
    rewritten parent's own, left in place).
    """
    predicted = BlockSums(block_size=vhd.block_size, entries=vhd.header.max_table_entries, disk_type=vhd.disk_type,
                          unique_id=vhd.unique_id, parent_unique_id=vhd.header.parent_unique_id, flags=FLAG_FOREIGN_MERGE,
                          hash_name=members[-1][1].hash_name)
    predicted.set_structures(*read_structures(vhd))
    unknown, from_children = [], set()
    newest_first = list(reversed(members))
    for index in range(predicted.entries):
        for rank, (_name, member) in enumerate(newest_first):
            digest = member.digest(index)
            if digest != ABSENT:
                predicted.set(index, digest)
                if digest == UNKNOWN:
                    unknown.append(index)
                if rank < len(newest_first) - 1:
                    from_children.add(index)
                break
    return predicted, unknown, from_children


def check_foreign_merge(storage, path: str, vhd: VhdFile, sums: BlockSums, threads: int | None = None,
                        all_blocks: bool = True) -> ForeignMerge | None:
    """Check a file merged by another tool block by block; None when it is not one (or its members' sidecars are gone).

    ``all_blocks=False`` reads only the blocks the merge wrote (those a child held): what changed,
    not the disk size (a merge or restore resolving it under its lock); the parent's own blocks keep
    their recorded digests and are checked whenever they are read, as any block.
    """
    if not looks_merged_by_another_tool(vhd, sums):
        return None
    members = merged_members(storage, path, vhd, sums)
    if members is None:
        return None
    if any(member.block_size != vhd.block_size for _name, member in members):
        return None
    predicted, unknown, from_children = predicted_sums(vhd, members)
    problems: list = []
    bat = vhd.bat
    # a block beyond every member's table must be absent too
    wanted = []
    for index in range(vhd.block_count):
        present = bat[index] != BAT_UNUSED
        expected = predicted.digest(index)
        if present and expected == ABSENT:
            problems.append(BlockProblem(vhd.path, index, index * vhd.block_size, 'present after the merge but in none of the merged files'))
        elif not present and expected != ABSENT:
            problems.append(BlockProblem(vhd.path, index, index * vhd.block_size, 'absent after the merge but held by a merged file'))
        elif present and expected != UNKNOWN and (all_blocks or index in from_children):
            wanted.append(index)
    for index, digest in sorted(hash_blocks(vhd, wanted, threads, predicted.hash_name).items()):
        if digest != predicted.digest(index):
            problems.append(BlockProblem(vhd.path, index, index * vhd.block_size,
                                         'does not match the block of the file it was merged from (damaged, or not a whole-block merge)'))
    return ForeignMerge(path=path, shown=vhd.path, merged_from=[name for name, _member in members], sums=predicted,
                        problems=problems, unknown=unknown, checked_blocks=len(wanted))


def record_foreign_merge(repo, merge: ForeignMerge) -> None:
    """Write the checked file's new sidecar and remove the stale sidecars of the files merged into it (call under the VM's lock)."""
    if not merge.ok:
        raise VhdError(merge.shown, 'block checksums', 'foreign merge', None,
                       'not recorded: %s' % '; '.join(str(problem) for problem in merge.problems))
    folder = posixpath.dirname(merge.path)
    merge.sums.save(repo.storage, sidecar_name(merge.path))
    own = posixpath.basename(merge.path)
    for name in merge.merged_from:
        stale = posixpath.join(folder, name)
        if name != own and not repo.storage.exists(stale) and repo.storage.exists(sidecar_name(stale)):
            repo.storage.remove(sidecar_name(stale))


def find_foreign_merges(repo, paths, threads: int | None = None, detect_only: bool = False, all_blocks: bool = True) -> list:
    """Every file among ``paths`` (storage paths of VHDs) that another tool merged, checked block by block.

    With ``detect_only``, the paths of those files, found without reading their blocks; with
    ``all_blocks=False`` only the blocks the merge wrote are read (see :func:`check_foreign_merge`).
    """
    found = []
    for path in paths:
        try:
            sums = BlockSums.load_for(repo.storage, path)
        except BlockSumsError:
            continue
        if sums is None:
            continue
        try:
            with VhdFile.open_in(repo.storage, path) as vhd:
                if detect_only:
                    if looks_merged_by_another_tool(vhd, sums) and merged_members(repo.storage, path, vhd, sums):
                        found.append(path)
                    continue
                merge = check_foreign_merge(repo.storage, path, vhd, sums, threads, all_blocks=all_blocks)
        except (VhdError, OSError):
            continue  # the structural checks name it
        if merge is not None:
            found.append(merge)
    return found


def remove_stale_sidecars(repo, folder: str) -> list:
    """Remove the sidecars of VHDs gone from ``folder`` (left by a recording stopped half-way); returns their names.

    Only when nothing may still need them: no merge unfinished in the folder, and no file in it that
    another tool merged and that was not recorded (its check reads them).
    """
    names = repo.storage.list_dir(folder)
    if any(is_merge_state_name(name) for name in names):
        return []
    paths = [posixpath.join(folder, name) for name in names if name.endswith('.vhd')]
    if find_foreign_merges(repo, paths, detect_only=True):
        return []
    removed = []
    for name in sorted(names):
        if is_sidecar_name(name) and name[:-len(SUFFIX)] not in names:
            repo.storage.remove(posixpath.join(folder, name))
            removed.append(name)
    return removed


def resolve_foreign_merges(repo, vm_uuid: str, points: list | None = None, all_blocks: bool = False) -> list[ForeignMerge]:
    """Find, check and record every merge another tool made in a VM's backups; returns them all (call under the VM's lock).

    Merges that check out get their new sidecar; those that do not are returned with their problems
    and left as they are (they stay damage for every reader).  Then the sidecars of files gone from
    the VM's disk folders are removed where nothing needs them any more.  ``points`` defaults to
    all of the VM's.  Reads only the blocks the merges wrote unless ``all_blocks`` (the cost of what
    changed, not of the disk: ``backup_info verify`` reads everything anyway).
    """
    points = repo.list_backups(vm_uuid) if points is None else points
    paths = sorted({disk.storage_path for point in points for disk in point.disks})
    merges = find_foreign_merges(repo, paths, all_blocks=all_blocks)
    for merge in merges:
        if merge.ok:
            record_foreign_merge(repo, merge)
    for folder in sorted({posixpath.dirname(path) for path in paths}):
        remove_stale_sidecars(repo, folder)
    return merges
