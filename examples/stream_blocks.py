"""Streaming a file in blocks, and ``tail`` with a deque, with the work done by a pool.

Seed note 002: ``read_from_file`` yields a file in fixed-size blocks so a
file of any size is read with a block's worth of memory; ``tail`` keeps the
last ``n`` lines with ``deque(f, n)``.

The anypool way: ``pool.imap(work, read_from_file(...))`` pulls blocks
from the generator only as workers have room, so the file is still never
in memory whole, while the blocks are compressed on several threads
(``zlib`` releases the GIL, and ``backend="auto"`` measures that and keeps
the work on threads).  ``deque(pool.imap(parse, lines), maxlen=n)`` is
``tail`` over *processed* lines: every line is parsed, only the last ``n``
results are kept, and memory stays flat however long the file is.

Run: ``python examples/stream_blocks.py``
"""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Iterator

import psutil

import anypool

BLOCK = 256 << 10  # 256 KiB; the seed uses 8 KiB, too little work per block to be worth a thread


def read_from_file(filename: str, block_size: int = 1024 * 8) -> Iterator[bytes]:
    with open(filename, "rb") as fp:
        while chunk := fp.read(block_size):
            yield chunk


def tail(filename: str, n: int = 10) -> deque[str]:
    """The seed's version: the last ``n`` lines."""
    with open(filename) as f:
        return deque(f, n)


def compressed_size(block: bytes) -> int:
    return len(zlib.compress(block, 6))


def parse(line: str) -> tuple[int, float]:
    """One ``id,value`` record."""
    ident, value = line.rstrip("\n").split(",")
    return int(ident), float(value)


def write_sample(path: str, lines: int) -> None:
    with open(path, "w") as f:
        for i in range(lines):
            f.write(f"{i},{(i * 7919) % 10007 / 3:.3f}\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "records.csv")
        write_sample(path, 400_000)
        size = os.path.getsize(path)
        print(f"sample file: {size / 2**20:.1f} MiB")

        t0 = time.perf_counter()
        serial = sum(compressed_size(b) for b in read_from_file(path, BLOCK))
        t_serial = time.perf_counter() - t0

        rss0 = psutil.Process().memory_info().rss
        peak = rss0
        t0 = time.perf_counter()
        with anypool.Pool(workers=2) as pool:
            total = 0
            for n in pool.imap(compressed_size, read_from_file(path, BLOCK)):
                total += n
                peak = max(peak, psutil.Process().memory_info().rss)
        t_pool = time.perf_counter() - t0
        print(f"compressed in 256 KiB blocks: serial {t_serial:.2f} s, imap on the pool {t_pool:.2f} s, "
              f"same total: {total == serial} ({total / 2**20:.1f} MiB)")
        print(f"  auto chose {pool.stats.choices['compressed_size']}")
        print(f"  memory grew by {(peak - rss0) / 2**20:.1f} MiB while streaming the "
              f"{size / 2**20:.1f} MiB file")

        print(f"tail (the seed's deque): {[line.strip() for line in tail(path, 3)]}")
        with open(path) as f, anypool.Pool("thread", workers=2) as pool:
            last = deque(pool.imap(parse, f), maxlen=3)
        print(f"tail of parsed records through imap: {list(last)} "
              f"({pool.stats.done:,} lines parsed, 3 kept)")


if __name__ == "__main__":
    main()
