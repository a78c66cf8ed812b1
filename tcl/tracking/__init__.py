"""MLflow tracking for the pipeline: runs, params, metrics, images, artifacts, model registry.

``RunTracker.start(...)`` opens one run (nested under a parent run when the pipeline passes one) in
the store named by ``MLFLOW_TRACKING_URI``, or in the project's embedded SQLite store
(``mlflow.db`` + ``mlartifacts/``) so no server is needed. Logging happens in a background thread
and never raises into, or stalls, training: a store unreachable at start gives an untracked run; one
that goes away mid-run (server down, SQLite locked) gets the queued calls when it is back, within
``finish``'s wait at the latest, after which they are dropped. A run its process could not end is
closed as FAILED by the next start in its experiment on that host (``owner``). MLflow itself is
imported only when a run is started.
"""

from .._exports import lazy_exports

_WHERE = {
    "RunTracker": "tracker",
    "TrackingWarning": "tracker",
    "run_tags": "context",
    "default_tracking_uri": "context",
    "resolve_tracking_uri": "context",
    "find_project_root": "context",
    "register_model": "registry",
    "RegistryError": "registry",
    "registry_errors": "registry",
    "alias_holder_score": "registry",
    "flatten_params": "values",
    "PARENT_RUN_ENV": "context",
    "PREFECT_FLOW_RUN_ENV": "context",
    "STAGE_ENV": "context",
    "RUN_NAME_TAG": "context",
    "RUN_LABEL_TAG": "context",
    "run_label": "context",
    "ui_url": "context",
    "UI_VIEW": "context",
    "dvc_experiment": "context",
    "KIND_TAG": "context",
    "OVERRIDES_TAG": "context",
    "PARENT_RUN_NAME": "context",
    "INHERITED_TAGS": "context",
    "PER_RUN_TAGS": "context",
}
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
