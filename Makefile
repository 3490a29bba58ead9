# Two commands do all set-up on a fresh machine: `make train` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dqnlab-installed
# torch comes first, on its own, so that the build fits the machine (pip resolves the rest around it):
#   no CUDA GPU (`nvidia-smi -L` finds none): the CPU build from PyTorch's CPU index. PyPI's Linux wheel is the
#     CUDA build plus ~19 nvidia-*/triton packages (several GB). The index is probed first (TORCH_PROBE_S seconds,
#     DNS included) and pip gets a short timeout and no retries, so an unreachable index costs seconds, not
#     minutes: the set-up then says so and installs TORCH_SPEC from the package index pip is configured with.
#   a CUDA GPU: TORCH_SPEC from the package index (on Linux that is the CUDA build).
#   a torch in the venv that satisfies TORCH_SPEC (any build) is kept.
# Overrides: `make TORCH_INDEX=https://download.pytorch.org/whl/cu126 train` (any wheel index), `TORCH_INDEX=pypi`
# (skip the CPU index), `TORCH_SPEC=torch` (any version, e.g. one a GPU box already has).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= auto
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# Seconds the CPU-index probe may take before the set-up falls back to the package index.
TORCH_PROBE_S ?= 5
ARGS ?=

# Prints the venv's torch version and exits 0 when it satisfies the requirement in argv[1] (any build: +cpu, CUDA).
TORCH_OK := import sys, importlib.metadata as m; from pip._vendor.packaging.requirements import Requirement; \
  r = Requirement(sys.argv[1]); v = m.version("torch"); print(v); \
  sys.exit(r.name != "torch" or not r.specifier.contains(v, prereleases=True))
# Exits 0 when the URL in argv[1] answers 200 within argv[2] seconds; the thread bounds DNS look-ups too.
URL_OK := import sys, threading, urllib.request as u; ok = []; s = float(sys.argv[2]); \
  t = threading.Thread(target=lambda: ok.append(u.urlopen(sys.argv[1], timeout=s).status == 200), daemon=True); \
  t.start(); t.join(s); sys.exit(ok != [True])

.PHONY: setup train test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if v=$$($(PY) -c '$(TORCH_OK)' "$(TORCH_SPEC)" 2>/dev/null); then \
	  echo "set-up: torch $$v is installed and satisfies $(TORCH_SPEC): kept"; \
	elif [ "$(TORCH_INDEX)" = pypi ] || { [ "$(TORCH_INDEX)" = auto ] && nvidia-smi -L >/dev/null 2>&1; }; then \
	  echo "set-up: $(TORCH_SPEC) from the package index (a CUDA GPU, or TORCH_INDEX=pypi)"; \
	  $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	else \
	  index="$(TORCH_INDEX)"; [ "$$index" = auto ] && index="$(TORCH_CPU_INDEX)"; index="$${index%/}"; \
	  echo "set-up: $(TORCH_SPEC) from $$index"; \
	  if $(PY) -c '$(URL_OK)' "$$index/torch/" $(TORCH_PROBE_S) 2>/dev/null \
	    && $(PY) -m pip install -q --timeout 10 --retries 0 --index-url "$$index" "$(TORCH_SPEC)"; then :; else \
	    echo "set-up: $$index could not be reached or used: $(TORCH_SPEC) from the package index instead" \
	      "(on Linux that is the CUDA build, unless the index holds a CPU wheel)"; \
	    $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	  fi; \
	fi
	$(PY) -m pip install -q -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist worksteal -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) scripts/benchmark.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
