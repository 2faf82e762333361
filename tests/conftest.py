"""Fixtures over real parts (the llama.cpp toolchain built by the role, the SmolLM2 Ollama store) and the
guard that makes every test needing one of them, or network namespaces, carry its marker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Local
from ports import free_port

from sollol_ops import procs
from sollol_ops.cluster.local import LocalServer, RpcServerSpec, start_rpc_server, wait_ready
from sollol_ops.cluster.toolchain import find_toolchain
from sollol_ops.dev.netlab import NetLab
from sollol_ops.paths import cache_dir

# A fixture that needs a real part -> the marker a test using it (directly or through another fixture) carries.
FIXTURE_MARKERS = {
    "smollm2_store": "model",
    "local2": "toolchain",
    "local3": "toolchain",
    "rpc_server": "toolchain",
    "chromium": "browser",  # tests/gateway/test_ui.py: the system's Chromium under Playwright
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail, before its fixtures run, a test that uses a real-part fixture without the fixture's marker."""
    for fixture, marker in FIXTURE_MARKERS.items():
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None:
            pytest.fail(f"{item.nodeid} uses the {fixture} fixture: mark it @pytest.mark.{marker}", pytrace=False)


@pytest.fixture(autouse=True)
def _netlab_needs_the_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without @pytest.mark.netns a NetLab refuses to start."""
    if request.node.get_closest_marker("netns") is None:

        def refuse(lab: NetLab) -> NetLab:
            pytest.fail(f"{request.node.nodeid} starts a NetLab: mark it @pytest.mark.netns", pytrace=False)

        monkeypatch.setattr(NetLab, "__enter__", refuse)


def test_store_root() -> Path:
    return Path(os.environ.get("SOLLOL_TEST_MODELS", cache_dir() / "models" / "ollama"))


@pytest.fixture(scope="session")
def smollm2_store() -> Path:
    """Root of a real Ollama store holding smollm2:135m (made by `make model`)."""
    root = test_store_root()
    manifest = root / "manifests/registry.ollama.ai/library/smollm2/135m"
    if not manifest.is_file():
        pytest.fail(f"test model store missing at {root}: run `make model` (make test does it for you)")
    return root


@pytest.fixture
def sollol_env(tmp_path: Path, smollm2_store: Path) -> dict[str, str]:
    """Environment for a CLI run isolated from the user's state and caches, reading the test store."""
    return {
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "OLLAMA_MODELS": str(smollm2_store),
        "SOLLOL_INVENTORY": "",
    }


@pytest.fixture
def local2(sollol_env: dict[str, str]) -> Iterator[Local]:
    cluster = Local(sollol_env, 2)
    yield cluster
    cluster.stop()


@pytest.fixture
def local3(sollol_env: dict[str, str]) -> Iterator[Local]:
    cluster = Local(sollol_env, 3)
    yield cluster
    cluster.stop()


@pytest.fixture
def rpc_server(tmp_path: Path) -> Iterator[tuple[str, LocalServer]]:
    """One real rpc-server on a free loopback port (1 thread), stopped at teardown."""
    port = free_port()
    server = start_rpc_server(find_toolchain(), RpcServerSpec("127.0.0.1", port, 1, tmp_path / "rpc.log"))
    endpoint = f"127.0.0.1:{port}"
    try:
        wait_ready([endpoint], timeout=20)
        yield endpoint, server
    finally:
        procs.stop_process(server.pid, server.start_time, timeout=5)
