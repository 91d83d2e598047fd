# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""import_stream when its source fails midway (a damaged block found as it is read): the upload is reset short of its
length, the host's import fails, and the source's own error is what the caller gets (never a transport error)."""

from __future__ import annotations

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.errors import XapiError
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._ops.sim_pool import connect, running_pool

POOL = """
pool: {name: upload-pool}
hosts: [{name: host1, address: 127.0.0.1}]
users: [{name: root, password: secret}]
srs: [{name: Local storage, size: 4GiB, default: true}]
"""
MIB = 1024 * 1024


def new_vdi(xapi) -> str:
    sr = xapi.call('pool.get_default_SR', xapi.call('pool.get_all')[0])
    return xapi.call('VDI.create', {'name_label': 'target', 'name_description': '', 'SR': sr, 'virtual_size': str(64 * MIB), 'type': 'user',
                                    'sharable': False, 'read_only': False, 'other_config': {}, 'sm_config': {}, 'xenstore_data': {},
                                    'tags': []})


def failing_source(error: BaseException, before: int):
    """``before`` bytes of zeros in 1 MiB chunks, then ``error``."""
    for _number in range(before // MIB):
        yield bytes(MIB)
    raise error


@pytest.mark.parametrize('error', [
    VhdError('/repo/a.vhd', 'block[3]', 'checksum', 1024, 'block 3 (virtual offset 6291456) does not match its recorded checksum'),
    OSError(5, 'Input/output error'),  # a read error of the repository is not a broken connection
])
def test_a_failing_source_raises_its_own_error_and_the_import_fails(error):
    with running_pool(POOL) as sim, connect(sim) as xapi:
        vdi = new_vdi(xapi)
        tasks = set(xapi.call('task.get_all'))
        with pytest.raises(type(error)) as caught:
            xapi.import_stream(vdi, failing_source(error, 3 * MIB), 8 * MIB, fmt='raw')
        assert caught.value is error and not isinstance(caught.value, XapiError)
        # the import task was ended (cancelled or failed) and destroyed: nothing of it is left
        assert set(xapi.call('task.get_all')) == tasks
        # the connection is usable for the next call, and the VDI can go (no import holds it)
        xapi.call('VDI.destroy', vdi)
        assert vdi not in xapi.call('VDI.get_all')


def test_a_sound_stream_still_imports_whole(tmp_path):
    # A control: the same path with a source that does not fail imports every byte.
    with running_pool(POOL) as sim, connect(sim) as xapi:
        vdi = new_vdi(xapi)
        data = bytes(range(256)) * (4 * MIB // 256)
        xapi.import_stream(vdi, (data[start:start + MIB] for start in range(0, len(data), MIB)), len(data), fmt='raw')
        assert sim.control.read_vdi(xapi.call('VDI.get_uuid', vdi), 0, len(data)) == data
