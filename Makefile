# Two entry points (see README): `make run` and `make test`. Both create or refresh .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
# Prefect's temporary local server (make flow, the tests) needs ~20 s to start on 2 busy cores.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: run flow exp-show mlflow-ui plots test test-all test-scale scale-system lint venv clean-venv

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

# The whole pipeline (dvc.yaml) through `dvc repro` under one MLflow parent run; DVC skips what is up to
# date. Extra arguments: make run ARGS="-S train.steps=400" (see python -m pipelines.run --help).
run: $(STAMP)
	$(PY) -m pipelines.run $(ARGS)

# The same pipeline as a Prefect flow run (a temporary local Prefect server unless PREFECT_API_URL is set).
flow: $(STAMP)
	$(PY) -m pipelines.flow $(ARGS)

# DVC experiments compactly: name, the parameters that differ, mIoU per benchmark and mean (dvc exp show is
# 87+ columns). Extra arguments go to dvc exp show: make exp-show ARGS="--all-commits".
exp-show: $(STAMP)
	$(PY) -m pipelines.experiments $(ARGS)

# The MLflow UI on the embedded store: http://127.0.0.1:5000
mlflow-ui: $(STAMP)
	# a copied or moved project: point the store's artifact locations at this folder first (tcl.tracking.relocate)
	if [ -f mlflow.db ]; then $(PY) -m tcl.tracking.relocate mlflow.db; fi
	@if [ -f mlflow.db ]; then $(PY) -c "import mlflow; from tcl.config import load_params; from tcl.tracking import ui_url; \
	  e = mlflow.MlflowClient('sqlite:///$(CURDIR)/mlflow.db').get_experiment_by_name(load_params().pipeline.experiment); \
	  print('open', ui_url('http://127.0.0.1:5000', e.experiment_id) if e else 'http://127.0.0.1:5000')"; fi
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# DVC's plots page with vega inside it (draws with no network): dvc_plots/index.html, like `dvc plots show`.
# Experiments side by side, like `dvc plots diff`: make plots ARGS="diff $(dvc exp ls --names-only)".
plots: $(STAMP)
	$(PY) -m pipelines.plots $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not scale"

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not scale"

# The scale-out suite (docs/operations.md#scale-out): every path past one machine on its real engine, locally.
# Installs what it needs: the `scale` extra into .venv and Java + PostgreSQL from Debian when missing.
test-scale: $(STAMP) scale-system
	$(PY) -m pip install -q -e '.[dev,scale]'
	$(PY) -m pip uninstall -y -q dataclasses
	$(PY) -m pytest -q -m scale tests/scale --durations=0

# Debian packages of the scale-out suite; apt runs only when one is missing.
scale-system:
	@if ! command -v java >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q default-jre-headless postgresql; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
