# ShiftDesk: `make run` and `make test` work on a fresh Debian 12 machine as root.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SHIFTDESK_IMAGES_DIR ?= $(CURDIR)/images
export SHIFTDESK_CACHE_DIR ?= $(CURDIR)/.cache
RUN_DATA ?= $(CURDIR)/.cache/run-data
RUN_INSTANCE ?= demo
# the integration tests that also run on SQLite in `make test` (all of them run on PostgreSQL):
# crash convergence, a host restart, the first desktops
SQLITE_INTEGRATION := tests/integration/test_crash.py tests/integration/test_cold_start.py \
	tests/integration/test_desktops.py

.PHONY: run test setup host venv portal lint unit integration e2e bench clean

setup: host venv portal

host:
	bash scripts/setup-host.sh

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# --no-compile: byte-compiling every installed module took half of a fresh venv's two minutes;
	# Python compiles what it imports, once
	$(BIN)/pip install -q --disable-pip-version-check --no-compile -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-compile --no-deps -e .
	# libnftables' Python binding is Debian's (python3-nftables, not on PyPI): link it in
	ln -sfn /usr/lib/python3/dist-packages/nftables \
	  "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nftables"
	touch $@

venv: $(BIN)/.installed

agents/node_modules/.installed: agents/package.json agents/package-lock.json
	cd agents && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

portal: agents/node_modules/.installed

run: setup
	SHIFTDESK_DATA_DIR=$(RUN_DATA) SHIFTDESK_INSTANCE=$(RUN_INSTANCE) bash scripts/demo.sh

# Python programs of the agent-desktop image without a .py name (ruff lints them when named)
GUEST_PROGRAMS = images/guest-agent/shiftdesk-guest-agent images/recipes/agent-desktop/rootfs/usr/lib/shiftdesk/apply-apps

lint: venv
	$(BIN)/ruff check controlplane tests bench images $(GUEST_PROGRAMS)
	$(BIN)/lint-imports
	$(BIN)/mypy

unit: venv
	BIN=$(BIN) bash scripts/unit-suites.sh

integration: setup
	$(BIN)/pytest -q tests/integration

e2e: setup
	$(BIN)/pytest -q tests/e2e

# e2e on SQLite (what `make run` uses); integration on PostgreSQL, then a subset of it on SQLite
test: setup
	$(BIN)/ruff check controlplane tests bench images $(GUEST_PROGRAMS)
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -q --durations=10 tests/e2e
	SHIFTDESK_TEST_DB=postgresql $(BIN)/pytest -q --durations=15 tests/integration
	$(BIN)/pytest -q $(SQLITE_INTEGRATION)
	BIN=$(BIN) bash scripts/unit-suites.sh

bench: setup
	$(BIN)/python bench/provision.py

clean:
	rm -rf $(VENV) .cache/run-data
