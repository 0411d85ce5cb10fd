"""How long a thread has waited for a CPU (Linux's schedstat).

The second field of ``/proc/.../schedstat`` counts the nanoseconds a thread
spent runnable but not running.  ``backend="auto"``'s probe needs it to tell
"waiting" from "not given a CPU" on a loaded machine: CPU-bound work must not
look like IO.  Where there is no such file, every delay reads as 0.
"""

from __future__ import annotations

import os

__all__ = ["open_thread", "read_delay", "thread_delay"]


def open_thread(tid: int) -> int | None:
    """A descriptor on thread ``tid``'s schedstat (of this process), for repeated reads."""
    try:
        return os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
    except OSError:
        return None


def read_delay(fd: int | None) -> float:
    """Run-queue seconds from a descriptor of :func:`open_thread` (0 if there is none)."""
    if fd is None:
        return 0.0
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def thread_delay(tid: int | None) -> float:
    """Seconds thread ``tid`` of this process has waited for a CPU (0 if unknown)."""
    if tid is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0
