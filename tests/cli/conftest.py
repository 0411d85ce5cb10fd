"""The ``cli`` fixture: run the real ``python -m anypool`` in the test's directory."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import Cli, cli_argv, cli_env


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run ``anypool ARGS...`` in ``tmp_path`` (stdin: ``stdin=`` bytes, else empty)."""

    def run(*args: str, stdin: bytes | None = None, timeout: float = 60,
            **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(cli_argv(*args), input=stdin if stdin is not None else b"",
                              capture_output=True, timeout=timeout, cwd=kw.pop("cwd", tmp_path),
                              env=cli_env(), **kw)

    return run
