"""anypool's benchmark suite: anypool and its peers side by side, in one run.

``python -m benchmarks`` (or ``make bench``) runs every case of
``benchmarks.cases``; ``--quick`` runs a small-scale smoke version;
``--report FILE.json`` prints the tables of an earlier run again.  The
method (repeats, pairing, medians, spread) is described in
``docs/benchmarks.md``.

Modules: ``harness`` (running, pairing, tables, JSON), ``cases`` (what is
measured and the targets), ``work`` (the task functions, importable by
worker processes), ``child`` (the process that runs one measurement).
"""
