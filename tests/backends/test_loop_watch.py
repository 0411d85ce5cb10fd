"""The ``async`` backend's blocked-loop warning: given when the loop is stuck, and only then."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import anypool


async def waits(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


async def blocks(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event loop has not turned" in r.getMessage()]


@pytest.mark.timeout(30)
def test_no_warning_while_coroutines_only_wait(caplog: pytest.LogCaptureFixture) -> None:
    """Coroutines that await for longer than the threshold give no warning.

    Regression: the loop's first heartbeat could run before the pool had
    stored its loop, so the heartbeat never rescheduled itself and nine
    pools in ten warned about a blocked loop half a second after starting.
    """
    caplog.set_level(logging.WARNING, logger="anypool")
    for _ in range(4):
        with anypool.Pool("async") as pool:
            assert pool.submit(waits, 0.8).result() == 0.8
    assert _warnings(caplog) == []


@pytest.mark.timeout(30)
def test_warning_when_a_coroutine_blocks(caplog: pytest.LogCaptureFixture) -> None:
    """A coroutine calling ``time.sleep`` for a second gets the warning, naming the way out."""
    caplog.set_level(logging.WARNING, logger="anypool")
    with anypool.Pool("async") as pool:
        assert pool.submit(blocks, 1.2).result() == 1.2
    found = _warnings(caplog)
    assert found
    assert "backend='thread'" in found[0]
