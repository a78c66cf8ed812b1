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

from .context import (
                      PARENT_RUN_ENV,
                      PREFECT_FLOW_RUN_ENV,
                      RUN_LABEL_TAG,
                      RUN_NAME_TAG,
                      STAGE_ENV,
                      default_tracking_uri,
                      find_project_root,
                      resolve_tracking_uri,
                      run_label,
                      run_tags,
)
from .registry import register_model
from .tracker import RunTracker, TrackingWarning
from .values import flatten_params

__all__ = ["RunTracker", "TrackingWarning", "run_tags", "default_tracking_uri", "resolve_tracking_uri",
           "find_project_root", "register_model", "flatten_params", "PARENT_RUN_ENV", "PREFECT_FLOW_RUN_ENV",
           "STAGE_ENV", "RUN_NAME_TAG", "RUN_LABEL_TAG", "run_label"]
