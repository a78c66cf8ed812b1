"""Atomic file outputs: write beside the target, then rename, so no half-written file is ever seen.

Every user-facing output of the project (images, metrics JSON, label maps, manifests) goes through
here: an interrupted command leaves either the previous file or none, never a truncated one.

A write that fails for lack of room (disk full, quota, the file-size limit) raises
:class:`DiskFullError`, one line naming the problem and the target file, and removes its temporary
file; a process killed mid-write (SIGKILL, power loss) can leave one ``.<name>.<random>.tmp``
behind, which :func:`remove_stale_temporaries` deletes when the writer starts again. Any other
failure to write (a file where a folder should be, no permission) raises :class:`OutputError`, the
OS's own one line; :func:`output_errors` does the same for writers that do not go through here.
Both are :class:`tcl.errors.TCLError`, so an entry point reports them in one line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import TCLError

__all__ = ["DiskFullError", "OutputError", "output_errors", "atomic_path", "remove_stale_temporaries",
           "write_text_atomic", "write_json_atomic"]

#: errno → (what went wrong, what to do), for the failures that mean "no room for this file".
_NO_ROOM = {
    errno.ENOSPC: ("no space left on device", "free space on that disk, then rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota, then rerun"),
    errno.EFBIG: ("file too large for the file-size limit (ulimit -f)", "raise the limit, then rerun"),
}
# What tempfile.mkstemp names our temporary files: .<target name>.<8 random characters>.tmp
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class DiskFullError(TCLError, OSError):
    """No room to write ``filename`` (ENOSPC, EDQUOT or EFBIG): ``reason`` says which, ``fix`` what to do."""

    def __init__(self, code: int, filename: str | os.PathLike, fix: str | None = None) -> None:
        reason, default_fix = _NO_ROOM[code]
        super().__init__(code, reason, str(filename))
        self.reason, self.fix = reason, fix or default_fix

    def __str__(self) -> str:
        return f"{self.reason} writing {self.filename} ({self.fix})"

    @classmethod
    def convert(cls, err: OSError, filename: str | os.PathLike) -> OSError:
        """``err`` as a :class:`DiskFullError` for ``filename`` when it means no room, else ``err`` itself."""
        return err if isinstance(err, cls) or err.errno not in _NO_ROOM else cls(err.errno, filename)


class OutputError(TCLError, OSError):
    """An output that cannot be written for another reason than room (no permission, a file in the way).

    ``str()`` is the OS error's own line (``[Errno 13] Permission denied: 'metrics/report'``), and
    ``errno``/``strerror``/``filename`` are kept, so ``except OSError`` callers see what they saw before.
    """

    @classmethod
    def convert(cls, err: OSError, filename: str | os.PathLike) -> OSError:
        """``err`` as a :class:`DiskFullError` for ``filename`` when it means no room, as an
        :class:`OutputError` otherwise; a :class:`TCLError` already is one and is returned unchanged."""
        if isinstance(err, TCLError):
            return err
        if err.errno in _NO_ROOM:
            return DiskFullError(err.errno, filename)
        if err.errno is None:
            return cls(*err.args)
        return cls(err.errno, err.strerror, *([err.filename] if err.filename is not None else []))


@contextmanager
def output_errors(target: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into :class:`DiskFullError` (named after ``target``, the file
    or output folder being written) or :class:`OutputError`, for writers that write files themselves."""
    try:
        yield
    except OSError as err:
        converted = OutputError.convert(err, target)
        if converted is err:
            raise
        raise converted from err


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        # the writer's own errors too: a full disk is named after the target, not the temporary
        with output_errors(path):
            yield Path(tmp)
            # mkstemp creates owner-only files; give the result the permissions a plain open() would.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes killed mid-way left in ``folder``; returns them.

    Only for a folder that one process writes at a time (a stage's output folder at the stage's start):
    a temporary file another process is writing now would be deleted under it.
    """
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if _TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
