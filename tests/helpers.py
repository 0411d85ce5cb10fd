"""Helpers shared by test modules (importable: ``conftest`` is not, with two of them)."""

from __future__ import annotations

import sys
from pathlib import Path

# Process-wide helpers that live as long as the test session, by design:
# multiprocessing's fork server (our workers' parent) and resource tracker,
# and the guard that stops our commands if the test process dies.
SERVICES = ("multiprocessing.forkserver", "multiprocessing.resource_tracker", "anypool-job-guard")


def python(code: str) -> list[str]:
    """argv running ``code`` in a fresh interpreter, with the tests importable."""
    return [sys.executable, "-c", code]


def damage(path: Path, pages: range) -> None:
    """Overwrite the start of each of these 4 KiB pages of a closed SQLite file, as a failing disk would."""
    data = bytearray(path.read_bytes())
    for p in pages:
        data[p * 4096:p * 4096 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
