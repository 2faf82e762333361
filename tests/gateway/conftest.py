"""Module fixtures of the gateway tests over real rpc-servers: the module's store (its STORE_MODELS) and its
RPC_SERVERS local rpc-servers (ports from tests/support/ports.py), stopped with any coordinator left at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gatewayparts import MODEL, store_env
from helpers import Local, run_cli

from sollol_ops import procs


@pytest.fixture(scope="module")
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit("_", 1)[-1])
    return {"root": root, "env": store_env(root, smollm2_store, getattr(request.module, "STORE_MODELS", (MODEL,)))}


@pytest.fixture(scope="module")
def local(request: pytest.FixtureRequest, env: dict[str, Any]) -> Iterator[Local]:
    cluster = Local(env["env"], request.module.RPC_SERVERS)
    cluster.revived = []  # type: ignore[attr-defined]
    yield cluster
    for state in sorted(env["root"].glob("state-*")):  # a gateway that exits leaves its coordinator running
        run_cli("down", "--timeout", "5", env={**env["env"], "XDG_STATE_HOME": str(state)})
    cluster.stop()
    for server in cluster.revived:  # type: ignore[attr-defined]
        procs.stop_process(server.pid, server.start_time, timeout=5, argv0=server.argv0)
