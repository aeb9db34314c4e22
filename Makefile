# One entry point for people and CI: `make test` creates .venv, installs what the tests need, runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch: the CPU build that lies on this machine's disk (pip finds it through its find-links).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= train,export,plots,ros2,openvino,dev
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The main job on the embedded synthetic world (about 10 minutes on 2 CPU cores, offline): synth -> train ->
# export (FP32/FP16/INT8) -> map -> localise the query video -> parity + latency -> $(DEMO_OUT)/report.md.
# Steps whose artifact exists are skipped (rerun resumes); rm -rf $(DEMO_OUT) to start over.
DEMO_OUT ?= demo
DEMO_ARGS ?=
demo: $(STAMP)
	$(PY) -m benchmarks.demo --out $(DEMO_OUT) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
