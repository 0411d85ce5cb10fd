"""``--halt`` and the exit status: when to stop early, and what the run returns.

Both follow GNU parallel.  ``--halt WHEN,WHY=N`` or ``WHEN,WHY=N%``:

* WHEN: ``now`` kills the running jobs and stops; ``soon`` starts no new
  job and waits for the running ones;
* WHY: ``fail`` (jobs that failed), ``success`` (that succeeded) or
  ``done`` (either), counted as a number of jobs or a percentage of all
  jobs (of the jobs read so far when the input's length is not known).

``never`` (the default) runs everything; ``0``, ``1``, ``2``, ``-1``, ``-2``
are GNU parallel's old spellings of never, ``soon,fail=1``, ``now,fail=1``,
``soon,success=1``, ``now,success=1``.

Exit status: 0 when every job succeeded; 1-100 the number of failed jobs;
101 when more than 100 failed.  After a ``fail=1`` halt it is the failing
job's own exit status (128 + N for a job killed by signal N), after
``fail=N%`` the percentage that failed, after a ``success`` halt 0.  A
killed job (``--halt now``, Ctrl-C) is not a failure.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Halt", "exit_status", "parse_halt"]

_FORM = re.compile(r"(now|soon),(fail|success|done)=(\d+(?:\.\d+)?)(%?)")
_OLD = {"0": "never", "1": "soon,fail=1", "2": "now,fail=1", "-1": "soon,success=1", "-2": "now,success=1"}


class Halt(NamedTuple):
    """A parsed ``--halt`` policy."""

    when: str  # "never", "now" or "soon"
    why: str = ""  # "fail", "success" or "done"
    threshold: float = 0.0
    percent: bool = False

    def reached(self, failed: int, succeeded: int, total: int) -> bool:
        """Whether the condition holds after these many final jobs (``total``: all jobs)."""
        if self.when == "never":
            return False
        n = {"fail": failed, "success": succeeded, "done": failed + succeeded}[self.why]
        if self.percent:
            return total > 0 and n * 100 >= self.threshold * total
        return n >= self.threshold


def parse_halt(text: str) -> Halt:
    """Parse a ``--halt`` value.

    Raises:
        ValueError: the value is not one of the forms above (the message lists them).
    """
    text = _OLD.get(text.strip(), text.strip())
    if text == "never":
        return Halt("never")
    m = _FORM.fullmatch(text)
    if m is None:
        pct = re.fullmatch(r"(\d{1,2})%", text)  # GNU parallel's old "1-99%" = soon,fail=N%
        if pct and 1 <= int(pct.group(1)) <= 99:
            return Halt("soon", "fail", float(pct.group(1)), True)
        raise ValueError(f"invalid --halt value {text!r}: use never, now|soon,fail|success|done=N "
                         "or =N% (for example now,fail=1 or soon,fail=10%)")
    count = float(m.group(3))
    if count <= 0 or (m.group(4) and count > 100):
        raise ValueError(f"invalid --halt value {text!r}: the count must be above 0 (and at most 100%)")
    return Halt(m.group(1), m.group(2), count, bool(m.group(4)))


def exit_status(failed: int, halt: Halt | None = None, total: int = 0,
                failing_code: int | None = None) -> int:
    """The command line's exit status (see the module docstring).

    ``halt`` is the policy that stopped the run, if one did; ``failing_code``
    the exit status of the job that triggered a ``fail`` halt.
    """
    if halt is not None and halt.why == "success":
        return 0
    if halt is not None and halt.why == "fail":
        if halt.percent:
            return min(100, int(failed * 100 / total)) if total else min(failed, 101)
        if halt.threshold == 1 and failing_code is not None and 1 <= failing_code <= 255:
            return failing_code
    if failed == 0:
        return 0
    return failed if failed <= 100 else 101
