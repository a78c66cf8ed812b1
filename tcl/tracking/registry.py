"""Registering a logged model in the MLflow model registry and pointing an alias at the new version.

Works on the same store as the run (embedded SQLite or a server) through an explicit client, for the
two ways a model can be logged in MLflow 3: as run artifacts (a folder with an ``MLmodel`` file, e.g.
``log_artifact(model_dir)``) or as a logged model (``mlflow.pyfunc.log_model`` returns
``models:/<model_id>``). A caller that must register (the register stage) wraps its calls in
:func:`registry_errors`, which turns whatever MLflow raises into one :class:`RegistryError` line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import TCLError
from .context import resolve_tracking_uri
from .tracker import RunTracker
from .transport import http_limits, make_client, probe, warn

__all__ = ["RegistryError", "registry_errors", "alias_holder_score", "register_model"]


class RegistryError(TCLError):
    """Logging or registering a model failed (store unreachable, refused, in an unexpected state).

    Not the user's input but the store: entry points exit with ``exit_status`` 1 (rerun when the
    store is back) instead of 2.
    """

    exit_status = 1


@contextmanager
def registry_errors(what: str) -> Iterator[None]:
    """Any exception inside as ``RegistryError("<what> failed (<type>: <message>)")``, one line of at
    most 300 characters of the message: MLflow, its REST client and the model files raise many kinds."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - whatever failed, registering failed; the cause is in the line
        raise RegistryError(f"{what} failed ({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err


def alias_holder_score(client, name: str, alias: str, tag: str) -> float | None:
    """The number in tag ``tag`` of the version of ``name`` that holds ``alias``; ``None`` when no
    version holds it or the tag is missing or not a number."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such alias (or model) yet
        return None
    value = (version.tags or {}).get(tag)
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _resolve_source(client, run_id: str | None, artifact_path: str) -> tuple[str, str | None, str | None]:
    """``(source, run_id, model_id)`` for ``create_model_version``."""
    if artifact_path.startswith("models:/"):
        model_id = artifact_path[len("models:/"):].strip("/")
        model = client.get_logged_model(model_id)
        return artifact_path, run_id or model.source_run_id, model_id
    if run_id is None:
        raise ValueError(f"{artifact_path!r} is a run artifact path but no run was given")
    run = client.get_run(run_id)
    path = artifact_path.strip("/")
    listed = {info.path for info in client.list_artifacts(run_id, path)}
    if f"{path}/MLmodel" in listed:
        return f"{run.info.artifact_uri.rstrip('/')}/{path}", run_id, None
    # a logged model named ``artifact_path`` whose source is this run (MLflow 3 log_model(name=...))
    models = [m for m in client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                     filter_string=f"name = '{path}'")
              if m.source_run_id == run_id]
    if not models:
        raise ValueError(f"run {run_id} has no MLflow model at {path!r} (no {path}/MLmodel, no logged model)")
    model = max(models, key=lambda m: m.creation_timestamp)
    return f"models:/{model.model_id}", run_id, model.model_id


def register_model(run: RunTracker | str | None, artifact_path: str, name: str, *, alias: str | None = "champion",
                   tags: dict[str, Any] | None = None, tracking_uri: str | None = None, flush_timeout: float = 600.0,
                   strict: bool = False) -> str | None:
    """Register the model of ``run`` at ``artifact_path`` as a new version of ``name``; returns the version.

    ``run``: a :class:`RunTracker` (its queue is flushed first, waiting up to ``flush_timeout`` s for a
    model upload, and its store is used) or a run id (store: ``tracking_uri`` / ``MLFLOW_TRACKING_URI``
    / the embedded default); ``None`` with ``artifact_path="models:/<model_id>"``. ``artifact_path``:
    a run artifact folder holding ``MLmodel``, the name given to ``log_model``, or ``models:/<model_id>``.
    ``alias`` (e.g. ``champion``) is moved to the new version. Like the tracker it never raises on
    tracking failures (warns and returns ``None``) unless ``strict``.
    """
    if isinstance(run, RunTracker):
        if not run.enabled:
            warn(f"model {name!r} not registered: run {run.run_name!r} is not tracked")
            return None
        if not run.flush(flush_timeout):
            warn(f"model {name!r}: run {run.run_name!r} still uploading after {flush_timeout:.0f} s; "
                 f"registering anyway")
        uri, run_id = run.tracking_uri or resolve_tracking_uri(tracking_uri), run.run_id
    else:
        uri, run_id = resolve_tracking_uri(tracking_uri), run
    try:
        reason = probe(uri)
        if reason is not None:
            raise ConnectionError(f"tracking server {uri} unreachable ({reason})")
        with http_limits():
            from mlflow.exceptions import MlflowException

            client = make_client(uri)
            source, run_id, model_id = _resolve_source(client, run_id, artifact_path)
            try:
                client.create_registered_model(name)
            except MlflowException as err:
                if "ALREADY_EXISTS" not in str(err.error_code):
                    raise
            version = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
            if alias:
                client.set_registered_model_alias(name, alias, version.version)
    except Exception as err:  # registration failure must not fail the pipeline
        if strict:
            raise
        warn(f"model {name!r} not registered ({type(err).__name__}: {' '.join(str(err).split())[:300]})")
        return None
    return str(version.version)
