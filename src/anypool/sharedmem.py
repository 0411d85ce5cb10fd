"""Large buffers travel to worker processes through shared memory, not the pipe.

Pickle protocol 5 lets an object hand its raw memory to the pickler as an
*out-of-band* buffer instead of copying it into the pickle: NumPy arrays do
this for their data, and so does any ``pickle.PickleBuffer``.  When the
process backends pickle a task's arguments (:class:`BufferSorter`):

* a buffer that lies inside memory made by :func:`share` travels as a
  reference: nothing is copied, however many tasks receive it;
* any other buffer of at least ``SHARE_FROM`` bytes is copied once into an
  anonymous shared-memory file (``memfd_create``), one file per payload;
* smaller buffers stay inside the pickle.

The pickle then carries ``(pid, fd, offset, length)`` for each shared buffer.
The worker maps those bytes read-only and unpickles on top of the mapping,
so NumPy arrays arrive with ``writeable=False`` (a write raises
``ValueError``; a ``PickleBuffer`` arrives as a read-only ``memoryview``).

Cleanup cannot leak, by construction: the files have no name (nothing is
ever created in ``/dev/shm``) and live only while a descriptor or a mapping
refers to them.  The pool's process holds the descriptor in the task's
payload (a :class:`SharedPayload`) until the task is dropped; the worker
opens it through ``/proc/<pid>/fd/<fd>`` and unmaps it when the arguments
are garbage.  If either process dies, the kernel closes its descriptors and
mappings, and the memory is freed with the last of them.

Measured on the 2-core benchmark machine (a VM where each 4 KiB page fault
is expensive): copying into shared memory runs at about 1 GiB/s, so the
copy path is a few times faster than pickling through a pipe (which copies
four times), while :func:`share`'d data costs nothing per task.

This needs Linux (``memfd_create`` and ``/proc``); elsewhere :data:`ENABLED`
is False, buffers are pickled in-band as before, and :func:`share` returns a
plain copy.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import sys
import threading
import weakref
from typing import Any

__all__ = ["ENABLED", "SHARE_FROM", "BufferSorter", "OutOfBand", "SharedPayload", "in_band_or_raise",
           "loads_shared", "share"]

SHARE_FROM = 1 << 20
"""Out-of-band buffers this large or larger go through shared memory (smaller ones stay in the pickle)."""

ENABLED = sys.platform.startswith("linux") and hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")

_PAGE = mmap.ALLOCATIONGRANULARITY
# Map every page at once: one call instead of a page fault per 4 KiB page,
# which is what a large copy spends most of its time on otherwise.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

Desc = tuple[int, int, int, int]  # pid, fd, offset, length

# Memory made by share(): start address -> (end address, fd).  Entries leave
# when the mapping is garbage (weakref.finalize on the mmap).
_regions: dict[int, tuple[int, int]] = {}
_regions_lock = threading.Lock()


def _round_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


def _new_file(size: int, name: str) -> tuple[int, mmap.mmap]:
    """A fresh anonymous shared-memory file of ``size`` bytes, mapped read-write."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        # allocating every page up front is faster than faulting them in one by one
        os.posix_fallocate(fd, 0, size)
        m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
    except BaseException:
        os.close(fd)
        raise
    return fd, m


def _address(view: memoryview) -> int | None:
    """The address of a buffer's first byte, or None if it cannot be had cheaply."""
    iface = getattr(view.obj, "__array_interface__", None)  # NumPy, read-only arrays included
    if iface is not None:
        return int(iface["data"][0])
    if view.readonly:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _find_region(view: memoryview) -> tuple[int, int] | None:
    """``(fd, offset)`` if ``view`` lies inside memory made by :func:`share`."""
    addr = _address(view)
    if addr is None:
        return None
    end = addr + view.nbytes
    for start, (stop, fd) in list(_regions.items()):
        if start <= addr and end <= stop:
            return fd, addr - start
    return None


class OutOfBand(Exception):
    """Raised by :func:`in_band_or_raise`: this pickle needs a :class:`BufferSorter`."""


def in_band_or_raise(buf: pickle.PickleBuffer) -> bool:
    """A stateless ``buffer_callback`` for the common case: small buffers stay in-band.

    Raises:
        OutOfBand: a buffer should travel in shared memory (pickle again with a sorter).
    """
    if _regions or BufferSorter.wants(buf):
        raise OutOfBand
    return True


class BufferSorter:
    """A pickler ``buffer_callback`` deciding, buffer by buffer, how each one travels.

    Out-of-band buffers are kept in the order the pickler met them, as
    ``(PickleBuffer, shared_fd_or_None, offset)``; :meth:`payload` turns
    them into what the worker needs.
    """

    __slots__ = ("out",)

    def __init__(self) -> None:
        self.out: list[tuple[pickle.PickleBuffer, int | None, int]] = []

    @staticmethod
    def wants(buf: pickle.PickleBuffer) -> bool:
        """Whether ``buf`` is large enough to go out of band (its memory aside)."""
        try:
            with buf.raw() as view:
                return view.nbytes >= SHARE_FROM
        except BufferError:
            return False

    def __call__(self, buf: pickle.PickleBuffer) -> bool:
        try:
            view = buf.raw()
        except BufferError:  # not contiguous: let the pickler copy it in-band
            return True
        with view:
            if view.nbytes == 0:
                return True
            if _regions:
                found = _find_region(view)
                if found is not None:
                    self.out.append((buf, found[0], found[1]))
                    return False
            if view.nbytes < SHARE_FROM:
                return True
        self.out.append((buf, None, 0))
        return False  # out of band: it travels in shared memory

    def payload(self, data: bytes) -> tuple[Any, SharedPayload | None]:
        """``(wire, holder)`` for pickle ``data`` made with this callback."""
        if not self.out:
            return data, None
        holder = SharedPayload(data, self.out)
        self.out = []
        return holder.wire, holder


