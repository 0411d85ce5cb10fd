"""Regression: a task submitted while auto's probe publishes its choice must not fail."""

from __future__ import annotations

import anypool


def test_submitting_while_the_probe_decides_never_raises() -> None:
    """Found by ``anypool map``: the second submit came as the probe of the first one
    finished, found it decided but the choice not yet published, and raised KeyError."""
    for _ in range(25):
        with anypool.Pool() as pool:
            futs = [pool.submit(len, "ab") for _ in range(3)]
            assert [f.result(30) for f in futs] == [2, 2, 2]
