# Two entry points (see README): `make run` and `make test`. Both create or refresh .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test test-all lint venv clean-venv

venv: $(STAMP)

# Re-installs when pyproject.toml changes. torch comes first from the pinned local builds;
# `pip uninstall dataclasses` must stay last: img2dataset drags in the old backport, which
# shadows the stdlib module and breaks Prefect's server.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip uninstall -y -q dataclasses
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tcl demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
