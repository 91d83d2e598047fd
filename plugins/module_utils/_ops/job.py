# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A backup job: the name the user gives and the uuid derived from it, always together."""

from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import job_id_for


@dataclass(frozen=True)
class Job:
    """A job by name; its ``id`` (the job and schedule uuid of snapshots and metadata) is derived here and nowhere else.

    The name stays as given: it names the repository lock holder, the snapshots and the migration blocks.
    """

    name: str
    id: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, 'id', job_id_for(self.name))


__all__ = ['Job']
