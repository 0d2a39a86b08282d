# Two commands: `make demo` and `make test`. Each does its own set-up, idempotently.
VENV := .venv
BIN := $(VENV)/bin
SRC := gatewayd drivers devcloud

.PHONY: setup lint test demo bench reliability clean

setup:
	@bash scripts/bootstrap.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(SRC)

test: lint
	$(BIN)/pytest

demo: setup
	$(BIN)/gatewayd demo

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache node_modules
