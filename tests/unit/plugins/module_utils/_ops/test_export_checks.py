# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure helpers of the snapshot and export paths: XAPI versions, error pages, block reasons."""

from __future__ import annotations

import io

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.session import XapiError
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.export import PrefixedStream, error_page_text, read_vhd_start
from ansible_collections.xapi.delta_backup.plugins.module_utils._ops.snapshot import (
    BLOCK_REASON_FORMAT, IGNORE_VDIS_SINCE, _block_holder, parse_xapi_version,
)

# The body XAPI sent in xen-api issue #4603 (a whole HTTP 500 response after the 200 OK headers).
PAGE = (b'HTTP/1.1 500 Internal Error\r\ncontent-length: 357\r\ncontent-type:text/html\r\nconnection:close\r\n'
        b'cache-control:no-cache, no-store\r\n\r\n<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; '
        b'please wait a while and try again.<h1> Additional information </h1>SR_BACKEND_FAILURE_46: [ ; The VDI is not available '
        b'[opterr=VDI 929df5ec not detached cleanly];  ]</body></html>')


@pytest.mark.parametrize('text, supported', [('1.249.26', False), ('1.329.0', False), ('21.3.0', False), ('21.4.0', True),
                                             ('24.19.2', True), ('25.6', True)])
def test_xapi_versions_against_ignore_vdis(text, supported):
    assert (parse_xapi_version(text) >= IGNORE_VDIS_SINCE) is supported


@pytest.mark.parametrize('text', ['', None, 'trunk', '1.2.x', '8.2 LTS'])
def test_unreadable_versions_are_unknown(text):
    assert parse_xapi_version(text) is None


def test_error_page_text_keeps_the_xapi_error():
    text = error_page_text(PAGE)
    assert text.startswith('HTTP 500 internal server error')
    assert 'SR_BACKEND_FAILURE_46: [ ; The VDI is not available [opterr=VDI 929df5ec not detached cleanly]; ]' in text
    assert 'content-type' not in text and '<' not in text


def test_a_vhd_start_is_given_back_for_parsing():
    stream = io.BytesIO(b'conectix' + b'rest of the footer')
    head = read_vhd_start(stream, 'export of disk')
    assert PrefixedStream(head, stream).read(100) == b'conectix'
    assert PrefixedStream(b'abc', io.BytesIO(b'def')).read(2) == b'ab'
    rest = PrefixedStream(head, stream)
    assert rest.read(4) + rest.read(4) + rest.read(100) == b'conectixrest of the footer'


def test_an_error_page_without_task_error_reports_its_text():
    with pytest.raises(XapiError) as raised:
        read_vhd_start(io.BytesIO(PAGE), 'export of disk')
    assert raised.value.error_code == 'export_not_vhd' and raised.value.code is None
    assert 'export of disk: XAPI sent no VHD but HTTP 500 internal server error' in raised.value.message
    assert 'The VDI is not available' in raised.value.message


def test_only_our_own_block_reasons_are_recognised():
    assert _block_holder(BLOCK_REASON_FORMAT % ('nightly', '2026-11-30T02:00:00Z')) == 'nightly'
    assert _block_holder(BLOCK_REASON_FORMAT % ('a job (with) words', '2026-11-30T02:00:00Z')) == 'a job (with) words'
    for foreign in ['', 'maintenance', 'xapi.delta_backup: but not ours', 'backup job nightly is running (since now)']:
        assert _block_holder(foreign) is None
