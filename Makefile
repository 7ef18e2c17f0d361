# Everything a fresh machine needs: `make test` and `make demo` create the
# virtual environment themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo lint typecheck pytest protos clean bench

# A separate environment for benchmarks against torch/Opacus: the agent never needs torch.
# torch==2.13.0 is pinned because the index here serves that CPU build; an unpinned torch
# would pull gigabytes of CUDA packages.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check agent tests protos $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0 opacus==1.6.0
	$(BENCH_VENV)/bin/python -m pip install --quiet -e .
	touch $(BENCH_STAMP)

# DP-SGD throughput: compiled batch vs Scan wrapper vs Opacus, 1 and 2 threads (~5 min).
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -W ignore::UserWarning bench/dp_throughput.py

demo: $(STAMP)
	$(BIN)/edge-agent demo

# Regenerate agent/api from protos/ after editing a .proto.
protos: $(STAMP)
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build .pytest_cache .mypy_cache .ruff_cache *.egg-info
