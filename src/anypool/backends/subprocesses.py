"""The ``subprocess`` backend: shell commands and argv lists, one process group per job.

What a command is, how arguments are passed and when no shell is started is
in :mod:`anypool.commands`.  This module starts, watches and stops them::

    submit ──> SimpleQueue ──> slot thread (one per worker, numbered 1..N):
                                 prepare → Popen (vfork, new session) → waitid
                                 │             stdout, stderr → two memfds
                                 │ timeout:    clock ─> SIGTERM to the group,
                                 │             GRACE later SIGKILL
                                 └─ read the memfds → CommandResult → dispatch

**Launch path.**  Each job is started by ``subprocess.Popen`` with
``start_new_session`` (so the job leads its own process group and session: a
timeout or a kill reaches every process it started, and a Ctrl-C typed at the
terminal reaches the parent alone, which then stops the jobs).  Popen is used
only to launch: on Linux it uses ``vfork`` (nothing of the parent is copied)
and releases the GIL meanwhile; the job is waited for and reaped here.
Measured on this project's 2-core machine (1,000 x ``true``, 2 slots, under
load): ``os.posix_spawn`` costs the same parent CPU per job (~0.2 ms) but
holds the GIL through the whole vfork-and-exec, so the other slot and the
caller stall: another thread's 0.2 ms sleeps woke late by 1.8 ms at p90
during posix_spawn calls and by 0.1 ms during Popen calls, and ``anypool
run`` took 3.0 s with posix_spawn against 2.1 s with Popen (median of 5).
asyncio's subprocesses took 3-4x the wall time of either (the project's
peer baselines found the same), so they are not used.  Slot threads
wait with ``waitid(WNOWAIT)``, which leaves the child unreaped until its
thread has marked it finished: a timeout or shutdown can therefore never
signal a process group whose number was reused.

**Output.**  Each job's stdout and stderr go to two anonymous in-memory
files (``memfd_create``; a temporary file elsewhere), read once the job
exits.  Unlike pipes, nothing has to be read while the job runs, a job can
never block on a full pipe, and a background process the job left behind
cannot hold the job open.  With the ``on_output`` option the backend uses
pipes instead and hands each complete line to that callback as it arrives
(the command line's ``--line-buffer``); the result still holds it all.

**Stopping.**  On timeout the whole group gets ``SIGTERM``, and ``SIGKILL``
``GRACE`` seconds later if its leader is still there; once the leader has
exited, what is left of the group gets the same ``GRACE`` and then
``SIGKILL``, so no grandchild outlives a stopped job (one that started its
own session has left the group and is out of reach, as with any process
group).  ``shutdown(kill=True)`` does the same to every running job; their
tasks fail with ``PoolClosed``.  A job that simply ends is left alone, even
if it started background processes.

Options (``Pool(backend="subprocess", on_output=...)``):

* ``on_output(args, stream, data)``: called from the slot thread with the
  task's arguments, 1 or 2 for stdout or stderr, and one complete line of
  bytes (the last one may lack its newline).  A line is handed on whole,
  however long: cut into pieces, the lines of other jobs printed with
  ``--line-buffer`` could land inside it, and the result holds all of the
  output anyway.

Jobs read their stdin from ``/dev/null``.  This backend needs a POSIX system.
"""

from __future__ import annotations

import errno
import os
import queue
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import clock, jobguard, waiting
from ..commands import SHELL, CommandResult, Spec, prepare
from ..dispatch import serve
from ..errors import CommandFailed, PoolClosed, TaskTimeout
from ..tasks import CALL, ONE, STAR, Failure, Task
from .base import Backend, BackendConfig, drain

if TYPE_CHECKING:
    from ..dispatch import Dispatch
    from ..stats import WorkerStats

__all__ = ["GRACE", "SubprocessBackend", "kill_commands", "run_command"]

GRACE = 0.25  # seconds between SIGTERM and SIGKILL when a job is stopped
_SWEEP_POLL = 0.01

OutputCallback = Callable[[tuple[Any, ...], int, bytes], None]

_lock = threading.Lock()  # guards every _Proc's pid/reaped/stop against the clock and shutdown
# the jobs run_command is running in this process (guarded by _lock): a pool
# of threads running them cannot stop its tasks, so kill_commands stops these
_commands: set[_Proc] = set()
_devnull: int | None = None
_paths: dict[tuple[str, str], str] = {}


