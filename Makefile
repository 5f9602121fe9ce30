# dragoman: `make demo` runs the demo, `make test` runs every check. Both set up what they
# need on a fresh machine (a virtual environment in .venv, pinned dependencies).

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	echo $$p; break; fi; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
SOFTHSM_MODULE ?= /usr/lib/softhsm/libsofthsm2.so

.PHONY: all demo test lint typecheck unit bench clean docs screenshots softhsm chromium haproxy nginx wrk

all: test

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is needed" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dragoman demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/dragoman settings-doc > docs/settings.md

screenshots: $(STAMP) chromium
	$(BIN)/python tools/screenshots.py

# The PKCS#11 tests run against SoftHSM2 (Debian's softhsm2). Installed here when missing and
# running as root; otherwise the way to install it is printed, and those tests skip locally
# (under CI=true they fail).
softhsm:
	@tools/need-package softhsm2 "$(SOFTHSM_MODULE)" "the PKCS#11 tests" "the PKCS#11 tests will skip (fail under CI)"

# The browser tests drive Debian's Chromium with Playwright (which cannot download its own
# browsers here). Installed like SoftHSM2 above; without it those tests skip locally and
# fail under CI=true.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@tools/need-package chromium "$(CHROMIUM)" "the browser tests" "the browser tests will skip (fail under CI)"

# tests/deploy checks the HAProxy example (deploy/haproxy/haproxy.cfg) with Debian's haproxy
# (`haproxy -c`). Installed like SoftHSM2 above; without it that test skips locally and fails
# under CI=true.
HAPROXY ?= /usr/sbin/haproxy
haproxy:
	@tools/need-package haproxy "$(HAPROXY)" "the HAProxy and failover tests" "those tests will skip (fail under CI)"

# pytest exits 5 when it collected nothing: that must fail loudly, never pass.
unit: $(STAMP) softhsm chromium haproxy nginx
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; \
	exit $$status

test: lint typecheck unit

# The benchmark (bench/README.md) loads with Debian's wrk and compares with Debian's nginx
# (a plain reverse proxy, and auth_request in front of a sidecar). Installed like SoftHSM2
# above; without wrk the benchmark cannot run, without nginx its nginx rows are skipped.
# `make test` needs nginx too: tests/decision runs the shipped deploy/nginx/ configuration
# (without it those tests skip locally and fail under CI=true).
WRK ?= /usr/bin/wrk
wrk:
	@tools/need-package wrk "$(WRK)" "the benchmark" "make bench cannot run"

NGINX ?= /usr/sbin/nginx
nginx:
	@tools/need-package nginx "$(NGINX)" "the nginx gateway tests and the benchmark's nginx rows" "those tests skip (fail under CI) and the benchmark skips its nginx rows"

# About 3 minutes (BENCH_ARGS=--quick: about 80 s); loopback only; bench/README.md.
bench: $(STAMP) wrk nginx
	DRAGOMAN_BENCH_NGINX=$(NGINX) $(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
