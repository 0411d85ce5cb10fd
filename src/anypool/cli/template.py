"""Command templates: ``{}`` and friends replaced by each job's arguments, safely quoted.

Replacement strings (``N`` is a source's number, from 1)::

    {}   {N}     the argument (with several sources, ``{}`` is all of them)
    {.}  {N.}    without its extension          dir/file.tar.gz -> dir/file.tar
    {/}  {N/}    its base name                  dir/file.tar.gz -> file.tar.gz
    {//} {N//}   its directory, as dirname(1)   dir/file.tar.gz -> dir   (file, dir/ -> .)
    {/.} {N/.}   base name without extension    dir/file.tar.gz -> file.tar
    {#}          the job number (from 1)
    {%}          the job slot (from 1 to -j)

A template without any of them gets the arguments appended.  Unknown
``{...}`` text is left alone.  An extension is what follows the last dot of
the base name, unless that dot starts it (``.bashrc`` has none; GNU parallel
would remove all of it).

**Quoting.**  In a shell template every substituted value is quoted for
``/bin/sh`` (``shlex.quote``), *including* a template that starts with
``{}``: ``anypool run {} ::: 'rm -rf ~'`` looks for a program named
``rm -rf ~`` instead of running it.  GNU parallel leaves that one case
unquoted; anypool does not (to run arguments as commands, say so:
``anypool run sh -c {} ::: ...``).  So arguments holding spaces, quotes,
``;``, ``|``, ``$(...)``, backquotes or globs reach the command as they are.
Do not put quotes around a replacement string yourself (``"{}"``): the value
would then carry the quoting characters.

With ``--no-shell`` the template is an argv: each word of the command (or,
for a single word, its shell-like split) is one argument, values are
substituted as they are, and no shell ever reads them.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from ..commands import SHELL_WORDS, Spec, split_words
from .inputs import Job

__all__ = ["Template", "TemplateError"]

_PLACEHOLDER = re.compile(r"\{(#|%|(\d*)(/\.|//|/|\.)?)\}")
_MARK = "AnYpOoLpLaCeHoLdEr{}Q"
_MARK_RE = re.compile(r"AnYpOoLpLaCeHoLdEr(\d+)Q")

Part = str | tuple[str, int | None, str]  # literal text, or (kind, source index, transform)


class TemplateError(ValueError):
    """The template cannot be used with these inputs (a usage error)."""


def _transform(value: str, how: str) -> str:
    if not how:
        return value
    slash = value.rfind("/")
    base = value[slash + 1:]
    if how == "/":
        return base
    if how == "//":
        # as dirname(1) and GNU parallel: trailing slashes are not a component's end
        # (dir/ -> .), doubled ones one separator (a//b -> a)
        path = value.rstrip("/")
        if not path:
            return "/" if value else "."
        cut = path.rfind("/")
        return "." if cut < 0 else path[:cut].rstrip("/") or "/"
    dot = base.rfind(".")
    stem = base[:dot] if dot > 0 else base
    if how == ".":
        return value[: slash + 1] + stem
    return stem  # "/."


def _parse(text: str, sources: int) -> list[Part]:
    parts: list[Part] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        token = m.group(1)
        if token in ("#", "%"):
            parts.append((token, None, ""))
        else:
            number, how = m.group(2), m.group(3) or ""
            index = None
            if number:
                n = int(number)
                if not 1 <= n <= sources:
                    have = f"{sources} input source" + ("s" if sources != 1 else "")
                    raise TemplateError(f"{m.group()} refers to input source {n}, but there "
                                        f"{'is' if sources == 1 else 'are'} {have}")
                index = n - 1
            parts.append(("value", index, how))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


class Template:
    """A command template, rendered per job (see the module docstring).

    Args:
        words: the command as given on the command line.
        sources: how many input sources feed it.
        shell: False for ``--no-shell`` (an argv, no shell at all).

    Raises:
        TemplateError: empty command, or ``{N}`` beyond the number of sources.
    """

    def __init__(self, words: list[str], sources: int, shell: bool = True) -> None:
        if not words or not "".join(words).strip():
            raise TemplateError("no command given")
        self.shell = shell
        self.sources = sources
        self.text = " ".join(words)
        self.__name__ = self.text  # what the pool's events and reports call this "function"
        self.uses_slot = "{%}" in self.text
        if shell:
            self._parts = _parse(self.text, sources)
            self._append = not any(isinstance(p, tuple) for p in self._parts)
            self._direct = self._direct_words()
        else:
            argv = shlex.split(words[0]) if len(words) == 1 else list(words)
            if not argv:
                raise TemplateError("no command given")
            self._words = [_parse(w, sources) for w in argv]
            self._append = not any(isinstance(p, tuple) for w in self._words for p in w)
            self._direct = None

    def description(self) -> dict[str, Any]:
        """What identifies the template for ``--resume``."""
        return {"command": self.text, "shell": self.shell}

    # -- rendering ------------------------------------------------------------

    def _values(self, part: tuple[str, int | None, str], job: Job, slot: int) -> list[str]:
        kind, index, how = part
        if kind == "#":
            return [str(job.seq)]
        if kind == "%":
            return [str(slot)]
        if index is not None:
            return [_transform(job.values[index], how)]
        return [_transform(v, how) for v in job.values]

    def command(self, job: Job, slot: int = 0) -> str:
        """The command line for ``job``: a shell command, or for ``--no-shell`` the argv quoted."""
        if not self.shell:
            return shlex.join(self.argv(job, slot))
        quote = shlex.quote
        out = []
        for p in self._parts:
            if isinstance(p, str):
                out.append(p)
            elif p[0] == "value":
                out.append(" ".join(quote(v) for v in self._values(p, job, slot)))
            else:
                out.extend(self._values(p, job, slot))
        if self._append:
            out.append(" ")
            out.append(" ".join(quote(v) for v in job.values))
        return "".join(out)

    def argv(self, job: Job, slot: int = 0) -> list[str]:
        """The argv for ``job`` (``--no-shell``, or a shell template that needs no shell)."""
        words = self._words if not self.shell else self._direct
        assert words is not None
        argv: list[str] = []
        for w in words:
            if len(w) == 1 and isinstance(w[0], tuple) and w[0][0] == "value" and w[0][1] is None:
                argv.extend(self._values(w[0], job, slot))  # a bare {} is one word per value
                continue
            argv.append("".join(p if isinstance(p, str) else " ".join(self._values(p, job, slot))
                                for p in w))
        if self._append:
            argv.extend(job.values)
        return argv

    def __call__(self, *args: Any) -> Any:
        """A template is a command, not a function: it runs on the ``subprocess`` backend."""
        raise TypeError(f"the command template {self.text!r} runs on the subprocess backend only")

    def __anypool_command__(self, args: tuple[Any, ...], slot: int) -> Spec:
        """The subprocess backend's hook: the command to run for ``args == (job,)``."""
        job = args[0]
        job.slot = slot
        text = self.command(job, slot) if self.shell else ""
        if self.shell and self._direct is None:
            from ..commands import SHELL

            return Spec([SHELL, "-c", text], text, True)
        argv = self.argv(job, slot)
        return Spec(argv, text or shlex.join(argv), False)

    # -- running without a shell when the template allows -----------------------

    def _direct_words(self) -> list[list[Part]] | None:
        """The template as argv word templates, if it provably needs no shell (else None).

        The rule of :mod:`anypool.commands`, applied once to the template with
        each replacement string standing for a plain word: replacement strings
        only outside quotes and not in the program's name.  With several
        sources, ``{}`` (all values) inside a larger word would split into
        several words under a shell, so such a template keeps the shell.
        """
        marks: list[tuple[str, int | None, str]] = []
        text_parts = []
        for p in self._parts:
            if isinstance(p, str):
                text_parts.append(p)
            else:
                text_parts.append(_MARK.format(len(marks)))
                marks.append(p)
        words = split_words("".join(text_parts))
        if not words:
            return None
        out: list[list[Part]] = []
        for n, w in enumerate(words):
            word: list[Part] = []
            for seg, quoted in w:
                if quoted:
                    if _MARK_RE.search(seg):
                        return None
                    word.append(seg)
                    continue
                if n == 0 and ("=" in seg or _MARK_RE.search(seg)):
                    return None
                pos = 0
                for m in _MARK_RE.finditer(seg):
                    if m.start() > pos:
                        word.append(seg[pos:m.start()])
                    mark = marks[int(m.group(1))]
                    if (mark[0] == "value" and mark[1] is None and self.sources > 1
                            and not (len(w) == 1 and seg == m.group())):
                        return None
                    word.append(mark)
                    pos = m.end()
                if pos < len(seg):
                    word.append(seg[pos:])
            out.append(word)
        program = "".join(p for p in out[0] if isinstance(p, str))
        if not program or program in SHELL_WORDS:
            return None
        return out
