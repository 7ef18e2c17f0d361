# Everything a fresh machine needs: `make test` and `make demo` create the
# virtual environment themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo lint typecheck pytest protos clean fuzz soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check agent tests protos $(wildcard bench) $(wildcard fuzz)

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/edge-agent demo

# Longer runs than `make test` does: the atheris harnesses for 10 minutes each
# with random seeds, and the property-based RPC fuzzing with many more examples.
fuzz: $(STAMP)
	$(BIN)/python fuzz/package_verifier.py -max_total_time=600 -rss_limit_mb=2048
	$(BIN)/python fuzz/task_request.py -max_total_time=600 -rss_limit_mb=2048

soak: $(STAMP)
	HYPOTHESIS_PROFILE=soak $(BIN)/pytest tests/fuzz -p no:cacheprovider

# Regenerate agent/api from protos/ after editing a .proto.
protos: $(STAMP)
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache *.egg-info
