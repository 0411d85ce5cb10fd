"""Task functions for the shared-memory tests (workers import them by reference)."""

from __future__ import annotations

import os
import time
import zlib
from typing import Any


def describe(buf: Any) -> tuple[str, bool, int, int]:
    """What a worker received: its type, whether it is read-only, its size and a checksum."""
    view = memoryview(buf)
    return type(buf).__name__, view.readonly, view.nbytes, zlib.crc32(view)


def try_write(buf: Any) -> str:
    """Write into the received buffer; return the error's type name, or "wrote"."""
    try:
        buf[0] = 1
    except (TypeError, ValueError) as exc:
        return type(exc).__name__
    return "wrote"


def mapped_segments(_: Any = None) -> int:
    """How many anypool shared-memory mappings this worker still has."""
    with open("/proc/self/maps") as f:
        return sum("memfd:anypool" in line for line in f)


def crash_holding(buf: Any) -> None:
    """Die (as a segfault or the OOM killer would) while holding a shared buffer."""
    memoryview(buf)[0]
    os._exit(3)


def hold(buf: Any, seconds: float) -> int:
    time.sleep(seconds)
    return memoryview(buf).nbytes


def numpy_info(a: Any) -> tuple[float, bool, str]:
    """Sum, writeable flag, and what writing into the array does."""
    try:
        a[0] = 1
        wrote = "wrote"
    except ValueError as exc:
        wrote = str(exc)
    return float(a.sum()), bool(a.flags.writeable), wrote