class SharedPayload:
    """The pickle of some arguments plus the shared memory holding their large buffers.

    ``wire`` is what is sent to a worker: ``(pickle_bytes, [(pid, fd,
    offset, length), ...])``.  The memory stays alive while this object
    does; ``close()`` (or garbage collection) releases the pool's hold on
    it, and it is freed once no worker maps it any more.
    """

    __slots__ = ("fd", "keep", "wire")

    def __init__(self, data: bytes, out: list[tuple[pickle.PickleBuffer, int | None, int]]) -> None:
        self.fd = -1
        self.keep = [buf for buf, fd, _ in out if fd is not None]  # share()'d memory stays alive
        pid = os.getpid()
        descs: list[Desc] = []
        copies: list[tuple[memoryview, int]] = []
        size = 0
        for buf, fd, offset in out:
            n = buf.raw().nbytes
            if fd is not None:
                descs.append((pid, fd, offset, n))
            else:
                descs.append((pid, -1, size, n))
                copies.append((buf.raw(), size))
                size = _round_up(size + n)
        if copies:
            self.fd, m = _new_file(size, "anypool-args")
            with m:
                for view, pos in copies:
                    m[pos:pos + view.nbytes] = view
                    view.release()
            descs = [(p, self.fd if fd == -1 else fd, off, n) for p, fd, off, n in descs]
        self.wire: tuple[bytes, list[Desc]] = (data, descs)

    def close(self) -> None:
        """Release the pool's hold on the shared memory (idempotent)."""
        self.keep = []
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def loads_shared(wire: Any) -> Any:
    """Unpickle a payload's ``wire`` (pickle bytes or ``SharedPayload.wire``) in a worker.

    Shared buffers are mapped read-only; the mappings go away with the
    objects built on them.

    Raises:
        OSError: the shared memory is gone (the pool's process died).
        Exception: whatever unpickling raises.
    """
    if type(wire) is not tuple:
        return pickle.loads(wire)
    data, descs = wire
    buffers = []
    for pid, fd, offset, length in descs:
        start = offset - offset % _PAGE
        f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            m = mmap.mmap(f, offset + length - start, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                          offset=start)
        finally:
            os.close(f)
        buffers.append(memoryview(m)[offset - start:offset - start + length])
    return pickle.loads(data, buffers=buffers)


def _forget(start: int, fd: int) -> None:
    with _regions_lock:
        _regions.pop(start, None)
    os.close(fd)


def share(obj: Any) -> Any:
    """Copy an array or buffer into shared memory once; return the shared copy.

    Pass the returned object (or any slice or view of it) to tasks on the
    ``process`` backends and only a reference travels: no copy, however
    many tasks receive it.  Workers see it read-only.  The memory is freed
    when the returned object and every view of it are garbage (and no task
    still holds it).  A NumPy array comes back as a NumPy array of the same
    shape, dtype and order (writable here, in the pool's process); any other
    buffer as a writable ``memoryview``.  Where shared memory is not
    available (not Linux), a plain copy is returned.

    Raises:
        TypeError: ``obj`` does not support the buffer protocol, or holds
            Python objects (a NumPy array of ``dtype=object``).
        ValueError: ``obj`` is not contiguous in memory, or is empty.
        OSError: the shared memory cannot be allocated.
    """
    view = memoryview(obj)
    if not view.contiguous:
        raise ValueError("share() needs a contiguous array or buffer; copy it first "
                         "(numpy.ascontiguousarray)")
    if view.nbytes == 0:
        raise ValueError("share() needs a non-empty array or buffer")
    is_numpy = type(obj).__module__ == "numpy" and hasattr(obj, "__array_interface__")
    if (obj.dtype.hasobject if is_numpy else view.format == "O"):
        # its bytes are pointers to objects of this process: copied, they would
        # outlive (and be read after) the objects, and mean nothing in a worker
        raise TypeError("share() needs an array of plain values, not Python objects (dtype=object)")
    if not ENABLED:
        return obj.copy() if is_numpy else memoryview(bytearray(pickle.PickleBuffer(obj).raw()))
    fd, m = _new_file(view.nbytes, "anypool-shared")
    with pickle.PickleBuffer(obj).raw() as flat:  # C or Fortran order, as bytes
        m[:view.nbytes] = flat
    anchor = ctypes.c_char.from_buffer(m)
    start = ctypes.addressof(anchor)
    del anchor  # it holds an export of the mapping; the mapping must be closable at the end
    with _regions_lock:
        _regions[start] = (start + view.nbytes, fd)
    weakref.finalize(m, _forget, start, fd)
    if is_numpy:
        numpy = sys.modules["numpy"]  # imported already: obj is one of its arrays
        order = "F" if obj.flags.f_contiguous and not obj.flags.c_contiguous else "C"
        return numpy.ndarray(obj.shape, dtype=obj.dtype, buffer=m, order=order)
    shared = memoryview(m)
    try:
        return shared[:view.nbytes].cast(view.format, view.shape)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return shared[:view.nbytes]
