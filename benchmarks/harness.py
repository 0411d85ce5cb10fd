"""Running the cases, pairing the repeats, printing the tables, saving the JSON.

Every measurement runs in a fresh child process (``benchmarks.child``), so
no pool, thread or page of memory carries over from one contender to the
next.  Within a repeat every contender of a case runs once, in an order
rotated from repeat to repeat; a contender's ratio to the reference is taken
*within* each repeat (both ran seconds apart, under the same load) and the
table shows the median of those paired ratios and their spread (min-max).
``--quick`` runs each case's contenders in one child per repeat instead, to
fit in a minute: a smoke test, not numbers to quote.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

Params = dict[str, Any]
Measure = dict[str, Any]  # seconds, items, and optionally mem_growth (bytes), note


class Skip(Exception):
    """A contender cannot run here (a peer not installed, a feature not built yet)."""


@dataclass
class Contender:
    label: str
    run: Callable[[Params], Measure]
    group: str = "peer"  # "anypool", "peer" or "baseline" (for orientation)
    note: str = ""


@dataclass
class Target:
    """A goal from the issue, checked on paired repeats.

    ``kind``: ``"ratio"`` (row's throughput ÷ ref's ≥ limit; ``ref`` may
    name several rows: the best of them in each repeat), ``"mem_extra"``
    (row's memory growth per item minus ref's ≤ limit bytes) or
    ``"mem_growth"`` (row's memory growth ≤ limit bytes).
    """

    text: str
    row: str
    ref: tuple[str, ...] = ()
    limit: float | Callable[[int], float] = 1.0
    kind: str = "ratio"
    auto: bool = False  # a "backend='auto' vs the best backend" check

    def limit_for(self, workers: int) -> float:
        return self.limit(workers) if callable(self.limit) else float(self.limit)


@dataclass
class Case:
    name: str
    title: str
    reference: str
    full: Params
    quick: Params
    contenders: list[Contender] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    unit: str = "tasks"

    def contender(self, label: str, group: str = "peer", note: str = "") -> Callable[
            [Callable[[Params], Measure]], Callable[[Params], Measure]]:
        """Decorator registering a contender of this case."""
        def register(fn: Callable[[Params], Measure]) -> Callable[[Params], Measure]:
            self.contenders.append(Contender(label, fn, group, note))
            return fn
        return register

    def find(self, label: str) -> Contender:
        for c in self.contenders:
            if c.label == label:
                return c
        raise KeyError(f"case {self.name} has no contender {label!r}")


# -- measuring helpers (used inside children) ---------------------------------------------


def workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def rss() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Samples this process's RSS every few ms while running; ``growth`` = peak - start."""

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss())

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        self.start = self.peak = rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, rss())
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.start)


def timed(fn: Callable[[], Any], items: int, memory: bool = False) -> Measure:
    """Run ``fn`` once; its wall time, item count and (with ``memory``) peak RSS growth."""
    if memory:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        return {"seconds": seconds, "items": items, "mem_growth": mem.growth}
    t0 = time.perf_counter()
    fn()
    return {"seconds": time.perf_counter() - t0, "items": items}


# -- running (parent side) --------------------------------------------------------------------


