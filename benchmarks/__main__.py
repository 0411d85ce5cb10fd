"""``python -m benchmarks``: run the cases, print Markdown tables, save JSON (``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="anypool and its peers side by side: one Markdown table per case, "
                    "ratios paired within each repeat; results saved as JSON.",
        epilog="examples:\n  python -m benchmarks --quick\n  python -m benchmarks --repeats 5\n"
               "  python -m benchmarks --only process-map,imap\n"
               "  python -m benchmarks --report benchmarks/results/bench-20250101-120000.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small-scale smoke run (under a minute)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per case (default 5; quick: 1)")
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds one child process may run (default 600; quick: 60)")
    ap.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    ap.add_argument("--report", type=Path, default=None, help="print the tables of a saved JSON and exit")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)

    from benchmarks.harness import report, run_cases, save

    if args.report is not None:
        print(report(json.loads(args.report.read_text())))
        return 0
    from benchmarks.cases import CASES

    if args.list:
        for name, case in CASES.items():
            print(f"{name:16} {case.title}")
        return 0
    names = [n for n in args.only.split(",") if n] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case(s): {', '.join(unknown)}; --list shows them")
    repeats = args.repeats or (1 if args.quick else 5)
    if repeats < 1:
        ap.error("--repeats must be at least 1")
    timeout = args.timeout or (60.0 if args.quick else 600.0)
    t0 = time.monotonic()
    print(f"running {len(names)} cases, {repeats} repeat(s) each{' (quick)' if args.quick else ''}...",
          file=sys.stderr)
    doc = run_cases([CASES[n] for n in names], quick=args.quick, repeats=repeats, timeout=timeout,
                    log=lambda s: print(s, file=sys.stderr, flush=True))
    path = save(doc, args.out)
    print(report(doc))
    print(f"\nsaved {path} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
