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
	@if [ -f "$(SOFTHSM_MODULE)" ] && command -v softhsm2-util >/dev/null 2>&1; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing softhsm2 for the PKCS#11 tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends softhsm2 \
			|| echo "warning: could not install softhsm2; the PKCS#11 tests will skip (fail under CI)" >&2; \
	else \
		echo "SoftHSM2 is missing ($(SOFTHSM_MODULE)): the PKCS#11 tests will skip (fail under CI)." >&2; \
		echo "Install it with: sudo apt-get install softhsm2" >&2; \
	fi

# The browser tests drive Debian's Chromium with Playwright (which cannot download its own
# browsers here). Installed like SoftHSM2 above; without it those tests skip locally and
# fail under CI=true.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ -x "$(CHROMIUM)" ]; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
			|| echo "warning: could not install chromium; the browser tests will skip (fail under CI)" >&2; \
	else \
		echo "Chromium is missing ($(CHROMIUM)): the browser tests will skip (fail under CI)." >&2; \
		echo "Install it with: sudo apt-get install chromium" >&2; \
	fi

# tests/deploy checks the HAProxy example (deploy/haproxy/haproxy.cfg) with Debian's haproxy
# (`haproxy -c`). Installed like SoftHSM2 above; without it that test skips locally and fails
# under CI=true.
HAPROXY ?= /usr/sbin/haproxy
haproxy:
	@if [ -x "$(HAPROXY)" ]; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing haproxy for the deployment tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy \
			|| echo "warning: could not install haproxy; the HAProxy test will skip (fail under CI)" >&2; \
	else \
		echo "HAProxy is missing ($(HAPROXY)): the HAProxy test will skip (fail under CI)." >&2; \
		echo "Install it with: sudo apt-get install haproxy" >&2; \
	fi

# pytest exits 5 when it collected nothing: that must fail loudly, never pass.
unit: $(STAMP) softhsm chromium haproxy
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; \
	exit $$status

test: lint typecheck unit

# The benchmark (bench/README.md) loads with Debian's wrk and compares with Debian's nginx
# (a plain reverse proxy, and auth_request in front of a sidecar). Installed like SoftHSM2
# above; without wrk the benchmark cannot run, without nginx its nginx rows are skipped.
# Neither is needed by `make test`.
WRK ?= /usr/bin/wrk
wrk:
	@if [ -x "$(WRK)" ]; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing wrk for the benchmark"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk \
			|| echo "warning: could not install wrk; make bench cannot run" >&2; \
	else \
		echo "wrk is missing ($(WRK)): make bench cannot run." >&2; \
		echo "Install it with: sudo apt-get install wrk" >&2; \
	fi

NGINX ?= /usr/sbin/nginx
nginx:
	@if [ -x "$(NGINX)" ]; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing nginx for the benchmark's reference rows"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx \
			|| echo "warning: could not install nginx; the benchmark skips its nginx rows" >&2; \
	else \
		echo "nginx is missing ($(NGINX)): the benchmark skips its nginx rows." >&2; \
		echo "Install it with: sudo apt-get install nginx" >&2; \
	fi

# About 3 minutes (BENCH_ARGS=--quick: about 80 s); loopback only; bench/README.md.
bench: $(STAMP) wrk nginx
	DRAGOMAN_BENCH_NGINX=$(NGINX) $(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
