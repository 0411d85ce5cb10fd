"""The progress bar: tqdm, refreshed from the pool's counters, never from the task path.

A bar updated per task costs microseconds on every task.  This one is a
daemon thread reading ``pool.stats`` a few times a second, so the tasks
themselves pay nothing.  It shows finished / total with rate and ETA, and
the done / failed / retried / running (and cancelled) counts.  ``total`` is what was
submitted so far plus, for ``map`` over an input of known length (a list, a
range), the items that run has not submitted yet, so the ETA covers the
whole input although ``map`` feeds the pool lazily.  In a Jupyter kernel it
uses ``tqdm.auto`` (a widget); elsewhere ``tqdm.std`` (text), which spares a
script the ~30 ms of importing asyncio that ``tqdm.auto`` costs.

When to show it: ``progress=True`` shows it where someone can see it (stderr
is a terminal, or a Jupyter kernel runs us) unless ``ANYPOOL_PROGRESS=0`` is
set; ``progress="always"`` shows it on any stderr (a log file, a pipe).
A pool's bar appears once the pool has run for ``DELAY`` seconds (tqdm's
``delay``): a run that ends sooner draws nothing and never imports tqdm
(~25 ms, most of it tqdm looking up its own version), which on a short run
cost more than the run.  The command line's ``--bar`` draws at once.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..mapping import MapRun
    from ..pool import Pool

__all__ = ["Progress", "visible"]

REFRESH = 0.2  # seconds between refreshes
DELAY = 0.2  # seconds a pool runs before its bar appears
FALLBACK_COLUMNS, FALLBACK_LINES = 100, 24  # for a terminal that reports no size


def visible() -> bool:
    """Whether a bar would be seen: stderr is a terminal, or we run in a Jupyter kernel.

    ``ANYPOOL_PROGRESS=0`` in the environment makes this False.
    """
    if os.environ.get("ANYPOOL_PROGRESS") == "0":
        return False
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # no stderr, or a closed one
        pass
    return _in_notebook()


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


_BAR_CLASSES: dict[bool, Any] = {}


def _bar_class(notebook: bool) -> Any:
    """tqdm's bar class (the widget in a notebook), made not to touch multiprocessing.

    tqdm's first bar takes a write lock that includes a multiprocessing
    RLock: that imports multiprocessing (~8 ms), makes a semaphore, and fixes
    the program's default start method, so a later
    ``multiprocessing.set_start_method()`` raises.  Our bars are drawn from
    one thread of this process, so a subclass uses tqdm's thread lock alone
    (the one its own bars also take, so their output does not interleave);
    tqdm's class and the user's bars are left as they are.

    A write that fails (stderr a pipe whose reader left) turns the bar off
    instead of raising: tqdm raises out of ``display`` while holding its
    write lock, which then stays taken for good, and tqdm's monitor thread
    (not started for ours: we refresh it) waited on it at exit for ever.
    """
    cls: Any = _BAR_CLASSES.get(notebook)
    if cls is None:
        if notebook:
            from tqdm.auto import tqdm as base
        else:
            from tqdm.std import tqdm as base
        from tqdm.std import TqdmDefaultWriteLock

        def display(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return base.display(self, *args, **kwargs)
            except (OSError, ValueError):
                self.disable = True  # every later draw is skipped, close() included
                return None

        cls = type("AnypoolBar", (base,), {"__module__": __name__, "display": display,
                                           "monitor_interval": 0})
        if getattr(base, "_lock", None) is None:  # else: the lock tqdm already made, shared
            cls.set_lock(TqdmDefaultWriteLock.th_lock)
        _BAR_CLASSES[notebook] = cls
    return cls


def _size(file: Any) -> tuple[int, int]:
    """(columns, lines) of the terminal behind ``file``; zeros where it reports none."""
    try:
        size = os.get_terminal_size(file.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


class Progress:
    """A tqdm bar following one pool until ``close()``."""

    def __init__(self, pool: Pool, total: int | None = None, desc: str = "anypool",
                 file: Any = None, delay: float = 0.0) -> None:
        """Follow ``pool``; draw the bar now, or after ``delay`` seconds if the pool still runs."""
        self._read_stats = pool._read_stats  # not the pool: this thread would keep it alive
        self._fixed_total = total
        self._desc = desc
        self._file = file or sys.stderr
        self._runs: weakref.WeakKeyDictionary[MapRun, int] = weakref.WeakKeyDictionary()
        self._runs_lock = threading.Lock()
        self._bar: Any = None
        self._bar_lock = threading.Lock()  # the first draw may come from either thread
        self._delay = delay
        self._broken = False  # stderr failed: the bar is not drawn again
        self._started = time.time()  # tqdm's clock
        if not delay:
            self._draw()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anypool-progress", daemon=True)
        self._thread.start()

    def _draw(self, done: int = 0, total: int | None = None) -> Any:
        """The tqdm bar, made (and first drawn, at ``done`` of ``total``) on the first call."""
        with self._bar_lock:
            if self._bar is not None:
                return self._bar
            tqdm = _bar_class(_in_notebook())
            out = self._file
            kw: dict[str, Any] = {"dynamic_ncols": True}
            try:
                tty = out.isatty()
            except (AttributeError, ValueError):
                tty = False
            if tty:
                # A terminal reporting no size (a fresh pty, `script`, some CI runners)
                # would make tqdm draw nothing: zero lines hide every bar.
                cols, lines = _size(out)
                if not cols or not lines:
                    kw = {"ncols": cols or FALLBACK_COLUMNS, "nrows": lines or FALLBACK_LINES}
            # We decide when to draw (every REFRESH seconds), so tqdm draws on every update.
            bar = tqdm(total=total or self._fixed_total, desc=self._desc, unit="task", file=out, leave=True,
                       mininterval=0, miniters=1, initial=done, **kw)
            bar.start_t = self._started  # a late bar counts the time from the pool's start
            # ... and, for its average rate (the one shown at the end), the tasks
            # since then too: tqdm's is (n - initial) / (now - start_t), which with
            # initial at the count reached undercounted by the tasks done before the
            # bar appeared.  n starts there all the same (initial did that), so the
            # recent rate tqdm smooths sees no burst of them.
            bar.initial = 0
            self._bar = bar
            return bar

    @classmethod
    def for_pool(cls, pool: Pool, progress: bool | str) -> Progress | None:
        """A bar for ``pool`` as its ``progress=`` argument asks, or None when none is wanted.

        Raises:
            ValueError: ``progress`` is not True, False or ``"always"``.
        """
        if not progress:
            return None
        if progress is not True and progress != "always":
            raise ValueError(f"progress must be True, False or 'always', not {progress!r}")
        if progress is True and not visible():
            return None
        return cls(pool, delay=DELAY)

    def expect(self, run: MapRun, length: int) -> None:
        """Count the not-yet-submitted items of a map ``run`` over ``length`` items in the total."""
        with self._runs_lock:
            self._runs[run] = length

    def _unsubmitted(self) -> int:
        with self._runs_lock:
            runs = list(self._runs.items())
        left = 0
        for run, length in runs:
            if not run.closed:
                left += max(0, length - run.items_submitted)
        return left

    def refresh(self) -> None:
        """Bring the bar up to date with the pool's counters (drawing it if not yet shown)."""
        unsubmitted = self._unsubmitted()  # before the counters: no item is counted in neither
        s = self._read_stats()
        total = self._fixed_total or s.submitted + unsubmitted
        final = s.submitted - s.running  # done, failed, or cancelled before it ran
        # a late bar starts at the count reached, so its rate shows no burst
        bar = self._bar or self._draw(final, total)
        if bar.total != total:
            bar.total = total
        counts = f"done={s.done} failed={s.failed} retried={s.retried} running={s.running}"
        if s.cancelled:  # shown only when some were: a run that was not cut short keeps a short bar
            counts += f" cancelled={s.cancelled}"
        bar.set_postfix_str(counts, refresh=False)
        if final > bar.n:
            bar.update(final - bar.n)  # draws, and feeds tqdm's rate (hence the ETA)
        else:
            bar.refresh()

    def _run(self) -> None:
        try:
            if self._delay:
                if self._stop.wait(self._delay):
                    return  # the run ended first: no bar
                self.refresh()
            while not self._stop.wait(REFRESH):
                self.refresh()
        except (OSError, ValueError):
            # stderr closed under us (a pipe whose reader left, a closed file):
            # tqdm's write lock may still be held by the failed draw, so nothing
            # draws again, close() included, or it would wait for it for ever
            self._broken = True

    def close(self) -> None:
        """Show the final counts (if the bar appeared at all) and stop refreshing."""
        self._stop.set()
        self._thread.join()
        if self._bar is not None and not self._broken:
            try:
                self.refresh()
                self._bar.close()
            except (OSError, ValueError):
                pass  # stderr closed: nothing more to show
