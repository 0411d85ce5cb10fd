# anypool: `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest browser bench bench-quick bench-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) examples/demo.py

lint: install
	$(VENV)/bin/ruff check src tests $(wildcard examples benchmarks)

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(PY) -m pytest -q

# Headless Chromium for the report's browser tests (tests/observers/test_report_browser.py),
# from Debian's packages: quick when present, installed when missing (as root, or with
# password-less sudo), and a loud failure when it cannot be.
CHROMIUM ?= chromium
browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
	  echo "make: $(CHROMIUM) is missing; installing Debian's chromium package for the browser tests" >&2; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "make: cannot install chromium: not root and no password-less sudo." \
	            "Install it yourself: apt-get install -y chromium" >&2; exit 1; fi; \
	  command -v apt-get >/dev/null 2>&1 || { echo "make: cannot install chromium: no apt-get here" >&2; exit 1; }; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
	    || { $$sudo apt-get update -q >/dev/null && \
	         $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
	    || { echo "make: apt-get could not install chromium" >&2; exit 1; }; \
	  command -v $(CHROMIUM) >/dev/null 2>&1 \
	    || { echo "make: chromium was installed but $(CHROMIUM) is still not on PATH" >&2; exit 1; }; \
	}

test: lint typecheck browser
	ANYPOOL_REQUIRE_BROWSER=1 $(MAKE) pytest

# Benchmarks: the peers live in their own virtualenv (benchmarks/requirements.txt),
# never in the test environment.  BENCH_ARGS passes options, e.g.
# `make bench BENCH_ARGS="--only process-map,imap --repeats 7"`.
BENCH_VENV := benchmarks/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e . -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench-tools:
	@command -v parallel >/dev/null 2>&1 || apt-get install -y -q parallel >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q parallel >/dev/null 2>&1) \
		|| echo "GNU parallel could not be installed: its rows will be skipped"

# Byte-compiled first, as a regular (non-editable) install would be: with
# PYTHONDONTWRITEBYTECODE set, every `anypool` command would otherwise compile
# the package from source again (~30 ms per start, visible in the shell case).
bench: $(BENCH_STAMP) bench-tools
	$(BENCH_VENV)/bin/python -m compileall -q src
	$(BENCH_VENV)/bin/python -m benchmarks $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m benchmarks --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache artifacts
