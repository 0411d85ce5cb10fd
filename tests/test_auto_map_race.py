"""backend="auto" under a fast ``map``: batches arriving while the probe hands over its choice."""

from __future__ import annotations

import pytest

import anypool
import tasks


@pytest.mark.timeout(60)
def test_map_right_after_the_probe_decides_never_hangs() -> None:
    # Batches submitted between the probe's decision and the router recording
    # it used to raise KeyError inside map (and shutdown then waited forever
    # for the batch that never reached a backend).  Found by the benchmarks.
    for _ in range(40):
        with anypool.Pool("auto", 2) as pool:
            assert sum(pool.map(tasks.square, range(20_000))) == sum(x * x for x in range(20_000))
