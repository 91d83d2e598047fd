# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Pieces of the byte pipeline between XAPI and the repository.

``WriteBehind`` lets one thread receive and rewrite a stream while other threads consume what came
before: one per consumer, so writing a file and hashing it run side by side. An export then costs
about its slowest stage instead of the sum of all (file writes, sha256 and socket reads all release
the GIL, and a control node has at least two cores).

The ring's buffers can also be filled in place (``acquire``, then ``submit``): the export receives
from the socket straight into them, so each byte is copied by the kernel into the ring, then read by
the file write and by the hash, and never copied by Python.
"""

from __future__ import annotations

import queue
import threading

#: Buffers in flight and their size (about one VHD block each): 12 MiB of ring, enough for the socket to never wait on a consumer
#: that is briefly slower (a file write starting writeback, a hash thread waiting for the GIL).
WRITE_BEHIND_BUFFERS = 6
WRITE_BEHIND_BUFFER_SIZE = 2 << 20


class WriteBehind:
    """A write target that hands each chunk to every consumer, each on its own thread, and returns.

    ``consumers`` are callables taking a bytes-like chunk (``file.write``, ``hash.update``); each
    sees every chunk, in order. Chunks are copied into a small ring of preallocated buffers, so the
    caller may reuse its own buffer (``rewrite_identity`` does) and memory stays bounded: at most
    ``buffers`` chunks are in flight; a buffer returns to the ring once every consumer is done
    with it. A consumer's failure is raised by the next ``write`` or by ``close``. Use as a context
    manager: leaving normally waits for every chunk to be consumed; leaving on an exception drops
    what is still queued and waits for the threads, so the caller can discard its files safely.
    """

    def __init__(self, *consumers, buffers: int = WRITE_BEHIND_BUFFERS, buffer_size: int = WRITE_BEHIND_BUFFER_SIZE):
        if not consumers:
            raise ValueError('WriteBehind needs at least one consumer')
        self.buffer_size = buffer_size
        self._free = queue.Queue()
        for _number in range(buffers):
            self._free.put(bytearray(buffer_size))
        self._users = {}  # id(buffer) -> consumers still to see it
        self._users_lock = threading.Lock()
        self._error = None
        self._discard = False
        self._queues = [queue.Queue() for _consumer in consumers]
        self._threads = [threading.Thread(target=self._drain, args=(consumer, pending), name='write-behind-%d' % number, daemon=True)
                         for number, (consumer, pending) in enumerate(zip(consumers, self._queues, strict=True))]
        for thread in self._threads:
            thread.start()

    def write(self, data) -> int:
        """Copy ``data`` into the ring and queue it; the caller may reuse ``data`` at once."""
        view = memoryview(data).cast('B')
        for start in range(0, len(view), self.buffer_size):
            piece = view[start:start + self.buffer_size]
            buffer = self.acquire()
            buffer[:len(piece)] = piece
            self.submit(buffer, len(piece))
        return len(view)

    def acquire(self) -> bytearray:
        """A free buffer of ``buffer_size`` bytes to fill in place (waits while every buffer is in flight).

        Hand it back with :meth:`submit` (its first bytes are consumed) or :meth:`release` (unused).
        """
        self._raise_error()
        buffer = self._free.get()
        self._raise_error()  # a consumer may have failed while this thread waited
        return buffer

    def submit(self, buffer: bytearray, length: int) -> None:
        """Queue the first ``length`` bytes of an acquired ``buffer`` for every consumer; it is no longer the caller's."""
        if not length:
            self.release(buffer)
            return
        with self._users_lock:
            self._users[id(buffer)] = len(self._queues)
        for pending in self._queues:
            pending.put((buffer, length))

    def release(self, buffer: bytearray) -> None:
        """Give back an acquired buffer without queueing anything."""
        self._free.put(buffer)

    def _drain(self, consumer, pending) -> None:
        while True:
            item = pending.get()
            if item is None:
                return
            buffer, length = item
            if self._error is None and not self._discard:
                try:
                    consumer(memoryview(buffer)[:length])
                except BaseException as error:  # pylint: disable=broad-except
                    self._error = error  # handed to the producer thread, which raises it
            with self._users_lock:
                self._users[id(buffer)] -= 1
                done = not self._users[id(buffer)]
            if done:
                self._free.put(buffer)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        for pending, thread in zip(self._queues, self._threads, strict=True):
            if thread.is_alive():
                pending.put(None)
        for thread in self._threads:
            thread.join()

    def close(self) -> None:
        """Wait until every chunk is consumed; raise a consumer's failure if there was one."""
        self._stop()
        self._raise_error()

    def abort(self) -> None:
        """Drop what is queued and stop the threads (never raises)."""
        self._discard = True
        self._stop()

    def __enter__(self) -> 'WriteBehind':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ['WriteBehind']
