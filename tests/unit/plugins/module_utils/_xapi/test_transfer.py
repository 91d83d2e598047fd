# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import array
import hashlib
import os
import random
import threading

import pytest

from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.atomic import AtomicFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._repo.layout import RepositoryError
from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import split_local_path
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd import VhdError, VhdFile
from ansible_collections.xapi.delta_backup.plugins.module_utils._vhd.blocksums import BlockSums, compute_sums
from ansible_collections.xapi.delta_backup.plugins.module_utils._xapi.transfer import WriteBehind
from ansible_collections.xapi.delta_backup.tests.unit.plugins.module_utils._vhd.vhd_testlib import pattern, write_vhd


class Recorder:
    """A target that keeps what it got, optionally slowly or failing at a given byte count."""

    def __init__(self, fail_after=None, gate=None):
        self.received = bytearray()
        self.fail_after = fail_after
        self.gate = gate
        self.threads = set()

    def write(self, data):
        if self.gate is not None:
            self.gate.wait()
        self.threads.add(threading.get_ident())
        if self.fail_after is not None and len(self.received) + len(data) > self.fail_after:
            raise OSError(28, 'No space left on device')
        self.received += data
        return len(data)


def numbered_chunks(count: int) -> bytes:
    return b''.join(bytes([number]) * 1024 for number in range(count))


def start_producer(sink, count: int):
    """A thread writing ``count`` 1 KiB chunks (chunk n is all n); returns it and the list of chunks it got rid of."""
    queued = []

    def produce():
        for number in range(count):
            sink.write(bytes([number]) * 1024)
            queued.append(number)
    producer = threading.Thread(target=produce)
    producer.start()
    return producer, queued


def test_bytes_arrive_in_order_even_when_the_caller_reuses_its_buffer():
    rng = random.Random(3)
    target = Recorder()
    expected = bytearray()
    reused = bytearray(3 * 1024 * 1024)
    with WriteBehind(target.write, buffers=2, buffer_size=64 * 1024) as sink:
        for _number in range(200):
            length = rng.choice([1, 511, 512, 65535, 65536, 65537, 200000, 3 * 1024 * 1024])
            reused[:length] = rng.randbytes(length)
            expected += reused[:length]
            assert sink.write(memoryview(reused)[:length]) == length
    assert target.received == expected
    assert target.threads and threading.get_ident() not in target.threads


def test_memory_is_bounded_by_the_ring():
    # The writer is stuck: the producer may queue at most `buffers` chunks, then it waits.
    gate = threading.Event()
    target = Recorder(gate=gate)
    sink = WriteBehind(target.write, buffers=3, buffer_size=1024)
    producer, queued = start_producer(sink, 10)
    producer.join(0.5)
    assert producer.is_alive() and len(queued) <= 4  # three in the ring, one held by the stuck writer
    gate.set()
    producer.join()
    sink.close()
    assert bytes(target.received) == numbered_chunks(10)


def test_a_failing_target_is_raised_to_the_writer_and_on_close():
    target = Recorder(fail_after=100 * 1024)
    sink = WriteBehind(target.write, buffers=2, buffer_size=16 * 1024)
    with pytest.raises(OSError, match='No space left'):
        for _number in range(1000):
            sink.write(b'x' * 16 * 1024)
    with pytest.raises(OSError, match='No space left'):
        sink.close()
    assert len(target.received) <= 100 * 1024


def test_leaving_on_an_exception_drops_the_queue_and_stops_the_thread():
    gate = threading.Event()
    target = Recorder(gate=gate)
    with pytest.raises(RuntimeError, match='^the stream was cut$'):
        with WriteBehind(target.write, buffers=4, buffer_size=1024) as sink:
            for _number in range(3):
                sink.write(b'y' * 1024)
            gate.set()
            raise RuntimeError('the stream was cut')
    assert not any(thread.is_alive() for thread in sink._threads)  # pylint: disable=protected-access
    assert len(target.received) <= 3 * 1024