class _Proc:
    """One running job, as its slot thread, the clock and a killing shutdown see it."""

    __slots__ = ("pid", "reaped", "stop")

    def __init__(self) -> None:
        self.pid = 0  # 0 until spawned
        self.reaped = False
        self.stop: str | None = None  # None, "timeout" or "killed"


class _NotRunnable(Exception):
    """The program could not be started (not found, not executable)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


# -- starting -----------------------------------------------------------------

def _stdin() -> int:
    global _devnull
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull


def _capture_fd() -> int:
    """An anonymous read-write file for one stream of one job."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        try:
            return int(memfd("anypool-job", os.MFD_CLOEXEC))
        except OSError:
            pass
    import tempfile

    fd, path = tempfile.mkstemp(prefix="anypool-job-")
    os.unlink(path)
    os.set_inheritable(fd, False)
    return fd


def _resolve(name: str) -> str | None:
    """The program file for argv[0], found in PATH as the shell would (cached)."""
    if "/" in name:
        return name
    path = os.environ.get("PATH", os.defpath)
    key = (name, path)
    hit = _paths.get(key)
    if hit is not None:
        return hit
    found = shutil.which(name, path=path)
    if found is not None:
        if len(_paths) > 4096:
            _paths.clear()
        _paths[key] = found
    return found


def _spawn(argv: list[str], path: str, fds: tuple[int, int, int]) -> subprocess.Popen[bytes]:
    # Popen only for its launch (vfork, GIL released, signals reset, other fds
    # closed); the job is waited for and reaped by _execute, not by Popen
    return subprocess.Popen(argv, executable=path, stdin=fds[0], stdout=fds[1], stderr=fds[2],
                            start_new_session=True)


def _start(spec: Spec, fds: tuple[int, int, int]) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Start ``spec``; return its process and the argv really executed.

    Raises:
        _NotRunnable: the program does not exist or cannot be executed.
    """
    argv = spec.argv
    name = argv[0]
    for attempt in (1, 2):
        path = _resolve(name)
        if path is None:
            raise _NotRunnable(127, f"anypool: {name}: command not found")
        try:
            return _spawn(argv, path, fds), argv
        except FileNotFoundError:
            if attempt == 1 and "/" not in name:
                _paths.pop((name, os.environ.get("PATH", os.defpath)), None)
                continue  # the cached file went away: look again
            raise _NotRunnable(127, f"anypool: {name}: No such file or directory") from None
        except PermissionError:
            raise _NotRunnable(126, f"anypool: {name}: Permission denied") from None
        except OSError as exc:
            if exc.errno == errno.ENOEXEC:
                # not a binary and no #!: a shell runs it as a script, as sh itself would
                script = [SHELL, path, *argv[1:]]
                return _spawn(script, SHELL, fds), script
            if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG):
                raise _NotRunnable(127, f"anypool: {name}: {exc.strerror}") from None
            raise
    raise AssertionError("unreachable")


# -- stopping -----------------------------------------------------------------

def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _expire(proc: _Proc) -> None:
    """Clock callback: the job ran past its timeout."""
    with _lock:
        if proc.reaped or not proc.pid:
            return
        if proc.stop is None:
            proc.stop = "timeout"
        _signal_group(proc.pid, signal.SIGTERM)
    clock.call_later(GRACE, _force, proc)


def _force(proc: _Proc) -> None:
    """Clock callback: the leader outlived its grace period after SIGTERM."""
    with _lock:
        if not proc.reaped and proc.pid:
            _signal_group(proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member that is not a zombie.

    Killed grandchildren are reparented to init and stay zombies until it
    reaps them, which some inits do only now and then; they count as gone.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    import psutil  # only on this rare path: a stopped job whose group outlives it

    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() not in _GONE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


_GONE = ("zombie", "dead")


def _sweep(pgid: int) -> None:
    """After a stopped job's leader is gone: give the rest of its group GRACE, then SIGKILL."""
    deadline = time.monotonic() + GRACE
    while True:
        if not _group_alive(pgid):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(_SWEEP_POLL)
    _signal_group(pgid, signal.SIGKILL)


# -- waiting and collecting -----------------------------------------------------

