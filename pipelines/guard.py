"""Run a command so that it, and everything it starts, stops with the process that launched it (Linux).

    python pipelines/guard.py --parent PID --grace 30 -- python -m dvc repro

``dvc repro`` runs in its own process group (:func:`pipelines.dvc_cli.run_streamed`), so a signal
to the orchestrator alone never reaches it, and DVC itself dies on SIGTERM without stopping the stage
command it started; torchrun's workers even get sessions of their own. This guard sits between
the orchestrator and DVC and stops the whole tree:

* SIGTERM, SIGINT or SIGHUP to the guard: SIGTERM to its process group (DVC, the stage's shell,
  torchrun, which stops its workers; training writes its checkpoint) and to every orphan it adopts,
  then SIGKILL to every descendant left after ``--grace`` seconds;
* the launching process dies in any way, ``kill -9`` included: ``prctl(PR_SET_PDEATHSIG)`` sends the
  guard SIGTERM (and ``getppid()`` is polled too); the guard then stops the tree as above. The
  signal fires when the launching *thread* ends, so that thread must wait for the guard, as
  :func:`~pipelines.dvc_cli.run_streamed` does;
* the guard is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process whose parent died (a stage
  orphaned by DVC's death, a worker orphaned by torchrun's) is re-parented to the guard, so it is
  still found and stopped, and no zombie is left.

Only SIGKILL of the guard itself, or of the whole group by hand, escapes this (nothing could run). The
guard exits with the command's status (128 + N when signal N ended it). Standard library only: it runs
as a script by path, without importing ``tcl`` (which imports torch).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

__all__ = ["PR_SET_PDEATHSIG", "PR_SET_CHILD_SUBREAPER", "descendants", "main"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_POLL = 0.2


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux: only the signal forwarding works
        return False


def _processes() -> dict[int, tuple[int, int, bool]]:
    """``{pid: (parent pid, process group, is a zombie)}`` of every process, from ``/proc``."""
    table: dict[int, tuple[int, int, bool]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        table[int(entry)] = (int(fields[1]), int(fields[2]), fields[0] == "Z")
    return table


def descendants(pid: int, table: dict[int, tuple[int, int, bool]] | None = None) -> list[int]:
    """Every live descendant of ``pid`` (children, their children, ...).

    Zombies are not returned (they have ended; only their parent has not collected them yet) but
    are walked through: a process whose parent has just died may still name that parent.
    """
    table = _processes() if table is None else table
    children: dict[int, list[int]] = {}
    for child, (parent, _group, _zombie) in table.items():
        children.setdefault(parent, []).append(child)
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            queue.append(child)
            if not table[child][2]:
                found.append(child)
    return found


class _Guard:
    def __init__(self, command: list[str], parent: int, grace: float) -> None:
        self.command, self.parent, self.grace = command, parent, grace
        self.signal: int | None = None  # the stop signal received, if any

    def _on_signal(self, signum, _frame) -> None:
        self.signal = self.signal or signum

    def _parent_gone(self) -> bool:
        return self.parent > 0 and os.getppid() != self.parent

    def _reap(self, child: subprocess.Popen) -> None:
        """Collect exited children (adopted orphans included) without blocking; ``child`` keeps its status."""
        child.poll()
        while True:
            try:  # WNOWAIT: look first, so that ``child`` is reaped by Popen, which records its status
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            if info.si_pid == child.pid:
                child.poll()
            else:
                os.waitpid(info.si_pid, 0)

    def _stop(self, child: subprocess.Popen) -> None:
        """Stop the tree: SIGTERM, up to ``grace`` seconds for it to end, then SIGKILL to what is left.

        SIGTERM goes to the process group (DVC, the stage's shell, torchrun) and to each orphan the
        guard adopts, once: never straight to a process whose parent lives, so torchrun stops its
        workers itself and a data-loader worker is stopped by its training process (a data-loader
        worker killed under it would fail the step instead of letting training write its checkpoint).
        """
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # the group signal below reaches this process too
        me, table = os.getpid(), _processes()
        if os.getpgrp() == me:  # only a group of its own (run_streamed starts it so), never a shell's
            signalled = {pid for pid in descendants(me, table) if table[pid][1] == me}
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(me, signal.SIGTERM)
        else:
            signalled = {child.pid}
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child.pid, signal.SIGTERM)
        deadline, empty = time.monotonic() + self.grace, 0
        while time.monotonic() < deadline:
            self._reap(child)
            table = _processes()
            # /proc is not read atomically: "nothing left" only when two scans in a row say so
            empty = empty + 1 if not descendants(me, table) else 0
            if empty >= 2:
                return
            for pid in [pid for pid, (parent, _, zombie) in table.items() if parent == me and not zombie]:
                if pid not in signalled:  # an orphan: nobody else will stop it
                    signalled.add(pid)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGTERM)
            time.sleep(_POLL)
        for pid in descendants(me):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while descendants(me) and time.monotonic() < deadline:
            self._reap(child)
            time.sleep(_POLL)
        self._reap(child)

    def run(self) -> int:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if self._parent_gone():  # it died before the line above took effect
            return 128 + signal.SIGTERM
        child = subprocess.Popen(self.command)
        while child.poll() is None:
            if self.signal is not None or self._parent_gone():
                self._stop(child)
                break
            self._reap(child)
            time.sleep(_POLL)
        if descendants(os.getpid()):  # something the command left behind: it ends with the command
            self._stop(child)
        code = child.wait()
        return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parent", type=int, default=0, help="PID of the launching process (stop when it dies)")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds from SIGTERM to SIGKILL (30)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    return _Guard(command, args.parent, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
