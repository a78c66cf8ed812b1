"""``RunTracker``: one MLflow run, logged from a background thread so tracking never stalls or kills training.

Every ``log_*`` call only validates its input and appends it to a bounded in-memory queue (a full
queue drops the call and counts it); a daemon thread sends the queue to MLflow through an explicit
``MlflowClient`` and run id (no fluent global state, so a parent run and child runs coexist in one
process). Consecutive metric/param/tag calls are merged into one ``log_batch`` request.

Failure handling, in the worker thread only:

* a request fails and the store does not answer a probe (a server's ``/health``; for the embedded
  SQLite store, a write transaction, which fails while another process locks the database) → the
  tracker is *down*: one warning, the failed call and the queue are kept, the probe is repeated every
  ``retry_interval`` seconds, and when the store answers again the queue is replayed (a second
  warning says so);
* a request fails but the store answers (bad value, missing file) → that call is dropped and
  counted, with one warning per kind of failure;
* ``finish(timeout)`` keeps probing a store that is down, every second, for at most ``timeout``
  seconds, so a store back within that time still receives the queue and the end of the run; after
  that what is still queued is dropped and the worker exits, and the run stays ``RUNNING`` until the
  next :meth:`RunTracker.start` in its experiment on this host closes it as ``FAILED`` (``owner``).
  An unreachable store at ``start`` gives a disabled tracker.

Exactly-once metrics for resumable work (``hold_metrics=True``, the training loop): metrics are held
in memory until :meth:`RunTracker.release` is called for their step once a checkpoint covering it is
written, so the steps a killed run computed after its last checkpoint, which the resumed run computes
again, never reach the store twice. What was released but is not confirmed stored yet
(:meth:`RunTracker.unconfirmed_metrics`) goes into the checkpoint, and the resumed run hands it to
:meth:`RunTracker.replay_metrics`, which sends only the points the store lacks. This works with any
store (no deletion needed, which a remote server does not offer); the price is that the UI sees
metrics at checkpoint granularity.

MLflow's own HTTP retries are cut to a few seconds while our calls run (see ``transport``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .context import (
    PARENT_RUN_ENV,
    PARENT_RUN_NAME,
    RUN_LABEL_TAG,
    RUN_NAME_TAG,
    resolve_tracking_uri,
    run_label,
    run_tags,
)
from .owner import close_orphaned_runs, owner_tags
from .transport import TrackingWarning, http_limits, make_client, open_run, probe
from .transport import warn as _warn
from .values import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VALUE_LENGTH,
    chunks,
    clean_key,
    flatten_params,
    metric_value,
)

__all__ = ["RunTracker", "TrackingWarning"]


@dataclass
class _Op:
    kind: str  # batch | replay | image | artifact | text | end | stop
    payload: Any = None
    metrics: list = field(default_factory=list)  # (key, value, timestamp_ms, step)
    params: list = field(default_factory=list)  # (key, value)
    tags: list = field(default_factory=list)  # (key, value)
    cleanup: Path | None = None  # snapshot to delete once the op is done with


def _merge(first: _Op, more: collections.deque) -> _Op:
    """Pop batch ops following ``first`` into it while MLflow's per-request limits allow."""
    while more and more[0].kind == "batch":
        nxt = more[0]
        metrics, keyed = len(first.metrics) + len(nxt.metrics), len(first.params) + len(first.tags)
        keyed += len(nxt.params) + len(nxt.tags)
        if metrics + keyed > MAX_METRICS_PER_BATCH or keyed > MAX_PARAMS_TAGS_PER_BATCH:
            break
        if first.params or nxt.params:
            break  # params go alone: one changed value (a resumed run) must not take metrics down with it
        more.popleft()
        first.metrics += nxt.metrics
        first.params += nxt.params
        first.tags += nxt.tags
    return first


