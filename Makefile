# Two commands on a fresh machine with Python 3.11 and pip: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
XFER := $(VENV)/bin/xfer
# Byte-compile at install: with PYTHONDONTWRITEBYTECODE set, importing the TFX stack
# from source costs ~55 s per process instead of ~17 s.
export UV_COMPILE_BYTECODE := 1

.PHONY: install demo test test-fast compile bench clean

$(UV):
	$(PYTHON) -m pip install --user --quiet uv

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	touch $@

install: $(VENV)/.installed

demo: install
	$(XFER) run --config demo

test: install
	$(VENV)/bin/python -m pytest -v -rs tests

test-fast: install
	$(VENV)/bin/python -m pytest -v -m "not integration" tests

# The benchmark against the plain-Keras script; writes bench/RESULTS.md (about 6 min).
bench: install
	$(VENV)/bin/python bench/run.py

compile: install
	$(XFER) compile --config kubeflow --out pipeline.json

clean:
	rm -rf runs pipeline.json
