"""Running other programs: ``subprocess.call`` and ``Popen.communicate``, done with anypool.

Seed note 004: ``subprocess.call(['nslookup', 'www.python.org'])`` runs a
program and returns its exit code; ``Popen(['nslookup'], stdin=PIPE, ...)``
with ``communicate(b'set q=mx\\npython.org\\nexit\\n')`` feeds it input and
reads its output.  (``nslookup`` needs a network, so this example runs
local programs in its place.)

The anypool way: a command is a task.  A list of strings is an argv (no
shell), a string is a shell command line, and ``backend="auto"`` sends
either to the ``subprocess`` backend.  ``result()`` is a ``CommandResult``
(``returncode``, ``stdout``, ``stderr``, ``duration``, ``pid``); a non-zero
exit raises ``anypool.CommandFailed`` (a ``subprocess.CalledProcessError``);
``timeout=`` kills the command's whole process group.  Task arguments are
appended to the command as separate arguments, never re-read by a shell.
Jobs read their stdin from ``/dev/null``, so input is handed over as an
argument and piped in by the command line itself (``printf '%s' "$1" |
sort``).  Several commands run at once, each in its own process group.

Run: ``python examples/subprocess_call.py``  (needs the ``subprocess`` backend)
"""

from __future__ import annotations

import time

import anypool

INPUT = "set q=mx\npython.org\nexit\n"


def main() -> None:
    with anypool.Pool(workers=4) as pool:  # auto: commands go to the subprocess backend
        print("$ uname -s")
        r = pool.submit(["uname", "-s"]).result()  # subprocess.call(['uname', '-s'])
        print(r.stdout.decode().strip())
        print(f"Exit code: {r.returncode}")

        print("$ sort  (input fed through a pipe, as with communicate())")
        r = pool.submit("printf '%s' \"$1\" | sort", INPUT).result()
        print(r.stdout.decode("utf-8"), end="")
        print(f"Exit code: {r.returncode}")

        try:
            pool.submit(["ls", "/no/such/dir"]).result()
        except anypool.CommandFailed as exc:
            print(f"a failing command raises CommandFailed: exit code {exc.returncode}, "
                  f"stderr {exc.stderr.decode().strip()!r}")

        t0 = time.perf_counter()
        futures = [pool.submit(["sleep", "0.5"]) for _ in range(4)]
        codes = [f.result().returncode for f in futures]
        print(f"4 x sleep 0.5 at once (workers={pool.workers}): exit codes {codes}, "
              f"{time.perf_counter() - t0:.2f} s")

        t0 = time.perf_counter()
        try:
            pool.with_options(timeout=0.5).submit("sleep 30; echo never").result()
        except anypool.TaskTimeout as exc:
            print(f"sleep 30 under timeout=0.5: {exc} after {time.perf_counter() - t0:.2f} s")
        print(f"backend for commands: {pool.stats.backend}, {pool.stats.done} done, "
              f"{pool.stats.failed} failed")


if __name__ == "__main__":
    main()
