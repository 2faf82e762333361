"""Shared test helpers: run the real CLI in a subprocess and check how it fails."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ports import free_ports

REPO = Path(__file__).resolve().parents[2]


GIB = 1 << 30


def address_space_limit(max_bytes: int) -> Callable[[], None]:
    """A preexec_fn that caps the child's address space (RLIMIT_AS): a runaway allocation fails fast."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))

    return apply


def run_bounded(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    memory: int | None = GIB,
    timeout: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """Run argv (the repo's sources first on PYTHONPATH) with at most `memory` bytes of address space;
    a run past `timeout` raises TimeoutExpired."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    # The checkout's sources, also for scripts run by path (sys.path[0] is then the script's folder).
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=full_env,
        cwd=str(cwd or REPO),
        timeout=timeout,
        check=False,
        preexec_fn=address_space_limit(memory) if memory else None,
    )


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `sollol-ops ARGS...` exactly as a user would (new process, real exit code)."""
    return run_bounded(
        [sys.executable, "-m", "sollol_ops.cli.main", *args], env=env, cwd=cwd, memory=None, timeout=timeout
    )


def run_cli_bounded(
    *args: str, env: Mapping[str, str] | None = None, memory: int = GIB, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """`sollol-ops ARGS...` in a new process with a memory limit and a timeout."""
    return run_bounded([sys.executable, "-m", "sollol_ops.cli.main", *args], env=env, memory=memory, timeout=timeout)


def assert_clean_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit code != 0, exactly one line on stderr, no traceback, and the line names what it should."""
    assert proc.returncode != 0, f"expected failure, got 0; stdout={proc.stdout!r}"
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


class Local:
    """`sollol-ops local start N` in an isolated state dir; stopped (with any coordinator) at teardown."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.env = env
        base_port = free_ports(count)[0]
        proc = run_cli("local", "start", str(count), "--base-port", str(base_port), "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        self.inventory = data["inventory"]
        self.endpoints = [f"127.0.0.1:{s['port']}" for s in data["servers"]]
        self.pids = [s["pid"] for s in data["servers"]]

    def cli(self, *args: str, **kwargs) -> object:
        return run_cli("-i", self.inventory, *args, env=self.env, **kwargs)

    def stop(self) -> None:
        run_cli("down", "--timeout", "5", env=self.env)
        run_cli("local", "stop", env=self.env)
