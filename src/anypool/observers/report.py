"""The timeline report: one self-contained HTML file drawn from recorded attempts.

``write_report(path, rows)`` turns :class:`~anypool.observers.recorder.Row`
objects (from a live pool's recorder, or from a job log written by an
earlier run) into a page that needs nothing but a browser: inline CSS, an
inline script, SVG, no network.  It shows

* a timeline: one lane per worker, one bar per attempt, coloured by outcome;
  hovering a bar (or opening the page at ``#bar=N``) shows its callable,
  arguments, times, worker and error;
* a histogram of per-task run times;
* the utilisation: each worker's busy fraction of the run, throughput, and
  counts per outcome and per callable;
* the pool's :class:`~anypool.PoolStats`, when given.

Large runs stay responsive because the page draws at most ``max_bars`` bars:
beyond that it draws every failed attempt (up to a fifth of the budget) and
a uniform random sample of the rest, says so at the top, and adds under each
lane a band showing that worker's busy fraction over time, computed from
*all* rows.  The
histogram, the tables and the counts always use every row.

All user text (arguments, errors, names, the title) is escaped for where it
lands: HTML text and attributes through ``html.escape``; the embedded data is
JSON with ``<``, ``>``, ``&`` and the JavaScript line separators written as
``\\u`` escapes, so no string can close the script element; the script only
ever puts it into the page as text (``textContent``), never as markup.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import html
import json
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .recorder import Row, task_counts

if TYPE_CHECKING:
    from ..stats import PoolStats

__all__ = ["MAX_BARS", "OUTCOMES", "render_report", "write_report"]

MAX_BARS = 5000
"""The most bars a timeline draws before it samples (a browser stays smooth well past this)."""

OUTCOMES = ("ok", "error", "timeout", "crash", "cancelled")
"""Attempt outcomes in legend order; anything else is drawn as ``other``."""

_COLOURS = {
    "ok": "#3b8f3b",
    "error": "#d33a2c",
    "timeout": "#f08c00",
    "crash": "#7b3fa0",
    "cancelled": "#9a9a9a",
    "killed": "#5a4a3a",  # a job log's attempts stopped by a shutdown, Ctrl-C or --halt now
    "other": "#444444",
}
_DASH = "\u2013"
_TEXT_LIMIT = 300  # characters of arguments / errors / names kept per bar
_DENSITY_BINS = 400  # time bins of the per-lane busy shading
_HIST_BINS = 40
_MAX_SUBROWS = 12  # overlapping bars in one lane (async) stack this deep, then overlap


# -- public entry points --------------------------------------------------------


def write_report(
    path: str | os.PathLike[str],
    rows: Iterable[Row],
    *,
    stats: PoolStats | None = None,
    title: str = "",
    sampled: bool = False,
    max_bars: int = MAX_BARS,
) -> str:
    """Write the HTML report of ``rows`` to ``path``; return the file's absolute path.

    Args:
        path: the file to write (replaced atomically if it exists).
        rows: finished attempts, as ``Row`` objects or tuples of the same fields.
        stats: the pool's statistics, shown as a table when given.
        title: the page's heading (default: "anypool run").
        sampled: the rows are already a sample of the run (a recorder past its
            limit); the page says so.
        max_bars: the most bars the timeline draws; beyond, it samples.

    Raises:
        TypeError: a row is not a ``Row``-shaped tuple, or has a field of the wrong type.
        ValueError: ``max_bars`` < 1.
        OSError: the file cannot be written (e.g. its folder does not exist).
    """
    text = render_report(rows, stats=stats, title=title, sampled=sampled, max_bars=max_bars)
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix=".anypool-report-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def render_report(
    rows: Iterable[Row],
    *,
    stats: PoolStats | None = None,
    title: str = "",
    sampled: bool = False,
    max_bars: int = MAX_BARS,
) -> str:
    """The report's HTML text (what :func:`write_report` writes); same arguments and errors."""
    if not isinstance(max_bars, int) or isinstance(max_bars, bool) or max_bars < 1:
        raise ValueError(f"max_bars must be an int >= 1, not {max_bars!r}")
    checked = _check_rows(rows)
    return _Page(checked, stats, title or "anypool run", sampled, max_bars).html()


# -- input ------------------------------------------------------------------------


