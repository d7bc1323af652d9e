# The README's two commands: `make run` and `make test`. Both build .venv
# from pyproject.toml first, so they work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint pytest browser bench check purge-idempotency clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# python -m quart_app serve runs Hypercorn with hypercorn.toml, checks what it
# needs first and fails with one line and a non-zero status (README "Operations").
run: $(STAMP)
	$(BIN)/python -m quart_app serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

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

purge-idempotency: $(STAMP)
	$(BIN)/python -m quart_app purge-idempotency

# wrk (Debian's package) drives the load tests; without it they are skipped.
bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "wrk could not be installed: the load figures will be skipped"
	$(BIN)/python -m bench $(if $(QUICK),--quick,)
	$(BIN)/python -m bench.imports $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
