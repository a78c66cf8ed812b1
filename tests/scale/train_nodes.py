"""Several torchrun launchers on 127.0.0.1 acting as separate nodes, and how to lose one as a machine would.

Every process is started in its own session (``start_new_session``) so that it and everything it starts
can be killed by process group, by PID, without touching anything this test did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["REPO", "torchrun_command", "node_env", "free_port", "Node", "start_node", "descendants", "kill_node",
           "stop_nodes", "wait_nodes", "wait_for_text", "two_node_args", "start_two_nodes", "assert_succeeded"]

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 480  # seconds for one tiny run on 2 loaded cores (a run takes about a minute)


def torchrun_command() -> list[str]:
    """The ``torchrun`` of this interpreter's environment (what dvc.yaml's ``torchrun`` is under make run)."""
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def node_env(**extra: str) -> dict[str, str]:
    """The environment of a launcher: one thread per process (2 shared cores), unbuffered logs, gloo on loopback.

    ``GLOO_SOCKET_IFNAME=lo``: gloo binds to the interface of the host name, which in a container may be
    one that the other "node" cannot reach; on a cluster this names the NIC the nodes share.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "GLOO_SOCKET_IFNAME": "lo", **extra}
    env.pop("PYTHONPATH", None)  # the stage imports the checkout it is started from (cwd / sys.path), as in CI
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One launcher: its process and the file its output goes to (a file, not a pipe: nothing blocks on it)."""

    def __init__(self, name: str, proc: subprocess.Popen, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def start_node(name: str, args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> Node:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        proc = subprocess.Popen([*torchrun_command(), *args], cwd=cwd, env=env or node_env(), stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return Node(name, proc, log)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): torchrun starts its workers in sessions of their own, so
    the launcher's process group does not hold them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def kill_node(node: Node) -> None:
    """Lose the node as a machine loss would: SIGKILL the launcher's process group and the sessions of
    its workers (each worker leads its own group), all by PID."""
    below = descendants(node.proc.pid)
    _kill_group(node.proc.pid)  # the launcher leads its own group (start_new_session)
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _kill_group(pid)
    node.proc.wait(timeout=30)


def stop_nodes(nodes: list[Node]) -> None:
    """For ``finally``: whatever is still running of these launchers and their workers is killed."""
    for node in nodes:
        if node.proc.poll() is None or descendants(node.proc.pid):
            kill_node(node)


def wait_nodes(nodes: list[Node], timeout: float) -> list[int]:
    """Exit statuses of every launcher, waiting at most ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{node.name} still running after {timeout:.0f} s:\n{node.text()[-3000:]}") from None
    return [node.proc.returncode for node in nodes]


def wait_for_text(nodes: list[Node], text: str, timeout: float) -> Node:
    """The first launcher whose output contains ``text`` (polled every 50 ms, at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            if text in node.text():
                return node
        if all(node.proc.poll() is not None for node in nodes):
            break
        time.sleep(0.05)
    logs = "\n".join(f"--- {node.name}\n{node.text()[-2000:]}" for node in nodes)
    raise AssertionError(f"no {text!r} within {timeout:.0f} s:\n{logs}")


def two_node_args(port: int, run_id: str) -> list[str]:
    """docs/operations.md's multi-node launch, with 127.0.0.1 for the first node's host name and one process
    per node. No --node-rank: the c10d rendezvous numbers the nodes itself (torchrun ignores it there)."""
    return ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
            f"127.0.0.1:{port}", "--rdzv-id", run_id]


def start_two_nodes(cwd: Path, script: list[str], run_id: str, logs: Path) -> list[Node]:
    """The same command on both "nodes", as a user runs it on every machine (logs: logs/node0.log, node1.log)."""
    port = free_port()
    return [start_node(f"node {i}", [*two_node_args(port, run_id), *script], cwd, logs / f"node{i}.log")
            for i in (0, 1)]


def assert_succeeded(nodes: list[Node], timeout: float = RUN_TIMEOUT) -> None:
    codes = wait_nodes(nodes, timeout)
    assert codes == [0] * len(nodes), "\n".join(f"--- {n.name}: {n.proc.returncode}\n{n.text()[-3000:]}"
                                                for n in nodes)
