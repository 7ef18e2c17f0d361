# Everything a fresh machine needs: `make test` and `make demo` create the
# virtual environment themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo lint typecheck pytest protos clean tools deb lintian integration fuzz soak bench

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
DEB := build/edge-agent_$(VERSION)-1_amd64.deb
DEB_STAMP := $(VENV)/.deb-stamp

# A separate environment for benchmarks against torch/Opacus: the agent never needs torch.
# torch==2.13.0 is pinned because the index here serves that CPU build; an unpinned torch
# would pull gigabytes of CUDA packages.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp
# Flower for bench/round_latency.py, in an environment of its own: flwr 1.42.0 needs
# protobuf < 7 and the agent >= 7.35, so they cannot share .venv-bench. flwr asks for
# certifi >= 2026.10.19, newer than the index serves: its other requirements come from
# bench/flower_requirements.txt (certifi relaxed) and flwr itself without dependencies.
FLOWER_VENV := .venv-flower
FLOWER_STAMP := $(FLOWER_VENV)/.installed-stamp

# Both distributions of this repository: the daemon (edge-agent) and the sponsor's
# tools (edge-agent-sponsor, sponsor/), which the tests and the demo use.
$(STAMP): pyproject.toml sponsor/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" -e "./sponsor[demo]"
	touch $(STAMP)

test: tools lint typecheck pytest

# systemd-analyze, systemd-sysusers and systemd-tmpfiles check the unit files
# in the test suite; a clean Debian machine (CI runs as root) gets them here.
tools:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; \
	  else echo "make: systemd-analyze is missing: install the Debian package 'systemd'" >&2; exit 1; fi; }

lint: $(STAMP)
	$(BIN)/ruff check agent sponsor tests protos $(wildcard bench) $(wildcard fuzz)

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

$(BENCH_STAMP): pyproject.toml sponsor/pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0 opacus==1.6.0
	$(BENCH_VENV)/bin/python -m pip install --quiet -e . -e ./sponsor
	touch $(BENCH_STAMP)

$(FLOWER_STAMP): bench/flower_requirements.txt
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOWER_VENV)/bin/python -m pip install --quiet -r bench/flower_requirements.txt
	$(FLOWER_VENV)/bin/python -m pip install --quiet --no-deps flwr==1.42.0
	touch $(FLOWER_STAMP)

# DP-SGD throughput: compiled batch vs Scan wrapper vs Opacus, 1 and 2 threads (~5 min).
# Round latency with negligible compute, edge-agent vs Flower, and a large result stream
# (15 min measured on the shared 2-core machine, Flower capped at 5 timed rounds; make bench 17 min in all).
bench: $(BENCH_STAMP) $(FLOWER_STAMP)
	$(BENCH_VENV)/bin/python -W ignore::UserWarning bench/dp_throughput.py
	$(BENCH_VENV)/bin/python bench/round_latency.py --flower-rounds 5

demo: $(STAMP)
	$(BIN)/edge-sponsor demo

# Longer runs than `make test` does: the atheris harnesses for 10 minutes each
# with random seeds.
fuzz: $(STAMP)
	$(BIN)/python fuzz/package_verifier.py -max_total_time=600 -rss_limit_mb=2048
	$(BIN)/python fuzz/task_request.py -max_total_time=600 -rss_limit_mb=2048

# The long reliability profile: many more fuzzing examples, 50 kill cycles, 5 minutes of load.
soak: $(STAMP)
	HYPOTHESIS_PROFILE=soak $(BIN)/pytest tests/fuzz -p no:cacheprovider --timeout 7200
	CRASH_CYCLES=50 $(BIN)/pytest tests/reliability/test_crash_consistency.py -s --timeout 3600
	$(BIN)/python bench/load.py --seconds 300

$(DEB_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,deb]"
	touch $(DEB_STAMP)

# The .deb: every run-time wheel (cp311 manylinux) is shipped, and postinst
# builds /usr/lib/edge-agent/venv from them with the target's own python3.
deb: $(DEB)

$(DEB): $(DEB_STAMP) pyproject.toml $(wildcard packaging/* packaging/scripts/* systemd/*) docs/operations.md $(shell git ls-files agent)
	# build/lib is setuptools' own staging: a module deleted from agent/ must not linger there.
	rm -rf build/deb build/lib build/bdist.*
	mkdir -p build/deb/doc
	$(BIN)/python -m pip wheel --quiet --wheel-dir build/deb/wheels .
	# The hospital's install is the daemon only: not the sponsor's tools (sponsor/) nor their dependencies.
	@! ls build/deb/wheels | grep -iE '^(edge_agent_sponsor|rich|scikit_learn)-' || \
	  { echo "make: build/deb/wheels carries the sponsor's tools or their dependencies" >&2; exit 1; }
	gzip -9n -c packaging/changelog > build/deb/doc/changelog.Debian.gz
	EDGE_AGENT_VERSION=$(VERSION) $(BIN)/nfpm package --config packaging/nfpm.yaml --packager deb --target $@
	@ls -l $@

lintian: $(DEB)
	@command -v lintian >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian >/dev/null; }
	lintian --fail-on error $(DEB)

# The .deb in a booted Debian container under systemd-nspawn (root only;
# exits 3 with the reason where this machine cannot boot one).
integration: $(DEB)
	bash tests/integration/run.sh $(DEB)

# Regenerate agent/api from protos/ after editing a .proto.
protos: $(STAMP)
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(FLOWER_VENV) build .pytest_cache .mypy_cache .ruff_cache *.egg-info sponsor/*.egg-info
