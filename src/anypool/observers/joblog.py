"""The job log: one SQLite row per attempt, written as each attempt ends, for ``--resume``.

A job log is an SQLite database in WAL mode with two tables::

    run      one row per invocation that wrote to the log: when, the command
             line, and a description of the input (command template, input
             sources) with its SHA-256 fingerprint
    attempt  one row per finished attempt: job number (seq), attempt number,
             arguments (JSON text), command, start time, run time, exit code,
             signal, outcome, whether it was the job's final attempt, error
             text, worker, and (only when asked) the captured stdout/stderr

Every row is committed on its own as soon as it is recorded, so a run killed
with ``kill -9`` loses no attempt that was recorded; ``synchronous=NORMAL``
keeps that true across a crash of the process (not across a power cut).

Outcomes: ``ok``, ``error`` (the task raised, or the command exited non-zero
or died of a signal), ``timeout``, ``crash`` (a worker process died),
``killed`` (stopped by a shutdown, Ctrl-C or ``--halt now``: the job did not
finish, and ``--resume`` runs it again).

A job counts as *done* when it has a final attempt, whatever its outcome;
as *failed* when its latest final attempt did not succeed.  ``--resume``
skips the done jobs; ``--resume-failed`` skips only the succeeded ones.
Work is therefore at-least-once: a job that was running when the runner was
killed left no final row and runs again.

The log stores text and numbers (and raw output bytes), never pickles:
opening a job log someone else wrote runs no code of theirs.  Their schema
cannot run SQL functions with side effects either (``trusted_schema=OFF``).
Text that is not valid UTF-8 (file names' undecodable bytes, lone
surrogates) is stored with those characters escaped (``\\xNN``), and values
JSON has no form for as their ``repr()``: no value can cost the log a row.

One writer at a time: a :class:`JobLog` opened to write holds an exclusive
lock on ``PATH-lock`` until it is closed (the kernel drops it when its process
dies, ``kill -9`` included), and a second writer is refused with the first
one's pid.  Readers never wait for it.  A database error once the log is open
(a damaged file, a full disk) is raised as :class:`JobLogError` naming the file.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Set
from typing import Any, NamedTuple

from ..commands import CommandResult
from ..errors import AnypoolError, CommandFailed, PoolClosed, TaskTimeout, is_worker_crash
from ..events import TaskEvent
from .recorder import Row, describe_error

# json, sqlite3, hashlib, socket and urllib are imported where used: the command
# line imports this module for its helpers on every run, job log or not.

__all__ = ["JobLog", "JobLogError", "JobLogObserver", "JobRecord", "SeqSet", "outcome_of"]

APPLICATION_ID = 0x616E7970  # "anyp": marks the file as an anypool job log
SCHEMA_VERSION = 1
_PAGE = 2000
_FIRST = -(2**63)  # below every job number SQLite can hold: "after" it is from the start

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    argv TEXT NOT NULL,          -- JSON list: the command line that wrote this run
    input TEXT NOT NULL,         -- JSON: command template and input sources
    fingerprint TEXT NOT NULL,   -- SHA-256 of input
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempt (
    id INTEGER PRIMARY KEY,
    run INTEGER,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    args TEXT NOT NULL,          -- JSON
    command TEXT NOT NULL,
    started REAL NOT NULL,
    runtime REAL NOT NULL,
    exitcode INTEGER,            -- NULL: no exit status (killed by a signal, or not a command)
    signal INTEGER,
    outcome TEXT NOT NULL,       -- ok | error | timeout | crash | killed
    final INTEGER NOT NULL,      -- 1: no further attempt followed in that run
    error TEXT NOT NULL,
    worker TEXT NOT NULL,
    stdout BLOB,                 -- only with results=True
    stderr BLOB
);
CREATE INDEX IF NOT EXISTS attempt_seq ON attempt (seq, final);
"""

_COLUMNS = ("seq", "attempt", "args", "command", "started", "runtime", "exitcode", "signal",
            "outcome", "final", "error", "worker", "stdout", "stderr")


