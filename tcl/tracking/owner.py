"""Which process owns a run, and closing the runs whose owner died without closing them.

A run stays ``RUNNING`` in the store when its process cannot end it: killed (SIGKILL, OOM, power
loss), or the store was unavailable (locked, server down) for the whole of :meth:`RunTracker.finish`.
Every run is therefore tagged with its owner, ``tcl.host`` and ``tcl.process`` (``<pid>@<start
time>``: the start time, from ``/proc/<pid>/stat`` on Linux, tells a recycled pid apart), and every
:meth:`RunTracker.start` closes, as ``FAILED``, the runs of its experiment that are still ``RUNNING``
although their owner on this host is gone. A run of another host is never touched: whether its
owner lives cannot be told from here.
"""

from __future__ import annotations

import os
import socket
from typing import Any

__all__ = ["HOST_TAG", "PROCESS_TAG", "owner_tags", "owner_alive", "close_orphaned_runs"]

HOST_TAG, PROCESS_TAG = "tcl.host", "tcl.process"
#: Orphans closed per start: bounds the cost of one start; the next start goes on with the rest.
MAX_REPAIRS = 100


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), ``None`` elsewhere or if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None  # field 22 of stat(5), counted from "state"


def owner_tags() -> dict[str, str]:
    """``tcl.host`` and ``tcl.process`` of the calling process."""
    pid = os.getpid()
    start = _start_time(pid)
    return {HOST_TAG: socket.gethostname(), PROCESS_TAG: f"{pid}@{start}" if start else str(pid)}


def owner_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process named by a run's owner tags still runs; ``None`` when that cannot be told
    (no owner tags, or another host)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PROCESS_TAG):
        return None
    pid_text, _, start = tags[PROCESS_TAG].partition("@")
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    if start:
        return _start_time(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def close_orphaned_runs(client: Any, experiment_id: str, closer: str) -> list[str]:
    """Set ``FAILED`` the ``RUNNING`` runs of ``experiment_id`` whose owner on this host is gone, each
    with a tag ``tcl.closed_by`` naming ``closer`` (the run that found it); returns their ids."""
    from mlflow.entities import RunTag

    host = socket.gethostname().replace("'", "")
    runs = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
                              max_results=MAX_REPAIRS)
    closed = []
    for run in runs:
        if run.info.run_id == closer or owner_alive(run.data.tags) is not False:
            continue
        client.log_batch(run.info.run_id, tags=[RunTag("tcl.closed_by", f"run {closer}: owner process "
                                                                       f"{run.data.tags[PROCESS_TAG]} had ended")])
        client.set_terminated(run.info.run_id, status="FAILED")
        closed.append(run.info.run_id)
    return closed
