"""Talking to the tracking store without ever stalling training: reachability probe, bounded HTTP
retries, client and experiment set-up.

MLflow's HTTP client retries a failed request with exponential backoff for about four minutes by
default, and reads its limits from process environment variables at every request. We cannot pass
limits per client, so :func:`http_limits` sets short ones (unless the user set their own) only while
one of our calls is in flight, reference-counted across threads, and restores the environment after.
A cheap ``GET /health`` with a short timeout tells "server gone" apart from "request rejected"; for
the embedded SQLite store, a short write transaction tells "locked by another process" apart from it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .context import ARTIFACT_FOLDER, INHERITED_TAGS, RUN_LABEL_TAG, artifact_folder, display_name, dvc_experiment
from .exp_parent import experiment_parent as find_experiment_parent
from .relocate import Relocation, relocate_store
from .values import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VALUE_LENGTH, clean_key

__all__ = ["HTTP_LIMITS", "EXPERIMENT_KIND_TAG", "EXPERIMENT_KIND", "TrackingWarning", "warn", "is_remote",
           "sqlite_path", "probe", "http_limits", "make_client", "ensure_experiment", "artifact_location", "open_run",
           "follow_moved_store"]

#: Limits applied to our own MLflow HTTP calls: two retries within ~3 s when the server refuses
#: connections (instead of ~4 min), and 60 s per socket wait (a server may take that long to store a
#: large checkpoint before answering; a hung server only holds up the background thread meanwhile).
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}

#: The experiment tag MLflow 3's UI reads to pick an experiment's layout, and the value of its "custom
#: model development" kind (the JS bundle's ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT``). MLflow 3.17's
#: UI reads it only when its GenAI / model-training switch is off; with the switch (the default there)
#: the page's address decides, which is why the project's links carry :data:`tcl.tracking.UI_VIEW`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class TrackingWarning(UserWarning):
    """MLflow tracking degraded (server unreachable, a call rejected); training is unaffected."""


def warn(message: str) -> None:
    warnings.warn(message, TrackingWarning, stacklevel=3)


_env_lock = threading.Lock()  # os.environ is process-wide: the override below must be too
_env_users = 0
_env_set: list[str] = []


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other stores and in-memory SQLite)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path in ("/", "/:memory:"):
        return None
    return Path(parsed.path[1:])  # sqlite:///rel.db -> "/rel.db", sqlite:////abs.db -> "//abs.db"


def _probe_sqlite(path: Path, timeout: float) -> str | None:
    """Open a write transaction and roll it back: fails while another process holds a lock that
    MLflow's writes would wait on (e.g. ``BEGIN EXCLUSIVE``). A missing file is fine: MLflow creates it."""
    if not path.is_file():
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout,
                                     isolation_level=None)
    except sqlite3.Error as err:
        return f"{type(err).__name__}: {err}"
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.Error as err:
        return f"{path.name}: {err}"
    finally:
        connection.close()
    return None


def probe(uri: str, timeout: float = 3.0) -> str | None:
    """``None`` when the store at ``uri`` answers, else a one-line reason. A SQLite store answers when
    it can be written (not locked by another process); other local stores always answer; for a server
    any HTTP response counts (auth or a proxy may answer 401/404 on ``/health``)."""
    if not is_remote(uri):
        database = sqlite_path(uri)
        return None if database is None else _probe_sqlite(database, timeout)
    try:
        import requests
    except ImportError:
        return "the requests package is not installed"
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=(min(timeout, 2.0), timeout))
    except requests.RequestException as err:
        return f"{type(err).__name__}: {_short(err)}"
    return None


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    # urllib3 wraps the real cause in a long repr; keep the tail that says what happened
    match = re.search(r"(Failed to establish a new connection: .*?\]|Connection refused|timed out|"
                      r"Connection reset by peer|Name or service not known)", text)
    return match.group(1) if match else text[:200]


@contextmanager
def http_limits() -> Iterator[None]:
    """Bound MLflow's HTTP retries/timeouts (:data:`HTTP_LIMITS`) while the block runs; variables the
    user set are left alone. Overlapping blocks in several threads share one override."""
    global _env_users
    with _env_lock:
        if _env_users == 0:
            _env_set[:] = [k for k in HTTP_LIMITS if k not in os.environ]
            os.environ.update({k: HTTP_LIMITS[k] for k in _env_set})
        _env_users += 1
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            if _env_users == 0:
                for key in _env_set:
                    os.environ.pop(key, None)
                _env_set.clear()


