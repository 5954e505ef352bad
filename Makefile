# `make serve` and `make test` work on a fresh machine with only Python 3.11:
# each builds .venv when it is missing (torch first, pinned, so pip takes the CPU wheel).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: serve test lint bench clean

$(BIN)/quiver: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	touch $(BIN)/quiver

serve: $(BIN)/quiver
	$(BIN)/quiver serve

test: $(BIN)/quiver
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(BIN)/quiver
	$(BIN)/ruff check hub registry client migrations tests bench

bench: $(BIN)/quiver
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .quiver .pytest_cache