class JobLogError(AnypoolError):
    """A job log cannot be used: not a job log, a newer format, written for other input,
    being written by another process, or SQLite failed to read or write it (a damaged
    file, a full disk: the message names the file and SQLite's error)."""


class JobRecord(NamedTuple):
    """One attempt as stored in the job log."""

    seq: int
    attempt: int
    args: str
    command: str
    started: float
    runtime: float
    exitcode: int | None
    signal: int | None
    outcome: str
    final: bool
    error: str
    worker: str
    stdout: bytes | None = None
    stderr: bytes | None = None


class SeqSet(Set[int]):
    """A set of job numbers kept as sorted ranges: memory grows with the gaps, not the jobs."""

    def __init__(self, seqs: Iterable[int] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for s in sorted(set(seqs)):
            self._add_ascending(s)

    @classmethod
    def from_ascending(cls, seqs: Iterable[int]) -> SeqSet:
        """Build from numbers already in ascending order (repeats allowed), streaming."""
        out = cls()
        for s in seqs:
            if not out._ends or s > out._ends[-1]:
                out._add_ascending(s)
        return out

    def _add_ascending(self, s: int) -> None:
        if self._ends and s == self._ends[-1] + 1:
            self._ends[-1] = s
        else:
            self._starts.append(s)
            self._ends.append(s)

    def __contains__(self, x: object) -> bool:
        if not isinstance(x, int):
            return False
        i = bisect.bisect_right(self._starts, x) - 1
        return i >= 0 and x <= self._ends[i]

    def __iter__(self) -> Iterator[int]:
        for a, b in zip(self._starts, self._ends, strict=True):
            yield from range(a, b + 1)

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in zip(self._starts, self._ends, strict=True))

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The (first, last) pairs, inclusive."""
        return list(zip(self._starts, self._ends, strict=True))

    def __repr__(self) -> str:
        return f"SeqSet({', '.join(f'{a}-{b}' if a != b else str(a) for a, b in self.ranges)})"


def fingerprint(description: Any) -> str:
    """The SHA-256 of a run's input description (canonical JSON)."""
    import hashlib
    import json

    text = json.dumps(description, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class JobLog:
    """An open job log (see the module docstring).

    Args:
        path: the database file.
        mode: ``"append"`` (default: create it if missing, keep what is in
            it), ``"new"`` (create it, or empty an existing job log), or
            ``"read"`` (open an existing one read-only).
        results: store each attempt's stdout and stderr too.

    A writer (``"append"``, ``"new"``) holds the log's writer lock until
    :meth:`close` (see the module docstring).

    Raises:
        JobLogError: the file is not a job log, was written by a newer
            anypool, (``"read"``) does not exist, or (writing) another
            process is writing it.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "append", *, results: bool = False) -> None:
        if mode not in ("append", "new", "read"):
            raise ValueError(f"mode must be 'append', 'new' or 'read', not {mode!r}")
        self.path = os.fspath(path)
        self.results = results
        self.readonly = mode == "read"
        self.run_id: int | None = None
        self._lock = threading.Lock()
        self._closed = False
        import sqlite3
        from urllib.parse import quote

        # taken before the database is touched: "new" empties it
        self._writer = None if self.readonly else _WriterLock(self.path)
        try:
            if self.readonly:
                if not os.path.exists(self.path):
                    raise JobLogError(f"{self.path}: no such job log")
                uri = f"file:{quote(os.path.abspath(self.path))}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                           timeout=30.0)
        except sqlite3.Error as exc:
            self._release()
            raise JobLogError(f"{self.path}: cannot open the job log: {exc}") from exc
        except BaseException:
            self._release()
            raise
        try:
            self._setup(mode)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            self._release()
            raise JobLogError(f"{self.path}: not an anypool job log ({exc})") from exc
        except BaseException:
            self._db.close()
            self._release()
            raise

    def _setup(self, mode: str) -> None:
        db = self._db
        db.execute("PRAGMA trusted_schema = OFF")
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        if app_id != APPLICATION_ID and (has_tables or self.readonly):
            raise JobLogError(f"{self.path} is not an anypool job log")
        if version > SCHEMA_VERSION:
            raise JobLogError(f"{self.path} was written by a newer anypool (format {version}; "
                              f"this one reads up to {SCHEMA_VERSION})")
        if self.readonly:
            return
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)  # idempotent: IF NOT EXISTS
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if mode == "new":
            with self._transaction():
                db.execute("DELETE FROM attempt")
                db.execute("DELETE FROM run")

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _failed(self, doing: str, exc: Exception) -> JobLogError:
        """The :class:`JobLogError` for an SQLite error met while ``doing`` ("read", "write")."""
        return JobLogError(f"{self.path}: cannot {doing} the job log: {exc}")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one query.

        Raises:
            JobLogError: SQLite failed (a damaged file, an I/O error).
        """
        import sqlite3

        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._failed("read", exc) from exc

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    # -- runs -----------------------------------------------------------------

    def begin_run(self, description: Any, *, resume: bool = False, argv: list[str] | None = None) -> int:
        """Record that a run starts writing here; return its id.

        ``description`` says what the run is over (for the command line: the
        command template and the input sources), as JSON-able data.

        Raises:
            JobLogError: ``resume`` is set and the log was written for a
                different description (the message shows both); or SQLite
                failed to read or write the log.
        """
        import json
        import socket

        from .. import __version__

        fp = fingerprint(description)
        text = json.dumps(description, sort_keys=True, ensure_ascii=False, default=str)
        if resume:
            self._check_resumable(fp, text)
        # Stored as UTF-8: the command line's words as the command column shows them (a file
        # name's undecodable bytes as \\xNN), and the input's lone surrogates as JSON's own
        # \\udXXX escapes, so it still reads back as the same data.  The fingerprint keeps them.
        row = (time.time(), json.dumps([_text(a) for a in argv or []], ensure_ascii=False),
               text.encode("utf-8", "backslashreplace").decode("utf-8"), fp,
               socket.gethostname(), os.getpid(), __version__)
        with self._lock, self._transaction():
            cur = self._db.execute(
                "INSERT INTO run (started, argv, input, fingerprint, host, pid, version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            self.run_id = cur.lastrowid
            return int(cur.lastrowid or 0)

    def check_resumable(self, description: Any) -> None:
        """What ``begin_run(description, resume=True)`` checks, without recording a run.

        Raises:
            JobLogError: the log was written for a different description, or
                cannot be read.
        """
        import json

        text = json.dumps(description, sort_keys=True, ensure_ascii=False, default=str)
        self._check_resumable(fingerprint(description), text)

    def _check_resumable(self, fp: str, text: str) -> None:
        first = self._read("SELECT input, fingerprint FROM run ORDER BY id LIMIT 1")
        row = first[0] if first else None
        if row is not None and row[1] != fp:
            raise JobLogError(
                f"{self.path} was written for other input, so --resume cannot use it:\n"
                f"  in the log: {_describe(row[0])}\n"
                f"  this run:   {_describe(text)}\n"
                f"Use another job log, or run without --resume to start this one afresh."
            )

    def runs(self) -> list[dict[str, Any]]:
        """Every run recorded in the log, oldest first, as dicts of the run table's columns.

        Raises:
            JobLogError: the log cannot be read.
        """
        names = ("id", "started", "argv", "input", "fingerprint", "host", "pid", "version")
        rows = self._read(f"SELECT {', '.join(names)} FROM run ORDER BY id")
        return [dict(zip(names, r, strict=True)) for r in rows]

    # -- writing --------------------------------------------------------------

    def record(self, rec: JobRecord) -> None:
        """Store one attempt and commit it.

        Raises:
            JobLogError: SQLite failed to write it (a full disk, an I/O error).
        """
        self.record_many((rec,))

    def record_many(self, recs: Iterable[JobRecord]) -> None:
        """Store several attempts in one commit (none of them if it fails).

        Raises:
            JobLogError: SQLite failed to write them (a full disk, an I/O error).
        """
        keep = self.results
        rows = [
            (self.run_id, rec.seq, rec.attempt, _text(rec.args), _text(rec.command), rec.started,
             rec.runtime, rec.exitcode, rec.signal, rec.outcome, int(rec.final), _text(rec.error),
             _text(rec.worker),
             rec.stdout if keep else None, rec.stderr if keep else None)
            for rec in recs
        ]
        if not rows:
            return
        with self._lock:
            if self._closed:
                return
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO attempt (run, seq, attempt, args, command, started, runtime, exitcode, "
                    "signal, outcome, final, error, worker, stdout, stderr) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

    # -- reading --------------------------------------------------------------

    def finals(self, after: int | None = None) -> Iterator[tuple[int, str, str]]:
        """Each job's latest final attempt as ``(seq, args, outcome)``, by job number.

        Only jobs numbered above ``after``; None (the default): every job,
        job 0 included (``Pool(joblog=)`` numbers ``map`` items from 0).
        Read page by page, so memory stays flat however long the log.

        Raises:
            JobLogError: the log cannot be read (as the iteration reaches the damage).
        """
        after = _FIRST if after is None else after
        while True:
            page = self._read("SELECT seq, args, outcome, max(id) FROM attempt WHERE final = 1 AND seq > ? "
                              "GROUP BY seq ORDER BY seq LIMIT ?", (after, _PAGE))
            for seq, args, outcome, _ in page:
                yield seq, args, outcome
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    def done_seqs(self) -> SeqSet:
        """Jobs with a final attempt, succeeded or failed (what ``--resume`` skips)."""
        return SeqSet.from_ascending(seq for seq, _, _ in self.finals())

    def failed_seqs(self) -> SeqSet:
        """Jobs whose latest final attempt failed (what ``--resume-failed`` runs again)."""
        return SeqSet.from_ascending(seq for seq, _, outcome in self.finals() if outcome != "ok")

    def succeeded_seqs(self) -> SeqSet:
        """Jobs whose latest final attempt succeeded (what ``--resume-failed`` skips)."""
        return SeqSet.from_ascending(seq for seq, _, outcome in self.finals() if outcome == "ok")

    def last_attempts(self, after: int | None = None) -> Iterator[tuple[int, int]]:
        """Each job's highest attempt number as ``(seq, attempt)``, by job number.

        Only jobs numbered above ``after`` (None, the default: every job, as
        for :meth:`finals`).  Killed attempts included (they are not final).
        Read page by page.

        Raises:
            JobLogError: the log cannot be read.
        """
        after = _FIRST if after is None else after
        while True:
            page = self._read("SELECT seq, max(attempt) FROM attempt WHERE seq > ? GROUP BY seq ORDER BY seq "
                              "LIMIT ?", (after, _PAGE))
            for seq, attempt in page:
                yield seq, int(attempt)
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    def last_attempt(self, seq: int) -> int:
        """The highest attempt number recorded for job ``seq`` (0 if none).

        Raises:
            JobLogError: the log cannot be read.
        """
        return int(self._read("SELECT max(attempt) FROM attempt WHERE seq = ?", (seq,))[0][0] or 0)

    def records(self, *, finals_only: bool = False, by_seq: bool = False) -> Iterator[JobRecord]:
        """Every recorded attempt, in the order recorded (``by_seq``: by job, then attempt).

        Only final attempts with ``finals_only``.  Read page by page.

        Raises:
            JobLogError: the log cannot be read.
        """
        cols = ", ".join(_COLUMNS)
        final = "final = 1 AND " if finals_only else ""
        if by_seq:
            query = (f"SELECT seq, id, {cols} FROM attempt WHERE {final}(seq, id) > (?, ?) "
                     "ORDER BY seq, id LIMIT ?")
            key: tuple[int, ...] = (-1, 0)
        else:
            query = f"SELECT seq, id, {cols} FROM attempt WHERE {final}id > ? ORDER BY id LIMIT ?"
            key = (0,)
        while True:
            page = self._read(query, (*key, _PAGE))
            for r in page:
                yield JobRecord(r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], bool(r[11]),
                                r[12], r[13], r[14], r[15])
            if len(page) < _PAGE:
                return
            key = (page[-1][0], page[-1][1]) if by_seq else (page[-1][1],)

    def rows(self) -> list[Row]:
        """Every attempt as a :class:`~anypool.observers.recorder.Row`, ordered by start time.

        The same shape a live pool's ``timeline()`` gives, so a report can
        be drawn from either.

        Raises:
            JobLogError: the log cannot be read.
        """
        out = [Row(r.seq, r.seq, 1, r.attempt, r.worker, r.started, r.started + r.runtime, r.outcome,
                   r.command, r.args, r.error, int(r.outcome == "ok"),
                   int(r.final and r.outcome not in ("ok", "killed")))  # failed for good
               for r in self.records()]
        out.sort(key=lambda r: r.started)
        return out

    def close(self) -> None:
        """Close the database and give up the writer lock (later records are ignored)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            self._release()

    def __enter__(self) -> JobLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` on a job log's autocommit connection.

    Rolled back on any error; an SQLite error (in the body, or the ``COMMIT``
    itself failing on a full disk) is raised as :class:`JobLogError`.
    """

    def __init__(self, log: JobLog) -> None:
        self.log = log

    def __enter__(self) -> None:
        import sqlite3

        try:
            self.log._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self.log._failed("write", exc) from exc

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        import sqlite3

        db = self.log._db
        if exc is None:
            try:
                db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                exc = err
        if db.in_transaction:  # SQLite may have rolled back already (an I/O error does)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the write failed already: that is the error to report
        if isinstance(exc, sqlite3.Error):
            raise self.log._failed("write", exc) from exc


class _WriterLock:
    """An exclusive ``flock`` on ``PATH-lock``, held while a :class:`JobLog` writes PATH.

    The kernel drops it when the holder's process dies, ``kill -9`` included,
    so no stale lock outlives a run; the file names the holder (pid, host)
    for the refusal.  Not a lock on the database file itself: closing any
    descriptor of a file drops every POSIX lock the process holds on it,
    SQLite's own among them.  Best effort: where the file cannot be made or
    the file system has no locks, the log is used unguarded, as before.
    """

    def __init__(self, path: str) -> None:
        import fcntl

        self.path = path + "-lock"
        self.fd: int | None = None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                raise JobLogError(
                    f"{path} is being written by another anypool ({holder or 'a process'}): wait for it "
                    "to end, or use another job log") from None
            except OSError:  # no locks on this file system
                os.close(fd)
                return
            # the holder before us removes the file as it lets go: ours must be the one in place
            try:
                st, mine = os.stat(self.path), os.fstat(fd)
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                    break
            except OSError:
                pass
            os.close(fd)
        import socket

        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        _held.add(fd)
        # a JobLog dropped unclosed lets go when collected, not at the process's end
        self._let_go = weakref.finalize(self, _let_go, fd)

    def release(self) -> None:
        """Remove the lock file and let go (the removal first: see the retry in ``__init__``)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self._let_go()


# Lock descriptors held in this process.  A child forked without exec (a
# "fork" worker) would share them, and so hold the lock after this process
# died: the child closes its copies at once.
_held: set[int] = set()


def _let_go(fd: int) -> None:
    _held.discard(fd)  # before the close: a fork in between must not close a reused number
    os.close(fd)


def _close_held() -> None:
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_held)


def utf8(text: str) -> bytes:
    """``text`` as UTF-8 bytes, whatever it holds; never raises.

    Undecodable bytes that a file name brought in (``surrogateescape``'s
    U+DC80-U+DCFF) become those bytes again; other lone surrogates, which
    UTF-8 cannot hold, are written ``\\udXXX``.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def _text(s: str) -> str:
    """``s`` storable as UTF-8 text: undecodable bytes kept from file names become ``\\xNN``."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return utf8(s).decode("utf-8", "backslashreplace")
    return s


def _describe(text: str) -> str:
    import json

    try:
        d = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(d, dict):
        return "; ".join(f"{k}: {json.dumps(v, ensure_ascii=False)[:200]}" for k, v in sorted(d.items()))
    return json.dumps(d, ensure_ascii=False)[:300]


# -- from events to records ---------------------------------------------------

def command_of(value: Any) -> CommandResult | None:
    """The :class:`~anypool.CommandResult` behind a result or a command's failure, if any."""
    if isinstance(value, CommandResult):
        return value
    r = getattr(value, "result", None)
    return r if isinstance(r, CommandResult) else None


def outcome_of(value: Any, ok: bool) -> str:
    """The job log outcome for a result (``ok``) or an exception."""
    if ok:
        return "ok"
    if isinstance(value, TaskTimeout):
        return "timeout"
    if is_worker_crash(value):
        return "crash"
    if isinstance(value, PoolClosed) or type(value).__name__ == "CancelledError":
        return "killed"
    return "error"


def exit_fields(value: Any, ok: bool) -> tuple[int | None, int | None]:
    """(exit code, signal) for a result or exception: from the command if there was one."""
    cr = command_of(value)
    if cr is not None and cr.pid:
        if cr.returncode < 0:
            return None, -cr.returncode
        return cr.returncode, None
    if cr is not None:  # could not start: the shell's codes (127 not found, 126 not executable)
        return cr.returncode, None
    if isinstance(value, CommandFailed):
        return (value.returncode, None) if value.returncode >= 0 else (None, -value.returncode)
    return (0, None) if ok else (None, None)


def args_json(item: Any, limit: int = 2000) -> str:
    """A task item as JSON text (``submit``'s ``(args, kwargs)`` as a list, or an object); never raises."""
    if (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], tuple)
            and (item[1] is None or isinstance(item[1], dict))):
        args, kwargs = item
        value: Any = {"args": list(args), "kwargs": kwargs} if kwargs else list(args)
    else:
        value = item
    text = _json(value, ascii_only=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def result_output(value: Any) -> bytes:
    """A Python result as strict JSON in UTF-8; never raises.

    What the job log keeps for ``results=True``, and what ``anypool map``
    prints.  Lone surrogates (a file name's undecodable bytes, kept by
    ``surrogateescape``; UTF-8 has no form for them) are written as JSON's
    ``\\udcXX`` escapes, from which ``json.loads`` and ``os.fsencode`` give
    the bytes back.  For the rest, see :func:`_json`.
    """
    text = _json(value, ascii_only=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: only ever inside JSON strings, so escaped there
        import re

        return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text).encode()


def _json(value: Any, *, ascii_only: bool) -> str:
    """``value`` as strict JSON text, whatever it holds; never raises.

    What JSON cannot hold becomes its ``repr()`` string: objects of other
    types, NaN and the infinities (``"nan"``, ``"inf"``, ``"-inf"``: Python's
    ``NaN`` tokens are not JSON), dict keys other than strings, numbers,
    booleans and None (those become text, as ``json`` makes them), and a
    list or dict met again inside itself (``"[...]"``, ``"{...}"``, as
    ``repr()`` writes it).  An int too long for ``str()`` (over 4300 digits)
    is written in hexadecimal (``"0x..."``); a value whose ``repr()`` raises,
    or nested too deep, as ``"<TYPE object: repr() failed>"``.
    """
    import json

    try:
        return json.dumps(value, ensure_ascii=ascii_only, default=_repr, allow_nan=False)
    except Exception:  # NaN, a key JSON cannot take, a cycle, a huge int, too deep...
        pass
    try:
        return json.dumps(_plain(value, set()), ensure_ascii=ascii_only, allow_nan=False)
    except Exception:  # nested too deep (RecursionError)
        return json.dumps(_repr(value), ensure_ascii=ascii_only)


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # the value's own code: anything may escape
        return f"<{type(value).__name__} object: repr() failed>"


def _plain(value: Any, path: set[int]) -> Any:
    """``value`` made of what JSON holds (see :func:`_json`); ``path``: the containers it is in."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(float(value))
    if isinstance(value, int):
        try:
            int.__repr__(value)
        except ValueError:  # more digits than sys.get_int_max_str_digits() allows
            return hex(value)
        return value
    if not isinstance(value, (list, tuple, dict)):
        return _repr(value)
    if id(value) in path:
        return "{...}" if isinstance(value, dict) else "[...]"
    path.add(id(value))
    try:
        if isinstance(value, dict):
            return {_key(k, path): _plain(v, path) for k, v in value.items()}
        return [_plain(v, path) for v in value]
    finally:
        path.discard(id(value))


def _key(key: Any, path: set[int]) -> str:
    """A dict key as JSON writes one: numbers, booleans and None as their JSON text; others as repr()."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        import json

        plain = _plain(key, path)
        return plain if isinstance(plain, str) else json.dumps(plain)
    return _repr(key)


def _retrying(value: Any) -> bool:
    return type(value).__name__ == "_Retrying"


class JobLogObserver:
    """An observer that records every finished attempt of a pool in a :class:`JobLog`.

    ``Pool(joblog="path.db")`` attaches one.  Each ``finished`` event
    becomes one row per item (a batch of ``map`` items shares its times).
    Job numbers are the event's ``seq`` (for ``map``, the input position
    from 0; for ``submit``, the task id from 1) plus ``seq_base``; the
    arguments are stored as JSON text (see :func:`args_json`).
    """

    finished_only = True  # the pool then builds no queued/started events for it

    def __init__(self, log: JobLog, *, seq_base: int = 0) -> None:
        self.log = log
        self.seq_base = seq_base

    def __call__(self, event: TaskEvent) -> None:
        if event.kind != "finished":
            return
        results = event.results or ()
        started = event.started or event.time
        per = (event.time - started) / max(event.size, 1)
        retrying = event.retrying
        output = self.log.results
        recs = []
        for i in range(event.size):
            value = results[i] if i < len(results) else None
            if event.outcome == "ok":
                ok = True
            elif _retrying(value):  # a placeholder, from an event made without its exception
                ok, value = False, (event.error if event.size == 1 else None)
            else:
                ok = not isinstance(value, BaseException)
            outcome = outcome_of(value, ok)
            if outcome == "killed" and event.worker in (None, "-"):
                continue  # cancelled before it ever ran: not an attempt
            # Final per item: a batch's good items are final even when one of its
            # items is tried again (the event's ``final`` is then False for all).
            final = i not in retrying if retrying else event.final
            rec = record_for(event, value, ok, outcome, started + per * i, per, final=final,
                             output=output)
            item = event.items[i] if i < len(event.items) else None
            recs.append(rec._replace(seq=event.seq + i + self.seq_base, args=args_json(item)))
        self.log.record_many(recs)


def record_for(event: TaskEvent, value: Any, ok: bool, outcome: str, started: float,
               runtime: float, final: bool | None = None, *, output: bool = True) -> JobRecord:
    """A :class:`JobRecord` for one item of a finished event (seq and args left for the caller).

    ``final``: whether this item's attempt is its last (None: the event's
    ``final``).  ``output``: whether to build a Python result's stdout (see
    :func:`result_output`); a log without ``results=True`` drops it unread.
    Never raises on what the value or the exception holds.
    """
    cr = command_of(value)
    exitcode, sig = exit_fields(value, ok)
    stdout: bytes | None
    stderr: bytes | None
    if cr is not None:
        started, runtime = cr.started, cr.duration
        command = cr.command
        stdout, stderr = cr.stdout, cr.stderr
    else:
        command = event.fn
        stdout = result_output(value) if ok and output else None
        stderr = None
    error = "" if ok else describe_error(value if isinstance(value, BaseException) else None)
    return JobRecord(0, event.attempt, "", command, started, runtime, exitcode, sig, outcome,
                     (event.final if final is None else final) and outcome != "killed", error,
                     event.worker or "", stdout, stderr)
