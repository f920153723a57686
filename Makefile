# Conduit: `make demo` runs the whole system on embedded defaults; `make test` runs the suite.
# Both install what they need first: Debian packages (when run as root), a pinned uv, the
# Python environment from uv.lock, and the npm packages from their package-lock.json files.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := openssh-server openssh-client postgresql chromium asciinema tshark nodejs npm procps iproute2 hyperfine time socat faketime gcc libc6-dev
NODE_DIRS := deploy/dev-idp broker/frontend
PYTEST_ARGS ?=

.PHONY: help deps system-deps python-deps node-deps demo test test-future check lint typecheck imports bench clean

help:
	@echo "make demo   - install what is needed, then run broker + dev IdP + demo data"
	@echo "make test   - install what is needed, then run checks and the whole test suite"
	@echo "make test-future - the whole suite with the clock a year ahead (no test may depend on today)"
	@echo "make check  - ruff, mypy --strict, import-linter"
	@echo "make bench  - benchmarks (results go to docs/benchmarks.md)"

deps: system-deps python-deps node-deps

system-deps:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "make: not root, skipping Debian packages ($(APT_PACKAGES))"; exit 0; fi; \
	missing=""; for p in $(APT_PACKAGES); do \
	  if ! dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed"; then missing="$$missing $$p"; fi; \
	done; \
	if command -v node >/dev/null && command -v npm >/dev/null; then missing=$$(echo "$$missing" | sed -e 's/ nodejs//' -e 's/ npm//'); fi; \
	if [ -n "$${missing// /}" ]; then \
	  echo "make: installing Debian packages:$$missing"; \
	  apt-get update -q; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "uv==$(UV_VERSION)"

python-deps: $(UV)
	$(UV) sync --frozen --quiet --compile-bytecode
	@# The agent runs under python -OO (no docstrings: ~2.5 MiB less); warm that bytecode too.
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -OO -c "import agents.cli, agents.tunnel"

node-deps:
	@for d in $(NODE_DIRS); do \
	  if [ ! -f $$d/node_modules/.package-lock.json ] || [ $$d/package-lock.json -nt $$d/node_modules/.package-lock.json ]; then \
	    (cd $$d && npm ci --no-audit --no-fund --loglevel=error); fi; \
	done
	cd broker/frontend && npm run -s build

demo: deps
	$(BIN)/conduit demo

check: python-deps lint typecheck imports

lint:
	$(BIN)/ruff check broker sessions policies agents tests bench
	$(BIN)/ruff format --check broker sessions policies agents tests bench

typecheck:
	$(BIN)/mypy

imports:
	$(BIN)/lint-imports

test: deps check
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The suite a year ahead: no test may depend on today's date. Not part of `make test`.
# Debian faketime (libfaketime, LD_PRELOAD) moves the wall clock of pytest and of every process
# it starts (IdP, sshd, agents, brokers) by the same offset (-f '+365d': one offset for all,
# where plain `faketime '+365d'` is not a date faketime parses). The monotonic clock stays
# real (--exclude-monotonic), or Python's lock timeouts wait a year; the preloaded
# faketime_fix.so works around libfaketime 0.9.10's EINVAL from Python's time.sleep then.
FAKETIME_FIX := $(TOOLS)/faketime_fix.so

$(FAKETIME_FIX): tests/harness/faketime_fix.c
	mkdir -p $(TOOLS)
	cc -shared -fPIC -O2 -Wall -Wextra -o $@ $< -ldl

test-future: deps $(FAKETIME_FIX)
	LD_PRELOAD=$(abspath $(FAKETIME_FIX)) faketime -m --exclude-monotonic -f '+365d' \
	  $(BIN)/pytest -q $(PYTEST_ARGS)

bench: deps
	$(BIN)/python bench/oidc_signin.py --sign-ins 200 --write docs/benchmarks.md

clean:
	rm -rf $(VENV) $(TOOLS) .demo .pytest_cache .mypy_cache .ruff_cache broker/static/vendor
	for d in $(NODE_DIRS); do rm -rf $$d/node_modules; done
