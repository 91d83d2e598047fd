# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""VhdStream.read_ahead: the same bytes as iterating, blocks read by threads ahead of the consumer, in bounded number,
a failing block raised at its place in the stream, nothing left running when the consumer stops."""

from __future__ import annotations

import threading
import time

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdStream

BLOCK = 2 * 1024 * 1024
SIZE = 32 * BLOCK


def block_data(index: int) -> bytes:
    return bytes([index % 251 + 1]) * 1024 + bytes(BLOCK - 1024)


class Reader:
    """A read_block recording which blocks were asked for, from which threads, and how many at once."""

    def __init__(self, fail_at=None, delay=0.0):
        self.fail_at = fail_at
        self.delay = delay
        self.asked = []
        self.threads = set()
        self.running = 0
        self.most_running = 0
        self.lock = threading.Lock()

    def __call__(self, index):
        with self.lock:
            self.asked.append(index)
            self.threads.add(threading.current_thread().name)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.delay)
            if index == self.fail_at:
                raise VhdError('/repo/a.vhd', 'block[%d]' % index, 'checksum', None, 'block %d does not match its recorded checksum' % index)
            return (None if index % 3 else bytes(512), block_data(index))
        finally:
            with self.lock:
                self.running -= 1


INDICES = [0, 1, 2, 5, 8, 9, 13, 20, 21, 30, 31]


def stream(reader) -> VhdStream:
    # one identity and time for every stream, so that two streams of the same blocks are the same bytes
    return VhdStream(SIZE, INDICES, reader, unique_id=b'\x01' * 16, timestamp=1000)


def test_read_ahead_gives_the_bytes_iterating_gives():
    plain = b''.join(bytes(chunk) for chunk in stream(Reader()))
    reader = Reader()
    ahead = b''.join(bytes(chunk) for chunk in stream(reader).read_ahead(blocks=3, threads=2))
    assert ahead == plain and len(ahead) == stream(Reader()).length
    assert sorted(reader.asked) == INDICES and all(name.startswith('vhd-read-ahead') for name in reader.threads)


def test_reads_run_side_by_side_but_never_more_than_asked():
    reader = Reader(delay=0.02)
    for _chunk in stream(reader).read_ahead(blocks=4, threads=3):
        pass
    assert 2 <= reader.most_running <= 3


def test_a_failing_block_is_raised_at_its_place_and_nothing_after_it_is_produced():
    failing = INDICES[6]
    damaged = stream(Reader(fail_at=failing))
    plain = stream(Reader())
    produced = bytearray()
    with pytest.raises(VhdError, match='block %d does not match' % failing):
        for chunk in damaged.read_ahead(blocks=4, threads=2):
            produced += chunk
    # the header and every block before the damaged one, nothing of it or after it
    expected = b''.join(bytes(chunk) for chunk in plain)[:plain.data_start + 6 * plain.block_span]
    assert bytes(produced) == expected


def test_a_consumer_that_stops_leaves_no_read_running():
    reader = Reader(delay=0.01)
    chunks = stream(reader).read_ahead(blocks=4, threads=2)
    for _number, _chunk in zip(range(4), chunks, strict=False):
        pass
    chunks.close()
    asked = len(reader.asked)
    time.sleep(0.1)
    assert len(reader.asked) == asked < len(INDICES) and reader.running == 0
    assert not [thread for thread in threading.enumerate() if thread.name.startswith('vhd-read-ahead')]


@pytest.mark.parametrize('blocks, threads', [(1, 2), (4, 1)])
def test_one_block_or_one_thread_reads_in_the_consumers_thread(blocks, threads):
    reader = Reader()
    data = b''.join(bytes(chunk) for chunk in stream(reader).read_ahead(blocks=blocks, threads=threads))
    assert data == b''.join(bytes(chunk) for chunk in stream(Reader()))
    assert reader.threads == {threading.current_thread().name}
