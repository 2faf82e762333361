"""Shared test helpers: run the real CLI in a subprocess and check how it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from sollol_ops import procs

REPO = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `sollol-ops ARGS...` exactly as a user would (new process, real exit code)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "sollol_ops.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=str(cwd or REPO),
        timeout=timeout,
        check=False,
    )


def assert_clean_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit code != 0, exactly one line on stderr, no traceback, and the line names what it should."""
    assert proc.returncode != 0, f"expected failure, got 0; stdout={proc.stdout!r}"
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def free_port(start: int) -> int:
    return procs.free_ports("127.0.0.1", 1, start)[0]


class Local:
    """`sollol-ops local start N` in an isolated state dir; stopped (with any coordinator) at teardown."""

    def __init__(self, env: dict[str, str], count: int, base_port: int) -> None:
        self.env = env
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
