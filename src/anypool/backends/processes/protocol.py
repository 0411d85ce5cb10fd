"""Messages between the pool and a worker process, and how they are framed.

Each worker has its own Unix socket pair (no queue shared between workers,
so no lock a dying worker could leave held).  A frame is an 8-byte
little-endian length and a pickle.  The parent side never blocks: it writes
and reads with non-blocking sockets from one selector loop, so a worker that
stops reading (busy, hung, dead) cannot stall the others.  The worker side is
plain blocking I/O.

Parent → worker::

    (TASK, wire_id, fn_id, fn_bytes | None, style, timeout, per_item, blobs, n, payload)
        payload: one pickle of the item list (blobs=False), or a list of
        per-item pickles (blobs=True, coalesced ``submit`` calls: one bad
        item fails alone); a pickle whose large buffers went to shared
        memory is a tuple ``(bytes, [(pid, fd, offset, length), ...])``
        (see ``anypool.sharedmem``)
    (STOP,)

Worker → parent::

    (READY, pid)
    (INIT_FAILED, packed_exception)
    (RESULT, wire_id, failed, t0, t1, rss) + results
        a whole map batch run in one go; results[i] for i in failed is a
        Failure whose exc is a packed exception
    (PARTIAL, [(wire_id, index, failed, t0, t1, size), ...], rss) + result + result ...
        items reported one by one as they finish: by sync workers for
        ``submit`` calls and for anything with a timeout (so a crash loses
        only the item that was running), by process+async workers always
    (UNRUN, wire_id, ran, rss)
        a sync worker past ``max_memory_per_worker`` (its RSS is read after
        each item then, at most every ``worker.RSS_EVERY``) runs no more:
        the items of the wire from ``ran`` on go back to the pool, to run
        elsewhere.  It comes before the wire's last RESULT or PARTIAL, which
        then covers only the ``ran`` first items; with ``ran`` 0 (a wire
        received once past the limit) nothing follows

Every worker → parent frame is a header pickle, prefixed by its size
(:func:`reply`), then, for RESULT and PARTIAL, the results' pickles (one
for a batch, one per item of a PARTIAL, each item's size in its header
entry): a result that cannot be unpickled in the pool (a class it cannot
import, a ``__reduce__`` that raises there) fails its own task, never
another, and the results are read from the frame without copying it.

A shared array of doubles, one slot per worker, says what each worker is
running right now: ``[wire_id, item_index, item_start]``.  It is how the
parent times out the exact item that hangs and blames the exact item that
crashed, without a message per item.  The worker writes the start time
before the index, so a torn read can only make a deadline later, never
earlier.  A process+async worker names there the coroutine whose step is
running (its start being the coroutine's own), and IDLE between steps.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import Final

__all__ = ["FrameReader", "FrameWriter", "recv_frame", "reply", "reply_head", "send_frame"]

TASK: Final = 1
STOP: Final = 2
READY: Final = 10
INIT_FAILED: Final = 11
RESULT: Final = 12
PARTIAL: Final = 13
UNRUN: Final = 14

SLOT_WIDTH: Final = 3  # wire_id, item_index, item_start
IDLE: Final = -1.0  # slot wire_id when the worker is between tasks
UNKNOWN_ITEM: Final = -1.0  # slot item_index when the batch runs without per-item marks

_HEADER = struct.Struct("<Q")
_CHUNK = 1 << 18


def send_frame(sock: socket.socket, data: bytes) -> None:
    """Blocking send of one frame (worker side)."""
    header = _HEADER.pack(len(data))
    view = memoryview(data)
    sent = sock.sendmsg([header, view])
    total = len(header) + len(data)
    while sent < total:
        if sent < len(header):
            sent += sock.sendmsg([header[sent:], view])
        else:
            sent += sock.send(view[sent - len(header):])


_HEAD_SIZE = struct.Struct("<I")


def reply(head: bytes, *bodies: bytes) -> bytes:
    """A worker's message: its pickled header, sized, then the results' pickles."""
    return b"".join([_HEAD_SIZE.pack(len(head)), head, *bodies])


def reply_head(frame: bytearray) -> tuple[bytes | memoryview, memoryview, int]:
    """Split a worker's message: (its header pickle, the frame, where the bodies start)."""
    view = memoryview(frame)
    (n,) = _HEAD_SIZE.unpack_from(frame, 0)
    return view[_HEAD_SIZE.size:_HEAD_SIZE.size + n], view, _HEAD_SIZE.size + n


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("the pool closed the channel")
        got += k
    return buf


def recv_frame(sock: socket.socket) -> bytearray:
    """Blocking receive of one frame (worker side).

    Raises:
        EOFError: the other end closed the socket.
    """
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return _recv_exact(sock, n)


class FrameWriter:
    """Non-blocking frame output (parent side): queue, then flush when writable."""

    __slots__ = ("_out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._out: deque[memoryview] = deque()

    def put(self, data: bytes) -> None:
        self._out.append(memoryview(_HEADER.pack(len(data))))
        self._out.append(memoryview(data))

    @property
    def pending(self) -> bool:
        return bool(self._out)

    def flush(self) -> bool:
        """Send what the socket takes now; True when nothing is left.

        Raises:
            OSError: the worker's end is closed (``BrokenPipeError``, ...).
        """
        out = self._out
        while out:
            try:
                sent = self.sock.sendmsg(list(out)[:64])
            except BlockingIOError:
                return False
            while sent:
                head = out[0]
                if sent >= len(head):
                    sent -= len(head)
                    out.popleft()
                else:
                    out[0] = head[sent:]
                    sent = 0
        return True


class FrameReader:
    """Non-blocking frame input (parent side): whatever whole frames have arrived."""

    __slots__ = ("_big", "_buf", "eof", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._big: tuple[bytearray, int] | None = None  # a frame larger than one read
        self.eof = False

    def read(self) -> list[bytearray]:
        """Return the complete frames available now; set ``eof`` when the worker closed."""
        frames: list[bytearray] = []
        sock = self.sock
        while not self.eof:
            if self._big is not None:
                body, filled = self._big
                try:
                    k = sock.recv_into(memoryview(body)[filled:])
                except BlockingIOError:
                    break
                except ConnectionResetError:
                    k = 0
                if k == 0:
                    self.eof = True
                    break
                filled += k
                if filled == len(body):
                    frames.append(body)
                    self._big = None
                else:
                    self._big = (body, filled)
                continue
            try:
                data = sock.recv(_CHUNK)
            except BlockingIOError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                break
            buf = self._buf
            buf += data
            self._parse(frames)
            if len(data) < _CHUNK and self._big is None:
                break
        return frames

    def _parse(self, frames: list[bytearray]) -> None:
        buf = self._buf
        pos = 0
        end = len(buf)
        hs = _HEADER.size
        while end - pos >= hs:
            (n,) = _HEADER.unpack_from(buf, pos)
            if end - pos - hs >= n:
                frames.append(buf[pos + hs:pos + hs + n])
                pos += hs + n
                continue
            if n > _CHUNK:
                body = bytearray(n)
                have = end - pos - hs
                body[:have] = buf[pos + hs:end]
                self._big = (body, have)
                pos = end
            break
        if pos:
            del buf[:pos]
