# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned in the same install command as everything that depends on it, so the local
# CPU wheel is taken instead of a multi-GB CUDA build. uv installs (in parallel, byte-compiled
# as pip would); it does not read pip's configuration, so pip's find-links (where the local
# wheels lie) are passed on.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= train,index,service,dev
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help venv demo test lint format bench bench-gpu clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode \
		$(addprefix --find-links ,$(FIND_LINKS)) "$(TORCH_PIN)" -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)  ## create or update the virtual environment

demo: $(STAMP)  ## train a tiny LexVLA, index generated images and serve them
	$(VENV)/bin/lexvla demo $(ARGS)

# Tests run in TEST_WORKERS processes; a module's tests stay in one (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(STAMP)  ## run all tests (CPU, offline) on TEST_WORKERS processes
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)  ## apply ruff's formatting and fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)  ## run the CPU benchmarks (docs/benchmarks.md: which results page gets each)
	$(PY) bench/encode.py

# One GPU, <= 8 minutes: every full-size measurement (docs/results-training.md says how to read it).
BENCH_OUT ?= bench-results/gpu-$(shell date +%Y%m%d-%H%M%S)
bench-gpu: $(STAMP)  ## full-size GPU benchmarks in one go -> BENCH_OUT/results.{json,md}
	$(PY) bench/gpu.py --out $(BENCH_OUT) $(ARGS)

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
