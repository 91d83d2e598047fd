# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The server as a command, the helpers, HTTP auth variants and control errors."""

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest

import simhelpers as h
from xapisim import ControlError
from xapisim.testing import EXAMPLE_CONFIG, TESTS_DIR, start_in_process


def test_command_ready_pid_file_and_sigterm(tmp_path):
    pid_file = tmp_path / 'sim.pid'
    env = dict(os.environ, PYTHONPATH=TESTS_DIR)
    start = time.time()
    proc = subprocess.Popen([sys.executable, '-m', 'xapisim', '--config', EXAMPLE_CONFIG, '--port', '0', '--http',
                             '--pid-file', str(pid_file), '--data-dir', str(tmp_path / 'data')],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, 'exited early'
            lines.append(line)
            if line.startswith('XAPISIM READY'):
                break
        assert time.time() - start < 2.0
        url = line.split()[2]
        assert url.startswith('http://127.0.0.1:')
        assert int(pid_file.read_text()) == proc.pid
        assert any(ln.startswith('XAPISIM SLAVE http://127.0.0.1:') for ln in lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert not pid_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# A test process that starts a simulator and is then killed outright (SIGKILL: no fixture teardown runs).
KILLED_PARENT = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from xapisim.testing import start_server
with start_server(https=False) as sim:
    print(sim.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_simulator_dies_with_the_process_that_started_it():
    parent = subprocess.run([sys.executable, '-c', KILLED_PARENT, TESTS_DIR], capture_output=True, text=True, timeout=60,
                            check=False)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    sim_pid = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(sim_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(sim_pid), 'the simulator %d outlived the test process that started it' % sim_pid


def test_in_process_helper():
    with start_in_process(https=False) as running:
        sim = running.server.sim
        assert len(sim.store.objects['VM']) == 5
        session = running.xenapi_session()
        session.login_with_password('root', 'secret', '1.0', 'tests')
        assert len(session.xenapi.SR.get_all()) == 2
        session.xenapi.session.logout()
        assert not sim.sessions


def test_basic_auth_cookie_and_slave_redirect(hxapi, hsim):
    api = hxapi.xenapi
    vdi = api.VDI.get_by_name_label('small01-root')[0]
    conn = h.connection(hsim)
    auth = base64.b64encode(b'root:secret').decode()
    conn.request('GET', '/export_raw_vdi?format=raw&vdi=' + vdi, headers={'Authorization': 'Basic ' + auth})
    resp = conn.getresponse()
    assert resp.status == 200 and len(resp.read()) == 64 << 20
    conn.close()
    conn = h.connection(hsim)
    conn.request('GET', '/export_raw_vdi?format=vhd&vdi=' + vdi, headers={'Cookie': 'session_id=' + hxapi.handle})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read()[:8] == b'conectix'
    conn.close()
    slave = urllib.parse.urlsplit(hsim.slave_url)
    import http.client  # pylint: disable=import-outside-toplevel
    conn = http.client.HTTPConnection(slave.hostname, slave.port)
    conn.request('GET', '/export_raw_vdi?format=vhd&vdi=%s&session_id=%s' % (vdi, hxapi.handle))
    resp = conn.getresponse()
    assert resp.status == 302 and resp.headers['Location'].startswith(hsim.url + '/export_raw_vdi?')
    conn.close()


def test_control_api(hsim):
    ctl = hsim.control
    info = ctl.info()
    assert info['counts']['VM'] == 5 and info['url'] == hsim.url
    with pytest.raises(ControlError, match=r"^\['UNKNOWN_CONTROL_OP'") as err:
        ctl.call('no_such_op')
    assert err.value.details[0] == 'UNKNOWN_CONTROL_OP'
    with pytest.raises(ControlError, match=r"^\['HANDLE_INVALID', 'VDI', 'no such disk'\]$"):
        ctl.read_vdi('no such disk')
    ref = ctl.find('VDI', 'small01-root')
    assert ctl.record('VDI', ref)['virtual_size'] == 64 << 20
    written = ctl.write_vdi('small01-root', 4096, data=b'abc')
    assert written['length'] == 3
    assert ctl.read_vdi(ref, 4095, 5) == b'\0abc\0'
    assert ctl.vdi_blocks(ref) == [0]
    names = ctl.reset({'vms': [{'name': 'only', 'disks': [{'name': 'd', 'size': '4MiB'}]}]})
    assert list(names['VM']) == ['only']
    assert ctl.info()['counts']['VM'] == 2
    ctl.load_config(open(EXAMPLE_CONFIG, encoding='utf-8').read())
