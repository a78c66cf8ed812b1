"""The parent run of a ``dvc exp run`` that no pipeline launched (a sweep by hand, a queue of experiments).

``make run`` and the Prefect flow open a parent run and hand its id to the stages
(``TCL_MLFLOW_PARENT_RUN_ID``). A plain ``dvc exp run`` has no process that lives as long as the
experiment, so each stage finds the parent itself: :func:`experiment_parent` looks up the run
``pipeline`` tagged with the experiment (``dvc.exp_name``, ``dvc.exp_baseline_rev``, both set by DVC
for every stage of an experiment) and creates it when the experiment has none yet, so all the stages
of one ``dvc exp run`` nest under one parent, as under ``make run``.

DVC runs the stages of one experiment one after the other, so the first stage creates the parent and
the next ones find it; the stage that holds it marks it RUNNING while it runs and gives it its own end
status when it ends (:class:`~tcl.tracking.RunTracker`). A parent whose experiment already has a run
of this stage is an earlier execution of a name used again (``dvc exp run -f -n NAME``, or a failed
experiment run again): a new parent is opened then. The parent has the experiment's ``params.yaml``
as params, like ``make run``'s; the report's numbers stay on the stages' runs. A queued experiment
runs in a temporary copy of the workspace; its store is still the project's (``find_project_root``
follows ``DVC_ROOT``), and its overrides are read from that copy's ``params.yaml`` against the
baseline commit's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from .context import (
    KIND_TAG,
    OVERRIDES_TAG,
    PARENT_RUN_NAME,
    PER_RUN_TAGS,
    RUN_LABEL_TAG,
    RUN_NAME_TAG,
    display_name,
    dvc_experiment,
    find_project_root,
    run_label,
)
from .owner import owner_tags
from .values import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VALUE_LENGTH, chunks, flatten_params

__all__ = ["experiment_parent", "experiment_overrides"]

_NO_OVERRIDES, _UNKNOWN = "(none)", "(unknown)"


def experiment_overrides(baseline_rev: str | None, folder: str | os.PathLike | None = None) -> list[str] | None:
    """The parameters this experiment changed, ``key=value`` (dotted keys, sorted): ``params.yaml`` of the
    workspace the stage runs in (``folder``, default: the project around the cwd, a queued experiment's
    temporary copy included) against the baseline commit's. ``None`` when either cannot be read."""
    import yaml

    if not baseline_rev:
        return None
    root = find_project_root(Path(folder or os.getcwd()))  # not DVC_ROOT: the experiment's own copy
    try:
        done = subprocess.run(["git", "show", f"{baseline_rev}:params.yaml"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        if done.returncode != 0:
            return None
        before = flatten_params(yaml.safe_load(done.stdout) or {})
        after = flatten_params(yaml.safe_load((root / "params.yaml").read_text()) or {})
    except (OSError, subprocess.SubprocessError, yaml.YAMLError):
        return None
    return [f"{key}={value}" for key, value in sorted(after.items()) if before.get(key) != value]


def _log_workspace_params(client: Any, run_id: str) -> None:
    """``params.yaml`` of the experiment's workspace as the parent's params (dotted keys), as ``make run``'s
    parent gets them (``PipelineRun.record``), so that two experiments' parent rows compare in the UI.
    A file that cannot be read leaves the parent without params: it is a nicety, the stage runs anyway."""
    import yaml
    from mlflow.entities import Param

    try:
        params = yaml.safe_load((find_project_root(Path(os.getcwd())) / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return
    for part in chunks(sorted(flatten_params(params).items()), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=[Param(key, value) for key, value in part])


def _quoted(value: str) -> str | None:
    """``value`` for an MLflow filter string, or ``None`` when it cannot be put in one safely."""
    return None if "'" in value or "\\" in value else value


def _find(client: Any, experiment_id: str, tags: dict[str, str], child_name: str) -> str | None:
    clauses = [f"tags.`{RUN_NAME_TAG}` = '{PARENT_RUN_NAME}'"]
    for key in ("dvc.exp_name", "dvc.exp_baseline_rev"):
        if tags.get(key):
            clauses.append(f"tags.`{key}` = '{tags[key]}'")
    found = client.search_runs([experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"],
                               max_results=1)
    if not found:
        return None
    parent_id = found[0].info.run_id
    taken = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and "
                                                f"tags.`{RUN_NAME_TAG}` = '{child_name}'", max_results=1)
    return None if taken else parent_id


def experiment_parent(client: Any, experiment_id: str, tags: dict[str, str], child_name: str) -> str | None:
    """The id of the parent run of the DVC experiment this stage runs in (module docstring), found or
    created in ``experiment_id``, marked RUNNING and owned by this process; ``None`` outside an
    experiment. ``tags``: the stage run's tags (:func:`~tcl.tracking.run_tags`), which the parent
    shares but for the ones that describe the stage (``PER_RUN_TAGS``)."""
    from mlflow.entities import RunTag

    experiment = dvc_experiment()
    if experiment is None or any(_quoted(tags.get(key, "")) is None
                                 for key in ("dvc.exp_name", "dvc.exp_baseline_rev")) or _quoted(child_name) is None:
        return None
    parent_id = _find(client, experiment_id, tags, child_name)
    if parent_id is not None:
        client.update_run(parent_id, status="RUNNING")
        client.log_batch(parent_id, tags=[RunTag(k, v) for k, v in owner_tags().items()])
        return parent_id
    overrides = experiment_overrides(tags.get("dvc.exp_baseline_rev"))
    parent_tags = {key: value for key, value in tags.items() if key not in PER_RUN_TAGS and key != RUN_LABEL_TAG}
    parent_tags.update({**owner_tags(), RUN_NAME_TAG: PARENT_RUN_NAME, "tcl.stage": PARENT_RUN_NAME,
                        KIND_TAG: f"dvc exp run ({experiment})",
                        OVERRIDES_TAG: (" ".join(overrides) or _NO_OVERRIDES) if overrides is not None else _UNKNOWN})
    parent_tags[RUN_LABEL_TAG] = run_label(parent_tags, overrides or ())
    parent_tags = {key: str(value)[:MAX_TAG_VALUE_LENGTH] for key, value in parent_tags.items()}
    run = client.create_run(experiment_id, tags=parent_tags,
                            run_name=display_name(PARENT_RUN_NAME, parent_tags[RUN_LABEL_TAG]))
    _log_workspace_params(client, run.info.run_id)
    return run.info.run_id