def test_atomic_file_through_write_behind_hashes_what_it_wrote(tmp_path):
    data = os.urandom(5 * 1024 * 1024 + 123)
    path = str(tmp_path / 'disk.vhd')
    with AtomicFile(*split_local_path(path)) as target:
        with WriteBehind(target.write_data, target.update_hash) as sink:
            for start in range(0, len(data), 777777):
                sink.write(data[start:start + 777777])
    with open(path, 'rb') as written:
        assert written.read() == data
    assert target.sha256 == hashlib.sha256(data).hexdigest()


def test_every_consumer_sees_every_chunk_and_a_slow_one_holds_the_ring():
    gate = threading.Event()
    fast, slow = Recorder(), Recorder(gate=gate)
    sink = WriteBehind(fast.write, slow.write, buffers=2, buffer_size=1024)
    producer, queued = start_producer(sink, 8)
    producer.join(0.5)
    # the fast consumer cannot run ahead by more than the ring: buffers wait for the slow one
    assert producer.is_alive() and len(queued) <= 3 and len(fast.received) <= 2 * 1024
    gate.set()
    producer.join()
    sink.close()
    assert bytes(fast.received) == bytes(slow.received) == numbered_chunks(8)
    assert fast.threads.isdisjoint(slow.threads)


def test_a_write_behind_needs_a_consumer():
    with pytest.raises(ValueError, match='^WriteBehind needs at least one consumer$'):
        WriteBehind()


def test_write_counts_bytes_of_any_buffer_and_splits_it_into_the_ring():
    target = Recorder()
    chunks = []
    numbers = array.array('I', range(1000))
    with WriteBehind(target.write, lambda chunk: chunks.append(len(chunk)), buffers=2, buffer_size=1000) as sink:
        assert sink.write(numbers) == 4000
        assert sink.write(b'') == 0
    assert bytes(target.received) == numbers.tobytes() and chunks == [1000] * 4


def test_abort_never_raises_even_after_a_consumer_failed():
    failing, other = Recorder(fail_after=0), Recorder()
    sink = WriteBehind(failing.write, other.write, buffers=1, buffer_size=1024)
    sink.write(b'a' * 1024)
    with pytest.raises(OSError, match='No space left on device'):
        sink.close()
    sink.abort()
    assert not any(thread.is_alive() for thread in sink._threads)  # pylint: disable=protected-access
    # the other consumer may have seen the chunk before the failure, never after
    assert failing.received == b'' and bytes(other.received) in (b'', b'a' * 1024)


def test_buffers_filled_in_place_arrive_in_order_and_released_ones_come_back():
    target = Recorder()
    with WriteBehind(target.write, buffers=1, buffer_size=4096) as sink:
        buffer = sink.acquire()
        assert len(buffer) == 4096
        sink.release(buffer)  # unused: back in the ring, so the next acquire does not wait
        for number in range(5):
            buffer = sink.acquire()
            buffer[:1000] = bytes([number]) * 1000
            sink.submit(buffer, 1000)
        sink.submit(sink.acquire(), 0)  # nothing to consume: the buffer just returns
        sink.write(b'end')
    assert bytes(target.received) == b''.join(bytes([number]) * 1000 for number in range(5)) + b'end'


def test_a_consumer_failure_is_raised_by_acquire():
    sink = WriteBehind(Recorder(fail_after=0).write, buffers=2, buffer_size=1024)
    buffer = sink.acquire()
    sink.submit(buffer, 10)
    with pytest.raises(OSError, match='No space left'):
        for _number in range(100):
            sink.submit(sink.acquire(), 10)
    sink.abort()


def vhd_bytes(tmp_path) -> bytes:
    size = 5 * 1024 * 1024
    model = bytearray(size)
    model[:3 * 1024 * 1024] = pattern(1, 3 * 1024 * 1024)
    path = write_vhd(str(tmp_path / 'source.vhd'), size, set(range(6144)), 2 * 1024 * 1024, model=model)
    with open(path, 'rb') as handle:
        return handle.read()


