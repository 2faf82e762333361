"""`make demo`'s script end to end, isolated from the user's state, stopping everything at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from ports import free_port

from sollol_ops import procs


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.slow
def test_demo_script_serves_answers_and_stops(sollol_env: dict[str, str]) -> None:
    port = free_port()
    env = {
        **os.environ,
        **sollol_env,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DEMO_PORT": str(port),
        "DEMO_STOP": "1",
    }
    proc = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    answer = next(line for line in out.splitlines() if line.startswith("A: "))
    assert len(answer) > 3
    assert "where the layers went" in out and "OpenAI API" in out
    assert out.count("serving") >= 2
    assert "stopped smollm2:135m" in out and "stopped 2 rpc-server(s)" in out
    assert not procs.port_in_use("127.0.0.1", port)
