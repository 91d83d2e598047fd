# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sessions: login, failures, logout, limits, pool members."""

import pytest
import XenAPI

import simhelpers as h


def test_login_logout_counts(sim):
    assert sim.control.session_count() == 0
    session = sim.xenapi_session()
    session.login_with_password('backup', 'backup-pass', '1.0', 'tests')
    assert sim.control.session_count() == 1
    assert sim.control.sessions()['sessions'][0]['originator'] == 'tests'
    session.xenapi.session.logout()
    assert sim.control.session_count() == 0


def test_authentication_failed(sim):
    session = sim.xenapi_session()
    with pytest.raises(XenAPI.Failure, match=r"^\['SESSION_AUTHENTICATION_FAILED', 'root'") as err:
        session.login_with_password('root', 'wrong', '1.0', 'tests')
    assert err.value.details[:2] == ['SESSION_AUTHENTICATION_FAILED', 'root']
    assert sim.control.session_count() == 0


def test_session_invalid_after_logout(sim):
    ref = h.raw_call(sim, 'session.login_with_password', 'root', 'secret')['Value']
    assert h.raw_call(sim, 'session.logout', ref) == {'Status': 'Success', 'Value': ''}
    env = h.raw_call(sim, 'VM.get_all', ref)
    assert env['ErrorDescription'] == ['SESSION_INVALID', ref]


def test_xenapi_relogs_in_after_session_invalid(sim):
    session = sim.xenapi_session()
    session.login_with_password('root', 'secret', '1.0', 'tests')
    old = session.handle
    h.raw_call(sim, 'session.logout', old)
    assert session.xenapi.pool.get_all()
    assert session.handle != old
    session.xenapi.session.logout()


def test_session_limit_invalidates_oldest(sim):
    sim.control.session_limit(3)
    refs = [h.raw_call(sim, 'session.login_with_password', 'root', 'secret', '1.0', 'o%d' % i)['Value']
            for i in range(5)]
    assert sim.control.session_count() == 3
    assert h.raw_call(sim, 'VM.get_all', refs[0])['ErrorDescription'][0] == 'SESSION_INVALID'
    assert h.raw_call(sim, 'VM.get_all', refs[4])['Status'] == 'Success'
    sim.control.session_limit(400, per_originator=2)
    more = [h.raw_call(sim, 'session.login_with_password', 'root', 'secret', '1.0', 'same')['Value']
            for _num in range(3)]
    assert h.raw_call(sim, 'VM.get_all', more[0])['ErrorDescription'][0] == 'SESSION_INVALID'
    assert h.raw_call(sim, 'VM.get_all', more[2])['Status'] == 'Success'


def test_pool_member_answers_host_is_slave(sim):
    session = XenAPI.Session(sim.slave_url, transport=sim.transport())
    with pytest.raises(XenAPI.Failure, match=r"^\['HOST_IS_SLAVE', ") as err:
        session.login_with_password('root', 'secret', '1.0', 'tests')
    assert err.value.details[0] == 'HOST_IS_SLAVE'
    master = err.value.details[1]
    assert sim.url.endswith(master)
    again = XenAPI.Session('https://%s' % master, transport=sim.transport())
    again.login_with_password('root', 'secret', '1.0', 'tests')
    again.xenapi.session.logout()


def test_login_arity_and_version_optional(sim):
    env = h.raw_call(sim, 'session.login_with_password', 'root', 'secret')
    assert env['Status'] == 'Success'
    h.raw_call(sim, 'session.logout', env['Value'])
    env = h.raw_call(sim, 'session.login_with_password', 'root')
    assert env['ErrorDescription'][0] == 'MESSAGE_PARAMETER_COUNT_MISMATCH'


def test_session_helpers(xapi):
    api = xapi.xenapi
    host = api.session.get_this_host(xapi.handle)
    assert api.host.get_name_label(host) == 'xcp-host1'
    assert xapi.API_version == '2.21'
