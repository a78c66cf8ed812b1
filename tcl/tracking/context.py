"""Where a run is tracked and what it is tagged with: project root, default store, run tags.

The default store is embedded (a SQLite file in the project, artifacts beside it), so tracking works
without a server; ``MLFLOW_TRACKING_URI`` switches to a real one. Tags identify the code (git commit)
and the orchestration context (DVC stage and experiment, Prefect flow run) so that the MLflow UI can
compare runs side by side. Everything here reads the environment and never raises.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["find_project_root", "default_tracking_uri", "resolve_tracking_uri", "run_tags", "run_label",
           "display_name", "ui_url", "UI_VIEW", "dvc_experiment", "PARENT_RUN_ENV", "PREFECT_FLOW_RUN_ENV",
           "STAGE_ENV", "RUN_NAME_TAG",
           "RUN_LABEL_TAG", "KIND_TAG", "OVERRIDES_TAG", "PARENT_RUN_NAME", "INHERITED_TAGS", "PER_RUN_TAGS",
           "ARTIFACT_FOLDER", "artifact_folder"]

#: Environment variable through which a pipeline hands its parent run id to stage processes.
PARENT_RUN_ENV = "TCL_MLFLOW_PARENT_RUN_ID"
#: Prefect flow-run id exported by our flows to the stage processes they launch (and set in the flow's own process).
PREFECT_FLOW_RUN_ENV = "TCL_PREFECT_FLOW_RUN_ID"
#: Stage name exported by our flows (``dvc repro`` sets ``DVC_STAGE`` itself).
STAGE_ENV = "TCL_STAGE"
#: Tag holding a run's plain name (``train``, ``pipeline``, ``baseline-step0-voc``): the MLflow run name
#: adds the label below, so searches by name go through this tag (``tags.tcl.run_name = 'train'``).
RUN_NAME_TAG = "tcl.run_name"
#: Tag holding what tells a run apart from its siblings (:func:`run_label`); child runs take their parent's.
RUN_LABEL_TAG = "tcl.run_label"
#: Tags of a pipeline execution's parent run: what launched it (``dvc repro``, ``prefect``, ``dvc exp run (name)``)
#: and its parameter overrides (``train.steps=5 model.tcl_w=0.5``, ``(none)``).
KIND_TAG, OVERRIDES_TAG = "pipeline.kind", "pipeline.overrides"
#: The plain name of a pipeline execution's parent run (tag ``tcl.run_name``).
PARENT_RUN_NAME = "pipeline"
#: Tags a child run takes from its parent: only the pipeline knows its overrides, its stages do not.
INHERITED_TAGS = (RUN_LABEL_TAG, KIND_TAG, OVERRIDES_TAG)
#: Tags that describe one run, not the execution it belongs to: all other tags of a stage's run are its parent's too.
PER_RUN_TAGS = frozenset({"tcl.stage", "dvc.stage", RUN_NAME_TAG, "mlflow.runName", "mlflow.parentRunId",
                          "tcl.process", "mlflow.source.name"})
NAME_SEPARATOR = " · "
_MAX_OVERRIDES_SHOWN = 3
_MAX_LABEL = 120

_ROOT_MARKERS = ("params.yaml", "pyproject.toml")
#: The embedded store's artifact folder, beside ``mlflow.db``.
ARTIFACT_FOLDER = "mlartifacts"
# Variables DVC sets for stage commands (dvc/stage/run.py, dvc/repo/experiments/queue/base.py).
_DVC_TAGS = {"DVC_STAGE": "dvc.stage", "DVC_ROOT": "dvc.root", "DVC_EXP_NAME": "dvc.exp_name",
             "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}


def find_project_root(start: str | os.PathLike | None = None) -> Path:
    """The project folder: ``DVC_ROOT`` when DVC runs the stage, else the nearest folder at or above
    ``start`` (default: the cwd) holding ``params.yaml`` or ``pyproject.toml``, else ``start`` itself.

    ``DVC_ROOT`` comes first because a queued ``dvc exp run`` executes in a temporary copy of the
    workspace and points ``DVC_ROOT`` at the real repository: the embedded store must live there,
    not in a folder that is deleted after the run.
    """
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).is_file() for marker in _ROOT_MARKERS):
            return folder
    return here


def artifact_folder(store_folder: Path, experiment: str) -> Path:
    """``<store_folder>/mlartifacts/<experiment>``, the experiment's name made a safe folder name."""
    slug = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "default"
    return store_folder / ARTIFACT_FOLDER / slug


