"""Shell commands as tasks: what a command means, and what running one gave.

A task's "callable" on the ``subprocess`` backend is a *command*:

* a ``str`` is a shell command line, read by ``/bin/sh``;
* a list (or tuple) is an argv: the program and its arguments (each a
  ``str``, ``bytes``, ``os.PathLike`` or number, as below), run without any shell;
* an object with an ``__anypool_command__(args, slot)`` method returns one of
  the two (or a :class:`Spec`) for each job; the command line uses this to
  fill its templates, ``slot`` being the number of the worker running the job.

A task's positional arguments are *appended* to the command, never re-read
by a shell:

* argv: ``pool.submit(["gzip", "-9"], path)`` runs ``gzip -9 <path>``;
* shell string: ``pool.submit("gzip -9", path)`` runs
  ``/bin/sh -c 'gzip -9 "$@"' sh <path>``, so the arguments are the script's
  positional parameters ``$1``, ``$2``... and reach the program as they are,
  whatever quotes, ``;`` or ``$(...)`` they hold.  If the string itself
  mentions ``$1``..``$9``, ``$@``, ``$*`` or ``$#`` where the shell expands
  them (not inside single quotes, as in ``awk '{print $1}'``, nor escaped as
  ``\\$1``), it is taken to place the arguments itself and ``"$@"`` is not
  appended (``pool.submit('cp "$1" "$1.bak"', path)``).

Keyword arguments are refused (``TypeError``); arguments must be ``str``,
``bytes``, ``os.PathLike`` or numbers.

**No shell when none is needed.**  Starting ``/bin/sh`` costs as much as
starting the program itself, so a command string that provably means the
same without a shell is run directly.  The rule (:func:`direct_argv`): the
string is split at spaces and tabs into words made only of

* unquoted characters from ``A-Z a-z 0-9 _ @ % + = : , . / -``,
* single-quoted text ``'...'`` (anything but ``'``),
* double-quoted text ``"..."`` holding none of ``$ ` \\ "``,

and the first word (the program) holds no ``=`` (an assignment) and is not a
shell keyword or builtin (``cd``, ``echo``, ``printf``, ``exit``, ``test``...;
``true`` and ``false`` are the exceptions, being the same programs either
way).  Anything else (``$``, backquotes, ``;``, ``|``, ``&``, ``<``, ``>``,
globs ``* ? [``, ``~``, ``#``, ``\\``, braces, a newline) goes to the shell.
A directly run program is looked up in ``PATH`` as the shell would; a file
that is not an executable format (a script with no ``#!``) is handed to the
shell, as the shell itself would do.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any, NamedTuple

from .records import Frozen

__all__ = [
    "SHELL", "CommandResult", "Spec", "command_text", "direct_argv", "is_command", "mentions_arguments",
    "prepare", "split_words",
]

SHELL = "/bin/sh"


class CommandResult(Frozen):
    """How one run of a command went.

    The ``subprocess`` backend returns this for a command that exited with
    status 0; for any other end the task fails with
    :class:`~anypool.CommandFailed` (whose ``.result`` is this object) or
    :class:`~anypool.TaskTimeout` (with a ``.result`` attribute holding what
    the command printed before it was stopped).

    Attributes:
        command: the command as text (a shell command line; an argv shell-quoted).
        args: the argv that was executed (``/bin/sh -c ...`` when a shell ran it).
        returncode: the exit status; negative ``-N`` when killed by signal ``N``.
        stdout: everything the command wrote to its standard output.
        stderr: everything it wrote to its standard error.
        started: when it started (``time.time()``).
        duration: seconds from start to exit.
        pid: its process id (also its process group id).
    """

    __slots__ = (  # noqa: RUF023 - field order: repr and positional arguments follow it
        "command", "args", "returncode", "stdout", "stderr", "started", "duration", "pid",
    )

    command: str
    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    started: float
    duration: float
    pid: int

    def __init__(self, command: str, args: tuple[str, ...], returncode: int, stdout: bytes,
                 stderr: bytes, started: float, duration: float, pid: int) -> None:
        self._set(command, args, returncode, stdout, stderr, started, duration, pid)

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.returncode == 0

    @property
    def signal(self) -> int | None:
        """The number of the signal that killed the command, or None if it exited."""
        return -self.returncode if self.returncode < 0 else None

    def check(self) -> CommandResult:
        """Return self if the command succeeded.

        Raises:
            CommandFailed: the command exited non-zero or was killed.
        """
        if self.returncode != 0:
            from .errors import CommandFailed

            raise CommandFailed(self)
        return self


class Spec(NamedTuple):
    """A command ready to start: what to execute, and how to show it."""

    argv: list[str]
    text: str
    shell: bool  # argv is /bin/sh -c ...


# -- when no shell is needed -------------------------------------------------

_PART = re.compile(r"""[A-Za-z0-9_@%+=:,./-]+|'[^']*'|"[^"$`\\]*"|[ \t]+""")
_BLANK = frozenset(" \t")

# Words the shell treats itself: keywords, and builtins that either exist only
# inside a shell or behave differently from the program of the same name.
SHELL_WORDS = frozenset({
    "!", "{", "}", "[[", "]]", "case", "do", "done", "elif", "else", "esac", "fi", "for",
    "function", "if", "in", "select", "then", "time", "until", "while", ".", ":", "[", "alias",
    "bg", "bind", "break", "builtin", "cd", "command", "continue", "declare", "dirs", "disown",
    "echo", "enable", "eval", "exec", "exit", "export", "fc", "fg", "getopts", "hash", "history",
    "jobs", "kill", "let", "local", "logout", "newgrp", "popd", "printf", "pushd", "pwd", "read",
    "readonly", "return", "set", "shift", "shopt", "source", "suspend", "test", "times", "trap",
    "type", "typeset", "ulimit", "umask", "unalias", "unset", "wait",
})


