# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VDI content: exports (raw, vhd, base=), imports, stream faults, CBT,
checked with qemu-img and libvhdi as independent readers."""

import base64
import hashlib
import struct
import time
import uuid

import pytest
import XenAPI

import simhelpers as h
from xapisim import BLOCK_SIZE, ControlError, pattern

MIB = 1 << 20


def _vdi(api, name):
    return [r for r in api.VDI.get_by_name_label(name) if not api.VDI.get_is_a_snapshot(r)][0]


def _new_vdi(api, size, name='scratch'):
    sr = api.pool.get_default_SR(api.pool.get_all()[0])
    return api.VDI.create({'name_label': name, 'name_description': '', 'SR': sr, 'virtual_size': str(size),
                           'type': 'user', 'sharable': False, 'read_only': False, 'other_config': {}})


def _bat(body):
    entries, = struct.unpack_from('>I', body, 512 + 28)
    return [struct.unpack_from('>I', body, 2048 + 4 * i)[0] for i in range(entries)]


def test_full_vhd_export_layout_and_readers(hxapi, hsim, tmp_path):
    api = hxapi.xenapi
    vdi = _vdi(api, 'small01-root')
    hsim.control.write_vdi(vdi, 3 * MIB, seed=11, length=3 * MIB)
    hsim.control.write_vdi(vdi, 40 * MIB + 512, data=b'hello world' * 100)
    status, headers, body = h.export(hsim, hxapi.handle, vdi, 'vhd')
    assert status == 200 and headers['Connection'] == 'close' and headers.get('Content-Length') is None
    assert headers['content-type'] == 'application/vhd' and headers['task-id'].startswith('OpaqueRef:')
    assert body[:8] == b'conectix' and body[-512:] == body[:512] and body[28:32] == b'caml'
    assert body[512:520] == b'cxsparse' and body[1536:2048] == bytes(512)
    bat = _bat(body)
    assert [i for i, v in enumerate(bat) if v != 0xFFFFFFFF] == [1, 2, 20]
    assert len(body) == 2048 + 512 + 3 * (BLOCK_SIZE + 512) + 512
    truth = hsim.control.read_vdi(vdi)
    path = tmp_path / 'full.vhd'
    path.write_bytes(body)
    assert h.qemu_raw(path, tmp_path / 'full.raw') == truth
    assert h.vhdi_read(path, len(truth)) == truth


def test_uuid_accepted_raw_export_and_task(hxapi, hsim):
    api = hxapi.xenapi
    vdi = _vdi(api, 'small01-root')
    hsim.control.write_vdi(vdi, 0, seed=3, length=MIB)
    task = api.task.create('export', '')
    status, headers, body = h.export(hsim, hxapi.handle, api.VDI.get_uuid(vdi), 'raw', task=task)
    assert status == 200 and headers['task-id'] == task
    assert body == hsim.control.read_vdi(vdi)
    rec = h.wait_task(api, task)
    assert rec['status'] == 'success'
    api.task.destroy(task)


def test_export_refusals(hxapi, hsim):
    api = hxapi.xenapi
    vdi = _vdi(api, 'small01-root')
    assert h.export(hsim, 'OpaqueRef:bogus', vdi)[0] == 401
    task = api.task.create('export', '')
    assert h.export(hsim, hxapi.handle, vdi, 'qcow9', task=task)[0] == 404
    assert h.wait_task(api, task)['error_info'][0] == 'INTERNAL_ERROR'
    assert h.export(hsim, hxapi.handle, 'OpaqueRef:nope')[0] == 500


def test_delta_export_applies_byte_for_byte(hxapi, hsim, tmp_path):
    api = hxapi.xenapi
    vm = api.VM.get_by_name_label('db01')[0]
    root = _vdi(api, 'db01-root')
    size = int(api.VDI.get_virtual_size(root))
    snap1 = api.VM.snapshot(vm, 'base')
    base = [api.VBD.get_VDI(v) for v in api.VM.get_VBDs(snap1)
            if api.VDI.get_snapshot_of(api.VBD.get_VDI(v)) == root][0]
    hsim.control.write_vdi(root, 5 * MIB, seed=21, length=MIB)
    hsim.control.write_vdi(root, 7 * BLOCK_SIZE + 4096, data=b'\x01' * 512)
    snap2 = api.VM.snapshot(vm, 'next')
    target = [api.VBD.get_VDI(v) for v in api.VM.get_VBDs(snap2)
              if api.VDI.get_snapshot_of(api.VBD.get_VDI(v)) == root][0]
    hsim.control.write_vdi(root, 0, seed=99, length=BLOCK_SIZE)  # after snap2: not in the delta
    status, _headers, delta = h.export(hsim, hxapi.handle, target, 'vhd', base=base)
    assert status == 200
    assert delta[60:64] == b'\x00\x00\x00\x04'
    assert [i for i, v in enumerate(_bat(delta)) if v != 0xFFFFFFFF] == [2, 7]
    full_base = h.export(hsim, hxapi.handle, base, 'vhd')[2]
    # XAPI's ids are host file ids: the delta names the base's on-host VHD, the full export has a fresh id.
    assert delta[512 + 40:512 + 56] == uuid.UUID(hsim.control.vdi_vhd_id(base)).bytes
    assert full_base[68:84] != delta[512 + 40:512 + 56]
    (tmp_path / 'base.vhd').write_bytes(full_base)
    # A backup tool chains the two files itself (the collection rewrites both ids): do that for libvhdi.
    (tmp_path / 'delta.vhd').write_bytes(h.with_parent_id(delta, full_base[68:84]))
    truth = hsim.control.read_vdi(target, 0, 32 * MIB)
    assert h.vhdi_read(tmp_path / 'delta.vhd', 32 * MIB, parent=tmp_path / 'base.vhd') == truth[:32 * MIB]
    copy = _new_vdi(api, size, 'restore')
    assert h.import_(hsim, hxapi.handle, copy, full_base) == 200
    assert hsim.control.vdi_fingerprint(copy) == hsim.control.vdi_fingerprint(base)
    task = api.task.create('import', '')
    assert h.import_(hsim, hxapi.handle, copy, delta, task=task) == 200
    rec = h.wait_task(api, task)
    assert rec['status'] == 'success' and h.task_value(rec) == copy
    assert hsim.control.vdi_fingerprint(copy) == hsim.control.vdi_fingerprint(target)
    assert hsim.control.vdi_fingerprint(copy) != hsim.control.vdi_fingerprint(root)


def _partial_vhd(size, block, sectors, payload):
    """A hand-made dynamic VHD with one block whose bitmap sets only ``sectors``."""
    from xapisim.vhd_stream import ExportLayout  # pylint: disable=import-outside-toplevel
    layout = ExportLayout(size, [block])
    bitmap = bytearray(512)
    for sec in sectors:
        bitmap[sec // 8] |= 0x80 >> (sec % 8)
    return layout.head + bytes(bitmap) + payload + layout.footer


def test_import_writes_only_set_sectors(hxapi, hsim, tmp_path):
    api = hxapi.xenapi
    vdi = _new_vdi(api, 8 * MIB)
    hsim.control.write_vdi(vdi, 0, seed=5, length=8 * MIB)
    before = hsim.control.read_vdi(vdi)
    payload = pattern('p', BLOCK_SIZE)
    stream = _partial_vhd(8 * MIB, 1, [0, 1, 9, 4095], payload)
    assert h.import_(hsim, hxapi.handle, vdi, stream) == 200
    time.sleep(0.05)
    after = hsim.control.read_vdi(vdi)
    expected = bytearray(before)
    for sec in (0, 1, 9, 4095):
        off = BLOCK_SIZE + sec * 512
        expected[off:off + 512] = payload[sec * 512:(sec + 1) * 512]
    assert after == bytes(expected)
    path = tmp_path / 'partial.vhd'
    path.write_bytes(stream)
    got = h.vhdi_read(path, 8 * MIB)
    assert got[BLOCK_SIZE + 512:BLOCK_SIZE + 1024] == payload[512:1024]
    # libvhdi reads clear-bit sectors of a *dynamic* disk from the block, so no check there.


def test_import_refusals(hxapi, hsim):
    api = hxapi.xenapi
    small = _new_vdi(api, 4 * MIB)
    big = _new_vdi(api, 8 * MIB)
    hsim.control.write_vdi(big, 6 * MIB, seed=1, length=MIB)
    stream = h.export(hsim, hxapi.handle, big, 'vhd')[2]
    task = api.task.create('import', '')
    h.import_(hsim, hxapi.handle, small, stream, task=task)
    rec = h.wait_task(api, task)
    assert rec['status'] == 'failure' and rec['error_info'][0] == 'VDI_IO_ERROR'
    conn = h.connection(hsim)
    conn.putrequest('PUT', '/import_raw_vdi?format=vhd&vdi=%s&session_id=%s' % (small, hxapi.handle))
    conn.putheader('Transfer-Encoding', 'chunked')
    conn.endheaders()
    assert conn.getresponse().status == 404
    conn.close()
    assert h.import_(hsim, hxapi.handle, small, b'x' * 10, fmt='tar') == 404
    assert h.import_(hsim, 'OpaqueRef:bad', small, b'x' * 10) == 401
    task = api.task.create('import', '')
    h.import_(hsim, hxapi.handle, small, b'garbage' * 200, task=task)
    assert h.wait_task(api, task)['error_info'][0] == 'VDI_IO_ERROR'


def test_raw_import(hxapi, hsim):
    api = hxapi.xenapi
    vdi = _new_vdi(api, 6 * MIB)
    data = pattern('raw', 5 * MIB + 512)
    assert h.import_(hsim, hxapi.handle, vdi, data, fmt='raw') == 200
    time.sleep(0.05)
    assert hsim.control.read_vdi(vdi) == data + bytes(6 * MIB - len(data))


def test_export_cut_truncates_and_fails_task(hxapi, hsim):
    api = hxapi.xenapi
    vdi = _vdi(api, 'web01-root')
    hsim.control.cut_export(100000, vdi=vdi)
    task = api.task.create('export', '')
    status, _headers, body = h.export(hsim, hxapi.handle, vdi, 'vhd', task=task)
    assert status == 200 and len(body) == 100000
    rec = h.wait_task(api, task)
    assert rec['status'] == 'failure' and rec['error_info'][0] == 'VDI_IO_ERROR'
    assert len(h.export(hsim, hxapi.handle, vdi, 'vhd')[2]) > 100000


def test_import_cut_fails_task(hxapi, hsim):
    api = hxapi.xenapi
    src = _vdi(api, 'db01-root')
    stream = h.export(hsim, hxapi.handle, src, 'vhd')[2]
    dst = _new_vdi(api, int(api.VDI.get_virtual_size(src)))
    hsim.control.cut_import(3 * MIB)
    task = api.task.create('import', '')
    h.import_(hsim, hxapi.handle, dst, stream, task=task)
    rec = h.wait_task(api, task)
    assert rec['status'] == 'failure' and rec['error_info'][0] == 'VDI_IO_ERROR'


def test_http_handler_fail_next(hxapi, hsim):
    api = hxapi.xenapi
    vdi = _vdi(api, 'small01-root')
    hsim.control.fail_next('export_raw_vdi', ['VDI_IO_ERROR', 'injected'])
    task = api.task.create('export', '')
    assert h.export(hsim, hxapi.handle, vdi, task=task)[0] == 500
    assert h.wait_task(api, task)['error_info'] == ['VDI_IO_ERROR', 'injected']


def test_huge_disk_snapshot_is_instant(hxapi, hsim):
    api = hxapi.xenapi
    vm = api.VM.get_by_name_label('web01')[0]
    data = _vdi(api, 'web01-data')
    assert api.VDI.get_virtual_size(data) == str(100 << 30)
    start = time.time()
    for num in range(5):
        api.VM.snapshot(vm, 'snap%d' % num)
    assert time.time() - start < 2.0
    sr = api.VDI.get_SR(data)
    used = int(api.SR.get_physical_utilisation(sr))
    assert used < 64 * MIB


def test_sr_full_on_guest_write_and_snapshot(hxapi, hsim):
    api = hxapi.xenapi
    vdi = _vdi(api, 'small01-root')
    hsim.control.write_vdi(vdi, 0, seed=1, length=64 * MIB)
    sr = api.VDI.get_SR(vdi)
    assert api.SR.get_physical_utilisation(sr) == api.SR.get_physical_size(sr)
    rec = h.wait_task(api, api.Async.VDI.snapshot(vdi))
    assert rec['error_info'][0] == 'SR_FULL'
    big = _vdi(api, 'web01-root')
    hsim.control.fill_sr('Local storage')
    with pytest.raises(ControlError, match=r"^\['SR_FULL'") as err:
        hsim.control.write_vdi(big, 500 * MIB, seed=1, length=MIB)
    assert err.value.details[0] == 'SR_FULL'
    hsim.control.unfill_sr('Local storage')
    hsim.control.write_vdi(big, 500 * MIB, seed=1, length=MIB)


def test_cbt(hxapi, hsim):
    api = hxapi.xenapi
    vdi = _vdi(api, 'db01-root')
    vm = api.VM.get_by_name_label('db01')[0]
    assert not api.VDI.get_cbt_enabled(vdi)
    api.VDI.enable_cbt(vdi)
    api.VDI.enable_cbt(vdi)
    assert api.VDI.get_cbt_enabled(vdi)

    def snap_vdi(name):
        snap = api.VM.snapshot(vm, name)
        return [api.VBD.get_VDI(v) for v in api.VM.get_VBDs(snap) if api.VDI.get_snapshot_of(api.VBD.get_VDI(v)) == vdi][0]

    first = snap_vdi('c1')
    assert api.VDI.get_cbt_enabled(first)
    writes = [(0, 100), (65536 * 5 + 10, 65536), (3 * MIB, 1)]
    for offset, length in writes:
        hsim.control.write_vdi(vdi, offset, seed=offset, length=length)
    second = snap_vdi('c2')
    bitmap = base64.b64decode(api.VDI.list_changed_blocks(first, second))
    size = int(api.VDI.get_virtual_size(vdi))
    assert len(bitmap) == (size // 65536 + 7) // 8
    expected = set()
    for offset, length in writes:
        expected.update(range(offset // 65536, (offset + length - 1) // 65536 + 1))
    got = {i for i in range(len(bitmap) * 8) if bitmap[i // 8] & (0x80 >> (i % 8))}
    assert got == expected == {0, 5, 6, 48}
    hsim.control.write_vdi(vdi, 128 * 65536, data=b'z')
    live = {i for i, byte in enumerate(base64.b64decode(api.VDI.list_changed_blocks(second, vdi)))
            for bit in range(8) if byte & (0x80 >> bit) for i in [i * 8 + bit]}
    assert live == {128}
    assert api.VDI.list_changed_blocks(first, first) == base64.b64encode(bytes(len(bitmap))).decode()
    api.VDI.data_destroy(first)
    assert api.VDI.get_type(first) == 'cbt_metadata'
    assert base64.b64decode(api.VDI.list_changed_blocks(first, second)) == bitmap
    other = _vdi(api, 'web01-data')
    with pytest.raises(XenAPI.Failure, match=r"^\['SR_BACKEND_FAILURE_460'") as err:
        api.VDI.list_changed_blocks(first, other)
    assert err.value.details[0] == 'SR_BACKEND_FAILURE_460'
    plain = _vdi(api, 'small01-root')
    snap = api.VDI.snapshot(plain)
    with pytest.raises(XenAPI.Failure, match=r"^\['VDI_NO_CBT_METADATA', ") as err:
        api.VDI.data_destroy(snap)
    assert err.value.details == ['VDI_NO_CBT_METADATA', snap]
    with pytest.raises(XenAPI.Failure, match='CBT cannot be changed on a snapshot'):
        api.VDI.enable_cbt(snap)
    api.VDI.disable_cbt(vdi)
    assert not api.VDI.get_cbt_enabled(vdi)


def test_https_export(xapi, sim):
    vdi = _vdi(xapi.xenapi, 'db01-root')
    body = h.export(sim, xapi.handle, vdi, 'vhd')[2]
    bat_bytes = len(_bat(body)) * 4
    assert len(body) == 2048 + bat_bytes + 3 * (BLOCK_SIZE + 512) + 512
    assert hashlib.sha256(body[2048 + bat_bytes:2048 + bat_bytes + 512]).digest() == hashlib.sha256(b'\xff' * 512).digest()


def test_https_import_roundtrip(xapi, sim):
    api = xapi.xenapi
    src = _vdi(api, 'db01-root')
    stream = h.export(sim, xapi.handle, src, 'vhd')[2]
    dst = _new_vdi(api, int(api.VDI.get_virtual_size(src)))
    task = api.task.create('import', '')
    assert h.import_(sim, xapi.handle, api.VDI.get_uuid(dst), stream, task=task) == 200
    rec = h.wait_task(api, task)
    assert rec['status'] == 'success' and h.task_value(rec) == dst
    assert sim.control.vdi_fingerprint(dst) == sim.control.vdi_fingerprint(src)


def test_delta_of_a_grown_disk(hxapi, hsim):
    api = hxapi.xenapi
    vdi = _new_vdi(api, 8 * MIB, 'growing')
    hsim.control.write_vdi(vdi, 0, seed=1, length=8 * MIB)
    base = api.VDI.snapshot(vdi)
    api.VDI.resize(vdi, str(12 * MIB))
    hsim.control.write_vdi(vdi, 10 * MIB, seed=2, length=MIB)
    hsim.control.write_vdi(vdi, 0, seed=3, length=512)
    target = api.VDI.snapshot(vdi)
    delta = h.export(hsim, hxapi.handle, target, 'vhd', base=base)[2]
    assert struct.unpack_from('>Q', delta, 48)[0] == 12 * MIB
    assert [i for i, v in enumerate(_bat(delta)) if v != 0xFFFFFFFF] == [0, 5]
    copy = _new_vdi(api, 8 * MIB, 'copy')
    assert h.import_(hsim, hxapi.handle, copy, h.export(hsim, hxapi.handle, base, 'vhd')[2]) == 200
    task = api.task.create('import', '')
    h.import_(hsim, hxapi.handle, copy, delta, task=task)
    assert h.wait_task(api, task)['error_info'][0] == 'VDI_IO_ERROR'
    api.VDI.resize(copy, str(12 * MIB))
    assert h.import_(hsim, hxapi.handle, copy, delta) == 200
    time.sleep(0.05)
    assert hsim.control.vdi_sha256(copy) == hsim.control.vdi_sha256(target)