def default_tracking_uri(root: str | os.PathLike | None = None) -> str:
    """The embedded store ``sqlite:///<project root>/mlflow.db`` (artifacts go to ``<root>/mlartifacts``)."""
    return f"sqlite:///{find_project_root(root) / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri`` if given, else ``MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_tags(root: Path) -> dict[str, str]:
    commit = _git(["rev-parse", "HEAD"], root)
    if not commit:
        return {}
    tags = {"git.commit": commit, "mlflow.source.git.commit": commit}  # the latter is shown by the MLflow UI
    status = _git(["status", "--porcelain", "--untracked-files=no"], root)
    if status is not None:
        tags["git.dirty"] = str(bool(status)).lower()
    branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], root)
    if branch and branch != "HEAD":
        tags["git.branch"] = branch
    return tags


def _prefect_flow_run_id() -> str | None:
    # From the environment only: the library never imports Prefect. Our flow exports its run id to the
    # stage processes (and passes it to its own parent run); a Prefect worker sets PREFECT__FLOW_RUN_ID.
    return os.environ.get(PREFECT_FLOW_RUN_ENV) or os.environ.get("PREFECT__FLOW_RUN_ID") or None


def dvc_experiment() -> str | None:
    """The DVC experiment this process runs in (``dvc exp run`` sets ``DVC_EXP_NAME`` and
    ``DVC_EXP_BASELINE_REV`` for every stage, queued or not): its name, else its baseline commit."""
    return os.environ.get("DVC_EXP_NAME") or os.environ.get("DVC_EXP_BASELINE_REV") or None


def run_tags(stage: str | None = None, root: str | os.PathLike | None = None) -> dict[str, str]:
    """Tags describing where a run comes from: git commit/dirty/branch, the stage (``stage``, else env
    ``TCL_STAGE``, else DVC's ``DVC_STAGE``), DVC stage/experiment (``dvc.*``) and the Prefect flow-run
    id (env ``TCL_PREFECT_FLOW_RUN_ID``, else ``PREFECT__FLOW_RUN_ID``). Missing pieces
    (no git, not under DVC or Prefect) are simply left out.
    """
    tags = _git_tags(find_project_root(root))
    stage = stage or os.environ.get(STAGE_ENV) or os.environ.get("DVC_STAGE")
    if stage:
        tags["tcl.stage"] = stage
    tags.update({tag: os.environ[var] for var, tag in _DVC_TAGS.items() if os.environ.get(var)})
    flow_run_id = _prefect_flow_run_id()
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    if sys.argv and sys.argv[0]:
        tags["mlflow.source.name"] = Path(sys.argv[0]).name
    with contextlib.suppress(Exception):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    return tags


def _override_summary(overrides: list[str] | tuple[str, ...]) -> str:
    """``train.steps=400 model.tcl_w=0.5`` -> ``steps=400, tcl_w=0.5``: the last key part is enough to
    tell runs apart in a chart legend; past a few overrides (an overrides file), only their number."""
    short = [f"{key.rsplit('.', 1)[-1]}={value}" for key, _, value in (o.partition("=") for o in overrides)]
    if len(short) > _MAX_OVERRIDES_SHOWN:
        short = [*short[:_MAX_OVERRIDES_SHOWN], f"+{len(short) - _MAX_OVERRIDES_SHOWN} more"]
    return ", ".join(short)


def run_label(tags: dict[str, str], overrides: list[str] | tuple[str, ...] = ()) -> str:
    """What tells a run apart: the DVC experiment's name (tag ``dvc.exp_name``), else the short git
    commit, then the parameter overrides; ``""`` when none of them is known."""
    ident = tags.get("dvc.exp_name") or (tags.get("git.commit") or "")[:7]
    label = NAME_SEPARATOR.join(part for part in (ident, _override_summary(overrides)) if part)
    return label if len(label) <= _MAX_LABEL else label[:_MAX_LABEL - 1] + "…"


def display_name(name: str, label: str | None) -> str:
    """The MLflow run name: ``train · 3f5b2db · steps=400`` (just ``name`` without a label), so runs
    overlaid in one chart can be told apart."""
    return NAME_SEPARATOR.join(part for part in (name, label) if part)


#: The query that opens MLflow's UI on the model-training view. MLflow 3.17's UI shows every experiment
#: in its GenAI view (traces, "0 traces") unless the page's URL asks otherwise: the experiment's
#: ``mlflow.experimentKind`` tag alone does not change that (seen in headless Chromium with MLflow
#: 3.17.2, tests/tracking/test_mlflow_ui.py), and the choice is not remembered from one URL to the next.
UI_VIEW = "workflowType=machine_learning"


def ui_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The page of an experiment (or of one of its runs) in an MLflow UI served at ``base``, opening on the runs."""
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{page}/runs/{run_id}?{UI_VIEW}" if run_id else f"{page}/runs?{UI_VIEW}"
