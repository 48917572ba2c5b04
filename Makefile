# rnnlm developer tasks. `make install` sets up everything; `make test` runs the suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install lint test test-fast train bench

# An existing torch (a CUDA build, say) is kept; otherwise torch 2.13.0 is installed first,
# which on the development machines is the CPU wheel on local disk, not a multi-GB CUDA build.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"

# ruff (lint, then formatting) and mypy, at the versions pinned in pyproject.toml's dev extra.
lint:
	$(PYTHON) -m ruff check rnnlm
	$(PYTHON) -m ruff format --check rnnlm
	$(PYTHON) -m mypy rnnlm

test:
	$(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest -m "not slow"

# The README demo: a character LSTM on tinyshakespeare, 10-15 minutes on 2 CPU cores.
train:
	rnnlm train --config configs/shakespeare-char.yaml

bench:
	$(PYTHON) scripts/bench.py --preset all
