"""Another process holding an exclusive lock on a SQLite database (the embedded MLflow store), for tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["SqliteLock"]

_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # held until the test closes our stdin
connection.execute("ROLLBACK")
"""


class SqliteLock:
    """``BEGIN EXCLUSIVE`` on ``database`` in a child process, from :meth:`acquire` to :meth:`release`."""

    def __init__(self, database: Path):
        self.database = database
        self.proc: subprocess.Popen | None = None

    def acquire(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(self.database)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # bounded: the holder locks within its 60 s busy timeout or exits
        if line.strip() != "locked":
            self.release()
            raise RuntimeError(f"could not lock {self.database}")

    def release(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()

    def __enter__(self) -> SqliteLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
