# Two commands: `make demo` and `make test`. Each does its own set-up, idempotently.
VENV := .venv
BIN := $(VENV)/bin
SRC := gatewayd drivers devcloud

.PHONY: setup test-setup lint test demo bench reliability clean install uninstall

setup:
	@bash scripts/bootstrap.sh

test-setup:
	@bash scripts/bootstrap.sh --test

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(SRC)

test: test-setup lint
	$(BIN)/pytest

# `make demo ARGS="--status-port 0 --dir demo"` passes options on to `gatewayd demo`
demo: setup
	$(BIN)/gatewayd demo $(ARGS)

bench: setup
	$(BIN)/python -m bench

# The long part of the reliability suite (see RELIABILITY.md): faults many times, soak, fleet,
# long fuzz runs. GATEWAYD_SOAK_S (default 600), GATEWAYD_FAULT_TRIALS, GATEWAYD_FUZZ_S,
# GATEWAYD_SCHEMA_S and GATEWAYD_FLEET shorten or lengthen it.
reliability: setup
	$(BIN)/pytest -m reliability -rP tests/reliability

# On a gateway box: `sudo make install`, then see README "Install on a gateway box".
PREFIX ?= /opt/gatewayd
DESTDIR ?=

install:
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" bash scripts/install.sh

uninstall:
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" bash scripts/uninstall.sh

clean:
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache node_modules