def _wait_exit(pid: int) -> None:
    """Block until ``pid`` has exited, leaving it unreaped where the system allows."""
    waitid = getattr(os, "waitid", None)
    if waitid is not None:
        waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    # elsewhere, waitpid() below reaps it at once (a timeout racing the exit
    # then signals a group that is already gone, which is harmless)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    if not size:
        return b""
    chunks = []
    offset = 0
    while offset < size:
        data = os.pread(fd, size - offset, offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
    return b"".join(chunks)


def _pump(pid: int, outs: dict[int, int], on_output: OutputCallback, args: tuple[Any, ...],
          captured: dict[int, list[bytes]]) -> None:
    """Read a job's pipes, handing complete lines to ``on_output``, until it is done.

    Done means both pipes reached end-of-file or, where a pidfd can tell, the
    job's leader exited (what is in the pipes then is read; a background
    process it left behind cannot keep the slot busy).
    """
    poller = select.poll()
    for fd in outs:
        poller.register(fd, select.POLLIN)
    pidfd = -1
    opener = getattr(os, "pidfd_open", None)
    if opener is not None:
        try:
            pidfd = opener(pid)
            poller.register(pidfd, select.POLLIN)
        except OSError:
            pidfd = -1
    # the pieces of each stream's unfinished line: joined once its newline
    # comes, as re-joining them on every read took quadratic time (a 64 MiB
    # line-less output: 26 s, against 0.06 s without on_output)
    partial: dict[int, list[bytes]] = {stream: [] for stream in outs.values()}
    open_fds = set(outs)

    def feed(stream: int, data: bytes) -> None:
        captured[stream].append(data)
        pieces = partial[stream]
        cut = data.rfind(b"\n") + 1
        if not cut:
            pieces.append(data)
            return
        start = 0
        if pieces:
            start = data.index(b"\n") + 1
            pieces.append(data[:start])
            on_output(args, stream, b"".join(pieces))
            pieces.clear()
        while start < cut:
            nl = data.index(b"\n", start) + 1
            on_output(args, stream, data[start:nl])
            start = nl
        if cut < len(data):
            pieces.append(data[cut:])

    try:
        leader_gone = False
        while open_fds and not leader_gone:
            for fd, _ in poller.poll():
                if fd == pidfd:
                    leader_gone = True
                    continue
                data = os.read(fd, 65536)
                if data:
                    feed(outs[fd], data)
                else:
                    open_fds.discard(fd)
                    poller.unregister(fd)
        for fd in list(open_fds):  # the leader exited: take what its pipes already hold
            os.set_blocking(fd, False)
            try:
                while data := os.read(fd, 65536):
                    feed(outs[fd], data)
            except BlockingIOError:
                pass
    finally:
        if pidfd >= 0:
            os.close(pidfd)
        for stream, pieces in partial.items():
            if pieces:
                on_output(args, stream, b"".join(pieces))


def _execute(spec: Spec, timeout: float | None, proc: _Proc, on_output: OutputCallback | None,
             args: tuple[Any, ...]) -> CommandResult:
    """Run one job to its end (see the module docstring); ``proc.stop`` says if it was stopped."""
    pipes: list[int] = []
    if on_output is None:
        out_fd, err_fd = _capture_fd(), _capture_fd()
        child_fds = (_stdin(), out_fd, err_fd)
    else:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pipes = [out_r, out_w, err_r, err_w]
        out_fd, err_fd = out_r, err_r
        child_fds = (_stdin(), out_w, err_w)
    started = time.time()
    t0 = time.perf_counter()
    handle = None
    pid = 0
    popen = None
    try:
        try:
            popen, argv = _start(spec, child_fds)
            pid = popen.pid
        except _NotRunnable as exc:
            return CommandResult(spec.text, tuple(spec.argv), exc.code, b"",
                                 (exc.message + "\n").encode(), started,
                                 time.perf_counter() - t0, 0)
        jobguard.started(pid)
        with _lock:
            proc.pid = pid
            late = proc.stop == "killed"
            if late:
                # A killing shutdown came while Popen had not yet returned (the
                # job itself may have been running for a while on a loaded
                # machine): it gets what the others got, SIGTERM and a grace.
                _signal_group(pid, signal.SIGTERM)
        if late:
            clock.call_later(GRACE, _force, proc)
        if timeout is not None:
            handle = clock.call_later(timeout, _expire, proc)
        captured: dict[int, list[bytes]] = {1: [], 2: []}
        if on_output is not None:
            for fd in (pipes[1], pipes[3]):
                os.close(fd)
            pipes = [out_r, err_r]
            _pump(pid, {out_r: 1, err_r: 2}, on_output, args, captured)
        _wait_exit(pid)
        jobguard.ended(pid)
        with _lock:
            proc.reaped = True
        _, status = os.waitpid(pid, 0)
        duration = time.perf_counter() - t0
        popen.returncode = code = os.waitstatus_to_exitcode(status)
        if handle is not None:
            handle.cancel()
        if proc.stop is not None:
            _sweep(pid)
        if on_output is None:
            stdout, stderr = _read_all(out_fd), _read_all(err_fd)
        else:
            stdout, stderr = b"".join(captured[1]), b"".join(captured[2])
        return CommandResult(spec.text, tuple(argv), code, stdout, stderr, started, duration, pid)
    except BaseException:
        # interrupted while waiting (Ctrl-C in the caller's thread): stop the job too
        if pid and not proc.reaped:
            with _lock:
                proc.reaped = True
                _signal_group(pid, signal.SIGKILL)
            jobguard.ended(pid)
            try:
                _, status = os.waitpid(pid, 0)
                if popen is not None:
                    popen.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                pass
        raise
    finally:
        if on_output is None:
            os.close(out_fd)
            os.close(err_fd)
        for fd in pipes:
            try:
                os.close(fd)
            except OSError:
                pass


def _failure(result: CommandResult, proc: _Proc, timeout: float | None, label: str) -> Any:
    """The task outcome for a finished job: the result, or a Failure of the right kind."""
    if proc.stop == "timeout":
        assert timeout is not None
        exc: Any = TaskTimeout(timeout, label)
        exc.result = result
        return Failure(exc, "timeout")
    if proc.stop == "killed":
        exc = PoolClosed(f"command {result.command!r} was killed by the pool's shutdown")
        exc.result = result
        return Failure(exc, "cancelled")
    if result.returncode != 0:
        exc = CommandFailed(result)
        if not result.pid:  # it never started: say why where a traceback shows it
            exc.__notes__ = [result.stderr.decode(errors="replace").strip()]  # add_note() is 3.11+
        return Failure(exc)
    return result


def run_command(command: Any, *args: Any, timeout: float | None = None, check: bool = True) -> CommandResult:
    """Run one command in this thread, as the ``subprocess`` backend runs each job.

    Used where commands go through another backend (a Dask worker, a worker
    process): the job still gets its own process group, and its timeout
    stops that whole group.

    Raises:
        TaskTimeout: it ran past ``timeout`` seconds and was stopped
            (``.result`` holds what it printed).
        PoolClosed: :func:`kill_commands` stopped it (``.result`` holds what it printed).
        CommandFailed: ``check`` is true and it exited non-zero, was killed,
            or could not be started.
        TypeError, ValueError: ``command`` or an argument is not usable.
    """
    spec = prepare(command, args)
    proc = _Proc()
    with _lock:
        _commands.add(proc)
    try:
        result = _execute(spec, timeout, proc, None, args)
    finally:
        with _lock:
            _commands.discard(proc)
    if proc.stop == "killed":
        raise _failure(result, proc, timeout, result.command).exc
    if proc.stop == "timeout":
        out = _failure(result, proc, timeout, result.command)
        raise out.exc
    if check and result.returncode != 0:
        raise _failure(result, proc, timeout, result.command).exc
    return result


def kill_commands() -> int:
    """Stop every job :func:`run_command` is running in this process; return how many.

    For commands run by tasks of a backend that cannot stop its own tasks
    (threads): their groups get SIGTERM, then SIGKILL after ``GRACE``, as a
    killing shutdown of this backend does, and each ``run_command`` raises
    ``PoolClosed``.  Returns within about ``GRACE`` seconds.
    """
    with _lock:
        procs = list(_commands)
    _kill(procs)
    return len(procs)


def _kill(procs: list[_Proc]) -> None:
    """SIGTERM each job's group; SIGKILL what is left after GRACE."""
    with _lock:
        for p in procs:
            p.stop = "killed"
            if p.pid and not p.reaped:
                _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline:
        with _lock:
            if all(p.reaped for p in procs):
                return
        time.sleep(_SWEEP_POLL)
    with _lock:
        for p in procs:
            if p.pid and not p.reaped:
                _signal_group(p.pid, signal.SIGKILL)


# -- the backend ----------------------------------------------------------------

class SubprocessBackend(Backend):
    """Runs commands, each in its own process group (see the module docstring)."""

    name = "subprocess"
    process_options = False
    can_kill = True
    max_batch = 1

    options = ("on_output",)

    def __init__(self, config: BackendConfig, dispatch: Dispatch) -> None:
        super().__init__(config, dispatch)
        on_output = config.extra.get("on_output")
        if on_output is not None and not callable(on_output):
            raise TypeError(f"on_output must be callable, not {on_output!r}")
        self._on_output: OutputCallback | None = on_output
        self._queue: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._running: set[_Proc] = set()
        self._started = False
        self._stopping = False
        self._killing = False

    def fixed_batch(self) -> int | None:
        # every job is a process of its own: batching would only serialize them
        return 1

    def describe(self) -> str:
        return f"subprocess ({self.workers} slots)"

    def submit(self, task: Task) -> None:
        if not self._started:
            self._start()
        if self._stopping:
            raise PoolClosed("the subprocess backend is shut down")
        self._queue.put(task)

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            for slot in range(1, self.workers + 1):
                t = threading.Thread(target=self._work, args=(slot,), name=f"anypool-subprocess-{slot}",
                                     daemon=True)
                self._threads.append(t)
                t.start()

    def _work(self, slot: int) -> None:
        dispatch = self.dispatch
        name = f"slot-{slot}"
        ws = dispatch.stats.worker(name)
        serve(dispatch)
        q = self._queue
        try:
            while True:
                task = q.get()
                if task is None:
                    break
                if self._killing:
                    dispatch.cancel(task)
                    continue
                if not task.claim():
                    dispatch.discard(task)
                    continue
                if dispatch.observing:
                    dispatch.started(task, ws)
                if task.future is not None:
                    t0 = time.time()
                    r = self._run_item(task, task.items[0], slot)
                    dispatch.finish_one(task, r, t0, time.time(), ws)
                else:
                    self._run_batch(task, slot, ws)
        finally:
            dispatch.stats.worker_gone(name)

    def _run_batch(self, task: Task, slot: int, ws: WorkerStats) -> None:
        out: list[Any] = []
        failed: list[int] = []
        times: list[float] = []
        t0 = time.time()
        for i, item in enumerate(task.items):
            start = time.time()
            r = self._run_item(task, item, slot)
            times += (start, time.time())
            if type(r) is Failure:
                failed.append(i)
            out.append(r)
        self.dispatch.finish(task, out, t0, time.time(), ws, failed or None,
                             times if len(out) > 1 else None)

    def _run_item(self, task: Task, item: Any, slot: int) -> Any:
        try:
            if task.style == ONE:
                args: tuple[Any, ...] = (item,)
            elif task.style == STAR:
                args = tuple(item)
            else:
                assert task.style == CALL
                args, kwargs = item
                if kwargs:
                    raise TypeError(f"commands take no keyword arguments (got {', '.join(sorted(kwargs))})")
            spec = prepare(task.fn, args, slot)
        except Exception as exc:
            return Failure(exc)
        proc = _Proc()
        with self._lock:
            if self._killing:
                return Failure(PoolClosed("the pool was shut down before this command started"),
                               "cancelled")
            self._running.add(proc)
        try:
            timeout = task.options.timeout
            result = _execute(spec, timeout, proc, self._on_output, args)
        except Exception as exc:
            return Failure(exc)
        finally:
            with self._lock:
                self._running.discard(proc)
        return _failure(result, proc, timeout, f"#{task.seq} {spec.text!r}")

    # -- shutdown -------------------------------------------------------------

    def cancel_pending(self) -> None:
        """Cancel every queued job that has not started."""
        for task in drain(self._queue):
            self.dispatch.cancel(task)

    def shutdown(self, wait: bool = True, kill: bool = False) -> None:
        with self._lock:
            self._stopping = True
            threads = list(self._threads)
        if kill:
            self._kill_running()
        for _ in threads:
            self._queue.put(None)
        if wait and not kill:
            me = threading.current_thread()
            for t in threads:
                if t is not me:
                    waiting.join(t)

    def _kill_running(self) -> None:
        """SIGTERM every running job's group; SIGKILL what is left after GRACE."""
        with self._lock:
            self._killing = True
            procs = list(self._running)
        self.cancel_pending()
        _kill(procs)