def split_words(text: str) -> list[list[tuple[str, bool]]] | None:
    """Split ``text`` into words of (segment, quoted) parts if no shell syntax needs a shell.

    Returns None as soon as anything the simple grammar of the module
    docstring does not cover appears.  Quotes are removed from segments.
    """
    words: list[list[tuple[str, bool]]] = []
    current: list[tuple[str, bool]] | None = None
    pos, end = 0, len(text)
    match = _PART.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            return None
        part = m.group()
        pos = m.end()
        first = part[0]
        if first in _BLANK:
            current = None
            continue
        if current is None:
            current = []
            words.append(current)
        if first == "'" or first == '"':
            current.append((part[1:-1], True))
        else:
            current.append((part, False))
    return words


def direct_argv(text: str) -> list[str] | None:
    """The argv ``text`` means if it can run without a shell, else None.

    >>> direct_argv("gzip -9 'my file.txt'")
    ['gzip', '-9', 'my file.txt']
    >>> direct_argv("ls *.txt") is None
    True
    """
    words = split_words(text)
    if not words:
        return None
    first = words[0]
    if any("=" in seg for seg, quoted in first if not quoted):
        return None
    argv = ["".join(seg for seg, _ in w) for w in words]
    if argv[0] in SHELL_WORDS or not argv[0]:
        return None
    return argv


# -- building the argv of one run ---------------------------------------------

# A reference to the script's positional parameters ($1, ${2}, $@, $*, $#; not
# ${#name}, a length), or what hides one: a backslash escape, a single-quoted
# string (awk '{print $1}' reads its own $1), a double quote opening or closing.
_REF = r"\$(?:[1-9@*#]|\{(?:[1-9@*]|#[}@*]))"
_OUTSIDE = re.compile(r"""\\.|'[^']*(?:'|\Z)|"|""" + _REF, re.S)
_INSIDE = re.compile(r"""\\.|"|""" + _REF, re.S)  # within "...": a ' is a plain character


def mentions_arguments(script: str) -> bool:
    """Whether a shell script refers to its positional parameters itself.

    ``$1``..``$9``, ``$@``, ``$*`` and ``$#`` count where the shell expands
    them: not inside single quotes, nor escaped as ``\\$1``.

    >>> mentions_arguments('cp "$1" "$1.bak"')
    True
    >>> mentions_arguments("awk '{print $1}' | sort")
    False
    """
    if "$" not in script:
        return False
    pos, quoted = 0, False
    while True:
        m = (_INSIDE if quoted else _OUTSIDE).search(script, pos)
        if m is None:
            return False
        token = m.group()
        if token[0] == "$":
            return True
        if token == '"':
            quoted = not quoted
        pos = m.end()


def is_command(fn: Any) -> bool:
    """Whether ``fn`` is a command: a ``str``, a list or tuple, or has ``__anypool_command__``.

    A list or tuple is taken for an argv whatever it holds (it cannot be
    called anyway): :func:`prepare` checks its items as it runs, so
    ``backend="auto"`` takes the same argvs as ``backend="subprocess"`` and
    fails the others with the same errors.
    """
    return isinstance(fn, (str, list, tuple)) or hasattr(fn, "__anypool_command__")


def _as_arg(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, os.PathLike)):
        return os.fsdecode(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(
        f"command arguments must be str, bytes, os.PathLike or numbers, not {type(value).__name__}: {value!r}"
    )


def command_text(argv: list[str] | tuple[str, ...]) -> str:
    """An argv as one shell-quoted line, for messages and logs."""
    return shlex.join(argv)


def prepare(fn: Any, args: tuple[Any, ...], slot: int = 0) -> Spec:
    """Turn a command and a task's arguments into the :class:`Spec` to execute.

    Raises:
        TypeError: ``fn`` is not a command, or an argument has an unsupported type.
        ValueError: the command is empty.
    """
    if isinstance(fn, str):
        extra = [_as_arg(a) for a in args]
        direct = direct_argv(fn)
        if direct is not None:
            argv = direct + extra
            return Spec(argv, fn if not extra else f"{fn} {command_text(extra)}", False)
        if not fn.strip():
            raise ValueError("the command is empty")
        if not extra:
            return Spec([SHELL, "-c", fn], fn, True)
        script = fn if mentions_arguments(fn) else f'{fn} "$@"'
        return Spec([SHELL, "-c", script, "sh", *extra], f"{fn} {command_text(extra)}", True)
    if isinstance(fn, (list, tuple)):
        if not fn:
            raise ValueError("the command is empty")
        argv = [_as_arg(a) for a in fn]
        argv.extend(_as_arg(a) for a in args)
        return Spec(argv, command_text(argv), False)
    hook = getattr(fn, "__anypool_command__", None)
    if hook is None:
        raise TypeError(
            f"the subprocess backend runs commands (a str, a list of str, or an object with "
            f"__anypool_command__), not {fn!r}"
        )
    made = hook(args, slot)
    if isinstance(made, Spec):
        return made
    return prepare(made, (), slot)
