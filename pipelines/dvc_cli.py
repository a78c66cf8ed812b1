"""DVC from Python: run pipeline stages as subprocesses with streamed output, list them, ask what is stale.

Every orchestrator here (``make run``, the Prefect flow) goes through ``dvc repro``, so DVC alone
decides what is up to date and ``dvc.lock`` stays the record of what ran. Commands run with the
project's interpreter first on ``PATH`` (stage commands say ``python`` and ``torchrun``) in their
own process group, under :mod:`pipelines.guard`, so a stopped orchestrator stops the whole tree:
interrupted (Ctrl-C, SIGTERM, SIGHUP, a cancelled flow run), it SIGTERMs the guard, which stops DVC,
the stage and torchrun's workers (training writes its checkpoint), then SIGKILLs what is left after
the grace period; killed outright (SIGKILL), the guard notices its parent's death
(``PR_SET_PDEATHSIG``) and does the same. DVC holds its repository lock only briefly around a stage (never while the
stage's command runs), so concurrent ``dvc repro`` calls on different stages work; a call that finds
the lock held waits for it (``dvc --wait-for-lock``; the lock is an OS file lock, released when its
holder exits, so the wait cannot outlive a crashed process).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tcl.errors import TCLError

__all__ = ["STOP_GRACE", "DvcError", "tool_env", "dvc_command", "run_streamed", "run_dvc", "repro", "stage_names",
           "stale_stages"]


class DvcError(TCLError, RuntimeError):
    """A DVC command failed; ``tail`` holds its last output lines."""

    def __init__(self, message: str, returncode: int, tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.tail = list(tail)


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for DVC and stage processes: this interpreter's scripts first on ``PATH``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # imported via mmseg/img2dataset; it asks PyPI otherwise
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")  # stage output arrives line by line, not at exit
    env.update(extra or {})
    return env


def dvc_command(*args: str) -> list[str]:
    """``dvc <args>`` through this interpreter (the DVC installed beside the project), waiting for DVC's lock."""
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


#: Seconds a stopped stage has from SIGTERM to SIGKILL (training finishes its step and writes latest.pt).
STOP_GRACE = 30.0
_GUARD = Path(__file__).with_name("guard.py")


def _guarded(command: Sequence[str], grace: float = STOP_GRACE) -> list[str]:
    """``command`` under the guard (by path: it needs only the standard library, not ``tcl`` and torch)."""
    return [sys.executable, str(_GUARD), "--parent", str(os.getpid()), "--grace", str(grace), "--", *command]


def _stop(process: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """SIGTERM the guard (it stops its tree: SIGTERM, ``grace`` seconds, SIGKILL); SIGKILL its group if it hangs."""
    for sig, wait in ((signal.SIGTERM, grace + 15.0), (signal.SIGKILL, 5.0)):
        try:
            (os.kill if sig == signal.SIGTERM else os.killpg)(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_streamed(command: Sequence[str], *, cwd: str | os.PathLike, env: Mapping[str, str] | None = None,
                 on_line: Callable[[str], None] | None = None, tail: int = 60) -> tuple[int, list[str]]:
    """Run ``command``, passing each output line (stdout and stderr merged) to ``on_line`` as it comes.

    Returns the exit status and the last ``tail`` lines. Interrupting the caller (Ctrl-C, SIGTERM turned
    into an exception, a cancelled flow run) stops the command and all its descendants before the
    exception propagates; the caller's death stops them too (see :mod:`pipelines.guard`).
    """
    on_line = on_line or (lambda line: print(line, flush=True))
    last: collections.deque[str] = collections.deque(maxlen=tail)
    process = subprocess.Popen(_guarded(command), cwd=cwd, env=dict(env) if env is not None else None,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, errors="replace", bufsize=1, start_new_session=True)
    def relay(stream) -> None:
        for raw in stream:
            # tqdm redraws with carriage returns: keep only the final state of such a line (a line that
            # ends in "\r", as tqdm's last redraw does, would otherwise come out empty)
            line = raw.rstrip("\r\n").rsplit("\r", 1)[-1]
            last.append(line)
            on_line(line)

    try:
        assert process.stdout is not None
        relay(process.stdout)
        return process.wait(), list(last)
    except BaseException:
        # what the stopping stage still says ("stopped at step N ...") is shown while it stops
        drain = threading.Thread(target=_quietly, args=(relay, process.stdout), daemon=True)
        drain.start()
        _stop(process)
        drain.join(timeout=5.0)
        raise
    finally:
        if process.stdout is not None:
            process.stdout.close()


def _quietly(function: Callable, *args) -> None:
    with contextlib.suppress(ValueError, OSError):  # the pipe closed under the reader
        function(*args)


def run_dvc(args: Sequence[str], *, root: str | os.PathLike, env: Mapping[str, str] | None = None,
            on_line: Callable[[str], None] | None = None) -> list[str]:
    """Run ``dvc <args>`` in ``root`` with streamed output; returns the last lines, raises :class:`DvcError`."""
    code, last = run_streamed(dvc_command(*args), cwd=root, env=env if env is not None else tool_env(),
                              on_line=on_line)
    if code != 0:
        detail = next((line for line in reversed(last) if line.startswith("ERROR")), last[-1] if last else "")
        raise DvcError(f"dvc {' '.join(args)} failed (exit {code}): {detail.strip()}", code, last)
    return last


def repro(stage: str, *, root: str | os.PathLike, env: Mapping[str, str] | None = None,
          on_line: Callable[[str], None] | None = None, force: bool = False) -> list[str]:
    """``dvc repro --single-item <stage>``: run that stage if DVC finds it stale, else do nothing."""
    return run_dvc(["repro", "--single-item", *(["--force"] if force else []), stage], root=root, env=env,
                   on_line=on_line)


def _capture(args: Sequence[str], root: str | os.PathLike) -> str:
    done = subprocess.run(dvc_command(*args), cwd=root, env=tool_env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise DvcError(f"dvc {' '.join(args)} failed: {lines[-1] if lines else done.returncode}", done.returncode,
                       lines[-60:])
    return done.stdout


def stage_names(root: str | os.PathLike) -> list[str]:
    """Every stage of ``dvc.yaml`` with foreach/matrix expanded (``download@synthetic``, ...), in file order."""
    return [line.strip() for line in _capture(["stage", "list", "--name-only"], root).splitlines() if line.strip()]


def stale_stages(root: str | os.PathLike, targets: Sequence[str] = ()) -> list[str]:
    """Stages that ``dvc repro [targets]`` would run now (changed deps, params, outs or command);
    empty: up to date. With ``targets``, those stages and everything they depend on."""
    args = ["status", "--json", *(["--with-deps", *targets] if targets else [])]
    return list(json.loads(_capture(args, root) or "{}"))