def follow_moved_store(uri: str) -> Relocation | None:
    """:func:`relocate_store` for the store at ``uri`` if it is a SQLite file, with one warning saying what
    moved; never raises (a read-only or locked database is reported and left as it is)."""
    database = sqlite_path(uri)
    if database is None:
        return None
    try:
        moved = relocate_store(database)
    except Exception as err:  # the run (or client) still opens, with the locations MLflow has
        warn(f"MLflow store {database}: could not check whether its artifact locations name another folder "
             f"({type(err).__name__}: {' '.join(str(err).split())[:200]})")
        return None
    if moved is not None:
        warn(f"MLflow store {database} was created in {', '.join(map(str, moved.old_roots))}: its artifact "
             f"locations ({moved.rows}) now point into {moved.new_root / ARTIFACT_FOLDER}, so this project reads "
             f"and writes its own artifacts")
    return moved


def make_client(uri: str):
    """An ``MlflowClient`` for ``uri`` (tracking and registry); an embedded store copied or moved with its
    project first has its artifact locations pointed at its new folder (``relocate``)."""
    from mlflow.tracking import MlflowClient

    follow_moved_store(uri)

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store, ``<folder of the .db>/mlartifacts/<experiment>`` (so artifacts sit beside the
    database instead of in the cwd's ``./mlruns``); ``None`` (the server's choice) otherwise. MLflow
    stores it as an absolute location: a moved project is handled by ``relocate``."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return artifact_folder(db.resolve().parent, experiment).as_uri()


def ensure_experiment(client, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (with :func:`artifact_location`) if missing; a concurrent
    creation by another process is tolerated. The experiment is tagged as a model-training one
    (:data:`EXPERIMENT_KIND_TAG`), also when it exists without that tag; a kind the user chose is kept."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri, name),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:
            found = client.get_experiment_by_name(name)  # created meanwhile by a parallel stage
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    if EXPERIMENT_KIND_TAG not in (found.tags or {}):
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found.experiment_id


def open_run(client, uri: str, run_name: str, experiment: str | None, parent_run_id: str | None,
             tags: dict[str, Any], resume_run_id: str | None,
             experiment_parent: bool = False) -> tuple[str, str, str | None]:
    """Create (or reopen) the run; returns ``(run_id, experiment_id, parent this run holds)``. A new run
    without ``parent_run_id`` nests, with ``experiment_parent``, under its DVC experiment's parent run
    (``exp_parent``), which it then holds: the third value is that parent's id (else ``None``)."""
    from mlflow.exceptions import MlflowException

    tags = {clean_key(k): str(v)[:MAX_TAG_VALUE_LENGTH] for k, v in tags.items()}
    if resume_run_id:
        try:
            run = client.get_run(resume_run_id)
        except MlflowException:
            warn(f"MLflow run {resume_run_id} to resume not found in {uri}; starting a new run {run_name!r}")
        else:
            from mlflow.entities import RunTag

            client.update_run(resume_run_id, status="RUNNING")
            tags.pop(RUN_LABEL_TAG, None)  # a resumed run keeps the name and label it started with
            client.log_batch(resume_run_id, tags=[RunTag(k, v) for k, v in tags.items()][:MAX_PARAMS_TAGS_PER_BATCH])
            return resume_run_id, run.info.experiment_id, None
    held = None
    if experiment_parent and not parent_run_id and dvc_experiment():
        experiment_id = ensure_experiment(client, uri, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "tcl")
        try:
            held = parent_run_id = find_experiment_parent(client, experiment_id, tags, run_name)
        except MlflowException as err:  # the stage's own run matters more than its nesting
            warn(f"MLflow: no parent run for DVC experiment {dvc_experiment()!r} ({type(err).__name__}: "
                 f"{' '.join(str(err).split())[:200]}); run {run_name!r} is not nested")
    parent_experiment = None
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
            parent_experiment = parent.info.experiment_id
            tags["mlflow.parentRunId"] = parent_run_id
            # the pipeline run knows the overrides and what launched it; its stages do not
            tags.update({key: parent.data.tags[key] for key in INHERITED_TAGS if parent.data.tags.get(key)})
        except MlflowException:
            warn(f"MLflow parent run {parent_run_id} not found in {uri}; run {run_name!r} is not nested")
    if experiment is None and parent_experiment is not None:
        experiment_id = parent_experiment
    else:
        experiment_id = ensure_experiment(client, uri, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "tcl")
    run = client.create_run(experiment_id, tags=tags, run_name=display_name(run_name, tags.get(RUN_LABEL_TAG)))
    return run.info.run_id, experiment_id, held