def _check_rows(rows: Iterable[Row]) -> list[Row]:
    out: list[Row] = []
    width = len(Row._fields)
    least = width - len(Row._field_defaults)  # the task counts may be left out (not known)
    for i, r in enumerate(rows):
        if type(r) is not Row:
            if not isinstance(r, tuple) or not least <= len(r) <= width:
                raise TypeError(f"row {i} is not an anypool Row (or a tuple of its {least} to {width} "
                                f"fields): {r!r:.200}")
            r = Row(*r)
        if (type(r.started) is float and type(r.ended) is float and r.started <= r.ended
                and math.isfinite(r.ended) and math.isfinite(r.started)
                and type(r.size) is int and r.size >= 1 and type(r.worker) is str
                and type(r.outcome) is str and r.outcome and type(r.fn) is str
                and type(r.args) is str and type(r.error) is str
                and _count_ok(r.done, r.size) and _count_ok(r.failed, r.size)):
            out.append(r)  # the common case: a recorder's or a job log's row, as is
            continue
        try:
            started, ended = float(r.started), float(r.ended)
        except (TypeError, ValueError):
            raise TypeError(f"row {i}: started and ended must be numbers (seconds), "
                            f"not {r.started!r} and {r.ended!r}") from None
        if not (math.isfinite(started) and math.isfinite(ended)):
            raise TypeError(f"row {i}: started and ended must be finite, not {started!r} and {ended!r}")
        try:
            size = max(1, int(r.size or 1))
        except (TypeError, ValueError):
            raise TypeError(f"row {i}: size must be an int, not {r.size!r}") from None
        # clocks can step back: such an attempt is drawn with zero length
        counts_ok = _count_ok(r.done, size) and _count_ok(r.failed, size)
        out.append(r._replace(started=started, ended=max(started, ended), size=size,
                              worker=str(r.worker), outcome=str(r.outcome or "ok"), fn=str(r.fn),
                              args=str(r.args or ""), error=str(r.error or ""),
                              # counts that cannot be right are read as not known
                              done=r.done if counts_ok else None, failed=r.failed if counts_ok else None))
    return out


def _count_ok(n: Any, size: int) -> bool:
    """Whether ``n`` can be a row's task count: not known (None), or an int in 0..size."""
    return n is None or (type(n) is int and 0 <= n <= size)


def _natural(name: str) -> list[Any]:
    # thread-2 before thread-10; "-" (never reached a worker) last
    if name in ("", "-"):
        return [1]
    return [0, *((int(p), "") if p.isdigit() else (0, p) for p in re.split(r"(\d+)", name))]


