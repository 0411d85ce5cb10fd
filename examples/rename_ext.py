"""Renaming every ``*.txt`` to ``*.csv`` with pathlib, one file per task.

Seed note 002::

    def unify_ext_with_pathlib(path):
        for fpath in Path(path).glob('*.txt'):
            fpath.rename(fpath.with_suffix('.csv'))

The anypool way: ``anypool.map(to_csv, Path(path).glob('*.txt'))``: the
glob is read lazily and each rename is a task.  On a local disk a rename
takes microseconds, so the plain loop is just as fast (``auto`` sees tiny
tasks and keeps them on threads, in batches); a pool pays off where each
file operation waits on something, here simulated by a 5 ms delay, as on a
network file system.

Run: ``python examples/rename_ext.py``
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anypool

FILES = 200


def unify_ext_with_pathlib(path: str) -> None:
    """The seed's version."""
    for fpath in Path(path).glob("*.txt"):
        fpath.rename(fpath.with_suffix(".csv"))


def to_csv(fpath: Path) -> str:
    return fpath.rename(fpath.with_suffix(".csv")).name


def to_csv_remote(fpath: Path) -> str:
    time.sleep(0.005)  # the round trip a network file system adds
    return to_csv(fpath)


def make_files(root: Path) -> None:
    for i in range(FILES):
        (root / f"report-{i:03}.txt").write_text(f"{i}\n")


def timed(label: str, root: Path, run: Callable[[], object]) -> None:
    make_files(root)
    t0 = time.perf_counter()
    run()
    took = time.perf_counter() - t0
    left = len(list(root.glob("*.txt")))
    done = len(list(root.glob("*.csv")))
    print(f"{label}: {took * 1e3:.0f} ms, {done} .csv and {left} .txt files")
    for f in root.iterdir():
        f.unlink()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        timed("the seed's loop", root, lambda: unify_ext_with_pathlib(tmp))
        timed("anypool.map(to_csv, glob)", root, lambda: anypool.map(to_csv, root.glob("*.txt")))
        timed("a loop with 5 ms per file", root, lambda: [to_csv_remote(p) for p in root.glob("*.txt")])
        timed("anypool.map with 5 ms per file, 20 threads", root,
              lambda: anypool.map(to_csv_remote, root.glob("*.txt"), backend="thread", workers=20))


if __name__ == "__main__":
    main()
