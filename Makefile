# Two commands do all the set-up on a fresh machine:
#   make run    set up, then train the default experiment
#   make test   set up, then run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build of torch is pinned and installed first, so nothing pulls a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: setup run test test-quick lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m runner $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-quick: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

# Benchmarks print ratios against peers measured in the same run and write BENCHMARKS.md.
bench: setup
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/overhead.py
	$(PY) bench/footprint.py
	$(PY) bench/trainer_speed.py
	$(PY) bench/logger_cost.py
	$(PY) bench/sweep.py --workload allreduce
	$(PY) bench/sweep.py --workload train
	$(PY) bench/warm.py
	$(PY) bench/warm_script.py
	$(PY) bench/search.py
	$(PY) bench/parent.py
	$(PY) bench/start.py
	$(PY) bench/stress_warm.py
