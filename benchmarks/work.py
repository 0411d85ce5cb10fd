"""Task functions the benchmarks run (module-level, so worker processes import them by reference)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from typing import Any


def noop(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


def burn(n: int) -> int:
    """Pure-Python CPU work holding the GIL: about 40 ns an iteration."""
    s = 0
    for i in range(n):
        s += i * i
    return s


def sha(buf: Any) -> str:
    return hashlib.sha256(buf).hexdigest()


def checksum(arr: Any) -> float:
    """Touch every byte of an array (numpy) or buffer (anything else)."""
    total = getattr(arr, "sum", None)
    if total is not None:
        return float(total())
    return float(zlib.adler32(memoryview(arr)))


SHARED: dict[str, Any] = {}


def checksum_shared(shared: Any, i: int) -> float:
    """mpire's shared_objects calling convention: the shared list first."""
    return checksum(shared[i])


async def nap(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def fetch_parse(wait: float, work: int, i: int) -> int:
    """A simulated network wait, then a CPU-heavy parse of the answer."""
    await asyncio.sleep(wait)
    return burn(work) + i


def fetch_parse_sync(wait: float, work: int, i: int) -> int:
    time.sleep(wait)
    return burn(work) + i
