"""The backend registry: name → class, imported on first use.

Backends are looked up by name (``"thread"``, ``"process"``, ...).  Each lives
in a module named for what it runs and is imported only when asked for, so
``import anypool`` stays light and a backend whose extra is missing fails
only when chosen, with the command that installs it.  Third-party backends
register under the ``anypool.backends`` entry-point group.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import BackendUnavailable

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["available_backends", "get_backend"]

_BUILTIN: dict[str, tuple[str, str | None]] = {
    # name: ("module:Class", the pip extra it needs)
    "inline": ("anypool.backends.inline:InlineBackend", None),
    "thread": ("anypool.backends.threads:ThreadBackend", None),
    "async": ("anypool.backends.coroutines:AsyncBackend", None),
    "process": ("anypool.backends.processes:ProcessBackend", None),
    "process+async": ("anypool.backends.processes:AsyncProcessBackend", None),
    "subprocess": ("anypool.backends.subprocesses:SubprocessBackend", None),
    "dask": ("anypool.backends.dask_cluster:DaskBackend", "dask"),
}
_cache: dict[str, type[Backend]] = {}


def _targets() -> dict[str, tuple[str, str | None]]:
    # importlib.metadata costs tens of milliseconds to import and scan: only
    # for names that are not built in (the command line starts in ~0.1 s)
    from importlib.metadata import entry_points

    found = dict(_BUILTIN)
    for ep in entry_points(group="anypool.backends"):
        found.setdefault(ep.name, (ep.value, None))
    return found


def get_backend(name: str) -> type[Backend]:
    """Return the backend class registered as ``name``, importing it if needed.

    Raises:
        BackendUnavailable: the name is unknown (the message lists the known
            ones), or the backend's optional dependency is not installed (the
            message gives the install command).
    """
    cached = _cache.get(name)
    if cached is not None:
        return cached
    targets = _BUILTIN if name in _BUILTIN else _targets()
    if name not in targets:
        known = ", ".join(sorted(["auto", *targets]))
        raise BackendUnavailable(f"unknown backend {name!r}; known backends: {known}")
    target, extra = targets[name]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f": pip install 'anypool[{extra}]'" if extra else ""
        raise BackendUnavailable(
            f"backend {name!r} needs a package that is not installed ({exc.name or exc}){hint}"
        ) from exc
    cls: type[Backend] = getattr(module, attr)
    _cache[name] = cls
    return cls


def available_backends() -> dict[str, str | None]:
    """Every known backend name, with None if usable here or the reason it is not."""
    out: dict[str, str | None] = {"auto": None}
    for name in sorted(_targets()):
        try:
            get_backend(name)
        except BackendUnavailable as exc:
            out[name] = str(exc)
        else:
            out[name] = None
    return out
