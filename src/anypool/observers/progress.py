"""The progress bar: tqdm, refreshed from the pool's counters, never from the task path.

A bar updated per task costs microseconds on every task.  This one is a
daemon thread reading ``pool.stats``-style counters a few times a second, so
the tasks themselves pay nothing.  It shows done / total with rate and ETA,
and failed / retried counts; ``total`` grows as tasks are submitted (or is
the input's length for ``map`` over a sized input).  It uses ``tqdm.auto``,
so it is a widget in Jupyter and text on a terminal.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..pool import Pool

__all__ = ["Progress", "visible"]

REFRESH = 0.2  # seconds between refreshes


def visible() -> bool:
    """Whether a bar would be seen: stderr is a terminal, or we run in a notebook."""
    if os.environ.get("ANYPOOL_PROGRESS") == "0":
        return False
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class Progress:
    """A tqdm bar following one pool until ``close()``."""

    def __init__(self, pool: Pool, total: int | None = None, desc: str = "anypool",
                 file: Any = None) -> None:
        from tqdm.auto import tqdm

        self._pool = pool
        self._fixed_total = total
        self._bar = tqdm(total=total, desc=desc, unit="task", file=file or sys.stderr,
                         dynamic_ncols=True, leave=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anypool-progress", daemon=True)
        self._thread.start()

    @classmethod
    def for_pool(cls, pool: Pool, force: bool = False) -> Progress | None:
        """A bar for ``pool``, or None when it would not be seen (unless ``force``)."""
        if not force and not visible():
            return None
        return cls(pool)

    def refresh(self) -> None:
        """Bring the bar up to date with the pool's counters."""
        s = self._pool.stats
        bar = self._bar
        total = self._fixed_total or s.submitted
        if bar.total != total:
            bar.total = total
        final = s.done + s.failed
        if final > bar.n:
            bar.update(final - bar.n)
        bar.set_postfix(failed=s.failed, retried=s.retried, running=s.running, refresh=False)
        bar.refresh()

    def _run(self) -> None:
        while not self._stop.wait(REFRESH):
            self.refresh()

    def close(self) -> None:
        """Show the final counts and stop refreshing."""
        self._stop.set()
        self._thread.join()
        self.refresh()
        self._bar.close()
