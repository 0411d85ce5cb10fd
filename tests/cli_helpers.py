"""Helpers for command-line tests: every test runs the real ``python -m anypool``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

Cli = Callable[..., subprocess.CompletedProcess[bytes]]


def cli_env() -> dict[str, str]:
    """The environment for a CLI child: anypool importable, no progress bar, no stray PYTHON* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = SRC
    env["ANYPOOL_PROGRESS"] = "0"
    return env


def cli_argv(*args: str) -> list[str]:
    """argv for ``python -m anypool ARGS...``."""
    return [sys.executable, "-m", "anypool", *args]


def wait_for(cond: Callable[[], object], seconds: float = 30.0, what: str = "") -> None:
    """Poll ``cond`` until it is true; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
