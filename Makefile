# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install bench clean

demo: install
	$(BIN)/wattledger serve --demo --polling-interval 5

test: install
	$(BIN)/mypy
	$(BIN)/python -m pytest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

bench: install
	$(BIN)/python bench/bench_poll_store.py
	$(BIN)/python bench/bench_projection.py
	$(BIN)/python bench/bench_relay.py

clean:
	rm -rf $(VENV) build *.egg-info
