"""Overrides for one pipeline run only: ``params.yaml`` is put back however the run ends.

A run with overrides (``make run ARGS="-S train.steps=5"``, a Prefect custom run, ``--exp``) writes them
into ``params.yaml``, because DVC's stages read their parameters from there. Left in place they leak
into the next run: a plain nightly would train 5 steps while its MLflow tag says "no overrides".
So every orchestrator applies overrides through :func:`overrides_applied`:

1. a backup of ``params.yaml`` (its text, and the hash of what the overrides turn it into) is written
   atomically to ``.dvc/tmp/tcl-params.backup.json`` (ignored by git, beside the workspace lock)
   *before* the file changes;
2. the run runs;
3. on the way out (success, a failed stage, Ctrl-C/SIGTERM unwinding) the original text is written
   back and the backup removed.

A run killed outright (SIGKILL, power loss) skips step 3; the backup survives, and :func:`recover`, called
by the next pipeline run right after it takes the workspace lock (:mod:`pipelines.lock`), restores it
before reading ``params.yaml``. The lock guarantees that no other run's backup is in flight then. A
``params.yaml`` edited by hand since the overrides were written (its hash differs) is never
overwritten: the backup is kept aside as ``params.yaml.before-overrides`` and a line says so.

``dvc.lock`` keeps recording the values the run used, so after an override run ``dvc status`` shows
the affected stages as changed and the next plain run brings them back to ``params.yaml``'s values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pipelines.overrides import Override, write_overrides
from tcl.atomic import write_json_atomic, write_text_atomic

__all__ = ["BACKUP_FILE", "KEPT_SUFFIX", "recover", "expected_text", "overrides_applied"]

#: The backup, relative to the project root (``.dvc/tmp`` is DVC's git-ignored scratch folder).
BACKUP_FILE = Path(".dvc/tmp/tcl-params.backup.json")
#: Where the original goes when ``params.yaml`` was edited after the overrides were written.
KEPT_SUFFIX = ".before-overrides"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def expected_text(params_file: Path, overrides: Iterable[Override]) -> str:
    """What ``params_file`` holds once DVC's ``-S`` writer applied ``overrides`` (computed on a copy)."""
    handle, tmp = tempfile.mkstemp(dir=params_file.parent, prefix=f".{params_file.stem}.", suffix=".expected.yaml")
    os.close(handle)
    try:
        shutil.copyfile(params_file, tmp)
        write_overrides(tmp, overrides)
        return Path(tmp).read_text()
    finally:
        Path(tmp).unlink(missing_ok=True)


def recover(root: str | os.PathLike, say: Callable[[str], None] = print) -> bool:
    """Undo the overrides a run that did not finish left in ``root/params.yaml``; True when there was a backup.

    Call it while holding the workspace lock. ``say`` receives one line describing what was done.
    """
    root = Path(root)
    backup, params_file = root / BACKUP_FILE, root / "params.yaml"
    try:
        record = json.loads(backup.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # torn by a crash mid-write cannot happen (atomic), but never trust it blindly
        say(f"ignoring an unreadable params backup {BACKUP_FILE} (params.yaml left as it is)")
        backup.unlink(missing_ok=True)
        return True
    current = params_file.read_text() if params_file.is_file() else None
    original = record["original"]
    if current is not None and current != original and _digest(current) != record["overridden_sha256"]:
        kept = params_file.with_name(params_file.name + KEPT_SUFFIX)
        write_text_atomic(kept, original)
        say(f"params.yaml changed since a run ({record.get('command', '?')}) wrote its overrides into it: "
            f"left as it is; the file before those overrides is {kept.name}")
    elif current != original:
        write_text_atomic(params_file, original)
        say(f"params.yaml restored: a run that did not finish ({record.get('command', '?')}) had left its "
            f"overrides {', '.join(record.get('overrides', []))} in it")
    backup.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def overrides_applied(root: str | os.PathLike, overrides: Iterable[Override], *, command: str = "",
                      write: bool = True, say: Callable[[str], None] = print) -> Iterator[None]:
    """``params.yaml`` with ``overrides`` for the ``with`` block, the original text again afterwards.

    ``write``: apply them here (``dvc repro``, the flow); False when another writer applies the same
    overrides inside the block (``dvc exp run -S``), so that only the backup and the restore happen here.
    With no overrides the file is left alone. Hold the workspace lock around it.
    """
    root, overrides = Path(root), list(overrides)
    params_file = root / "params.yaml"
    recover(root, say)
    if not overrides:
        yield
        return
    original = params_file.read_text()
    record = {"original": original, "overridden_sha256": _digest(expected_text(params_file, overrides)),
              "overrides": [f"{k}={v}" for k, v in overrides], "command": command, "pid": os.getpid()}
    write_json_atomic(root / BACKUP_FILE, record)  # before the file changes: a kill from here on is recoverable
    try:
        if write:
            write_overrides(params_file, overrides)
        yield
    finally:
        # what the run wrote is undone only if nobody edited the file meanwhile (recover's rule)
        recover(root, say=lambda line: say(line) if "changed since" in line else None)
