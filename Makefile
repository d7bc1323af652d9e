# The README's two commands: `make run` and `make test`. Both build .venv
# from pyproject.toml first, so they work on a fresh clone. `make run`
# installs what the service needs (its runtime dependencies); `make test`
# adds the test extras. Each step says what it does before it does it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed
# Where `make run` serves: hypercorn.toml's first bind.
BIND := $(shell sed -n 's/^bind *= *\["\([^"]*\)".*/\1/p' hypercorn.toml)

.PHONY: run test lint pytest browser bench check doctor smoke purge-idempotency clean

$(BIN)/python:
	@echo "== creating the virtual environment $(VENV) ($(PYTHON) -m venv)"
	@$(PYTHON) -m venv $(VENV)
	@echo "== upgrading pip in $(VENV)"
	@$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing quart_app and its runtime dependencies (pip install -e ., no test tools)"
	@$(BIN)/pip install --quiet -e .
	@touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing quart_app with the test extras (pip install -e '.[test]')"
	@$(BIN)/pip install --quiet -e '.[test]'
	@touch $(RUNTIME_STAMP) $(STAMP)

# Migrating first, in a process of its own, keeps Alembic out of the server
# (README "Operations"). python -m quart_app serve runs Hypercorn with
# hypercorn.toml, checks what it needs first and fails with one line and a
# non-zero status (README "Starting and stopping").
run: $(RUNTIME_STAMP)
	@echo "== migrating the database to head (python -m quart_app migrate)"
	@$(BIN)/python -m quart_app migrate
	@if [ -n "$$QUART_APP_ADMIN_KEY" ]; then \
		echo "== serving on http://$(BIND) (hypercorn.toml); admin key from QUART_APP_ADMIN_KEY"; \
	else \
		echo "== serving on http://$(BIND) (hypercorn.toml); no admin key in QUART_APP_ADMIN_KEY:" \
			"make one with .venv/bin/python -m quart_app keys create --user 0 --scope admin"; \
	fi
	@$(BIN)/python -m quart_app serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite on SQLite + local disk, and what a configuration changes on
# PostgreSQL + local disk and PostgreSQL + S3 where those can run, each with
# a status line (devtools/test_matrix.py, README "Running the tests").
# With PYTHONDONTWRITEBYTECODE set (as some sandboxes and images do) every
# server and CLI process the e2e tests start compiled the project's modules
# again, and every pytest process rewrote every test module: 0.3 s of CPU a
# start and 4 s a collection here. The suite writes its bytecode.
pytest: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m devtools.test_matrix

# The browser page's tests drive Debian's Chromium (tests/e2e/test_page.py;
# never `playwright install`, which downloads a browser). Installed here when
# missing and apt is usable (root); elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser tests will be skipped"

test: lint browser pytest

# Verify every stored file; `make check REPAIR=1` also removes orphans.
check: $(STAMP)
	$(BIN)/python -m quart_app check $(if $(REPAIR),--repair,)

# The environment check before a rollout (README "Operations").
doctor: $(RUNTIME_STAMP)
	$(BIN)/python -m quart_app doctor

# A short end-to-end run against a running server: make smoke URL=... KEY=...
smoke: $(RUNTIME_STAMP)
	@[ -n "$(URL)" ] && [ -n "$(KEY)" ] || { echo "usage: make smoke URL=http://127.0.0.1:8000 KEY=<admin key>"; exit 2; }
	$(BIN)/python -m quart_app smoke $(URL) --key $(KEY)

purge-idempotency: $(STAMP)
	$(BIN)/python -m quart_app purge-idempotency

# wrk (Debian's package) drives the load tests; without it they are skipped.
bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "wrk could not be installed: the load figures will be skipped"
	$(BIN)/python -m bench $(if $(QUICK),--quick,)
	$(BIN)/python -m bench.imports $(if $(QUICK),--quick,)
	$(BIN)/python -m bench.deployments $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
