"""The gateway's routing rules and its inventory variables, without processes: a real store (real GGUF
sizes), real Pool nodes whose state is what their health checks would have recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from sollol_ops.cluster.inventory import cluster_from_inventory_data
from sollol_ops.dev.devstore import write_store
from sollol_ops.errors import InventoryError
from sollol_ops.gateway.catalog import Catalog
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.pool import Pool
from sollol_ops.gateway.routing import GatewayConfig, Router
from sollol_ops.gateway.settings import PoolNode, gateway_settings_from_inventory_data
from sollol_ops.model.ollama import resolve_model

MODEL = "smollm2:135m"


@pytest.fixture
def store(tmp_path: Path, smollm2_store: Path) -> Path:
    root = tmp_path / "store"
    write_store(root, MODEL, resolve_model(MODEL, smollm2_store).blob, link="hardlink")
    return root


def router(store: Path, tmp_path: Path, mode: str, cap_mib: int | None = None, pins: dict | None = None) -> Router:
    pool = Pool([PoolNode("n1", "127.0.0.1", 1, "ollama", cap_mib), PoolNode("n2", "127.0.0.1", 2, "ollama")])
    n1 = pool.nodes[0]
    n1.healthy = True
    n1.models = {MODEL: {"model": MODEL, "size": resolve_model(MODEL, store).size}}
    catalog = Catalog(str(store), state_root=tmp_path / "no-state")
    return Router(GatewayConfig(mode=mode, pins=pins or {}), pool, catalog)


def error(r: Router, model: str) -> ApiError:
    with pytest.raises(ApiError) as exc:
        r.targets(model)
    return exc.value


@pytest.mark.model
def test_hybrid_sends_a_model_that_fits_a_healthy_node_to_the_pool(store: Path, tmp_path: Path) -> None:
    assert [t.node_name for t in router(store, tmp_path, "hybrid").targets(MODEL)] == ["n1"]
    assert [t.route for t in router(store, tmp_path, "hybrid", cap_mib=200).targets("smollm2:135m")] == ["pool"]


@pytest.mark.model
def test_hybrid_sends_a_model_too_big_for_any_node_to_the_coordinator(store: Path, tmp_path: Path) -> None:
    # the real blob is ~92 MiB: it does not fit n1's 50 MiB, so the shard route is chosen (none is running)
    err = error(router(store, tmp_path, "hybrid", cap_mib=50), MODEL)
    assert err.status == 503 and "no coordinator is running" in err.message and f"sollol-ops up {MODEL}" in err.message
    assert "pool node n1 (does not fit its sollol_ollama_memory_mib)" in err.message


@pytest.mark.model
def test_pins_override_the_size_rule(store: Path, tmp_path: Path) -> None:
    err = error(router(store, tmp_path, "hybrid", pins={MODEL: "shard"}), MODEL)
    assert err.status == 503 and "coordinator" in err.message and "pool node" not in err.message
    r = router(store, tmp_path, "hybrid", pins={"smollm2:135m": "pool"})
    r.pool.nodes[0].healthy = False
    r.pool.nodes[0].last_error = "health check: ConnectError"
    err = error(r, MODEL)
    assert err.status == 503 and "pool node n1 (unhealthy: health check: ConnectError)" in err.message
    assert "store" not in err.message


@pytest.mark.model
def test_unknown_model_is_404_naming_where_it_looked(store: Path, tmp_path: Path) -> None:
    err = error(router(store, tmp_path, "hybrid"), "llama3.1:70b")
    assert err.status == 404
    assert "pool nodes n1, n2" in err.message and str(store) in err.message
    err = error(router(store, tmp_path, "pool"), "llama3.1:70b")
    assert "pool nodes n1, n2" in err.message and "store" not in err.message
    # pool mode never uses the store, even for a model the store has
    r = router(store, tmp_path, "pool")
    r.pool.nodes[0].models = {}
    assert error(r, MODEL).status == 404


@pytest.mark.model
def test_names_are_compared_in_ollamas_canonical_form(store: Path, tmp_path: Path) -> None:
    r = router(store, tmp_path, "hybrid")
    r.pool.nodes[0].models = {"smollm2:latest": {"model": "smollm2:latest"}}
    assert r.targets("smollm2")[0].node_name == "n1"
    assert r.targets("registry.ollama.ai/library/smollm2:latest")[0].node_name == "n1"


def test_breaker_opens_after_failures_and_a_check_closes_it_after_the_cooldown() -> None:
    pool = Pool([PoolNode("n1", "127.0.0.1", 1)])
    pool.settings.breaker_cooldown = 0
    node = pool.nodes[0]
    pool.check_passed(node)
    for _ in range(pool.settings.breaker_failures):
        pool.request_failed(node, "ConnectError")
    assert node.breaker_open and not node.usable()
    assert node.backoff == 4 * pool.settings.backoff_start  # 0.5, 1, 2: doubling back-off
    pool.check_passed(node)
    assert node.usable() and node.failures == 0


def inv(hostvars: dict, pool: list[str], rpc: list[str] | None = None) -> dict:
    data: dict = {"_meta": {"hostvars": hostvars}, "ollama_nodes": {"hosts": pool}}
    if rpc:
        data["rpc_servers"] = {"hosts": rpc}
    return data


def test_inventory_pool_variables() -> None:
    s = gateway_settings_from_inventory_data(
        inv(
            {"a": {"ansible_host": "10.0.0.5"}, "b": {"sollol_ollama_port": 8080, "sollol_ollama_api": "openai"}},
            ["a", "b"],
        ),
        Path("inv"),
    )
    assert [(n.host, n.url, n.api) for n in s.pool] == [
        ("a", "http://10.0.0.5:11434", "ollama"),
        ("b", "http://b:8080", "openai"),
    ]
    assert s.mode is None and s.pins == {} and s.loading_progress is False


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), ("true", True), ("yes", True), ("off", False), (0, False)]
)
def test_cluster_wide_switches_take_ansibles_booleans(value: object, expected: bool) -> None:
    """An INI [all:vars] value arrives as a string: true/yes/on/1 and false/no/off/0, as Ansible's `bool`."""
    hostvars = {"a": {"sollol_skip_unhealthy": value, "sollol_gateway_loading_progress": value}, "b": {}}
    data = inv(hostvars, ["a"], rpc=["b"])
    assert gateway_settings_from_inventory_data(data, Path("i")).loading_progress is expected
    assert cluster_from_inventory_data(data, Path("i")).skip_unhealthy is expected
    assert cluster_from_inventory_data(inv({"b": {}}, [], rpc=["b"]), Path("i")).skip_unhealthy is False