def _child(case: Case, labels: list[str], params: Params, timeout: float) -> dict[str, Measure]:
    spec = json.dumps({"case": case.name, "labels": labels, "params": params})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.child", spec], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        out, err = proc.communicate()
        timed_out = True
    finally:
        _kill_session(proc.pid)  # nothing a contender started may outlive it
    got: dict[str, Measure] = {}
    for line in out.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            got[rec.pop("label")] = rec
    for label in labels:
        if label not in got:
            why = f"timed out after {timeout:.0f} s" if timed_out else \
                f"the child exited with {proc.returncode}: {err.strip()[-300:]}"
            got[label] = {"error": why}
    return got


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_cases(cases: Iterable[Case], *, quick: bool, repeats: int, timeout: float,
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run every case; return the results document (see ``docs/benchmarks.md``)."""
    w = workers()
    doc: dict[str, Any] = {"meta": machine(quick, repeats), "cases": []}
    for case in cases:
        params = dict(case.quick if quick else case.full)
        params.setdefault("workers", w)
        labels = [c.label for c in case.contenders]
        runs: dict[str, list[Measure]] = {label: [] for label in labels}
        t0 = time.monotonic()
        for r in range(repeats):
            order = labels[r % len(labels):] + labels[:r % len(labels)]
            if quick:
                got = _child(case, order, params, timeout)
            else:
                got = {}
                for label in order:
                    got.update(_child(case, [label], params, timeout))
            for label in labels:
                runs[label].append(got[label])
        log(f"  {case.name}: {time.monotonic() - t0:.1f} s")
        doc["cases"].append({
            "name": case.name, "title": case.title, "reference": case.reference, "unit": case.unit,
            "params": params, "repeats": repeats,
            "rows": [{"label": c.label, "group": c.group, "note": c.note, "runs": runs[c.label]}
                     for c in case.contenders],
            "targets": [{"text": t.text, "row": t.row, "ref": list(t.ref), "kind": t.kind,
                         "limit": t.limit_for(params["workers"]), "auto": t.auto} for t in case.targets],
        })
    return doc


def machine(quick: bool, repeats: int) -> dict[str, Any]:
    """Where and with what the run was made."""
    pkgs = {}
    for name in ("anypool", "joblib", "loky", "mpire", "pebble", "aiomultiprocess", "numpy", "uvloop",
                 "dask", "distributed", "cloudpickle", "psutil", "tqdm"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    tools = {}
    for tool, args in (("parallel", ["parallel", "--version"]), ("xargs", ["xargs", "--version"])):
        try:
            first = subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.splitlines()
            tools[tool] = first[0] if first else "?"
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick, "repeats": repeats, "workers": workers(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "packages": pkgs, "tools": tools, "commit": commit,
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks", *sys.argv[1:]]),
    }


# -- statistics ---------------------------------------------------------------------------------


def _ok(m: Measure) -> bool:
    return "seconds" in m and m["seconds"] > 0


def _thr(m: Measure) -> float:
    return float(m["items"]) / float(m["seconds"])


def paired(case: dict[str, Any], row: str, refs: Iterable[str]) -> list[float]:
    """Per repeat: row's throughput ÷ the best of ``refs``' (repeats where both ran)."""
    rows = {r["label"]: r["runs"] for r in case["rows"]}
    out = []
    refs = list(refs)
    for i, m in enumerate(rows.get(row, [])):
        best = [rows[ref][i] for ref in refs if ref in rows and ref != row and _ok(rows[ref][i])]
        if _ok(m) and best:
            out.append(_thr(m) / max(_thr(b) for b in best))
    return out


def _mem_extra(case: dict[str, Any], row: str, ref: str) -> list[float]:
    rows = {r["label"]: r["runs"] for r in case["rows"]}
    out = []
    for a, b in zip(rows.get(row, []), rows.get(ref, []), strict=False):
        if _ok(a) and _ok(b) and "mem_growth" in a and "mem_growth" in b:
            out.append(a["mem_growth"] / a["items"] - b["mem_growth"] / b["items"])
    return out


def check(case: dict[str, Any], target: dict[str, Any]) -> tuple[str, str]:
    """``(measured, verdict)`` for one target: verdict is met, missed or not measured."""
    kind, row, limit = target["kind"], target["row"], target["limit"]
    if kind == "ratio":
        vals = paired(case, row, target["ref"])
        if not vals:
            return "—", "not measured"
        med = statistics.median(vals)
        return f"{med:.2f}x ({min(vals):.2f}-{max(vals):.2f})", "met" if med >= limit else "missed"
    if kind == "mem_extra":
        vals = _mem_extra(case, row, target["ref"][0])
        if not vals:
            return "—", "not measured"
        med = statistics.median(vals)
        return f"{med:+.0f} B/task ({min(vals):+.0f}…{max(vals):+.0f})", "met" if med <= limit else "missed"
    if kind == "mem_growth":
        runs = [m for r in case["rows"] if r["label"] == row for m in r["runs"] if _ok(m)]
        vals = [m["mem_growth"] for m in runs if "mem_growth" in m]
        if not vals:
            return "—", "not measured"
        med = statistics.median(vals)
        return f"{med / 2**20:.1f} MiB ({min(vals) / 2**20:.1f}-{max(vals) / 2**20:.1f})", \
            "met" if med <= limit else "missed"
    raise ValueError(f"unknown target kind {kind!r}")


# -- tables ---------------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _fmt_secs(s: float) -> str:
    return f"{s:.3g} s" if s >= 0.1 else f"{s * 1e3:.3g} ms"


def _row_notes(runs: list[Measure]) -> str:
    notes = []
    ok = [m for m in runs if _ok(m)]
    mems = [m["mem_growth"] for m in ok if "mem_growth" in m]
    if mems:
        med = statistics.median(mems)
        per = med / statistics.median(m["items"] for m in ok)
        notes.append(f"mem +{med / 2**20:.1f} MiB ({per:,.0f} B/{'item'})")
    extra = {m.get("note") for m in ok if m.get("note")}
    notes.extend(sorted(extra))
    bad = [m for m in runs if not _ok(m)]
    if bad:
        first = bad[0]
        if "skip" in first:
            notes.append(f"skipped: {first['skip']}")
        else:
            notes.append(f"{len(bad)} of {len(runs)} runs failed: {str(first.get('error'))[:160]}")
    return "; ".join(notes)


def case_table(case: dict[str, Any]) -> str:
    """One case as Markdown: a row per contender, then its targets."""
    p = case["params"]
    size = ", ".join(f"{k} = {v:,}" if type(v) is int else f"{k} = {v}" for k, v in p.items())
    ref = case["reference"]
    lines = [f"### {case['name']}: {case['title']}", "",
             f"{size} · {case['repeats']} repeats · ratio = {case['unit']}/s ÷ {ref}'s, "
             "paired within each repeat (higher is faster); spread = min-max of those ratios", "",
             f"| contender | {case['unit']} | median time | {case['unit']}/s | vs {ref} | spread | notes |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for row in case["rows"]:
        ok = [m for m in row["runs"] if _ok(m)]
        label = f"**{row['label']}**" if row["group"] == "anypool" else row["label"]
        if row["note"]:
            label += f" ({row['note']})"
        notes = _row_notes(row["runs"])
        if not ok:
            lines.append(f"| {label} | | | | | | {notes} |")
            continue
        n = statistics.median(m["items"] for m in ok)
        secs = statistics.median(m["seconds"] for m in ok)
        rate = statistics.median(_thr(m) for m in ok)
        if row["label"] == ref:
            ratio, spread = "1 (reference)", ""
        else:
            vals = paired(case, row["label"], [ref])
            ratio = f"{statistics.median(vals):.2f}x" if vals else "—"
            spread = f"{min(vals):.2f}-{max(vals):.2f}" if vals else ""
        lines.append(f"| {label} | {n:,.0f} | {_fmt_secs(secs)} | {_fmt_rate(rate)} | {ratio} | {spread} "
                     f"| {notes} |")
    if case["targets"]:
        lines += ["", "| target | measured (median, spread) | |", "|---|---|---|"]
        for t in case["targets"]:
            measured, verdict = check(case, t)
            lines.append(f"| {t['text']} | {measured} | {verdict} |")
    return "\n".join(lines)


def report(doc: dict[str, Any]) -> str:
    """The whole run as Markdown: machine, one table per case, the auto summary, a target list."""
    m = doc["meta"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    tools = "; ".join(m.get("tools", {}).values())
    out = [f"## anypool benchmarks{' (quick smoke run: not numbers to quote)' if m['quick'] else ''}", "",
           f"{m['date']} · commit {m.get('commit') or '?'} · {m['cpu_count']} CPUs, "
           f"workers = {m['workers']} · "
           f"Python {m['python']} · {m['platform']}", "",
           f"Packages: {pk}." + (f" Tools: {tools}." if tools else ""), "",
           f"Command: `{m.get('command', '')}`", ""]
    for case in doc["cases"]:
        out += [case_table(case), ""]
    autos = [(c, t) for c in doc["cases"] for t in c["targets"] if t["auto"]]
    if autos:
        out += ["### backend=\"auto\" vs the best backend, case by case", "",
                "| case | auto row | best of | ratio (median, spread) | |", "|---|---|---|---|---|"]
        for c, t in autos:
            measured, verdict = check(c, t)
            out.append(f"| {c['name']} | {t['row']} | {', '.join(t['ref'])} | {measured} | {verdict} |")
        out.append("")
    tally: dict[str, int] = {}
    for c in doc["cases"]:
        for t in c["targets"]:
            tally[check(c, t)[1]] = tally.get(check(c, t)[1], 0) + 1
    out.append("Targets: " + ", ".join(f"{n} {k}" for k, n in sorted(tally.items())))
    return "\n".join(out)


def save(doc: dict[str, Any], path: Path | None) -> Path:
    """Write the results document; default: ``benchmarks/results/<date>[-quick].json``."""
    if path is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = RESULTS / f"bench-{stamp}{'-quick' if doc['meta']['quick'] else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