def _short(text: str, limit: int = _TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- formatting -------------------------------------------------------------------


def fmt_seconds(s: float) -> str:
    """A duration in the unit that suits it: ``812 µs``, ``12.3 ms``, ``4.56 s``, ``3 min 5 s``."""
    if s != s:  # NaN
        return _DASH
    if s < 0:
        return "-" + fmt_seconds(-s)
    if s == 0:
        return "0 s"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    m, sec = divmod(round(s), 60)
    if m < 120:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">`` (nothing can end the element)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


# -- analysis ---------------------------------------------------------------------


@dataclasses.dataclass
class _Lane:
    name: str
    attempts: int = 0
    tasks: int = 0
    work: float = 0.0  # summed attempt durations
    busy: float = 0.0  # time with at least one attempt running
    first: float = math.inf
    last: float = -math.inf
    peak: int = 0  # most attempts running at once
    failed: int = 0  # tasks whose last attempt failed here (retried attempts are not counted)


def _lane_stats(lane: _Lane, rows: list[Row]) -> None:
    """Fill ``lane`` from its rows (sorted by start)."""
    cur_start = cur_end = rows[0].started
    busy = work = 0.0
    tasks = peak = 0
    last = -math.inf
    failed = 0
    ends: list[float] = []  # a min-heap of the running attempts' end times
    for r in rows:
        started, ended = r.started, r.ended
        tasks += r.size
        work += ended - started
        if ended > last:
            last = ended
        if r.outcome != "ok":
            failed += task_counts(r)[1]
        if started > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = started, ended
        elif ended > cur_end:
            cur_end = ended
        # running at this start: those whose end is after it
        while ends and ends[0] <= started:
            heapq.heappop(ends)
        heapq.heappush(ends, ended)
        if len(ends) > peak:
            peak = len(ends)
    lane.busy = busy + (cur_end - cur_start)
    lane.attempts, lane.tasks, lane.work, lane.peak, lane.failed = len(rows), tasks, work, peak, failed
    lane.first, lane.last = rows[0].started, last


def _density(rows: list[Row], t0: float, span: float, peak: int) -> list[float]:
    """The lane's average concurrency per time bin, over its peak (0..1), rounded."""
    bins = [0.0] * _DENSITY_BINS
    if span <= 0:
        return bins
    width = span / _DENSITY_BINS
    for r in rows:
        a, b = (r.started - t0) / width, (r.ended - t0) / width
        i, j = int(a), min(int(b), _DENSITY_BINS - 1)
        if i >= _DENSITY_BINS:
            continue
        if i == j:
            bins[i] += b - a
            continue
        bins[i] += i + 1 - a
        for k in range(i + 1, j):
            bins[k] += 1.0
        bins[j] += min(b, _DENSITY_BINS) - j
    scale = max(1, peak)
    return [round(min(1.0, v / scale), 3) for v in bins]


def _choose_bars(rows: list[Row], max_bars: int) -> list[Row]:
    """All rows, or: failed attempts first (up to a fifth), then a uniform sample of the rest.

    Failures are what people look for, so they are kept even when rare; the
    cap keeps a failure-heavy run from looking worse than it was.
    """
    if len(rows) <= max_bars:
        return rows
    rng = random.Random(0)  # the same rows give the same page
    bad = [r for r in rows if r.outcome != "ok"]
    good = [r for r in rows if r.outcome == "ok"]
    cap = max(1, max_bars // 5)
    keep_bad = bad if len(bad) <= cap else rng.sample(bad, cap)
    rest = max_bars - len(keep_bad)
    if rest < len(good):
        good = rng.sample(good, rest)
    else:  # few successes: spend what is left on the failures not yet kept
        kept = set(map(id, keep_bad))
        more = [r for r in bad if id(r) not in kept]
        keep_bad += rng.sample(more, min(len(more), rest - len(good)))
    chosen = keep_bad + good
    chosen.sort(key=lambda r: r.started)
    return chosen


def _subrows(bars: list[Row]) -> tuple[list[int], int]:
    """Stack overlapping bars of one lane: each bar's sub-row and the lane's depth."""
    ends: list[float] = []
    out: list[int] = []
    for r in bars:
        for k, end in enumerate(ends):
            if end <= r.started:
                ends[k] = r.ended
                out.append(k)
                break
        else:
            if len(ends) < _MAX_SUBROWS:
                ends.append(r.ended)
                out.append(len(ends) - 1)
            else:
                k = min(range(len(ends)), key=ends.__getitem__)
                ends[k] = max(ends[k], r.ended)
                out.append(k)
    return out, max(1, len(ends))


def _histogram(rows: list[Row]) -> tuple[list[float], list[int], bool]:
    """Bin edges, counts and whether the bins are log-spaced, of per-task run times.

    A batch of ``size`` map items counts ``size`` times at its average, as ``pool.stats`` does.
    """
    values = [((r.ended - r.started) / r.size if r.size > 1 else r.ended - r.started, r.size)
              for r in rows]
    if not values:
        return [], [], False
    lo = min(v for v, _ in values)
    hi = max(v for v, _ in values)
    positive = [v for v, _ in values if v > 0]
    use_log = bool(positive) and hi / min(positive) > 50
    if use_log:
        lo = min(positive)
        a, b = math.log10(lo), math.log10(hi)
        if b - a < 1e-12:
            b = a + 1e-3
        edges = [10 ** (a + (b - a) * k / _HIST_BINS) for k in range(_HIST_BINS + 1)]
    else:
        if hi - lo < 1e-12:
            lo, hi = max(0.0, lo - max(lo * 0.05, 1e-6)), hi + max(hi * 0.05, 1e-6)
        edges = [lo + (hi - lo) * k / _HIST_BINS for k in range(_HIST_BINS + 1)]
    counts = [0] * _HIST_BINS
    for v, n in values:
        k = bisect.bisect_right(edges, v) - 1
        counts[min(max(k, 0), _HIST_BINS - 1)] += n
    return edges, counts, use_log


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * (len(sorted_values) - 1) + 0.5))]


# -- the page -----------------------------------------------------------------------


