# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.delta_backup contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Pieces of the byte pipeline between XAPI and the repository.

``WriteBehind`` lets one thread receive and rewrite a stream while a second one writes and hashes
what came before, so an export costs about the slower of the two instead of their sum (the control
node has at least two cores; file writes, sha256 and socket reads all release the GIL).
"""

from __future__ import annotations

import queue
import threading

WRITE_BEHIND_BUFFERS = 4
WRITE_BEHIND_BUFFER_SIZE = 1 << 20


class WriteBehind:
    """A write target that hands each chunk to a writer thread and returns at once.

    Chunks are copied into a small ring of preallocated buffers, so the caller may reuse its own
    buffer (``rewrite_identity`` does) and memory stays bounded: at most ``buffers`` chunks wait.
    A failure of the target is raised by the next ``write`` or by ``close``. Use as a context
    manager: leaving normally waits for every chunk to be written; leaving on an exception drops
    what is still queued and waits for the thread, so the caller can discard its files safely.
    """

    def __init__(self, target, buffers: int = WRITE_BEHIND_BUFFERS, buffer_size: int = WRITE_BEHIND_BUFFER_SIZE):
        self.target = target
        self.buffer_size = buffer_size
        self._free = queue.Queue()
        for _number in range(buffers):
            self._free.put(bytearray(buffer_size))
        self._pending = queue.Queue()
        self._error = None
        self._discard = False
        self._thread = threading.Thread(target=self._drain, name='write-behind', daemon=True)
        self._thread.start()

    def write(self, data) -> int:
        self._raise_error()
        view = memoryview(data).cast('B')
        for start in range(0, len(view), self.buffer_size):
            piece = view[start:start + self.buffer_size]
            buffer = self._free.get()
            buffer[:len(piece)] = piece
            self._pending.put((buffer, len(piece)))
        return len(view)

    def _drain(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            buffer, length = item
            if self._error is None and not self._discard:
                try:
                    self.target.write(memoryview(buffer)[:length])
                except BaseException as error:  # pylint: disable=broad-except
                    self._error = error  # handed to the producer thread, which raises it
            self._free.put(buffer)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait until every chunk is written; raise the target's failure if there was one."""
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join()
        self._raise_error()

    def abort(self) -> None:
        """Drop what is queued and stop the thread (never raises)."""
        self._discard = True
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join()

    def __enter__(self) -> 'WriteBehind':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ['WriteBehind']