@pytest.mark.parametrize(
    ("hostvars", "needle"),
    [
        ({"a": {"sollol_ollama_api": "vllm"}}, "sollol_ollama_api must be one of ollama, openai"),
        ({"a": {"sollol_ollama_port": 70000}}, "sollol_ollama_port=70000 is out of range"),
        ({"a": {"sollol_gateway_mode": "fast"}}, "sollol_gateway_mode must be one of shard, pool, hybrid"),
        ({"a": {"sollol_gateway_pins": {"m": "gpu"}}}, "sollol_gateway_pins must map model names"),
        (
            {"a": {"sollol_gateway_mode": "pool"}, "b": {"sollol_gateway_mode": "shard"}},
            "differs between hosts a and b",
        ),
        ({"a": {"ansible_host": "bad host"}}, "host a: ansible_host 'bad host'"),
        ({"a": {"sollol_gateway_loading_progress": "maybe"}}, "must be true or false, got 'maybe'"),
    ],
)
def test_inventory_rejects_bad_gateway_variables(hostvars: dict, needle: str) -> None:
    with pytest.raises(InventoryError) as exc:
        gateway_settings_from_inventory_data(inv(hostvars, ["a"], rpc=["b"] if "b" in hostvars else None), Path("i"))
    assert needle in str(exc.value)


def test_a_peer_listing_infinite_sizes_is_healthy_with_size_0() -> None:
    """Python's json reads Infinity and NaN: a pool peer answering them in /v1/models must not break the check
    (int(inf) raised OverflowError, which the check did not catch: the health loop died)."""
    import asyncio
    import http.server
    import threading

    import httpx

    body = b'{"data": [{"id": "odd:1b", "aliases": ["odd2:1b"], "meta": {"size": Infinity, "n_ctx": NaN}}]}'

    class Peer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = b'{"status": "ok"}' if self.path == "/health" else body
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Peer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pool = Pool([PoolNode("odd", "127.0.0.1", server.server_address[1], "openai")])
        node = pool.nodes[0]

        async def check() -> bool:
            async with httpx.AsyncClient() as client:
                return await pool.check(client, node)

        assert asyncio.run(check())
        assert node.healthy and node.models["odd:1b"]["size"] == 0 and node.loaded["odd2:1b"]["context_length"] == 0
    finally:
        server.shutdown()
        server.server_close()
