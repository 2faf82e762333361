"""Model management through the gateway (issue 20): /api/pull (streamed progress), /api/delete and /api/copy,
forwarded to the Ollama of the node that should hold the model, driven with the official `ollama` client.

No Ollama server is installable here: the coordinator's Ollama and the pool's Ollama node are doubles
(tests/support/ollama_double.py) that speak Ollama's real wire format and write real manifests and blobs; the
coordinator's double writes into the store the coordinator serves from, so a pulled model is then loaded and
answered by a real sharded llama-server through the gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from gatewayparts import MODEL, GatewayProc, wait_until
from helpers import Local
from ollama_double import OllamaDouble
from ondemandparts import od
from ports import free_port

from sollol_ops.gateway.catalog import Catalog
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.models_admin import ModelsAdmin
from sollol_ops.gateway.pool import Pool
from sollol_ops.gateway.routing import GatewayConfig, Router
from sollol_ops.gateway.settings import PoolNode
from sollol_ops.model.ollama import resolve_model

RPC_SERVERS = 1
PULLED = "smollm2:pulled"  # in both "registries": where it lands is the gateway's choice
POOL_SIZED = "smollm2:poolsized"
PINNED = "smollm2:pinned"
POOL_MIB = 1024  # the pool node's sollol_ollama_memory_mib: the 92 MiB GGUF fits it


# --------------------------------------------------------------------------- the rule, no processes


def admin(tmp_path: Path, url: str = "http://127.0.0.1:1", pins: dict[str, str] | None = None) -> ModelsAdmin:
    pool = Pool(
        [
            PoolNode("small", "127.0.0.1", 1, "ollama", 100),
            PoolNode("big", "127.0.0.1", 2, "ollama", 4000),
            PoolNode("uncapped", "127.0.0.1", 3, "ollama"),
            PoolNode("llama", "127.0.0.1", 4, "openai", 9000),
        ]
    )
    for node in pool.nodes:
        node.healthy = True
    catalog = Catalog(str(tmp_path / "empty-store"), state_root=tmp_path / "no-state")
    router = Router(GatewayConfig(mode="hybrid", pins=pins or {}), pool, catalog)
    return ModelsAdmin(router, pool, catalog, lambda: httpx.AsyncClient(), url)


def test_a_pull_goes_where_the_model_fits(tmp_path: Path) -> None:
    a = admin(tmp_path, pins={"x:pinned": "shard", "y:pooled": "pool"})
    mib = 1 << 20
    assert a.pull_destination("m:1b", 50 * mib, None).name == "big"  # fits both capped: the most memory
    assert a.pull_destination("m:1b", 3000 * mib, None).name == "big"
    assert a.pull_destination("m:70b", 8000 * mib, None).name == "coordinator"  # no Ollama node fits it
    assert a.pull_destination("m:1b", None, None).name == "coordinator"  # no size known: no node known to fit
    assert a.pull_destination("x:pinned", 10 * mib, None).name == "coordinator"
    assert a.pull_destination("y:pooled", None, None).name == "big"
    assert a.pull_destination("m:1b", None, "small").name == "small"  # X-Sollol-Pull-To wins
    assert a.pull_destination("m:1b", 10 * mib, "coordinator").name == "coordinator"
    with pytest.raises(ApiError) as err:
        a.pull_destination("m:1b", None, "llama")  # an OpenAI node cannot pull
    assert err.value.status == 400 and "small, big, uncapped" in err.value.message
    a.pool.nodes[1].healthy = False
    assert a.pull_destination("m:1b", 50 * mib, None).name == "small"
    with pytest.raises(ApiError) as err:
        admin(tmp_path, url="").pull_destination("m:1b", None, None)
    assert err.value.status == 501 and "sollol_coordinator_ollama_url" in err.value.message


# --------------------------------------------------------------------------- real parts


@pytest.fixture(scope="module")
def parts(env: dict[str, Any], local: Local, smollm2_store: Path) -> Iterator[dict[str, Any]]:
    blob = resolve_model(MODEL, smollm2_store).blob
    registry = {PULLED: blob, POOL_SIZED: blob, PINNED: blob, "smollm2:viaheader": blob}
    store = Path(env["env"]["OLLAMA_MODELS"])  # the coordinator's store: its Ollama writes there
    coordinator = OllamaDouble(store, registry).start()
    pool = OllamaDouble(env["root"] / "pool-store", registry).start()
    inventory = env["root"] / "inv" / "hosts.ini"
    inventory.parent.mkdir()
    inventory.write_text(
        Path(local.inventory).read_text()
        + f"\n[ollama_nodes]\npool1 ansible_host=127.0.0.1 sollol_ollama_port={pool.port} "
        f"sollol_ollama_memory_mib={POOL_MIB}\n"
    )
    (inventory.parent / "group_vars").mkdir()
    (inventory.parent / "group_vars" / "all.yml").write_text(
        f"sollol_coordinator_ollama_url: {coordinator.url}\nsollol_gateway_pins:\n  {PINNED}: shard\n"
    )
    own = {**env["env"], "XDG_STATE_HOME": str(env["root"] / "state-models")}
    args = [
        "--mode",
        "hybrid",
        "--coordinator-port",
        str(free_port()),
        "-c",
        "512",
        "-t",
        "1",
        "--health-interval",
        "1",
    ]
    gw = GatewayProc(own, inventory, env["root"], "models", *args)
    yield {"gw": gw, "coordinator": coordinator, "pool": pool, "store": store}
    gw.stop()
    coordinator.stop()
    pool.stop()


def names(gw: GatewayProc) -> list[str]:
    return [m.model for m in ollama.Client(host=gw.url).list().models]


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
def test_pull_streams_ollamas_progress_and_the_model_is_served_at_once(parts: dict[str, Any]) -> None:
    gw, coordinator = parts["gw"], parts["coordinator"]
    client = ollama.Client(host=gw.url)
    assert PULLED not in names(gw)
    progress = list(client.pull(PULLED, stream=True))  # no size known: the coordinator's Ollama
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success", statuses
    layer = [p for p in progress if p.digest]
    assert layer and layer[-1].completed == layer[-1].total and layer[-1].total > 90 << 20
    assert statuses[-3:-1] == ["verifying sha256 digest", "writing manifest"]
    assert ("POST", "/api/pull", {"model": PULLED, "insecure": False, "stream": True}) in coordinator.requests
    assert not any(path == "/api/pull" for _m, path, _b in parts["pool"].requests)
    assert PULLED in names(gw)  # listed now, no restart
    r = client.chat(model=PULLED, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4})
    assert r.message.content and od(gw)["model"] == PULLED  # loaded on demand from the store it was pulled to
    httpx.post(f"{gw.url}/api/generate", json={"model": PULLED, "keep_alive": 0}, timeout=60)


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
def test_pull_not_streamed_goes_to_the_pool_node_its_size_fits(parts: dict[str, Any]) -> None:
    gw, pool = parts["gw"], parts["pool"]
    r = httpx.post(f"{gw.url}/api/pull", json={"model": POOL_SIZED, "stream": False, "size": 100 << 20}, timeout=60)
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
    assert r.headers["x-sollol-node"] == "pool1" and r.headers["x-sollol-route"] == "pool"
    assert ("POST", "/api/pull", {"model": POOL_SIZED, "stream": False}) in pool.requests  # `size` stays here
    assert POOL_SIZED in gw.node("pool1")["models"] and POOL_SIZED in names(gw)
    # the official client's stream=False, pinned to the shard although it would fit the pool
    assert ollama.Client(host=gw.url).pull(PINNED, stream=False).status == "success"
    assert ("POST", "/api/pull", {"model": PINNED, "insecure": False, "stream": False}) in parts["coordinator"].requests
    r = httpx.post(
        f"{gw.url}/api/pull",
        json={"model": "smollm2:viaheader", "stream": False},
        headers={"X-Sollol-Pull-To": "pool1"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["x-sollol-node"] == "pool1", r.text


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
def test_copy_and_delete_go_to_the_ollama_that_holds_the_model(parts: dict[str, Any]) -> None:
    gw = parts["gw"]
    client = ollama.Client(host=gw.url)
    if PULLED not in names(gw):
        client.pull(PULLED, stream=False)
    assert client.copy(PULLED, "smollm2:copied").status == "success"
    assert "smollm2:copied" in names(gw)
    assert (parts["store"] / "manifests/registry.ollama.ai/library/smollm2/copied").is_file()
    assert client.delete("smollm2:copied").status == "success"
    assert "smollm2:copied" not in names(gw)
    assert POOL_SIZED in gw.node("pool1")["models"]  # pulled to the pool by the test before
    assert client.delete(POOL_SIZED).status == "success"
    assert ("DELETE", "/api/delete", {"model": POOL_SIZED}) in parts["pool"].requests
    wait_until(lambda: POOL_SIZED not in gw.node("pool1")["models"], 10, "the pool node to drop the deleted model")


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
def test_errors_are_in_ollamas_shape(parts: dict[str, Any]) -> None:
    gw = parts["gw"]
    client = ollama.Client(host=gw.url)
    for call in (
        lambda: client.delete("nosuch:1b"),
        lambda: client.copy("nosuch:1b", "x:1"),
        lambda: client.pull("nosuch:1b"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404 and "not" in err.value.error, err.value.error
    for body in ({}, {"model": 3}, {"model": "x", "stream": "yes"}, {"model": "x", "size": -1}):
        r = httpx.post(f"{gw.url}/api/pull", json=body, timeout=10)
        assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
    r = httpx.request("DELETE", f"{gw.url}/api/delete", content=b"[1]", timeout=10)
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(f"{gw.url}/api/copy", json={"source": PULLED}, timeout=10)
    assert r.status_code == 400 and "destination" in r.json()["error"]
