"""A copied or moved project keeps its own artifacts: the embedded store's locations follow ``mlflow.db``.

MLflow cannot keep a relative artifact location: ``SqlAlchemyStore.create_experiment`` passes the one
it is given through ``resolve_uri_if_local`` (a relative path is resolved against the cwd of the
process that creates the experiment), and every run, logged model and model version then stores its
own absolute location below it (``runs.artifact_uri`` = ``<experiment location>/<run id>/artifacts``).
A project copied (``cp -a``) or moved elsewhere would therefore still name the old folder: new runs
write there (after a move, recreating it), old runs read the original's files.

So before a run opens in the embedded store, :func:`relocate_store` compares what the database records
for the project's experiments with where the database now lies: when an experiment's location is
``<another folder>/mlartifacts/<experiment>``, the folder the store was created in, every location
below ``<that folder>/mlartifacts/`` is rewritten to the same place below the database's folder, in
one SQLite transaction. The copy's files (``mlartifacts/`` travels with ``mlflow.db``) are then the
ones read and written. Locations elsewhere (an experiment the user gave its own location, MLflow's
``Default`` experiment under ``./mlruns``) are left alone.
"""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .context import ARTIFACT_FOLDER, artifact_folder

__all__ = ["Relocation", "relocate_store", "LOCATION_COLUMNS"]

#: The columns of MLflow's schema that hold artifact locations (absent ones, in other MLflow versions, are skipped).
LOCATION_COLUMNS = {"experiments": ("artifact_location",), "runs": ("artifact_uri",),
                    "model_versions": ("source", "storage_location"), "logged_models": ("artifact_location",)}


@dataclass(frozen=True)
class Relocation:
    """What :func:`relocate_store` changed: the project folders the store named, where it is now, rows rewritten."""

    old_roots: tuple[Path, ...]
    new_root: Path
    rows: int


def _old_roots(connection: sqlite3.Connection, here: Path) -> set[str]:
    """The ``file://`` folders other than ``here`` whose ``mlartifacts/<experiment>`` an experiment names."""
    roots = set()
    for name, location in connection.execute("SELECT name, artifact_location FROM experiments"):
        expected = artifact_folder(here, name).as_uri()
        suffix = expected[len(here.as_uri()):]  # /mlartifacts/<experiment>, URI-quoted like the location
        if location and location != expected and location.startswith("file://") and location.endswith(suffix):
            roots.add(location[:-len(suffix)])
    return roots


def _columns(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    present = []
    for table, columns in LOCATION_COLUMNS.items():
        have = {row[1] for row in connection.execute(f"PRAGMA table_info('{table}')")}
        present += [(table, column) for column in columns if column in have]
    return present


def _rewrite(connection: sqlite3.Connection, old: str, new: str) -> int:
    """``old...`` -> ``new...`` in every location column; the number of rows changed."""
    changed = 0
    for table, column in _columns(connection):
        # substr, not LIKE: a folder name may hold LIKE's wildcards (_ and %)
        cursor = connection.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                    f"WHERE substr({column}, 1, ?) = ?", (new, len(old) + 1, len(old), old))
        changed += cursor.rowcount
    return changed


def relocate_store(database: str | Path, timeout: float = 30.0) -> Relocation | None:
    """Point the artifact locations of the SQLite store ``database`` that name the folder it was created
    in at its current folder (see the module docstring); ``None`` when nothing named another folder (also
    for a missing file or a database without MLflow's tables). Safe to call from concurrent processes:
    the check and the rewrite are one write transaction, and a relocated store has nothing left to do."""
    database = Path(database)
    if not database.is_file():
        return None
    here = database.resolve().parent
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout,
                                 isolation_level=None)
    try:
        try:
            if not _old_roots(connection, here):  # the common case: a read, no write lock taken
                return None
        except sqlite3.OperationalError:  # no experiments table yet: MLflow creates the schema later
            return None
        connection.execute("BEGIN IMMEDIATE")
        try:
            roots, rows = sorted(_old_roots(connection, here)), 0  # again, now that no one else can write
            for root in roots:
                old_path = unquote(urlparse(root).path)
                for old, new in ((f"{root}/{ARTIFACT_FOLDER}/", f"{here.as_uri()}/{ARTIFACT_FOLDER}/"),
                                 (f"{old_path}/{ARTIFACT_FOLDER}/", f"{here}/{ARTIFACT_FOLDER}/")):
                    rows += _rewrite(connection, old, new)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    finally:
        connection.close()
    if not roots:
        return None
    return Relocation(tuple(Path(unquote(urlparse(root).path)) for root in roots), here, rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m tcl.tracking.relocate [mlflow.db]``: relocate now (e.g. before ``mlflow ui`` in a moved project)."""
    args = sys.argv[1:] if argv is None else argv
    database = Path(args[0] if args else "mlflow.db")
    if len(args) > 1 or not database.is_file():
        print(f"relocate: error: {database} is not a file: give the project's mlflow.db "
              "(python -m tcl.tracking.relocate path/to/mlflow.db)", file=sys.stderr)
        return 2
    try:
        moved = relocate_store(database)
    except sqlite3.Error as err:  # locked by a running pipeline, read-only, not a database
        print(f"relocate: error: {database}: {err} (rerun when no pipeline or mlflow ui uses it)", file=sys.stderr)
        return 1
    print(f"relocate: {database}: " + (f"{moved.rows} artifact location(s) moved from "
                                       f"{', '.join(map(str, moved.old_roots))} to {moved.new_root}"
                                       if moved else "its artifact locations are already this folder's"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