class RunTracker:
    """One MLflow run. Create with :meth:`start`; a disabled tracker (``enabled=False``, a non-zero
    rank, an unreachable server) accepts every call and does nothing."""

    def __init__(self, run_name: str, *, client: Any = None, run_id: str | None = None, tracking_uri: str | None = None,
                 experiment_id: str | None = None, max_pending: int = 10_000, retry_interval: float = 30.0,
                 hold_metrics: bool = False, held_parent: str | None = None):
        self.run_name = run_name
        self._held_parent = held_parent  # a DVC experiment's parent run, given this run's end status (exp_parent)
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self._client, self._run_id = client, run_id
        self._max_pending, self._retry_interval = max_pending, retry_interval
        self._queue: collections.deque[_Op] = collections.deque()
        self._inflight: _Op | None = None
        self._hold = hold_metrics
        self._held: list[tuple[str, float, int, int]] = []  # metric rows waiting for release()
        self._give_up_at = float("inf")  # set by finish(): when a store that is down is given up on
        self._cond = threading.Condition()
        self._wake = threading.Event()  # interrupts the wait between probes when finish() is called
        self._busy = self._closed = self._stopping = self._down = False
        self._pauses = 0  # paused(): the worker starts no new call while > 0
        self._warned: set[str] = set()
        self._dropped = 0
        self._tmp: Path | None = None
        self._snapshots = 0
        self._worker: threading.Thread | None = None
        if run_id is not None:
            self._worker = threading.Thread(target=self._work, name=f"mlflow-tracker-{run_name}", daemon=True)
            self._worker.start()

    # ----------------------------------------------------------------- creation
    @classmethod
    def start(cls, run_name: str, *, experiment: str | None = None, parent_run_id: str | None = None,
              tags: dict[str, Any] | None = None, tracking_uri: str | None = None, resume_run_id: str | None = None,
              enabled: bool = True, stage: str | None = None, max_pending: int = 10_000,
              retry_interval: float = 30.0, hold_metrics: bool = False,
              overrides: list[str] | None = None, root: str | os.PathLike | None = None) -> RunTracker:
        """Open (or resume) a run and return its tracker; never raises on tracking failures.

        ``tracking_uri``: else ``MLFLOW_TRACKING_URI``, else the embedded store of the project.
        ``parent_run_id``: else env ``TCL_MLFLOW_PARENT_RUN_ID``; the run is nested under it (tag
        ``mlflow.parentRunId``) and, unless ``experiment`` is given, placed in the parent's experiment
        (the UI nests runs only within one experiment). ``experiment``: else the parent's, else env
        ``MLFLOW_EXPERIMENT_NAME``, else ``"tcl"``. Tags: :func:`run_tags` (``stage``; the git
        commit of the project at ``root``, default: the cwd's) updated by ``tags``.
        ``resume_run_id``: reopen that run (a resumed training) instead of creating one.
        ``hold_metrics``: keep metrics until :meth:`release` (see the module docstring).
        The MLflow run name is ``run_name`` plus :func:`run_label` (the DVC experiment or git commit and
        the parameter ``overrides``; a nested run takes its parent's label), e.g. ``train · 3f5b2db ·
        steps=400``; ``run_name`` itself is the tag ``tcl.run_name``.
        A new run with no parent inside a DVC experiment (a plain ``dvc exp run``) nests under that
        experiment's parent run, found or created (``exp_parent``), which then takes this run's status.
        Runs of the experiment left ``RUNNING`` by a dead process of this host are closed (``owner``).
        """
        if not enabled:
            return cls(run_name)
        uri = resolve_tracking_uri(tracking_uri)
        reason = probe(uri)
        if reason is not None:
            _warn(f"MLflow tracking store {uri} is unreachable ({reason}); run {run_name!r} is not tracked, "
                  f"training continues")
            return cls(run_name, tracking_uri=uri)
        parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
        all_tags = {**run_tags(stage, root), **owner_tags(), **(tags or {})}
        all_tags.setdefault(RUN_LABEL_TAG, run_label(all_tags, overrides or ()))
        all_tags[RUN_NAME_TAG] = run_name
        try:
            with http_limits():
                client = make_client(uri)
                run_id, experiment_id, held = open_run(client, uri, run_name, experiment, parent_run_id, all_tags,
                                                       resume_run_id, experiment_parent=run_name != PARENT_RUN_NAME)
        except Exception as err:  # tracking must never stop training
            _warn(f"MLflow tracking at {uri} failed to open run {run_name!r} ({type(err).__name__}: "
                  f"{' '.join(str(err).split())[:300]}); training continues untracked")
            return cls(run_name, tracking_uri=uri)
        try:
            with http_limits():
                closed = close_orphaned_runs(client, experiment_id, run_id)
        except Exception as err:  # a repair that fails now is retried by the next start
            _warn(f"MLflow tracking at {uri}: could not check for runs left RUNNING by dead processes "
                  f"({type(err).__name__}: {' '.join(str(err).split())[:200]})")
        else:
            if closed:
                _warn(f"MLflow: {len(closed)} run(s) left RUNNING by a process that had ended set to FAILED "
                      f"({', '.join(closed[:5])})")
        return cls(run_name, client=client, run_id=run_id, tracking_uri=uri, experiment_id=experiment_id,
                   max_pending=max_pending, retry_interval=retry_interval, hold_metrics=hold_metrics,
                   held_parent=held)

    def child(self, run_name: str, **kwargs: Any) -> RunTracker:
        """A run nested under this one, in the same store (disabled if this tracker is)."""
        if self._run_id is None:
            return RunTracker(run_name)
        return RunTracker.start(run_name, parent_run_id=self._run_id, tracking_uri=self.tracking_uri, **kwargs)

    def child_env(self) -> dict[str, str]:
        """Environment for a stage process whose runs should nest under this one (empty if disabled)."""
        if self._run_id is None:
            return {}
        return {PARENT_RUN_ENV: self._run_id, "MLFLOW_TRACKING_URI": self.tracking_uri or ""}

    # ------------------------------------------------------------------ state
    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def enabled(self) -> bool:
        return self._run_id is not None

    @property
    def healthy(self) -> bool:
        """True while the run is tracked and the store answers (False when disabled or the server is down)."""
        return self._run_id is not None and not self._down

    @property
    def dropped(self) -> int:
        """Calls that could not be recorded (queue full, rejected, or server down at ``finish``)."""
        return self._dropped

    # ---------------------------------------------------------------- logging
    def log_params(self, params: Any) -> None:
        """Log a (nested) config as params with dotted keys, e.g. ``model.tcl_w`` (``flatten_params``)."""
        if self._run_id is None:
            return
        items = sorted(flatten_params(params).items())
        for part in chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._submit(_Op("batch", params=part))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log numbers (floats, ints, numpy scalars, 0-d tensors) at ``step``; non-numbers are skipped.
        With ``hold_metrics``, they are sent once :meth:`release` covers ``step``."""
        if self._run_id is None:
            return
        now, rows = int(time.time() * 1000), []
        for key, value in metrics.items():
            number = metric_value(value)
            if number is None:
                self._warn_once(f"metric:{key}", f"metric {key!r} of run {self.run_name!r} is not a number "
                                                 f"({type(value).__name__}); skipped")
                continue
            rows.append((clean_key(key), number, now, int(step or 0)))
        if self._hold:
            self._held += rows
            return
        for part in chunks(rows, MAX_METRICS_PER_BATCH):
            self._submit(_Op("batch", metrics=part))

    def unconfirmed_metrics(self, step: int) -> list[list]:
        """The metric rows ``[key, value, timestamp_ms, step]`` of steps up to ``step`` that the store
        has not confirmed yet (held, queued or being sent): what a checkpoint at ``step`` must carry so
        that a resumed run can :meth:`replay_metrics` them if this process dies before they are stored."""
        if self._run_id is None:
            return []
        with self._cond:
            pending = [op for op in (self._inflight, *self._queue) if op is not None and op.kind in ("batch", "replay")]
            rows = [row for op in pending for row in op.metrics]
        return [list(row) for row in (*rows, *self._held) if row[3] <= step]

    def release(self, step: int) -> None:
        """Send the held metrics of steps up to ``step`` (call it once a checkpoint of ``step`` is written)."""
        if self._run_id is None:
            return
        ready = [row for row in self._held if row[3] <= step]
        self._held = [row for row in self._held if row[3] > step]
        for part in chunks(ready, MAX_METRICS_PER_BATCH):
            self._submit(_Op("batch", metrics=part))

    def replay_metrics(self, rows: list) -> None:
        """Send the rows (from :meth:`unconfirmed_metrics`) whose key has no point at that step in the
        store yet; rows the store already holds are skipped, so replaying twice logs nothing twice."""
        if self._run_id is None or not rows:
            return
        self._submit(_Op("replay", metrics=[(str(k), float(v), int(t), int(s)) for k, v, t, s in rows]))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self._run_id is None:
            return
        rows = [(clean_key(k), str(v)[:MAX_TAG_VALUE_LENGTH]) for k, v in tags.items()]
        for part in chunks(rows, MAX_PARAMS_TAGS_PER_BATCH):
            self._submit(_Op("batch", tags=part))

    def log_image(self, image: Any, artifact_file: str) -> None:
        """Log a PIL image or an array (HxW, HxWx3/4; uint8, or float in [0, 1]) as ``artifact_file``."""
        if self._run_id is None:
            return
        import numpy as np

        snapshot = image.copy() if hasattr(image, "copy") else np.array(image)  # the caller may reuse its buffer
        self._submit(_Op("image", payload=(snapshot, artifact_file)))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Log ``data`` as a JSON artifact (YAML when ``artifact_file`` ends in .yaml/.yml)."""
        if self._run_id is None:
            return
        if artifact_file.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False)
        else:
            text = json.dumps(data, indent=2, default=str) + "\n"
        self._submit(_Op("text", payload=(text, artifact_file)))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file or folder (under ``artifact_path`` in the run). A file is hard-linked into a private
        folder first, so a checkpoint replaced or deleted before the upload still uploads as it was."""
        if self._run_id is None:
            return
        path = Path(path)
        if not path.exists():
            self._warn_once(f"missing:{path}", f"log_artifact: {path} does not exist; not logged")
            self._count_dropped()
            return
        snapshot = self._snapshot(path) if path.is_file() else None
        self._submit(_Op("artifact", payload=(snapshot or path, artifact_path), cleanup=snapshot))

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything queued so far is sent (or dropped); False if ``timeout`` ran out first or
        the server is down (then nothing would drain: the wait ends at once)."""
        if self._worker is None:
            return True
        with self._cond:
            self._cond.wait_for(lambda: (not self._queue and not self._busy) or self._down, timeout)
            return not self._queue and not self._busy

    @contextlib.contextmanager
    def paused(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the delivery thread between two calls while the caller forks (a DataLoader starting its
        workers). A thread caught inside an import when the process forks (MLflow and PIL import lazily
        on their first image) leaves that module's lock held in the child, whose first import of the
        module then waits forever. Waits at most ``timeout`` s for the call in flight (not while the
        store is down: the thread then waits between probes); calls queued meanwhile are sent afterwards."""
        if self._worker is None:
            yield
            return
        with self._cond:
            self._pauses += 1
            self._cond.wait_for(lambda: not self._busy or self._down, timeout)
        try:
            yield
        finally:
            with self._cond:
                self._pauses -= 1
                self._cond.notify_all()

    def finish(self, status: str = "FINISHED", timeout: float = 30.0) -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED), waiting at most ``timeout`` seconds
        for the queue (and for a store that is down to come back); later calls on this tracker are
        ignored. Held metrics that no :meth:`release` covered are not sent: a resumed run logs them."""
        if self._worker is None or self._closed:
            return
        self._held = []
        with self._cond:
            # a margin before the join below times out, so the worker normally ends by itself
            self._give_up_at = time.monotonic() + 0.9 * timeout
            self._queue.append(_Op("end", payload=status))
            self._queue.append(_Op("stop"))
            self._closed = self._stopping = True
            self._cond.notify_all()
        self._wake.set()
        self._worker.join(timeout)
        if self._worker.is_alive():
            _warn(f"MLflow run {self.run_name!r}: {len(self._queue) + 1} tracking calls still pending after "
                  f"{timeout:.0f} s; left to a background thread that ends with the process")
        elif self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        failed = "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        self.finish(failed if exc_type is not None else "FINISHED")

    def __repr__(self) -> str:
        state = "disabled" if self._run_id is None else ("healthy" if self.healthy else "degraded")
        return f"RunTracker({self.run_name!r}, run_id={self._run_id!r}, {state})"

    # --------------------------------------------------------------- internals
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _warn(message)

    def _snapshot(self, path: Path) -> Path | None:
        try:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="tcl-tracking-"))
            self._snapshots += 1
            target = self._tmp / str(self._snapshots) / path.name
            target.parent.mkdir()
            os.link(path, target)
            return target
        except OSError:  # another filesystem: upload the live file (atomic writes keep it complete)
            return None

    def _submit(self, op: _Op) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._queue) >= self._max_pending:
                self._count_dropped()
                self._discard(op)
                return
            self._queue.append(op)
            self._cond.notify_all()

    def _count_dropped(self, count: int = 1) -> None:
        with self._cond:
            self._dropped += count

    def _set_down(self, down: bool) -> None:
        with self._cond:
            self._down = down
            self._cond.notify_all()  # a flush() waiting for the queue to drain gives up while down

    @staticmethod
    def _discard(op: _Op) -> None:
        if op.cleanup is not None:
            shutil.rmtree(op.cleanup.parent, ignore_errors=True)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) and (not self._pauses or self._stopping))
                op = self._queue.popleft()
                if op.kind == "batch":
                    op = _merge(op, self._queue)
                self._busy = op.kind != "stop"
                self._inflight = op
            if op.kind == "stop":
                break
            try:
                self._deliver(op)
            finally:
                self._discard(op)
                with self._cond:
                    self._busy, self._inflight = False, None
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _deliver(self, op: _Op) -> None:
        """Send one op; while the store is down, wait for it (or give up once finish()'s time is up)."""
        locked_retries = 3  # SQLite "database is locked" although the probe got through: a lock just released
        while True:
            if self._down and not self._wait_for_server():
                self._count_dropped()
                return
            try:
                with http_limits():
                    self._send(op)
                return
            except Exception as err:  # classify, never propagate
                reason = probe(self.tracking_uri or "")
                if reason is None and "database is locked" in str(err) and locked_retries > 0:
                    locked_retries -= 1
                    continue
                if reason is not None:
                    self._set_down(True)
                    self._warn_once("down", f"MLflow tracking store {self.tracking_uri} went away ({reason}); "
                                            f"run {self.run_name!r} keeps training, tracking calls are queued "
                                            f"(up to {self._max_pending}) and retried every "
                                            f"{self._retry_interval:g} s")
                    continue
                self._count_dropped()
                self._warn_once(f"error:{op.kind}:{type(err).__name__}",
                                f"MLflow run {self.run_name!r}: {op.kind} call failed ({type(err).__name__}: "
                                f"{' '.join(str(err).split())[:300]}); dropped, tracking continues")
                return

    def _wait_for_server(self) -> bool:
        """Probe until the store answers (True) or finish() gave up on it (False)."""
        while True:
            if self._stopping:
                if probe(self.tracking_uri or "", timeout=1.0) is None:
                    break
                if time.monotonic() < self._give_up_at:
                    time.sleep(1.0)
                    continue
                with self._cond:  # finish()'s time is up and the store is still gone: drop the rest
                    self._dropped += sum(1 for op in self._queue if op.kind not in ("stop",))
                    for op in self._queue:
                        self._discard(op)
                    self._queue = collections.deque(op for op in self._queue if op.kind == "stop")
                return False
            self._wake.wait(self._retry_interval)
            if not self._stopping and probe(self.tracking_uri or "") is None:
                break
        self._set_down(False)
        self._warned.discard("down")
        _warn(f"MLflow tracking store {self.tracking_uri} is reachable again; run {self.run_name!r} resumes "
              f"logging ({self._dropped} calls dropped so far)")
        return True

    def _send(self, op: _Op) -> None:
        client, run_id = self._client, self._run_id
        if op.kind == "replay":
            self._send_missing(op.metrics)
        elif op.kind == "batch":
            from mlflow.entities import Metric, Param, RunTag

            try:
                client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in op.metrics],
                                 params=[Param(k, v) for k, v in op.params], tags=[RunTag(k, v) for k, v in op.tags])
            except Exception:
                if len(op.params) < 2 or probe(self.tracking_uri or "") is not None:
                    raise
                self._send_params_one_by_one(op.params)
        elif op.kind == "image":
            image, artifact_file = op.payload
            client.log_image(run_id, image, artifact_file=artifact_file)
        elif op.kind == "text":
            text, artifact_file = op.payload
            client.log_text(run_id, text, artifact_file)
        elif op.kind == "artifact":
            local, artifact_path = op.payload
            client.log_artifact(run_id, str(local), artifact_path)
        elif op.kind == "end":
            client.set_terminated(run_id, status=op.payload)
            if self._held_parent is not None:  # the next stage of the experiment marks it RUNNING again
                client.set_terminated(self._held_parent, status=op.payload)

    def _send_missing(self, rows: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        stored = {(key, point.step) for key in sorted({row[0] for row in rows})
                  for point in self._client.get_metric_history(self._run_id, key)}
        missing = [Metric(k, v, t, s) for k, v, t, s in rows if (k, s) not in stored]
        for part in chunks(missing, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=part)

    def _send_params_one_by_one(self, params: list[tuple[str, str]]) -> None:
        """MLflow rejects a whole batch when one param changes value (e.g. ``--steps`` on a resumed run):
        keep every other param and report the changed ones."""
        from mlflow.entities import Param

        rejected = []
        for key, value in params:
            try:
                self._client.log_batch(self._run_id, params=[Param(key, value)])
            except Exception:  # the same rejection, for this key alone
                rejected.append(key)
        if rejected:
            raise ValueError(f"params already logged with another value, kept the old one: {', '.join(rejected)}")
