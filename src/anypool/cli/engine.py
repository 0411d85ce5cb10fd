"""The job loop both subcommands share: feed a pool, print, record, halt, stop on signals.

::

    jobs (lazy) ──skip done (--resume)──> pool.submit ──> future ──done callback──┐
         ▲                                                                         ▼
         └── pulled only while fewer than `window` jobs are open ◄── main thread: print the
                                                                     output, then record it,
                                                                     count, check --halt

Only the main thread takes jobs from the input, prints and records final
attempts, so output is never interleaved and ``-k`` is a reorder buffer of at
most ``window`` jobs.  Input that may wait for its writer (stdin, a FIFO) is
read ahead by a thread of its own (``read_ahead``), at most ``READ_AHEAD``
jobs ahead: the main thread then prints jobs that finish while the next line
is still to come, instead of holding them until it arrives.

Once the window is full the main thread takes finished jobs a few at a
time (see ``GATHER_SECONDS``), not one wake-up per job.  The window keeps a
few jobs queued ahead of the slots, so a slot never waits for this thread;
with ``--halt`` it is the slot count.  A job's final attempt is recorded
*after* its output is printed and flushed: if anypool is killed in between,
the job is not recorded and ``--resume`` runs it again (its output may then
appear twice: at-least-once, never lost).  Attempts that are retried are
recorded by an observer as they end.

Ctrl-C, SIGTERM and SIGHUP stop the run: the pool kills every running job's
process group (SIGTERM, then SIGKILL; on a pool of threads, which cannot stop
its tasks, ``kill_local`` kills the commands they run), the jobs that had finished are
printed and recorded as usual, the killed ones are recorded as ``killed``
(not final: ``--resume`` runs them again), and the exit status is 128 plus
the signal number (130 for Ctrl-C).  A closed stdout (``| head``) stops the
run the same way, with status 141.  ``--halt now`` kills the same way.

A Python call on a thread (``anypool map``) cannot be stopped at all: the
run *abandons* it, as a thread backend abandons a call past its timeout.  It
counts and is recorded as killed at once, and its thread runs on in the
background until the process exits; what it returns is never shown.  So the
run ends in well under a second however long such calls would take.

A job log that fails (a full disk, a damaged file) stops the run as
``--halt now`` does: the running jobs are killed, the finished ones are
printed (no longer recorded: ``--resume`` runs them again), and then
``run`` raises the :class:`~anypool.observers.joblog.JobLogError`.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .. import waiting
from ..errors import PoolClosed, exception_line
from ..observers.joblog import (
    JobLog,
    JobLogError,
    JobRecord,
    command_of,
    exit_fields,
    outcome_of,
    record_for,
    result_output,
)
from .halt import Halt, exit_status
from .inputs import InputError, Job
from .output import Printer

if TYPE_CHECKING:
    from ..commands import CommandResult
    from ..events import TaskEvent
    from ..futures import Future
    from ..pool import Pool

__all__ = ["Engine", "Interrupted", "Resumer", "used_for_a_run"]

DRAIN_SECONDS = 10.0  # how long a stopping run waits for killed jobs to be reported
# Once the window is full and this thread had to wait for a job, it is woken
# again only when half the jobs queued ahead have finished, or GATHER_SECONDS
# after the first of them: so it wakes once for several jobs, not once a job
# (each wake also takes the GIL from the threads launching the jobs).  On
# 1,000 x `true` -j 2 (2 cores, paired with xargs, 9 rounds): 0.72x xargs
# waking per job, 0.87x gathering.  A late print of a few ms is not seen.
GATHER_SECONDS = 0.002
READ_AHEAD = 256  # jobs the input thread may read ahead (bounds memory on endless input)


@contextlib.contextmanager
def used_for_a_run(pool: Pool) -> Iterator[Pool]:
    """``with Pool(...)`` for a pool an :class:`Engine` runs jobs on.

    ``Engine.run`` waits for the pool's work, or stops it, before it returns.
    ``Pool.__exit__`` would then wait for the calls a stopped run abandoned
    (Python calls on threads, which nothing can stop): here the pool is
    closed without waiting.  An exception kills what it runs, as
    ``Pool.__exit__`` does on Ctrl-C.
    """
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True, kill=True)
        raise
    pool.shutdown(wait=False)


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (SIGINT arrives as KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Resumer:
    """Walks the job log's final attempts alongside the input, for ``--resume``.

    Both go in job-number order, so memory stays flat.  A job found in the
    log must have the same arguments now as then: otherwise the input has
    changed and resuming would skip the wrong jobs.
    """

    def __init__(self, log: JobLog, rerun_failed: bool) -> None:
        self.log = log
        self.rerun_failed = rerun_failed
        self._finals = log.finals()
        self._next = next(self._finals, None)
        # every job's last attempt, final or not: a job last killed has no final
        # attempt, and its numbers must continue too
        self._attempts = log.last_attempts()
        self._last = next(self._attempts, None)
        self.skipped = 0
        self.bases: dict[int, int] = {}  # job -> attempts already recorded, for jobs run again

    def skip(self, job: Job) -> bool:
        """Whether ``job`` is already done.

        Raises:
            ValueError: the log holds other arguments for this job number.
        """
        nxt = self._next
        while nxt is not None and nxt[0] < job.seq:
            nxt = self._next = next(self._finals, None)
        if nxt is None or nxt[0] != job.seq:
            self._continue_attempts(job.seq)
            return False
        seq, args, outcome = nxt
        if args != job.args_json:
            raise ValueError(
                f"the job log {self.log.path} has job {seq} with arguments {args}, but the input now "
                f"gives {job.args_json}: the input has changed, so --resume would skip the wrong jobs"
            )
        if self.rerun_failed and outcome != "ok":
            self._continue_attempts(seq)
            return False
        self.skipped += 1
        return True

    def _continue_attempts(self, seq: int) -> None:
        """Job ``seq`` runs again: number its attempts on from those the log holds."""
        last = self._last
        while last is not None and last[0] < seq:
            last = self._last = next(self._attempts, None)
        if last is not None and last[0] == seq:
            self.bases[seq] = last[1]


class _Reader:
    """Reads the jobs on a thread of its own, so that waiting for input never holds up printing."""

    def __init__(self, jobs: Iterator[Job], wake: threading.Event) -> None:
        self.items: deque[Job] = deque()
        self.ended = False
        self.error: BaseException | None = None
        self.waiting = False  # the engine waits for an item: wake it when one comes
        self._jobs = jobs
        self._wake = wake
        self._room = threading.Semaphore(READ_AHEAD)
        # a daemon: a run stopped early (Ctrl-C, --halt) must not wait for a line that may never come
        threading.Thread(target=self._read, name="anypool-input", daemon=True).start()

    def _read(self) -> None:
        try:
            for job in self._jobs:
                self._room.acquire()
                self.items.append(job)
                if self.waiting:
                    self._wake.set()
        except BaseException as exc:  # raised in the main thread, after the jobs read before it
            self.error = exc
        finally:
            self.ended = True
            self._wake.set()

    def taken(self) -> None:
        """One item was taken: the thread may read one more."""
        self._room.release()


class _Entry:
    __slots__ = ("abandoned", "done", "exc", "fut", "job", "outcome", "value")

    def __init__(self, job: Job, fut: Future[Any]) -> None:
        self.job = job
        self.fut = fut
        self.done = False  # ended and counted (with -k: maybe waiting for its turn to be shown)
        self.abandoned = False  # still running when the run stopped, and given up on (see _abandon)
        # once done: the job-log outcome (None: cancelled before it started), and the
        # result or the exception as the user sees it
        self.outcome: str | None = None
        self.value: Any = None
        self.exc: BaseException | None = None


class Engine:
    """Runs jobs through a pool (see the module docstring); subclasses say how to submit and show."""

    # The pool can stop every job it runs (or kill_local can): after a kill each is
    # reported within moments.  False where a job may be a Python call on a thread
    # (anypool map): what the pool could not kill is abandoned at once.
    kills_every_job = True

    def __init__(self, pool: Pool, printer: Printer, *, joblog: JobLog | None, halt: Halt,
                 keep_order: bool, window: int, total: int | None,
                 record_finals_in_observer: bool = False, read_ahead: bool = False) -> None:
        self.pool = pool
        self.printer = printer
        self.joblog = joblog
        self.halt = halt
        self.keep_order = keep_order
        # with --halt, a job is handed to the pool only when a slot is free, so
        # none can start after the outcome that meets the condition
        self.window = window if halt.when == "never" else max(1, pool.workers)
        self.total = total
        self.record_finals_in_observer = record_finals_in_observer
        self.read_ahead = read_ahead  # read the input on a thread (see the module docstring)
        self.failed = 0
        self.succeeded = 0
        self.killed = 0
        self.started = 0  # jobs read from the input and submitted
        self.halted_by: Halt | None = None
        self.failing_code: int | None = None
        self.attempt_base: dict[int, int] = {}
        # finished jobs; slot threads append, this thread pops, and _wake is set
        # once `_want` of them are waiting (1 unless gathering: see _gather)
        self._done: deque[_Entry] = deque()
        self._want = 1
        self._wake = threading.Event()
        self._order: deque[_Entry] = deque()
        self._open: set[_Entry] = set()  # submitted, not yet handled
        self._abandoned: set[int] = set()  # numbers of the jobs given up on (see _abandon)
        self._stopping = False
        self._output_closed = False  # stdout was closed (| head): the run is stopping
        self._log_failure: JobLogError | None = None  # the job log failed: nothing more is written
        self._log_stopped = False  # ... and the run was stopped for it
        printer.on_broken = self._wake.set
        if joblog is not None:
            pool.add_observer(self._observe)

    # -- what subclasses provide ----------------------------------------------

    def submit(self, job: Job) -> Future[Any]:
        raise NotImplementedError

    def show(self, job: Job, value: Any, exc: BaseException | None) -> None:
        """Print a finished job's output (not called for killed jobs)."""
        raise NotImplementedError

    def command_text(self, job: Job, value: Any, exc: BaseException | None) -> str:
        raise NotImplementedError

    def failure(self, job: Job, exc: BaseException) -> BaseException:
        """``exc`` as the user should see it (shown and logged); subclasses may reword it."""
        return exc

    def kill_local(self) -> None:
        """Kill what the pool's own shutdown cannot: jobs its tasks run in this process."""

    # -- the loop -------------------------------------------------------------

    def run(self, jobs: Iterator[Job], skip: Callable[[Job], bool] | None = None) -> int:
        """Run every job; return the exit status.

        Raises:
            JobLogError: the job log failed; the run was stopped (see the module docstring).
        """
        handlers = {}
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                handlers[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError):  # not the main thread
                pass
        try:
            try:
                self._feed(jobs, skip)
                self._drain(None)
                # after --halt now, not for the calls it abandoned: they may run for ever
                self.pool.shutdown(wait=not self._abandoned)
            finally:
                for sig, h in handlers.items():
                    signal.signal(sig, h)
        except KeyboardInterrupt:
            return self._stop(signal.SIGINT)
        except Interrupted as exc:
            return self._stop(exc.signum)
        except BrokenPipeError:
            return self._stop(signal.SIGPIPE)
        if self._log_failure is not None:
            raise self._log_failure
        return exit_status(self.failed, self.halted_by, self._halt_total(), self.failing_code)

    def _on_signal(self, signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    def _feed(self, jobs: Iterator[Job], skip: Callable[[Job], bool] | None) -> None:
        if self.read_ahead:
            reader = _Reader(jobs, self._wake)
            next_job: Callable[[], Job | None] = functools.partial(self._next_input, reader)
        else:
            next_job = functools.partial(next, iter(jobs), None)
        while True:
            try:
                job = next_job()
                if job is None:
                    break
            except InputError:
                # bad input partway: the jobs already started finish and are printed
                # and recorded, so no finished result is lost; then the error stops the run
                self._stopping = True
                self._drain(None)
                raise
            if self._stopping:
                break
            try:
                if skip is not None and skip(job):
                    continue
            except ValueError:
                # the input no longer matches the job log: finish what runs, then stop
                self._stopping = True
                self._drain(None)
                raise
            except JobLogError as exc:  # a page of the log past the first could not be read
                self._log_failure = exc
                self._check_log()
                break
            if not self._room():
                break
            fut = self.submit(job)
            self.started += 1
            entry = _Entry(job, fut)
            self._open.add(entry)
            if self.keep_order:
                self._order.append(entry)
            fut.add_done_callback(functools.partial(self._on_done, entry))

    def _next_input(self, reader: _Reader) -> Job | None:
        """The next job from the reader thread (None at the end); finished jobs are handled meanwhile.

        Raises:
            Exception: what reading the input raised, once the jobs read before it are taken.
        """
        items, done = reader.items, self._done
        while True:
            if self._stopping:  # --halt: no need to wait for a line that may be long in coming
                return None
            if items:
                reader.taken()
                return items.popleft()
            if reader.ended:
                if items:  # appended just before the end
                    continue
                if reader.error is not None:
                    raise reader.error
                return None
            if done:
                self._handle(done.popleft())
                continue
            self.printer.flush()  # what finished shows while the input waits for its writer
            reader.waiting = True
            self._wake.clear()
            if not items and not reader.ended and not done:  # else: came before the clear
                self._wake.wait(waiting.slice_of(None))  # sliced, so signal handlers run
            reader.waiting = False

    def _room(self) -> bool:
        """Wait until fewer than ``window`` jobs are open; False if the run is stopping."""
        done = self._done
        while len(self._open) >= self.window:
            waited = not done
            self._handle(self._next_done(None))
            if waited:
                self._gather()
        return not self._stopping

    def _gather(self) -> None:
        """Wait for several jobs at once, then handle every finished one (see GATHER_SECONDS).

        Only after this thread had to wait for a job, so only when the jobs,
        not this thread, are what limits the run.
        """
        ahead = self.window - self.pool.workers  # jobs queued beyond the running ones
        if ahead < 4:  # --halt keeps none queued: a slot would idle while this thread waits
            return
        done = self._done
        self._want = ahead // 2
        self._wake.clear()
        if len(done) < self._want:
            self._wake.wait(GATHER_SECONDS)
        self._want = 1
        while done:
            self._handle(done.popleft())

    def _next_done(self, timeout: float | None) -> _Entry:
        """The next finished job; output is flushed before any wait, so it shows promptly.

        Raises:
            queue.Empty: ``timeout`` seconds passed first.
        """
        done = self._done
        if done:
            return done.popleft()
        self.printer.flush()
        for step in waiting.slices(timeout):  # so SIGTERM's handler runs, whichever thread it hit
            self._wake.clear()
            if done:  # appended before the clear: its set() may have been undone
                return done.popleft()
            self._wake.wait(step)
            if done:
                return done.popleft()
            if self.printer.broken:
                self.printer.flush()  # raises BrokenPipeError here, in the printing thread
            if self._log_failure is not None:  # an observer's write failed on a pool thread
                self._check_log()
        raise queue.Empty

    def _on_done(self, entry: _Entry, fut: Any) -> None:
        done = self._done
        done.append(entry)
        if len(done) >= self._want:
            self._wake.set()

    def _drain(self, deadline: float | None) -> None:
        while self._open:
            # past the deadline, still every job already reported
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                entry = self._next_done(timeout)
            except queue.Empty:
                return
            self._handle(entry)
        self.printer.flush()

    def _handle(self, entry: _Entry) -> None:
        if entry.done:
            return  # abandoned and handled, and its call has returned since
        entry.done = True
        self._count(entry)
        if not self.keep_order:
            self._open.discard(entry)
            self._finish(entry)
            return
        order = self._order
        while order and order[0].done:
            first = order.popleft()
            self._open.discard(first)
            self._finish(first)

    def _count(self, entry: _Entry) -> None:
        """Take the outcome of a job that ended; count it and check ``--halt``.

        As the job ends, not in ``-k``'s order: a failure behind a long job
        halts the run at once, as GNU parallel's does.
        """
        fut = entry.fut
        exc: BaseException | None
        if entry.abandoned:
            exc = PoolClosed("abandoned: the run stopped while it ran, and nothing could stop it "
                             "(a call on a thread); what it returns is not shown")
        elif fut.cancelled():
            return  # never started (--halt now, or stopping): --resume runs it
        else:
            exc = fut.exception()
            entry.value = None if exc is not None else fut.result()
        if exc is not None:
            exc = entry.exc = self.failure(entry.job, exc)
        outcome = entry.outcome = outcome_of(exc, exc is None)
        if outcome == "killed":
            self.killed += 1
            return
        if exc is None:
            self.succeeded += 1
        else:
            self.failed += 1
            if self.halted_by is None:  # after a halt the status stays the triggering job's
                # not a timeout's kill: a plain failure there, as before
                self.failing_code = _shell_status(command_of(exc)) if outcome == "error" else None
        if self.halted_by is None and self.halt.reached(self.failed, self.succeeded, self._halt_total()):
            self._halt(entry.job)

    def _finish(self, entry: _Entry) -> None:
        """Show a counted job's output, then record it."""
        outcome = entry.outcome
        if outcome is None:
            return  # cancelled: nothing ran
        job, value, exc = entry.job, entry.value, entry.exc
        if outcome != "killed":
            if self._output_closed:
                return  # its output cannot be printed, so it is not done: --resume runs it again
            self.show(job, value, exc)
        # an abandoned call has no attempt for the observer to record: its thread runs on
        if self.joblog is not None and (not self.record_finals_in_observer or entry.abandoned):
            self.printer.flush()  # the log must never call done a job whose output is not out
            self._log(self._record(job, value, exc, exc is None, outcome, len(entry.fut.attempts) + 1))
        if self._log_failure is not None:
            self._check_log()

    def _halt_total(self) -> int:
        return self.total if self.total is not None else self.started

    def _halt(self, job: Job) -> None:
        h = self.halt
        self.halted_by = h
        self._stopping = True
        what = {"fail": "failed", "success": "succeeded", "done": "finished"}[h.why]
        count = f"{h.threshold:g}%" if h.percent else f"{h.threshold:g}"
        action = "killing the running jobs" if h.when == "now" else "waiting for the running jobs"
        self.printer.message(f"anypool: halting (--halt {h.when},{h.why}={count}): job {job.seq} {what}; "
                             f"{action}")
        if h.when == "now":
            self._kill()
        else:  # jobs queued in the pool have not started: they are cancelled
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _kill(self) -> None:
        """Stop every running job and cancel the queued ones (a signal, ``--halt now``, a failed log)."""
        if self.kills_every_job:
            self.pool.shutdown(wait=False, cancel_futures=True, kill=True)
            self.kill_local()
            return
        # waits until what the pool could kill is reported (KILL_SETTLE at most),
        # and not at all where a call runs on a thread: nothing can stop that one
        self.pool.shutdown(wait=True, cancel_futures=True, kill=True)
        self._abandon()

    def _abandon(self) -> None:
        """Give up on the jobs still running after a kill (see the module docstring).

        Each is handed to this thread as if it had ended (killed), and what
        its future brings later is ignored (``_handle``).
        """
        for entry in self._open:
            if entry.abandoned or entry.fut.done():
                continue
            # before the future is done: the observer, told after, then skips its final attempt
            self._abandoned.add(entry.job.seq)
            entry.abandoned = True
            self._done.append(entry)

    def _stop(self, signum: int) -> int:
        """Kill everything after a signal (or a closed stdout); report what ended; exit status."""
        ignore = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        saved = {}
        for sig in ignore:  # a second Ctrl-C must not cut the cleanup short
            try:
                saved[sig] = signal.signal(sig, signal.SIG_IGN)
            except (ValueError, OSError):
                pass
        try:
            self._stopping = True
            if signum == signal.SIGPIPE:
                self._output_closed = True
                self.printer.discard()
            self._kill()
            try:
                self._drain(time.monotonic() + DRAIN_SECONDS)
                self._abandon()  # not reported in time: may never be (a job in uninterruptible sleep)
                self._drain(time.monotonic())
            except BrokenPipeError:
                self.printer.discard()
        finally:
            for sig, h in saved.items():
                signal.signal(sig, h)
        if signum == signal.SIGINT:
            self.printer.message(f"anypool: interrupted; {self.killed} running job(s) killed")
        return 128 + signum

    # -- the job log ------------------------------------------------------------

    def _log(self, rec: JobRecord) -> None:
        """Record ``rec``, from any thread; a failure is kept for the main thread (``_check_log``)."""
        if self._log_failure is not None or self.joblog is None:
            return  # the log failed: the run is stopping, and nothing more is written
        try:
            self.joblog.record(rec)
        except JobLogError as exc:
            self._log_failure = exc
            self._wake.set()

    def _check_log(self) -> None:
        """Once the job log has failed, stop the run as ``--halt now`` does (main thread, once)."""
        if self._log_failure is None or self._log_stopped:
            return
        self._log_stopped = True
        self._stopping = True
        self.printer.message("anypool: the job log failed; killing the running jobs")
        self._kill()

    def _record(self, job: Job, value: Any, exc: BaseException | None, ok: bool, outcome: str,
                attempt: int) -> JobRecord:
        thing = value if ok else exc
        cr = command_of(thing)
        exitcode, sig = exit_fields(thing, ok)
        stdout: bytes | None
        stderr: bytes | None
        if cr is not None:
            started, runtime, stdout, stderr = cr.started, cr.duration, cr.stdout, cr.stderr
        else:
            started, runtime = time.time(), 0.0
            stdout = result_output(value) if ok and self.joblog is not None and self.joblog.results else None
            stderr = None
        error = "" if ok or exc is None else exception_line(exc)
        return JobRecord(job.seq, attempt + self.attempt_base.get(job.seq, 0), job.args_json,
                         self.command_text(job, value, exc), started, runtime, exitcode, sig, outcome,
                         outcome != "killed", error, f"slot-{job.slot}" if job.slot else "", stdout, stderr)

    def _observe(self, event: TaskEvent) -> None:
        """Observer: record attempts that will be retried (and, for map, every attempt)."""
        if event.kind != "finished" or (event.final and not self.record_finals_in_observer):
            return
        job = _job_in(event)
        if job is None or self.joblog is None or job.seq in self._abandoned:
            return
        results = event.results or ()
        value = results[0] if results else None
        if type(value).__name__ == "_Retrying":
            value = event.error
        ok = event.outcome == "ok"
        if not ok and isinstance(value, BaseException):
            value = self.failure(job, value)
        outcome = outcome_of(value, ok)
        if outcome == "killed" and event.worker in (None, "-"):
            return
        started = event.started or event.time
        rec = record_for(event, value, ok, outcome, started, event.time - started, output=self.joblog.results)
        self._log(rec._replace(
            seq=job.seq, args=job.args_json, attempt=event.attempt + self.attempt_base.get(job.seq, 0),
            command=self.command_text(job, value if ok else None, None if ok else value)))


def _shell_status(cr: CommandResult | None) -> int | None:
    """A failed command's exit status as a shell (and GNU parallel) says it: 128 + N for signal N."""
    if cr is None or cr.returncode == 0:
        return None
    return cr.returncode if cr.returncode > 0 else 128 - cr.returncode


def _job_in(event: TaskEvent) -> Job | None:
    if not event.items:
        return None
    item = event.items[0]
    args = item[0] if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], tuple) else ()
    for a in args:
        if isinstance(a, Job):
            return a
    return None