def test_several_repositories_share_the_block_checksums_computed_once(tmp_path):
    data = vhd_bytes(tmp_path)
    first = AtomicFile(*split_local_path(str(tmp_path / 'a.vhd')), vhd=True)
    second = AtomicFile(*split_local_path(str(tmp_path / 'b.vhd')), vhd=True)
    with first, second:
        second.share_block_sums(first)
        with pytest.raises(ValueError, match='takes the block checksums of'):
            second.update_hash(b'x')  # fed twice, the shared checksums would be wrong
        with WriteBehind(first.write_data, second.write_data, first.update_hash, buffer_size=65536) as sink:
            for start in range(0, len(data), 100003):
                sink.write(data[start:start + 100003])
    with VhdFile(str(tmp_path / 'source.vhd')) as source:
        expected = compute_sums(source).pack()
    for name in ('a.vhd', 'b.vhd'):
        assert (tmp_path / name).read_bytes() == data
        assert (tmp_path / (name + '.blocksums')).read_bytes() == expected


def test_a_repository_that_got_other_bytes_than_the_one_it_shares_checksums_with_is_refused(tmp_path):
    data = vhd_bytes(tmp_path)
    first = AtomicFile(*split_local_path(str(tmp_path / 'a.vhd')), vhd=True)
    second = AtomicFile(*split_local_path(str(tmp_path / 'b.vhd')), vhd=True)
    with pytest.raises(RepositoryError, match='not the same bytes'):
        with second, first:
            second.share_block_sums(first)
            first.write(data)
            second.write_data(data[:-512])
    assert sorted(os.listdir(tmp_path)) == ['a.vhd', 'a.vhd.blocksums', 'source.vhd']


def test_only_vhd_files_share_block_checksums(tmp_path):
    plain = AtomicFile(*split_local_path(str(tmp_path / 'x.json')))
    vhd = AtomicFile(*split_local_path(str(tmp_path / 'y.vhd')), vhd=True)
    with pytest.raises(ValueError, match='only VHD files share block checksums'):
        vhd.share_block_sums(plain)


@pytest.mark.parametrize('fails', ['sidecar', 'stream'])
def test_a_vhd_whose_commit_fails_leaves_nothing(tmp_path, monkeypatch, fails):
    data = vhd_bytes(tmp_path)
    if fails == 'sidecar':
        def no_space(*_args, **_kwargs):
            raise OSError(28, 'No space left on device')
        monkeypatch.setattr(BlockSums, 'save', no_space)
    else:
        data = data[:-1024]  # the stream ended before its end footer: no checksums, no file
    with pytest.raises((OSError, VhdError)):
        with AtomicFile(*split_local_path(str(tmp_path / 'a.vhd')), vhd=True) as target:
            target.write(data)
    assert sorted(os.listdir(tmp_path)) == ['source.vhd']


def test_a_big_file_is_handed_to_the_disk_as_it_is_written(tmp_path, monkeypatch):
    # The atomic writer starts writeback of each 32 MiB window (and drops the one before from the page
    # cache) so that the final fsync finds little left: the disk works while the stream is received.
    from ansible_collections.xapi.delta_backup.plugins.module_utils._storage import local  # pylint: disable=import-outside-toplevel
    calls = []
    real = os.posix_fadvise

    def recorded(fd, offset, length, advice):
        calls.append((offset, length, advice))
        return real(fd, offset, length, advice)
    monkeypatch.setattr(local.os, 'posix_fadvise', recorded)
    piece = bytes(range(256)) * 4096  # 1 MiB
    with AtomicFile(*split_local_path(str(tmp_path / 'big.bin'))) as target:
        for _number in range(100):
            target.write(piece)
    window = local.WRITEBACK_WINDOW
    assert [(offset, offset + length) for offset, length, _advice in calls] == [(0, window), (0, 2 * window), (window, 3 * window)]
    assert all(advice == os.POSIX_FADV_DONTNEED for _offset, _length, advice in calls)
    assert (tmp_path / 'big.bin').read_bytes() == piece * 100