class _Page:
    """Computes everything once and renders the HTML."""

    def __init__(self, rows: list[Row], stats: PoolStats | None, title: str, sampled: bool,
                 max_bars: int) -> None:
        rows.sort(key=lambda r: r.started)
        self.rows = rows
        self.stats = stats
        self.title = title
        self.sampled = sampled
        self.max_bars = max_bars
        self.t0 = rows[0].started if rows else 0.0
        self.t1 = max((r.ended for r in rows), default=self.t0)
        self.span = self.t1 - self.t0
        by_lane: dict[str, list[Row]] = {}
        for r in rows:
            by_lane.setdefault(r.worker, []).append(r)
        self.lane_names = sorted(by_lane, key=_natural)
        self.lanes = {name: _Lane(name) for name in self.lane_names}
        for name, lane_rows in by_lane.items():
            _lane_stats(self.lanes[name], lane_rows)
        self.bars = _choose_bars(rows, max_bars)
        self.bar_sampled = len(self.bars) < len(rows)
        self.by_lane = by_lane

    # -- pieces --------------------------------------------------------------

    def data(self) -> dict[str, Any]:
        """What the script draws: lanes, bars (as arrays), density shading."""
        lane_index = {name: i for i, name in enumerate(self.lane_names)}
        fns: dict[str, int] = {}
        per_lane: dict[str, list[Row]] = {}
        for r in self.bars:
            per_lane.setdefault(r.worker, []).append(r)
        sub: dict[int, int] = {}
        depth: dict[str, int] = {}
        for name, bars in per_lane.items():
            rows_sub, depth[name] = _subrows(bars)
            for r, k in zip(bars, rows_sub, strict=False):
                sub[id(r)] = k
        bars_out = []
        for r in self.bars:
            fi = fns.setdefault(_short(r.fn), len(fns))
            bars_out.append([
                lane_index[r.worker], sub.get(id(r), 0), round(r.started - self.t0, 6),
                round(r.ended - r.started, 6), r.outcome, r.task_id, r.seq, r.size, r.attempt, fi,
                _short(r.args), _short(r.error),
            ])
        lanes = []
        for name in self.lane_names:
            lane = self.lanes[name]
            entry: dict[str, Any] = {"name": _short(name, 80), "depth": depth.get(name, 1),
                                     "peak": lane.peak}
            if self.bar_sampled:
                entry["density"] = _density(self.by_lane[name], self.t0, self.span, lane.peak)
            lanes.append(entry)
        return {
            "t0": self.t0,
            "span": self.span,
            "lanes": lanes,
            "fns": list(fns),
            "bars": bars_out,
            "colours": _COLOURS,
            "sampled": self.bar_sampled,
        }

    def notice(self) -> str:
        n, shown = len(self.rows), len(self.bars)
        parts = []
        if not n:
            parts.append("No attempts were recorded.")
        elif self.bar_sampled:
            bad_total = sum(1 for r in self.rows if r.outcome != "ok")
            bad_shown = sum(1 for r in self.bars if r.outcome != "ok")
            how = (f"every failed attempt ({bad_shown:,})" if bad_shown == bad_total
                   else f"{bad_shown:,} of the {bad_total:,} failed attempts")
            parts.append(
                f"<strong>Sampled timeline:</strong> it draws <span id=\"shown\">{shown:,}</span> of "
                f"<span id=\"total\">{n:,}</span> attempts: {how} and a uniform random sample of the "
                f"rest. The blue band under each lane is that worker's busy fraction over time, "
                f"aggregated from all {n:,} attempts; the histogram and every table count all of them.")
        else:
            parts.append(f"The timeline draws all <span id=\"shown\">{shown:,}</span> of "
                         f"<span id=\"total\">{n:,}</span> recorded attempts.")
        if self.sampled:
            parts.append("<strong>The recorder kept a sample:</strong> more attempts ran than it holds, "
                         "so these rows are a uniform random sample of the run and every figure "
                         "below is computed from that sample (the pool statistics table, when "
                         "present, counts everything).")
        return " ".join(parts)

    def legend(self) -> str:
        counts: dict[str, int] = {}
        for r in self.rows:
            key = r.outcome if r.outcome in _COLOURS else "other"
            counts[key] = counts.get(key, 0) + 1
        items = []
        for key in (*OUTCOMES, "killed", "other"):
            if key in ("killed", "other") and not counts.get(key):
                continue
            items.append(f'<span class="key"><i style="background:{_COLOURS[key]}"></i>'
                         f'{key} <b>{counts.get(key, 0):,}</b></span>')
        if self.bar_sampled:
            items.append('<span class="key"><i style="background:#4a7fb0"></i>busy fraction '
                         '(band under each lane, from all attempts)</span>')
        return "Attempts by outcome: " + " ".join(items)

    def summary(self) -> str:
        rows = self.rows
        # Tasks by their final outcome: an attempt that failed and was tried
        # again counts its tasks in neither (their later attempt does), and a
        # failed batch's good items count as ok.
        counts = [task_counts(r) for r in rows]
        tasks_ok = sum(d for d, _ in counts)
        tasks_failed = sum(f for _, f in counts)
        attempts = len(rows)
        tput = tasks_ok / self.span if self.span > 0 else 0.0
        items = [
            ("span", fmt_seconds(self.span), "from the first attempt's start to the last one's end"),
            ("attempts", f"{attempts:,}", "rows recorded (a map batch is one attempt of several tasks)"),
            ("tasks ok", f"{tasks_ok:,}", "tasks whose attempt returned a value"),
            ("tasks failed", f"{tasks_failed:,}",
             "tasks whose last attempt failed (attempts that failed and were retried are not counted)"),
            ("throughput", f"{tput:,.1f} tasks/s", "tasks ok per second of the span"),
            ("workers", f"{len(self.lane_names):,}", "lanes in the timeline"),
        ]
        return _table(["", "value", "meaning"], [[_esc(k), _esc(v), _esc(m)] for k, v, m in items],
                      cls="summary")

    def utilisation(self) -> str:
        out = []
        for name in self.lane_names:
            lane = self.lanes[name]
            frac = lane.busy / self.span if self.span > 0 else 0.0
            conc = lane.work / self.span if self.span > 0 else 0.0
            failed = lane.failed
            label = "(never ran)" if name in ("", "-") else name
            out.append([
                f'<span title="{_esc(name)}">{_esc(_short(label, 60))}</span>',
                f"{lane.attempts:,}", f"{lane.tasks:,}", f"{failed:,}", fmt_seconds(lane.busy),
                f'<span class="meter"><i style="width:{min(1.0, frac) * 100:.1f}%"></i></span> '
                f"{frac:.1%}",
                f"{conc:.2f}", str(lane.peak),
            ])
        return _table(["worker", "attempts", "tasks", "tasks failed", "busy", "busy fraction",
                       "mean running", "peak running"], out, cls="util")

    def per_function(self) -> str:
        groups: dict[str, list[Row]] = {}
        for r in self.rows:
            groups.setdefault(r.fn, []).append(r)
        out = []
        for fn, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            per_task = sorted((r.ended - r.started) / r.size for r in rs)
            counts = [task_counts(r) for r in rs]  # tasks by final outcome, as in the summary
            ok = sum(d for d, _ in counts)
            bad = sum(f for _, f in counts)
            out.append([
                f'<code title="{_esc(_short(fn, 1000))}">{_esc(_short(fn, 80))}</code>',
                f"{len(rs):,}", f"{ok:,}", f"{bad:,}",
                fmt_seconds(_quantile(per_task, 0.5)), fmt_seconds(_quantile(per_task, 0.95)),
                fmt_seconds(per_task[-1]),
            ])
        return _table(["callable", "attempts", "tasks ok", "tasks failed", "median", "p95", "max"],
                      out, cls="fns")

    def histogram(self) -> str:
        edges, counts, use_log = _histogram(self.rows)
        if not counts:
            return "<p>No run times to show.</p>"
        w, h, left, bottom, top = 720, 200, 56, 34, 10
        plot_w, plot_h = w - left - 34, h - bottom - top
        peak = max(counts) or 1
        bw = plot_w / len(counts)
        parts = [f'<svg class="hist" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
                 f'aria-label="histogram of run times">']
        for k, c in enumerate(counts):
            if not c:
                continue
            bh = max(1.0, plot_h * c / peak)
            x = left + k * bw
            tip = f"{fmt_seconds(edges[k])} {_DASH} {fmt_seconds(edges[k + 1])}: {c:,} tasks"
            parts.append(f'<rect class="hbin" x="{x:.1f}" y="{top + plot_h - bh:.1f}" '
                         f'width="{max(1.0, bw - 1):.1f}" height="{bh:.1f}">'
                         f"<title>{_esc(tip)}</title></rect>")
        base = top + plot_h
        parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" class="axis"/>')
        for k in range(0, len(edges), max(1, len(edges) // 5)):
            x = left + k * bw
            parts.append(f'<text x="{x:.1f}" y="{base + 14}" class="tick" text-anchor="middle">'
                         f'{_esc(fmt_seconds(edges[k]))}</text>')
        parts.append(f'<text x="{left - 6}" y="{top + 4}" class="tick" text-anchor="end">{peak:,}</text>')
        parts.append(f'<text x="{left - 6}" y="{base}" class="tick" text-anchor="end">0</text>')
        scale = "log scale" if use_log else "linear scale"
        parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{h - 4}" class="tick" text-anchor="middle">'
                     f"run time per task ({scale})</text>")
        parts.append("</svg>")
        return "".join(parts)

    def pool_stats(self) -> str:
        s = self.stats
        if s is None:
            return ""

        def dist(x: Any) -> str:
            return (f"{x.count:,} timed: median {fmt_seconds(x.median)}, p95 {fmt_seconds(x.p95)}, "
                    f"max {fmt_seconds(x.max)}, mean {fmt_seconds(x.mean)}")

        rows: list[tuple[str, str, str]] = [
            ("backend", s.backend, "the backend the pool was created with"),
            *((f"auto: {fn}", why, "what auto chose for this callable, and why")
              for fn, why in s.choices.items()),
            ("workers", f"{s.workers:,}", "how many tasks may run at once"),
            ("submitted", f"{s.submitted:,}", "tasks handed to the pool (each map item counts)"),
            ("done", f"{s.done:,}", "tasks that returned a value"),
            ("failed", f"{s.failed:,}", "tasks that failed for good, after their retries (not cancelled)"),
            ("retried", f"{s.retried:,}", "attempts that failed and were tried again"),
            ("timed out", f"{s.timed_out:,}", "attempts stopped by their timeout"),
            ("crashed", f"{s.crashed:,}", "attempts whose worker died"),
            ("cancelled", f"{s.cancelled:,}",
             "tasks cancelled before or while they ran, or stopped by shutdown(kill=True)"),
            ("running", f"{s.running:,}", "tasks not yet final when the report was written"),
            ("run time", dist(s.run_time), "per task attempt (map items share their batch's average)"),
            ("queue wait", dist(s.queue_wait), "from being queued to the start of the attempt"),
            ("elapsed", fmt_seconds(s.elapsed), "the span the throughput is measured over"),
            ("throughput", f"{s.throughput:,.1f} tasks/s", "done and failed tasks per second of elapsed"),
        ]
        for name, frac in sorted(s.worker_busy.items(), key=lambda kv: _natural(kv[0])):
            rows.append((f"busy: {name}", f"{frac:.1%}", "this worker's busy share of its lifetime"))
        body = [[_esc(k), _esc(v), _esc(m)] for k, v, m in rows]
        return "<h2>Pool statistics</h2>" + _table(["", "value", "meaning"], body, cls="stats")

    # -- assembly ------------------------------------------------------------

    def html(self) -> str:
        made = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
        started = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.t0)) if self.rows else _DASH)
        title = _esc(self.title)
        return "".join([
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            # nothing on this page may load anything: a stray URL in user text stays inert
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
            f"<title>{title}</title><style>{_CSS}</style></head><body>",
            f"<header><h1>{title}</h1><p class=\"meta\">run started {_esc(started)} · "
            f"span {_esc(fmt_seconds(self.span))} · report written {_esc(made)}</p></header>",
            f"<p class=\"notice\" id=\"notice\">{self.notice()}</p>",
            "<h2>Timeline</h2>",
            f"<p class=\"legend\">{self.legend()} <span class=\"hint\">Hover a bar for its details; "
            "wheel to zoom, drag to pan, double-click to reset.</span></p>",
            "<div id=\"timeline\" class=\"timeline\"><noscript>The timeline needs JavaScript; "
            "the tables below do not.</noscript></div>",
            "<div id=\"tip\" class=\"tip\" hidden></div>",
            "<h2>Run times</h2>",
            self.histogram(),
            "<h2>Utilisation</h2>",
            self.summary(),
            self.utilisation(),
            "<h2>Callables</h2>",
            self.per_function(),
            self.pool_stats(),
            "<footer>Written by anypool. One self-contained file: it loads nothing from the network."
            "</footer>",
            f"<script type=\"application/json\" id=\"anypool-data\">{_json_for_script(self.data())}</script>",
            f"<script>{_JS}</script>",
            "</body></html>\n",
        ])


