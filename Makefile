# Two commands do all set-up on a fresh machine: `make train` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dqnlab-installed
# CPU build of torch by default (no multi-GB CUDA download); `make TORCH_SPEC=torch train` on a GPU box.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: setup train test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) scripts/benchmark.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
