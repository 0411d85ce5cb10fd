"""Fixtures every test gets: no process may outlive the test that started it."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # `import tasks` from tests and from workers

from helpers import SERVICES
from services import DaskCluster, under_service  # needs the path above


def _is_service(p: psutil.Process) -> bool:
    """A session service: the fork server or resource tracker itself (a direct child,
    not what it forks: forked workers inherit its command line, so the parent tells
    them apart), or the Dask cluster (or a worker it restarted)."""
    if under_service(p):
        return True
    try:
        cmd = " ".join(p.cmdline())
        parent = p.ppid()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False
    return parent == os.getpid() and any(s in cmd for s in SERVICES)


def _ours(before: set[int]) -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in before or _is_service(p):
            continue
        try:
            if p.is_running():
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if a process it started is still there 5 s after it ends."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5.0
    left = _ours(before)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _ours(before)
    if left:
        desc = []
        for p in left:
            try:
                desc.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                desc.append(str(p.pid))
            try:
                p.kill()
            except psutil.Error:
                pass
        pytest.fail("processes left behind:\n  " + "\n  ".join(desc), pytrace=False)


@pytest.fixture(autouse=True)
def no_leaked_pool_threads() -> Iterator[None]:
    """Fail the test if a pool's manager or loop thread outlives the test."""
    yield
    deadline = time.monotonic() + 5.0
    watched = ("anypool-process-manager", "anypool-async-loop", "anypool-dask")
    while True:
        left = [t.name for t in threading.enumerate() if t.name in watched]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"pool threads left running: {left}"


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, for the session.

    Started with Dask's own commands, no dashboard, the scheduler's
    ``allowed-failures`` at 0 (so a dead worker's task reaches anypool's
    ``retries=``), and stopped at the end with nothing left behind.
    """
    pytest.importorskip("distributed", reason="the dask backend needs dask.distributed")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        yield cluster
    finally:
        cluster.stop()
