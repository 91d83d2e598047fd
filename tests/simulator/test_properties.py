# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property tests: random guest writes survive export/import; the CoW store
reports exactly the blocks written since a snapshot; the where-expression parser."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simhelpers as h
from xapisim import BLOCK_SIZE, pattern
from xapisim.api import Simulator
from xapisim.model import Expr
from xapisim.vhd_stream import ExportLayout, import_vhd

DISK = 12 * BLOCK_SIZE
writes_strategy = st.lists(st.tuples(st.integers(0, DISK - 1), st.integers(1, 3 * BLOCK_SIZE), st.integers(0, 99)),
                           min_size=1, max_size=6)


def _new(sim, size=DISK):
    sr = next(iter(sim.stores))
    return sim.create_vdi({'name_label': 'p', 'SR': sr, 'virtual_size': size, 'type': 'user', 'sharable': False,
                           'read_only': False})


@pytest.fixture(scope='module')
def local_sim():
    sim = Simulator()
    sim.add_sr('sr', 64 << 30)
    yield sim
    sim.close()


def _apply(disk, writes):
    for offset, length, seed in writes:
        length = min(length, DISK - offset)
        disk.write(offset, pattern(seed, length))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=writes_strategy, after=writes_strategy)
def test_cow_diff_and_vhd_roundtrip(local_sim, before, after):
    sim = local_sim
    with sim.lock:
        vdi = _new(sim)
        disk = sim.disk(vdi)
        _apply(disk, before)
        base = sim.m_VDI__snapshot(vdi)
        _apply(disk, after)
        touched = set()
        for offset, length, _seed in after:
            length = min(length, DISK - offset)
            touched.update(range(offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1))
        assert set(disk.differing_blocks(sim.disk(base))) == touched
        # A delta stream of the differing blocks applied to a copy of the base gives the target.
        blocks = disk.differing_blocks(sim.disk(base))
        layout = ExportLayout(DISK, blocks, parent_id=b'\1' * 16)
        stream = bytearray(layout.head)
        for idx in blocks:
            stream += b'\xff' * 512 + disk.read(idx * BLOCK_SIZE, BLOCK_SIZE)
        stream += layout.footer
        assert len(stream) == len(layout)
        copy = sim.m_VDI__clone(base)
        view = memoryview(bytes(stream))
        pos = [0]

        def readinto(buf):
            count = min(len(buf), len(view) - pos[0])
            buf[:count] = view[pos[0]:pos[0] + count]
            pos[0] += count
            return count

        import_vhd(readinto, len(stream), DISK, sim.disk(copy).write)
        assert sim.disk(copy).read(0, DISK) == disk.read(0, DISK)
        for ref in (copy, base, vdi):
            sim.destroy_vdi(ref)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=writes_strategy)
def test_exports_read_by_qemu(hxapi, http_server, tmp_path_factory, writes):
    api = hxapi.xenapi
    sr = api.pool.get_default_SR(api.pool.get_all()[0])
    vdi = api.VDI.create({'name_label': 'prop', 'name_description': '', 'SR': sr, 'virtual_size': str(DISK),
                          'type': 'user', 'sharable': False, 'read_only': False, 'other_config': {}})
    for offset, length, seed in writes:
        http_server.control.write_vdi(vdi, offset, seed=seed, length=min(length, DISK - offset))
    body = h.export(http_server, hxapi.handle, vdi, 'vhd')[2]
    path = tmp_path_factory.mktemp('q') / 'x.vhd'
    path.write_bytes(body)
    assert h.qemu_raw(path, str(path) + '.raw') == http_server.control.read_vdi(vdi)
    api.VDI.destroy(vdi)


@pytest.mark.parametrize('text,expected', [
    ('field "name_label"="a"', ['a']),
    ('field "name_label"!="a"', ['b', 'c']),
    ('field "tag"="x" and not field "name_label"="c"', ['a']),
    ('(field "name_label"="a") or (field "name_label"="c")', ['a', 'c']),
    ('false', []),
])
def test_where_expressions(text, expected):
    records = [{'name_label': 'a', 'tag': 'x'}, {'name_label': 'b', 'tag': 'y'}, {'name_label': 'c', 'tag': 'x'}]
    expr = Expr(text)
    assert [r['name_label'] for r in records if expr.evaluate(r)] == expected


@pytest.mark.parametrize('text, why', [('field name_label="a"', 'field name must be quoted'), ('field "a"', 'unexpected end'),
                                       ('"a"="b"', r"unexpected token \('s', 'a'\)"), ('field "a"="b" and', 'unexpected end'),
                                       ('field "a"="b', 'unterminated string')])
def test_bad_where_expressions(text, why):
    with pytest.raises(ValueError, match='^%s$' % why):
        Expr(text)
