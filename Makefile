# Two commands on a fresh machine with Python 3.11 and pip: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
XFER := $(VENV)/bin/xfer
# Byte-compile at install: with PYTHONDONTWRITEBYTECODE set, importing the TFX stack
# from source costs ~55 s per process instead of ~17 s.
export UV_COMPILE_BYTECODE := 1

.PHONY: install demo test test-fast test-container image compile bench bench-predict docs clean browser ui

$(UV):
	$(PYTHON) -m pip install --user --quiet uv

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	touch $@

install: $(VENV)/.installed

demo: install
	$(XFER) run --config demo

# Each suite runs with a TMPDIR of its own, removed after it (pytest's folders, and what
# TensorFlow, Beam and TFX write to /tmp and do not remove); what is there besides
# pytest's own folders is listed first, so a new leak shows in the log.
define in_own_tmp
	@tmp=$$(mktemp -d /tmp/xfer-test.XXXXXX); TMPDIR=$$tmp $(1); rc=$$?; \
	echo "[make] left in TMPDIR besides pytest's folders: $$(ls -A $$tmp | grep -v '^pytest-of-' | tr '\n' ' ')"; \
	rm -rf $$tmp; exit $$rc
endef

# The browser tests' Chromium and its driver (tests/test_ui_browser.py), from Debian (needs
# root; Selenium Manager cannot download a browser here).
browser:
	@test -x /usr/bin/chromedriver || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

test: install browser
	$(call in_own_tmp,$(VENV)/bin/python -m pytest -v -rs --durations=30 -n 2 --dist loadfile --no-loadscope-reorder -m "not container" tests)

# The compiled Kubeflow pipeline run by KFP's own local executor (kfp.local, DockerRunner)
# in containers of the project image, twice; and the image's runtime user checked
# (needs root to start dockerd; builds a debootstrap base, as Docker Hub is unreachable).
test-container: install
	tests/container/setup.sh
	$(call in_own_tmp,$(VENV)/bin/python -m pytest -v -rs -s -m container tests/container)

# The project image: make image [IMAGE=...] [BASE_IMAGE=...] [VARIANT=gpu] [BAKE_WEIGHTS="vgg16"]
# [CA_BUNDLE=/path/ca.crt, passed as a BuildKit secret, never stored in a layer]
IMAGE ?= xfer:latest
BASE_IMAGE ?= python:3.11-slim-bookworm
VARIANT ?= cpu
BAKE_WEIGHTS ?=
CA_BUNDLE ?=
image:
	DOCKER_BUILDKIT=1 docker build -t $(IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg VARIANT=$(VARIANT) --build-arg BAKE_WEIGHTS="$(BAKE_WEIGHTS)" \
		$(if $(CA_BUNDLE),--secret id=ca,src=$(CA_BUNDLE)) .

test-fast: install
	$(VENV)/bin/python -m pytest -v -m "not integration and not container" tests

# The benchmark against the plain-Keras script; writes bench/RESULTS.md (26-28 min on a 2-core AVX-512 CPU, about 40 on a 2-core AVX2 one).
bench: install
	$(VENV)/bin/python bench/run.py

# `xfer predict` batch mode (--folder) against the single-file path, 500 images (about 2 min).
bench-predict: install
	$(VENV)/bin/python bench/predict.py

# The documentation site: the config reference regenerated from components/settings.py,
# then built with --strict (a broken link or a page missing from the nav fails) into build/site.
docs: install
	$(VENV)/bin/python -m xfer.pipeline.config_reference --out docs/reference/config.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The runs of `make demo` in a browser (read-only, 127.0.0.1).
ui: install
	$(XFER) ui --config demo

compile: install
	$(XFER) compile --config kubeflow --allow-placeholders --out pipeline.yaml

clean:
	rm -rf runs build/site pipeline.yaml pipeline.json
