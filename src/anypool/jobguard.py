"""The job guard: stops this process's running commands if this process dies.

Commands run in sessions of their own (see :mod:`anypool.backends.subprocesses`):
a timeout then reaches everything a job started, and Ctrl-C at the terminal
reaches the pool alone, which stops its jobs itself.  The price is that a
pool killed outright (``SIGKILL``, the OOM killer) leaves its jobs running,
with nobody to stop them; GNU parallel and ``xargs`` leave them too.

So, at the first job a process starts, it also starts one small guard
process (a Python interpreter started with ``-I -S``: ~10 ms, off the job's
path) with a pipe from this process as its stdin.  Each job's process group
is written to the pipe when the job starts (``+pgid``) and again just
before it is reaped (``-pgid``: the zombie still holds the number, so the
guard can never be told of a group whose number was reused).  When the
pipe reaches end-of-file every writer is gone, which means this process
exited or died: the guard sends ``SIGTERM`` to each group still listed,
``SIGKILL`` ``GRACE`` seconds later, and exits.  After a normal exit no
group is listed and it just exits.

The guard reads in batches (it sleeps ``BATCH`` seconds after each read),
so ten thousand jobs a second cost it a few wake-ups, not ten thousand.
Writes never block a job's thread: a guard that stopped reading (stopped
or killed by hand) costs its protection, nothing else.  A job whose start
raced this process's death is not covered: between the job's exec and the
``+pgid`` write its thread must take the GIL back, microseconds on an idle
machine, tens of ms under load (with three CPU hogs on two cores a kill
within a few ms of the jobs' start missed them often; 0.3 s after it, never
in 6 runs).  Closing the gap would take a wrapper or code run in the child
before exec, which the fast launch path (vfork) does without.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time

__all__ = ["BATCH", "GRACE", "ended", "serve", "started"]

BATCH = 0.05  # seconds the guard sleeps after each read (so the delay before it acts)
GRACE = 0.25  # seconds between SIGTERM and SIGKILL (the subprocess backend's GRACE)
NAME = "anypool-job-guard"  # in the guard's command line, to tell it apart

_lock = threading.Lock()
_fd: int | None = None  # the write end of the pipe to this process's guard
_pid = 0  # the guard's pid
_failed = False  # the guard could not be started, or stopped reading: do without


def _start() -> int | None:
    """Start this process's guard; the pipe's write end, or None where it cannot run."""
    global _fd, _pid, _failed
    if not sys.executable:
        _failed = True
        return None
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        if r < 3:  # a process started without stdin: dup2 onto itself would keep close-on-exec
            low, r = r, fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(low)
        _pid = os.posix_spawn(
            sys.executable, [sys.executable, "-I", "-S", __file__, NAME], os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, r, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                          (os.POSIX_SPAWN_DUP2, null, 2)],
            setsid=True)
    except (OSError, AttributeError, NotImplementedError):
        os.close(w)
        _failed = True
        return None
    finally:
        os.close(r)
        os.close(null)
    os.set_blocking(w, False)
    _fd = w
    return w


def _write(line: bytes) -> bool:
    if _failed:
        return False
    fd = _fd
    if fd is None:
        with _lock:
            fd = _fd if _fd is not None or _failed else _start()
        if fd is None:
            return False
    try:
        os.write(fd, line)
        return True
    except OSError:  # full (it stopped reading) or broken (it is gone)
        _give_up()
        return False


def _give_up() -> None:
    """Stop guarding: a guard that missed a line could act on a stale list, so it goes.

    Its pipe stays open: another thread may be writing to it this moment, and
    a closed number could meanwhile be reused by a job's output file.
    """
    global _failed, _pid
    with _lock:
        _failed = True
        pid, _pid = _pid, 0
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass


def started(pgid: int) -> bool:
    """Put the process group ``pgid`` of a job that just started under guard.

    Returns whether it is guarded (False where no guard can run).  Never raises.
    """
    return _write(b"+%d\n" % pgid)


def ended(pgid: int) -> None:
    """Take ``pgid`` off the guard's list: call before reaping the job's leader.  Never raises."""
    if _fd is not None:
        _write(b"-%d\n" % pgid)


def _after_fork_in_child() -> None:
    # A forked child must not hold its parent's pipe (the guard would see no
    # end-of-file while it lives), and its jobs need a guard of its own.
    global _fd, _pid, _failed, _lock
    if _fd is not None:
        try:
            os.close(_fd)
        except OSError:
            pass
    _fd, _pid, _failed = None, 0, False
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def serve(fd: int = 0) -> None:
    """The guard itself: read ``+pgid``/``-pgid`` lines from ``fd`` to end-of-file; stop the groups left."""
    live: set[int] = set()
    rest = b""
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            if line[:1] == b"+":
                live.add(int(line[1:]))
            elif line[:1] == b"-":
                live.discard(int(line[1:]))
        time.sleep(BATCH)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in live:
            try:
                os.killpg(group, sig)
            except OSError:
                pass
        if live and sig == signal.SIGTERM:
            time.sleep(GRACE)


if __name__ == "__main__":  # run as a file (``-I -S``: no site, no path), not imported
    serve()
