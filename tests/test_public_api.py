"""The public surface is anypool/__init__.py, exactly, and every name in it is documented."""

from __future__ import annotations

import inspect
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import anypool


def test_all_is_exact_and_sorted() -> None:
    public = {n for n in dir(anypool) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(anypool, n))}
    assert set(anypool.__all__) == public - modules
    # isort-style, as ruff keeps it: CONSTANTS, then Classes, then functions
    def kind(n: str) -> tuple[int, str]:
        return (0 if n.isupper() else 1 if n[0].isupper() else 2, n)

    assert list(anypool.__all__) == sorted(anypool.__all__, key=kind)


def test_public_names_say_they_live_in_anypool() -> None:
    """Tracebacks and pickles name the path users import from."""
    for name in anypool.__all__:
        obj = getattr(anypool, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "anypool", name


def test_every_public_name_and_method_has_a_docstring() -> None:
    for name in anypool.__all__:
        obj = getattr(anypool, name)
        if name == "POOL_DEFAULT":
            continue
        assert (obj.__doc__ or "").strip(), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member):
                    continue
                assert (member.__doc__ or "").strip(), f"{name}.{attr}"


def test_errors_pickle_by_their_public_path() -> None:
    err = anypool.WorkerCrashed("gone", -9, 123)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is anypool.WorkerCrashed
    assert (str(back), back.exitcode, back.pid) == ("gone", -9, 123)
    assert b"anypool" in pickle.dumps(err)


def _fresh_python(code: str) -> str:
    """What ``code`` printed, run in a new interpreter (which must exit 0)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_importing_anypool_leaves_multiprocessing_and_asyncio_unloaded() -> None:
    """Threads and shell commands start without the ~40 ms of those imports; WorkerCrashed still works."""
    code = (
        "import sys, pickle\n"
        "import anypool, anypool.cli.run, anypool.backends.processes.worker\n"
        "assert 'multiprocessing' not in sys.modules, 'multiprocessing'\n"
        "assert 'asyncio' not in sys.modules, 'asyncio'\n"
        "from concurrent.futures.process import BrokenProcessPool\n"
        "from anypool.errors import WorkerCrashed, is_worker_crash\n"
        "assert WorkerCrashed is anypool.WorkerCrashed and issubclass(WorkerCrashed, BrokenProcessPool)\n"
        "assert is_worker_crash(WorkerCrashed('gone')) and not is_worker_crash(ValueError())\n"
        "print('ok')\n"
    )
    assert _fresh_python(code) == "ok\n"


def test_the_command_line_starts_without_the_heavy_stdlib_modules() -> None:
    """`anypool run` is started once per shell loop iteration: each of these cost 2-10 ms of its start.

    (dataclasses brings inspect and ast; json, ctypes, pickle and random are
    imported where a job log, shared memory, processes or retries need them.)
    """
    code = (
        "import sys\n"
        "from anypool.cli import build_parser\n"
        "build_parser('run').parse_args(['run', 'true', ':::', '1'])\n"
        "import anypool.backends.subprocesses, anypool.backends.threads\n"
        "heavy = {'dataclasses', 'inspect', 'ast', 'json', 'ctypes', 'pickle', 'random', 'sqlite3',\n"
        "         'tqdm', 'multiprocessing', 'asyncio'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    assert _fresh_python(code) == "[]\n"


def test_an_importable_function_reaches_processes_by_name_without_cloudpickle() -> None:
    """cloudpickle (1.6-5 ms of a process pool's start) is loaded only for what pickle cannot name."""
    tests = str(Path(__file__).resolve().parent)
    code = (
        f"import sys\nsys.path.insert(0, {tests!r})\n"
        "import anypool, tasks\n"
        "with anypool.Pool('process', 2) as pool:\n"
        "    print(sum(pool.map(tasks.square, range(100))), 'cloudpickle' in sys.modules)\n"
        "    print(pool.submit(lambda x: x + 1, 1).result(), 'cloudpickle' in sys.modules)\n"
    )
    assert _fresh_python(code) == "328350 False\n2 True\n"


def test_lazy_share_is_the_same_function_under_its_public_name() -> None:
    from anypool.sharedmem import share

    assert anypool.share is share
    assert share.__module__ == "anypool"
    assert "share" in dir(anypool)


_OTHER_PYTHONS = ["3.10", "3.12", "3.13"]  # besides the one running the tests


def _python(version: str) -> str | None:
    """An interpreter of that version: pyenv's own (its shims may point elsewhere), else on PATH."""
    found = sorted(Path("~/.pyenv/versions").expanduser().glob(f"{version}.*/bin/python{version}"))
    return str(found[-1]) if found else shutil.which(f"python{version}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", _OTHER_PYTHONS)
def test_every_module_imports_on_each_supported_python(version: str) -> None:
    """requires-python says >= 3.10: a 3.11-only name (typing.Self) once broke every import there.

    Only the modules' own imports are checked (the interpreter has none of
    the dependencies, which anypool imports lazily); skipped where that
    Python is not installed.
    """
    exe = _python(version)
    if exe is None:
        pytest.skip(f"no python{version} here")
    code = ("import importlib, pkgutil, anypool\n"
            "for m in pkgutil.walk_packages(anypool.__path__, 'anypool.'):\n"
            "    if not m.name.endswith(('__main__', 'dask_cluster', 'dask_worker')):\n"
            "        importlib.import_module(m.name)\n"
            "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(anypool.__file__).parents[1])}
    out = subprocess.run([exe, "-W", "error", "-c", code], capture_output=True, text=True, env=env,
                         timeout=100)
    assert (out.returncode, out.stdout) == (0, "ok\n"), out.stderr
