"""A private PostgreSQL cluster on 127.0.0.1 for the scale suite (Debian's ``postgresql`` binaries).

``initdb`` refuses to run as root, and CI containers (like this machine) run tests as root: the cluster is
then initialised and run as ``nobody`` through ``runuser`` (util-linux, in every Debian/Ubuntu image), in a
folder of its own under /tmp that ``nobody`` owns (pytest's tmp folders are 0700 root). As any other user
the binaries run as that user. Stopped by its postmaster PID (``pg_ctl stop -m immediate``, then SIGKILL).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresCluster", "postgres_bindir"]

_DB_USER = "nobody"


def postgres_bindir() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl``, ``psql`` and ``createdb``: from PATH, else Debian's
    /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:  # maybe a symlink to a few of the binaries only: psql and createdb are beside its target
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


class PostgresCluster:
    """``initdb`` + ``pg_ctl start`` on a given port, 127.0.0.1 only; a database and a password role for MLflow."""

    def __init__(self, port: int, bindir: Path) -> None:
        self.port, self.bindir = port, bindir
        self.root = Path(tempfile.mkdtemp(prefix="tcl-pg-"))  # short: it holds the Unix socket too
        self.data, self.sockets, self.log = self.root / "data", self.root / "run", self.root / "postgres.log"
        self.pid: int | None = None

    def _as_owner(self, *cmd: str | os.PathLike) -> list[str]:
        argv = [str(c) for c in cmd]
        return ["runuser", "-u", _DB_USER, "--", *argv] if os.geteuid() == 0 else argv

    def _run(self, *cmd: str | os.PathLike, timeout: float = 120) -> str:
        done = subprocess.run(self._as_owner(*cmd), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def start(self, database: str, user: str, password: str) -> str:
        """Initialise, start, create ``user`` (password auth over TCP) owning ``database``; its SQLAlchemy URI."""
        self.sockets.mkdir()
        if os.geteuid() == 0:
            self.root.chmod(0o755)
            for path in (self.root, self.sockets):
                shutil.chown(path, _DB_USER)
        self._run(self.bindir / "initdb", "-D", self.data, "-E", "UTF8", "--locale=C", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-U", "postgres")
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "120", "-o",
                  f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1", "start", timeout=180)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        psql = [self.bindir / "psql", "-h", self.sockets, "-p", str(self.port), "-U", "postgres", "-v",
                "ON_ERROR_STOP=1", "-d", "postgres", "-c"]
        self._run(*psql, f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        self._run(self.bindir / "createdb", "-h", self.sockets, "-p", str(self.port), "-U", "postgres", "-O", user,
                  database)
        # +psycopg2: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, a package the scale extra lacks
        return f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the postmaster this object started (immediate shutdown), by its PID as a last resort; delete it all."""
        try:
            if self.pid is not None:
                subprocess.run(self._as_owner(self.bindir / "pg_ctl", "-D", self.data, "stop", "-m", "immediate",
                                              "-w", "-t", "30"), capture_output=True, timeout=60)
                deadline = time.monotonic() + 15
                while _alive(self.pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if _alive(self.pid):
                    os.kill(self.pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
