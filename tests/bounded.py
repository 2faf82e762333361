"""Run the real CLI (or a Python driver) under a memory limit and a timeout, for hostile-input tests."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from helpers import REPO

GIB = 1 << 30
DEFAULT_MEMORY = GIB
DEFAULT_TIMEOUT = 20.0


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
    memory: int = DEFAULT_MEMORY,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run argv with `memory` bytes of address space; a run past `timeout` raises TimeoutExpired."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    # The worktree's sources, also for scripts run by path (sys.path[0] is then the script's folder).
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=full_env,
        cwd=str(cwd or REPO),
        timeout=timeout,
        check=False,
        preexec_fn=address_space_limit(memory),
    )


def run_cli_bounded(
    *args: str,
    env: Mapping[str, str] | None = None,
    memory: int = DEFAULT_MEMORY,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """`sollol-ops ARGS...` in a new process with a memory limit and a timeout."""
    return run_bounded([sys.executable, "-m", "sollol_ops.cli.main", *args], env=env, memory=memory, timeout=timeout)
