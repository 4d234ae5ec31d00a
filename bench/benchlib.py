"""Shared pieces of the bench scripts: start a node pinned to a core, drive
wrk pinned to another, parse its figures. Loopback only."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

#: The node runs on this CPU, the load tool on the other.
NODE_CPU = "0"
LOAD_CPU = "1"


def start_node(
    workdir: str,
    config_text: str,
    port: int,
    *,
    cpu: str = NODE_CPU,
    tree: str = REPO,
    venv: str = os.path.join(REPO, ".venv"),
) -> subprocess.Popen[bytes]:
    """Start ``twistd fastedge`` with ``config_text`` pinned to ``cpu`` and
    wait until its /healthz answers 200 on ``port``.

    :param tree: the source tree whose ``fastedge`` runs (e.g. a git
        worktree of the baseline, to compare before and after in one run).
    :param venv: the virtualenv whose ``twistd`` runs it.
    """
    config = os.path.join(workdir, "node-{}.toml".format(port))
    with open(config, "w") as f:
        f.write(config_text)
    log = open(os.path.join(workdir, "node-{}.log".format(port)), "wb")
    node = subprocess.Popen(
        [
            "taskset",
            "-c",
            cpu,
            os.path.join(venv, "bin", "twistd"),
            "--nodaemon",
            "--pidfile=",
            "fastedge",
            "--config",
            config,
        ],
        cwd=tree,
        env=dict(os.environ, PYTHONPATH=tree),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return node
        except OSError:
            pass
        if node.poll() is not None:
            break
        time.sleep(0.2)
    node.kill()
    raise SystemExit("the node did not become healthy; see {}".format(log.name))


def baseline_tree(workdir: str, ref: str) -> str | None:
    """A git worktree of ``ref`` under ``workdir`` (removed by
    :func:`drop_tree`), to run the baseline's node beside this tree's in
    one run; ``None`` when ``ref`` is ``none`` or unknown (said so)."""
    if ref == "none":
        return None
    tree = os.path.join(workdir, "baseline")
    done = subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", tree, ref], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"no baseline: git worktree add {ref} failed: {done.stderr.strip()}")
        return None
    return tree


def drop_tree(tree: str) -> None:
    """Remove a worktree made by :func:`baseline_tree`."""
    subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree], capture_output=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    headers: Mapping[str, str] | None = None,
    threads: int = 2,
    cpu: str = LOAD_CPU,
    script: str | None = None,
    timeout_seconds: int | None = None,
) -> dict[str, float]:
    """Run wrk (closed loop) and return requests/s, p50, p99 (ms), errors.

    :param script: a wrk Lua script (``-s``), e.g. one making the requests POSTs.
    :param timeout_seconds: wrk's per-request timeout (its default is 2 s;
        a slow peer needs more, or every request counts as a timeout).
    """
    argv = [
        "taskset",
        "-c",
        cpu,
        "wrk",
        "-t{}".format(threads),
        "-c{}".format(connections),
        "-d{}s".format(seconds),
        "--latency",
    ]
    if timeout_seconds is not None:
        argv.append("--timeout={}s".format(timeout_seconds))
    for name, value in (headers or {}).items():
        argv += ["-H", "{}: {}".format(name, value)]
    if script is not None:
        argv += ["-s", script]
    out = subprocess.run(argv + [url], check=True, capture_output=True, text=True).stdout

    def ms(label: str) -> float:
        m = re.search(r"^\s*{}%\s+([\d.]+)(us|ms|s)\s*$".format(label), out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "p50": ms("50"),
        "p99": ms("99"),
        "errors": float(errors.group(1)) if errors else 0.0,
        "socket_errors": float(sum(int(g) for g in socket_errors.groups())) if socket_errors else 0.0,
    }


def result_of(d: Any) -> Any:
    """The result of a Deferred that has already fired (a store run inline);
    its failure is raised."""
    out: list[Any] = []
    d.addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]
