"""A throw-away copy of a checkout as its own git repository: where a second pipeline run can go.

DVC keeps one workspace per checkout, so running the pipeline for several settings at once (other
seeds, a control experiment) needs one copy each. :func:`copy_checkout` copies what git would carry
(tracked files and untracked ones that are not ignored, so uncommitted edits, ``metrics/`` and
``dvc.lock`` come along) and commits them in a fresh repository; what git ignores (``data/``, weights,
``.venv``, the DVC cache) stays behind. :func:`git` runs git with a fixed identity, so it commits on a
machine without a configured user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["copy_checkout", "git"]

_GIT_IDENTITY = {"GIT_AUTHOR_NAME": "tcl", "GIT_AUTHOR_EMAIL": "tcl@localhost", "GIT_COMMITTER_NAME": "tcl",
                 "GIT_COMMITTER_EMAIL": "tcl@localhost"}


def git(root: str | os.PathLike, *args: str) -> str:
    """``git <args>`` in ``root``; its standard output (a failure raises ``CalledProcessError``)."""
    return subprocess.run(["git", *args], cwd=root, env={**os.environ, **_GIT_IDENTITY}, check=True,
                          capture_output=True, text=True).stdout


def copy_checkout(source: str | os.PathLike, dest: str | os.PathLike, skip: Sequence[str] = ()) -> Path:
    """Tracked and not-ignored files of the checkout ``source`` → ``dest``, committed once in a new repository.

    ``skip`` lists path prefixes to leave out (e.g. ``"tests/"``). ``dest`` must not exist yet or be empty.
    """
    source, dest = Path(source), Path(dest)
    listed = git(source, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in listed:
        if not name or name.startswith(tuple(skip)) or not (source / name).is_file():
            continue  # a tracked file deleted in the working tree is not copied
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", f"copy of {source}"]):
        git(dest, *args)
    return dest
