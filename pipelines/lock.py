"""One pipeline run at a time per checkout: an OS file lock on the workspace for the run's whole duration.

Two ``make run`` (or a ``make run`` and a Prefect flow run) in one checkout would share ``params.yaml``:
the second one's overrides are written while the first one's ``dvc repro`` has yet to read them, so
the first trains with the second one's parameters while MLflow records its own. Every orchestrator
therefore holds :func:`workspace_lock` from before it writes ``params.yaml`` until its last stage is
done. The lock is ``fcntl.flock`` on ``.dvc/tmp/tcl-pipeline.lock`` (ignored by git, like DVC's own
lock beside it): the kernel releases it when the holder exits in any way, ``kill -9`` included, so
there is never a stale lock to delete by hand. The file records who holds it (PID, start time,
command), read by the run that is refused. Child processes do not inherit the lock (the descriptor
is close-on-exec), so a stage left running after its pipeline died would not keep it either.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tcl.errors import TCLError

__all__ = ["LOCK_FILE", "WorkspaceError", "WorkspaceBusy", "WorkspaceLock", "workspace_lock"]

#: The lock file, relative to the project root.
LOCK_FILE = Path(".dvc/tmp/tcl-pipeline.lock")


class WorkspaceError(TCLError, RuntimeError):
    """The workspace cannot be locked (not a DVC project)."""


class WorkspaceBusy(WorkspaceError):
    """Another pipeline run holds the workspace lock; the message names it (PID, start time, command)."""

    def __init__(self, message: str, holder: dict) -> None:
        super().__init__(message)
        self.holder = holder


class WorkspaceLock:
    """The held lock of one checkout; :meth:`release` (or closing the process) frees it."""

    def __init__(self, path: Path, fd: int, holder: dict) -> None:
        self.path, self._fd, self.holder = path, fd, holder

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> WorkspaceLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release() still frees the workspace
        self.release()

    @classmethod
    def acquire(cls, root: str | os.PathLike, command: str, *, wait: bool = False,
                on_wait: Callable[[str], None] | None = None) -> WorkspaceLock:
        """Take the lock of the checkout at ``root`` for ``command`` (recorded for whoever is refused).

        Held already: raise :class:`WorkspaceBusy` at once, or with ``wait`` block until it is free
        (``on_wait`` receives the one-line description of the holder first).
        """
        root = Path(root).resolve()
        if not (root / ".dvc").is_dir():
            raise WorkspaceError(f"{root} is not a DVC project (no .dvc folder): pass --root or run dvc init there")
        path = root / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(path)
                message = f"the workspace {root} is in use by another pipeline run: {_describe(holder)}"
                if not wait:
                    raise WorkspaceBusy(f"{message} (wait for it to finish or stop it; --wait waits)",
                                        holder) from None
                if on_wait is not None:
                    on_wait(f"waiting: {message}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            holder = {"pid": os.getpid(), "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                      "command": command}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, holder)


@contextlib.contextmanager
def workspace_lock(root: str | os.PathLike, command: str, *, wait: bool = False,
                   on_wait: Callable[[str], None] | None = None) -> Iterator[WorkspaceLock]:
    """:meth:`WorkspaceLock.acquire` as a context manager: held for the ``with`` block."""
    with WorkspaceLock.acquire(root, command, wait=wait, on_wait=on_wait) as lock:
        yield lock


def _read_holder(path: Path, patience: float = 2.0) -> dict:
    """What the holder recorded; it writes right after locking, so an empty file is retried briefly."""
    deadline = time.monotonic() + patience
    while True:
        try:
            holder = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            holder = None
        if isinstance(holder, dict) or time.monotonic() > deadline:
            return holder if isinstance(holder, dict) else {}
        time.sleep(0.1)


def _describe(holder: dict) -> str:
    if not holder:
        return "details not recorded"
    return f"PID {holder.get('pid')}, started {holder.get('started')}, command: {holder.get('command')}"