def _table(head: Sequence[str], body: list[list[str]], cls: str) -> str:
    """An HTML table; ``head`` is plain text, ``body`` cells are already escaped HTML."""
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


_CSS = """
:root{--fg:#1d232a;--muted:#5f6b76;--line:#d9dee3;--bg:#fff;--lane:#f4f6f8}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:var(--fg);background:var(--bg);margin:0 auto;padding:16px 24px 40px;max-width:1600px}
h1{font-size:22px;margin:0 0 2px;word-break:break-word}
h2{font-size:16px;margin:26px 0 8px;border-bottom:1px solid var(--line);padding-bottom:3px}
.meta,.hint,footer{color:var(--muted);font-size:12px}
footer{margin-top:30px}
.notice{background:#fff8e1;border:1px solid #f2d98c;border-radius:4px;padding:8px 10px;margin:12px 0}
.legend .key{display:inline-block;margin-right:12px;white-space:nowrap}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;
 vertical-align:-1px}
.timeline{border:1px solid var(--line);border-radius:4px;overflow:hidden;user-select:none;
 cursor:grab;min-height:40px}
.timeline svg{display:block}
.timeline .lane{fill:var(--lane)}
.timeline .lanelabel{font-size:11px;fill:var(--fg)}
.timeline .grid{stroke:#e3e7eb}
.timeline .tick,.hist .tick{font-size:10px;fill:var(--muted)}
.timeline .density{fill:#4a7fb0}
.timeline .bar{stroke:none}
.timeline .bar:hover,.timeline .bar.sel{stroke:#000;stroke-width:1px}
.tip{position:fixed;z-index:10;max-width:520px;background:#1d232a;color:#fff;font-size:12px;
 border-radius:4px;padding:8px 10px;pointer-events:none;box-shadow:0 2px 10px rgba(0,0,0,.3)}
.tip div{white-space:pre-wrap;word-break:break-word}
.tip b{color:#b8c4cf;font-weight:600}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:3px 10px;text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600}
td:nth-child(n+2){font-variant-numeric:tabular-nums}
table.stats td:last-child,table.summary td:last-child{color:var(--muted)}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.meter{display:inline-block;width:90px;height:9px;background:#e9edf0;border-radius:2px;
 vertical-align:0;overflow:hidden}
.meter i{display:block;height:100%;background:#3b8f3b}
.hist .hbin{fill:#4a7fb0}
.hist .axis{stroke:#9aa5ae}
"""

