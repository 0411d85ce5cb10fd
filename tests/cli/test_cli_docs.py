"""``docs/cli.md`` covers every subcommand and every option its ``--help`` lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from anypool.cli import COMMANDS
from cli_helpers import Cli

CLI_MD = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_a_section_naming_its_options(cli: Cli, name: str) -> None:
    """A heading ``anypool NAME``, and each option of ``anypool NAME --help`` in backquotes."""
    doc = CLI_MD.read_text("utf-8")
    assert re.search(rf"^#+ `anypool {name}\b", doc, re.M), f"docs/cli.md has no `anypool {name}` section"
    helped = cli(name, "--help")
    assert helped.returncode == 0, helped.stderr
    # an option line of argparse's help: "  -o FILE, --output FILE   what it does"
    lines = [ln.split("  ")[1] for ln in helped.stdout.decode().splitlines() if re.match(r"  -\S", ln)]
    undocumented = []
    for line in lines:
        spellings = [s.split()[0] for s in line.split(", ")]
        if "--help" not in spellings and not any(f"`{s}" in doc for s in spellings):
            undocumented.append(line)
    assert not undocumented, f"options of anypool {name} missing from docs/cli.md: {undocumented}"
