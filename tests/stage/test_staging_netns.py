"""Staging across network namespaces: workers on their own addresses, the staging client run inside each
worker's namespace from a pack the controller wrote, the bytes on each worker's veth counted for an unstaged
and a staged first load, the answers compared token by token."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from groups import kill_groups
from helpers import run_cli
from ports import free_port
from stagingparts import MODEL, answer, inventory, synthetic_store

from sollol_ops import procs
from sollol_ops.cluster.inventory import Backend
from sollol_ops.cluster.local import wait_ready
from sollol_ops.cluster.toolchain import find_toolchain
from sollol_ops.dev.netlab import NetLab
from sollol_ops.serve.coordinator import CoordinatorState
from sollol_ops.stage import staging
from sollol_ops.stage.worker import cache_entries

pytestmark = [pytest.mark.netns, pytest.mark.toolchain, pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs as root)")


def _tx(lab: NetLab, i: int) -> int:
    """Bytes the machine sent into namespace i (the host end of its veth)."""
    return int(Path(f"/sys/class/net/{lab.host_veth(i)}/statistics/tx_bytes").read_text())


def test_staging_in_namespaces(sollol_env: dict[str, str], smollm2_store: Path, tmp_path: Path) -> None:
    from sollol_ops.model.ollama import resolve_model

    store = synthetic_store(tmp_path / "model", resolve_model("smollm2:135m", smollm2_store).blob)
    env = {**sollol_env, "OLLAMA_MODELS": str(store)}
    rpc = find_toolchain().rpc_server
    with NetLab(2, subnet_base="10.216") as lab:
        pids = []
        homes = [tmp_path / f"w{i}" for i in range(2)]
        try:
            for i, home in enumerate(homes):
                home.mkdir()
                argv = lab.exec_argv(i, [str(rpc), "-H", lab.address(i), "-p", "50052", "-t", "1", "-c"])
                pids.append(
                    procs.spawn_detached(argv, tmp_path / f"rpc{i}.log", env={**os.environ, "LLAMA_CACHE": str(home)})
                )
            endpoints = [f"{lab.address(i)}:50052" for i in range(2)]
            wait_ready(endpoints, timeout=20)
            inv = inventory(tmp_path / "inv.ini", endpoints)

            def load() -> tuple[list[int], list[int]]:
                before = [_tx(lab, i) for i in range(2)]
                port = free_port()
                proc = run_cli("-i", inv, "up", MODEL, "--port", str(port), "-c", "1024", env=env)
                assert proc.returncode == 0, proc.stderr
                try:
                    state_file = Path(env["XDG_STATE_HOME"]) / "sollol-ops/coordinator.json"
                    tokens = answer(CoordinatorState(**json.loads(state_file.read_text())).endpoint)
                finally:
                    assert run_cli("down", env=env).returncode == 0
                return tokens, [_tx(lab, i) - b for i, b in enumerate(before)]

            def files() -> list[dict[str, int]]:
                return [{n: st.st_size for n, st in cache_entries(h / "rpc").items()} for h in homes]

            unstaged_answer, unstaged_bytes = load()
            loaded = files()
            assert all(loaded)
            for h in homes:
                for f in (h / "rpc").iterdir():
                    f.unlink()

            backends = [Backend(f"w{i}", lab.address(i), 50052) for i in range(2)]
            prepared = staging.prepare(MODEL, backends, 1024, str(store))
            before = [_tx(lab, i) for i in range(2)]
            results = staging.stage_via_commands(
                prepared,
                tmp_path / "packs",
                {e: h / "rpc" for e, h in zip(endpoints, homes, strict=True)},
                lambda share: lab.exec_argv(endpoints.index(share.endpoint), []),
                "netns",
                root=tmp_path / "ledger",
            )
            # The staging client ran inside each namespace: its uploads never crossed the veth.
            assert all(_tx(lab, i) - b < 1 << 20 for i, b in enumerate(before))
            assert files() == loaded
            assert [sorted(f.file for f in r.files) for r in results] == [sorted(x) for x in loaded]

            staged_answer, staged_bytes = load()
            assert files() == loaded, "the first load after staging created cache files"
            assert staged_answer == unstaged_answer
            for i in range(2):
                cached = sum(loaded[i].values())
                assert staged_bytes[i] < unstaged_bytes[i] - 0.99 * cached, (i, staged_bytes, unstaged_bytes, cached)
            assert sum(staged_bytes) < 0.5 * sum(unstaged_bytes)
        finally:
            run_cli("down", "--timeout", "5", env=env)
            kill_groups(pids)