# The script draws the timeline from the JSON data above it.  User text only
# ever reaches the page through textContent, never innerHTML.
_JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("anypool-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var box = document.getElementById("timeline");
  var tip = document.getElementById("tip");
  var LABEL = 130, GAP = 3, AXIS = 22, RIGHT = 12, BAND = D.sampled ? 10 : 0;
  var bars = D.bars, lanes = D.lanes;
  var view = [0, D.span > 0 ? D.span : 1];
  var laneTop = [], laneH = [], laneSub = [], y = AXIS;
  lanes.forEach(function (l, i) {
    laneSub[i] = l.depth > 4 ? 8 : 14;  // deep (overlapping) lanes get thinner rows
    laneTop[i] = y; laneH[i] = l.depth * laneSub[i] + 2 * GAP + BAND; y += laneH[i] + 2;
  });
  var height = Math.max(y + 4, AXIS + 30);
  var svg, gBars, gGrid, gDens, rects = [], width = 0;

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function p3(v) { return String(parseFloat(v.toPrecision(3))); }
  function fmt(s) {
    if (s < 0) return "-" + fmt(-s);
    if (!(s > 0)) return "0 s";
    if (s < 1e-3) return p3(s * 1e6) + " \u00b5s";
    if (s < 1) return p3(s * 1e3) + " ms";
    if (s < 120) return p3(s) + " s";
    var m = Math.floor(s / 60);
    return m + " min " + Math.round(s - 60 * m) + " s";
  }
  function xOf(t) { return LABEL + (t - view[0]) / (view[1] - view[0]) * (width - LABEL - RIGHT); }
  function tOf(x) { return view[0] + (x - LABEL) / (width - LABEL - RIGHT) * (view[1] - view[0]); }

  function build() {
    width = Math.max(480, box.clientWidth || 960);
    box.textContent = "";
    svg = el("svg", {width: width, height: height, "class": "tl"}, box);
    var defs = el("defs", {}, svg);
    var clip = el("clipPath", {id: "plot"}, defs);
    el("rect", {x: LABEL, y: 0, width: width - LABEL - RIGHT, height: height}, clip);
    lanes.forEach(function (l, i) {
      el("rect", {"class": "lane", x: 0, y: laneTop[i], width: width, height: laneH[i]}, svg);
      var t = el("text", {"class": "lanelabel", x: 6, y: laneTop[i] + laneH[i] / 2 + 4}, svg);
      var label = l.name === "-" || l.name === "" ? "(never ran)" : l.name;
      t.textContent = label.length > 20 ? label.slice(0, 19) + "\u2026" : label;
      var title = el("title", {}, t);
      title.textContent = l.name + (l.peak > 1 ? " (up to " + l.peak + " at once)" : "");
    });
    gGrid = el("g", {}, svg);
    var plot = el("g", {"clip-path": "url(#plot)"}, svg);
    gDens = el("g", {}, plot);
    gBars = el("g", {}, plot);
    // failures are drawn last, so overlapping successes never hide them
    rects = new Array(bars.length);
    [true, false].forEach(function (okPass) {
      bars.forEach(function (b, i) {
        if ((b[4] === "ok") !== okPass) return;
        rects[i] = el("rect", {"class": "bar o-" + b[4], fill: D.colours[b[4]] || D.colours.other,
                               "data-i": i, height: laneSub[b[0]] - 2}, gBars);
      });
    });
    render();
  }

  function render() {
    gGrid.textContent = "";
    var span = view[1] - view[0], raw = span / 8, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; })
                            .filter(function (s) { return s >= raw; })[0];
    for (var t = Math.ceil(view[0] / step) * step; t <= view[1] + 1e-12; t += step) {
      var x = xOf(t);
      el("line", {"class": "grid", x1: x, x2: x, y1: AXIS - 4, y2: height}, gGrid);
      var tx = el("text", {"class": "tick", x: x, y: AXIS - 8, "text-anchor": "middle"}, gGrid);
      tx.textContent = fmt(Math.round(t / step) * step);
    }
    gDens.textContent = "";
    if (D.sampled) {
      lanes.forEach(function (l, i) {
        if (!l.density) return;
        var n = l.density.length, bw = D.span / n, h = BAND - 2, top = laneTop[i] + laneH[i] - BAND;
        var d = "";
        for (var k = 0; k < n; k++) {
          var v = l.density[k];
          if (!v) continue;
          var x0 = xOf(k * bw), x1 = xOf((k + 1) * bw);
          if (x1 < LABEL || x0 > width) continue;
          d += "M" + x0.toFixed(1) + "," + (top + h).toFixed(1) + "H" + x1.toFixed(1) +
               "V" + (top + h - v * h).toFixed(1) + "H" + x0.toFixed(1) + "Z";
        }
        if (d) el("path", {"class": "density", d: d}, gDens);
      });
    }
    for (var i = 0; i < bars.length; i++) {
      var b = bars[i], x0 = xOf(b[2]), x1 = xOf(b[2] + b[3]), r = rects[i];
      r.setAttribute("x", x0.toFixed(2));
      // a failure must stay visible however short it was; wide bars keep a 1px gap
      var w = x1 - x0 > 4 ? x1 - x0 - 1 : x1 - x0;
      r.setAttribute("width", Math.max(b[4] === "ok" ? 1 : 3, w).toFixed(2));
      r.setAttribute("y", laneTop[b[0]] + GAP + b[1] * laneSub[b[0]] + 1);
    }
  }

  function line(parent, key, value) {
    if (value === "" || value === null || value === undefined) return;
    var d = document.createElement("div"), k = document.createElement("b");
    k.textContent = key + ": ";
    d.appendChild(k);
    d.appendChild(document.createTextNode(String(value)));
    parent.appendChild(d);
  }
  function showTip(i, cx, cy) {
    var b = bars[i];
    if (!b) return;
    tip.textContent = "";
    var abs = new Date((D.t0 + b[2]) * 1000);
    line(tip, "callable", D.fns[b[9]]);
    line(tip, "arguments", b[10]);
    line(tip, b[7] > 1 ? "tasks" : "task", b[7] > 1 ? "#" + b[6] + "\u2013#" + (b[6] + b[7] - 1) +
         " (" + b[7] + " map items in one batch)" : "#" + b[6]);
    line(tip, "attempt", b[8]);
    line(tip, "worker", lanes[b[0]].name);
    line(tip, "outcome", b[4]);
    line(tip, "started", "+" + fmt(b[2]) + " (" + abs.toISOString() + ")");
    line(tip, "ran for", fmt(b[3]));
    line(tip, "error", b[11]);
    tip.hidden = false;
    tip.style.left = Math.min(cx + 14, window.innerWidth - tip.offsetWidth - 8) + "px";
    tip.style.top = Math.min(cy + 14, window.innerHeight - tip.offsetHeight - 8) + "px";
  }

  var drag = null;
  box.addEventListener("mousemove", function (e) {
    if (drag) {
      var dt = (drag.x - e.clientX) / (width - LABEL - RIGHT) * (drag.v[1] - drag.v[0]);
      view = [drag.v[0] + dt, drag.v[1] + dt];
      render();
      return;
    }
    var i = e.target.getAttribute && e.target.getAttribute("data-i");
    if (i === null || i === undefined) { tip.hidden = true; return; }
    showTip(+i, e.clientX, e.clientY);
  });
  box.addEventListener("mouseleave", function () { tip.hidden = true; drag = null; });
  box.addEventListener("mousedown", function (e) { drag = {x: e.clientX, v: view.slice()}; });
  window.addEventListener("mouseup", function () { drag = null; });
  box.addEventListener("wheel", function (e) {
    e.preventDefault();
    var rect = svg.getBoundingClientRect(), at = tOf(e.clientX - rect.left);
    var f = e.deltaY > 0 ? 1.25 : 0.8, min = (D.span || 1) * 1e-6;
    var a = at - (at - view[0]) * f, z = at + (view[1] - at) * f;
    if (z - a < min) return;
    view = [a, z];
    render();
  }, {passive: false});
  box.addEventListener("dblclick", function () { view = [0, D.span > 0 ? D.span : 1]; render(); });
  var pending = 0;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(build, 150);
  });

  build();
  // #bar=N opens bar N's details, so a bar can be linked to (and checked without a mouse)
  var m = /^#bar=(\d+)$/.exec(location.hash);
  if (m && rects[+m[1]]) {
    var r = rects[+m[1]].getBoundingClientRect();
    rects[+m[1]].classList.add("sel");
    showTip(+m[1], r.left, r.bottom);
  }
  document.body.setAttribute("data-bars", String(rects.length));
})();
"""
