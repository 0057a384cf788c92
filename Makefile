# One set of commands for developers, the README and CI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench bench-micro clean

# The virtualenv is (re)built whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench,dev]'
	touch $(STAMP)

install: $(STAMP)

# Embedded Valkey + PostgreSQL + the bundled mock upstream + the proxy on :8000.
run: $(STAMP)
	$(BIN)/cognitude serve --with-mock

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check cognitude tests bench
	$(BIN)/mypy cognitude

# Each script replaces its own sections of bench/RESULTS.md (overhead.py keeps the others).
bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	@if command -v valgrind >/dev/null; then $(BIN)/python bench/instructions.py; \
	else echo "valgrind not installed (apt-get install valgrind): bench/instructions.py skipped"; fi
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/locust_run.py
	$(BIN)/python bench/writer.py

bench-micro: $(STAMP)
	$(BIN)/pytest -m bench -p no:cacheprovider bench

clean:
	rm -rf $(VENV) .cognitude .pytest_cache
