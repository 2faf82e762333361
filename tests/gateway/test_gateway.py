"""`sollol-ops gateway` against real parts: the official `ollama` and `openai` clients, real llama-server pool
members, the real sharded coordinator (`sollol-ops up` over two local rpc-servers), and an Ollama-kind pool
member that is itself a gateway over a real llama-server (tests/support/gatewayparts.py says why).

Everything is started once per module; prompts are short and answers a few tokens."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from gatewayparts import MODEL, GatewayProc, Member, pool_inventory, store_env, wait_until
from helpers import Local
from ports import free_port

from sollol_ops.model.ollama import resolve_model

pytestmark = [pytest.mark.slow, pytest.mark.toolchain, pytest.mark.model]

SHARDED = "smollm2:sharded"  # the same weights under a second name, served only by the coordinator
ALIAS = "smollm2-alias:135m"  # a further name the pool members answer to (llama-server --alias MODEL,ALIAS)
KEY = "test-key-1234"
OPTS = {"num_predict": 4, "temperature": 0}
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def gw_env(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("gateway")
    env = store_env(root, smollm2_store, (MODEL, SHARDED))
    blob = resolve_model(MODEL, smollm2_store).blob
    return {"root": root, "env": env, "blob": blob}


@pytest.fixture(scope="module")
def members(gw_env: dict[str, Any]) -> Iterator[list[Member]]:
    started = [Member(gw_env["blob"], gw_env["root"], f"m{i}", aliases=(ALIAS,)).start() for i in (1, 2)]
    yield started
    for m in started:
        m.kill()


@pytest.fixture(scope="module")
def cluster(gw_env: dict[str, Any]) -> Iterator[Local]:
    local = Local(gw_env["env"], 2)
    try:
        up = local.cli("up", SHARDED, "--port", str(free_port()), "-c", "1024")
        assert up.returncode == 0, up.stderr
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def double(gw_env: dict[str, Any], members: list[Member]) -> Iterator[GatewayProc]:
    """The Ollama-kind member: Ollama's API in front of member m2."""
    inv = pool_inventory(gw_env["root"] / "double.ini", [("m2", members[1].port, "openai")])
    proc = GatewayProc(gw_env["env"], inv, gw_env["root"], "double", "--mode", "pool")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def g_pool(gw_env: dict[str, Any], members: list[Member]) -> Iterator[GatewayProc]:
    inv = pool_inventory(gw_env["root"] / "pool.ini", [(m.name, m.port, "openai") for m in members])
    fast = ["--health-interval", "0.5", "--health-max-backoff", "1", "--breaker-cooldown", "1", "--max-body-mib", "1"]
    proc = GatewayProc(gw_env["env"], inv, gw_env["root"], "pool", "--mode", "pool", *fast)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def g_shard(gw_env: dict[str, Any], cluster: Local) -> Iterator[GatewayProc]:
    # no --mode: an inventory with rpc_servers and no ollama_nodes means shard; only the coordinator `up` started
    proc = GatewayProc(gw_env["env"], Path(cluster.inventory), gw_env["root"], "shard", "--no-load-on-demand")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def g_hybrid(gw_env: dict[str, Any], cluster: Local, double: GatewayProc) -> Iterator[GatewayProc]:
    # no --mode: both groups have hosts, so hybrid; the pool is the Ollama-kind member
    inv = gw_env["root"] / "hybrid.ini"
    inv.write_text(
        Path(cluster.inventory).read_text()
        + f"\n[ollama_nodes]\nolla ansible_host=127.0.0.1 sollol_ollama_port={double.port} sollol_ollama_api=ollama\n"
    )
    proc = GatewayProc(gw_env["env"], inv, gw_env["root"], "hybrid", api_key=KEY)
    yield proc
    proc.stop()


# --------------------------------------------------------------------------- the official clients


def check_ollama_client(gw: GatewayProc, model: str, embed_ok: bool) -> None:
    client = ollama.Client(host=gw.url, headers=gw.headers)
    assert model in [m.model for m in client.list().models]
    shown = client.show(model)
    assert shown.details is not None and shown.details.format == "gguf"
    assert model in [m.model for m in client.ps().models]

    answer = client.chat(model=model, messages=MESSAGES, options=OPTS, stream=False)
    assert answer.done and answer.message.role == "assistant" and answer.message.content
    assert answer.eval_count and answer.eval_count > 0 and answer.prompt_eval_count
    assert answer.total_duration and answer.eval_duration is not None

    parts = list(client.chat(model=model, messages=MESSAGES, options=OPTS, stream=True))
    assert parts[-1].done and all(not p.done for p in parts[:-1]) and len(parts) >= 2
    assert "".join(p.message.content or "" for p in parts).strip()
    assert parts[-1].eval_count and parts[-1].total_duration

    gen = client.generate(model=model, prompt="The sky is", options=OPTS, stream=False)
    assert gen.done and gen.response and gen.eval_count
    pieces = list(client.generate(model=model, prompt="The sky is", options=OPTS, stream=True))
    assert pieces[-1].done and "".join(p.response for p in pieces).strip()

    # Ollama's server streams when the request says nothing (its client always says)
    raw = httpx.post(
        f"{gw.url}/api/generate",
        json={"model": model, "prompt": "Hi", "options": OPTS},
        headers=gw.headers,
        timeout=120,
    )
    lines = [json.loads(line) for line in raw.text.splitlines()]
    assert raw.headers["content-type"] == "application/x-ndjson" and len(lines) >= 2 and lines[-1]["done"]
    assert raw.headers["cache-control"] == "no-cache" and raw.headers["x-accel-buffering"] == "no"

    if embed_ok:
        emb = client.embed(model=model, input=["hello", "world"])
        assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 100
    else:  # the coordinator runs without --embeddings: the upstream's error, in Ollama's shape
        with pytest.raises(ollama.ResponseError) as err:
            client.embed(model=model, input="hello")
        assert err.value.status_code >= 400 and err.value.error


def check_openai_client(gw: GatewayProc, model: str) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.api_key or "unused", max_retries=0)
    assert model in [m.id for m in client.models.list().data]
    done = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, temperature=0)
    assert done.choices[0].message.content and done.usage and done.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def route_of(gw: GatewayProc, model: str) -> tuple[str, str]:
    r = httpx.post(
        f"{gw.url}/api/chat",
        json={"model": model, "messages": MESSAGES, "options": OPTS, "stream": False},
        headers=gw.headers,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-sollol-route"], r.headers["x-sollol-node"]


def test_the_ollama_kind_member_speaks_ollama(double: GatewayProc) -> None:
    check_ollama_client(double, MODEL, embed_ok=True)


def test_pool_mode(g_pool: GatewayProc) -> None:
    check_ollama_client(g_pool, MODEL, embed_ok=True)
    check_openai_client(g_pool, MODEL)
    assert route_of(g_pool, MODEL)[0] == "pool"


def test_a_member_answers_to_every_alias_it_lists(g_pool: GatewayProc) -> None:
    """llama-server lists `--alias a,b` as one /v1/models entry with `aliases`: the pool routes each of them."""
    tags = httpx.get(f"{g_pool.url}/api/tags", timeout=10).json()
    assert {MODEL, ALIAS} <= {m["name"] for m in tags["models"]}
    assert route_of(g_pool, ALIAS)[0] == "pool"


def test_shard_mode(g_shard: GatewayProc) -> None:
    check_ollama_client(g_shard, SHARDED, embed_ok=False)
    check_openai_client(g_shard, SHARDED)
    route, node = route_of(g_shard, SHARDED)
    assert route == "shard" and node.startswith("coordinator@")
    # the store's other model is known, but the coordinator serves another one: 503 saying what to run
    r = httpx.post(f"{g_shard.url}/api/chat", json={"model": MODEL, "messages": MESSAGES}, timeout=30)
    assert r.status_code == 503 and f"sollol-ops up {MODEL} --replace" in r.json()["error"]


def test_hybrid_mode(g_hybrid: GatewayProc) -> None:
    check_ollama_client(g_hybrid, MODEL, embed_ok=True)  # the pool's Ollama-kind node, passed through
    check_openai_client(g_hybrid, MODEL)
    check_ollama_client(g_hybrid, SHARDED, embed_ok=False)  # only in the coordinator's store
    check_openai_client(g_hybrid, SHARDED)
    assert route_of(g_hybrid, MODEL) == ("pool", "olla")
    assert route_of(g_hybrid, SHARDED)[0] == "shard"
    tags = httpx.get(f"{g_hybrid.url}/api/tags", headers=g_hybrid.headers, timeout=10).json()["models"]
    names = [m["model"] for m in tags]
    # de-duplicated: MODEL is in the pool and the store; ALIAS is the members' second name, passed on by the double
    assert sorted(names) == sorted({MODEL, SHARDED, ALIAS}), names
    ps = httpx.get(f"{g_hybrid.url}/api/ps", headers=g_hybrid.headers, timeout=10).json()["models"]
    assert {(m["model"], m["node"].split("@")[0]) for m in ps} >= {(MODEL, "olla"), (SHARDED, "coordinator")}


# --------------------------------------------------------------------------- bad input


def _one_new_line(gw: GatewayProc, before: int, needle: str) -> None:
    wait_until(lambda: len(gw.log_lines()) > before, 10, "the log line")
    new = gw.log_lines()[before:]
    assert len(new) == 1 and needle in new[0], new


BAD_OLLAMA = [
    (b"{not json", 400, "invalid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"model": 7, "messages": []}).encode(), 400, "model must be a string"),
    (json.dumps({"model": MODEL, "messages": "hi"}).encode(), 400, "messages must be a list"),
    (json.dumps({"model": MODEL, "messages": [], "stream": "yes"}).encode(), 400, "stream must be"),
    (json.dumps({"model": MODEL, "messages": [], "options": {"temperature": "hot"}}).encode(), 400, "temperature"),
    (json.dumps({"model": "nosuch:7b", "messages": []}).encode(), 404, "looked in pool nodes olla"),
]


def test_bad_input_gets_the_apis_error_shape_and_one_log_line(g_hybrid: GatewayProc, g_pool: GatewayProc) -> None:
    gw = g_hybrid
    for body, status, needle in BAD_OLLAMA:
        before = len(gw.log_lines())
        r = httpx.post(f"{gw.url}/api/chat", content=body, headers=gw.headers, timeout=10)
        assert r.status_code == status and needle in r.json()["error"], (body, r.text)
        assert r.headers["x-sollol-route"] == "gateway"
        _one_new_line(gw, before, f" {status} ")

    # the API key: missing or wrong, on both APIs, in each API's shape; health needs none
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        before = len(gw.log_lines())
        r = httpx.get(f"{gw.url}/api/tags", headers=headers, timeout=10)
        assert r.status_code == 401 and isinstance(r.json()["error"], str)
        _one_new_line(gw, before, " 401 ")
        r = httpx.get(f"{gw.url}/v1/models", headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{gw.url}/health", timeout=10).status_code == 200
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=gw.url).list()
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key="wrong", max_retries=0).models.list()

    # unknown model and wrong types through the openai client: OpenAI's error shape
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nosuch:7b", messages=MESSAGES)
    assert "nosuch:7b" in str(nf.value)
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": MODEL, "stream": 1}, headers=gw.headers, timeout=10)
    assert r.status_code == 400 and "stream" in r.json()["error"]["message"]

    # an oversized body (this gateway takes 1 MiB), announced or not
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode()
    before = len(g_pool.log_lines())
    r = httpx.post(f"{g_pool.url}/api/chat", content=big, timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    _one_new_line(g_pool, before, " 413 ")

    def chunked() -> Iterator[bytes]:
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]

    r = httpx.post(f"{g_pool.url}/v1/chat/completions", content=chunked(), timeout=30)
    assert r.status_code == 413 and r.json()["error"]["message"]

    # and both keep serving
    assert route_of(gw, MODEL)[0] == "pool"
    assert route_of(g_pool, MODEL)[0] == "pool"


# --------------------------------------------------------------------------- load and faults


def test_32_concurrent_streams_all_complete(g_pool: GatewayProc) -> None:
    prompts = [f"Count to {i % 4 + 2}." for i in range(32)]

    async def one(client: httpx.AsyncClient, prompt: str) -> tuple[str, list[dict[str, Any]]]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "options": {"num_predict": 6}}
        async with client.stream("POST", f"{g_pool.url}/api/chat", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) async for line in r.aiter_lines() if line.strip()]
            return r.headers["x-sollol-node"], lines

    async def run() -> list[tuple[str, list[dict[str, Any]]]]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    results = asyncio.run(run())
    assert len(results) == 32
    for _node, lines in results:
        assert all("error" not in line for line in lines), lines
        assert lines[-1]["done"] is True and all(line["done"] is False for line in lines[:-1])
        pieces = [line["message"]["content"] for line in lines[:-1]]
        assert "".join(pieces).strip() and all(p for p in pieces)
        assert lines[-1]["eval_count"] == len(pieces) or lines[-1]["done_reason"] == "stop"
        assert len(pieces) <= 6 and all(line["model"] == MODEL for line in lines)
    assert {node for node, _ in results} == {"m1", "m2"}, "both members should have taken part"


def _disconnect_mid_stream(g_pool: GatewayProc, members: list[Member], path: str, body: dict[str, Any]) -> None:
    by_name = {m.name: m for m in members}
    before = {m.name: m.predicted_total() for m in members}
    client = httpx.Client(timeout=httpx.Timeout(10, read=120))
    with client, client.stream("POST", f"{g_pool.url}{path}", json=body) as r:
        assert r.status_code == 200
        node = by_name[r.headers["x-sollol-node"]]
        lines = (line for line in r.iter_lines() if line.strip())
        assert all(next(lines) for _ in range(3))
    # leaving the `with` closed the connection mid-answer
    wait_until(lambda: not node.slots_busy(), 10, f"{node.name}'s slots to be idle after the client left")
    generated = node.predicted_total() - before[node.name]
    assert generated < 200, f"the upstream went on generating ({generated:g} tokens) after the client left"


def test_client_disconnect_cancels_the_upstream(g_pool: GatewayProc, members: list[Member]) -> None:
    long = {"num_predict": 200, "temperature": 1.0}
    ask = [{"role": "user", "content": "Write a long story about a dragon."}]
    _disconnect_mid_stream(g_pool, members, "/api/chat", {"model": MODEL, "messages": ask, "options": long})
    sse = {"model": MODEL, "messages": ask, "max_tokens": 200, "stream": True}
    _disconnect_mid_stream(g_pool, members, "/v1/chat/completions", sse)
    log = "\n".join(g_pool.log_lines())
    assert "499" in log and "client left" in log


def test_metrics(g_pool: GatewayProc) -> None:
    text = httpx.get(f"{g_pool.url}/metrics", timeout=10).text
    assert (
        'sollol_gateway_requests_total{endpoint="chat",model="smollm2:135m",node="m1",route="pool",status="200"}'
        in text
    )
    assert "sollol_gateway_time_to_first_token_seconds_bucket" in text
    assert "sollol_gateway_request_duration_seconds_count" in text
    assert 'sollol_gateway_node_healthy{api="openai",node="m2"} 1.0' in text
    assert "sollol_gateway_requests_in_flight" in text and "sollol_gateway_requests_queued" in text


def test_a_killed_member_breaker_and_rejoin(g_pool: GatewayProc, members: list[Member]) -> None:
    m1 = members[0]
    m1.kill()
    nodes = [route_of(g_pool, MODEL)[1] for _ in range(6)]
    assert nodes == ["m2"] * 6, nodes  # a request that tried m1 first was retried on m2 before answering
    wait_until(lambda: g_pool.node("m1")["breaker"] == "open", 30, "m1's breaker to open")
    assert not g_pool.node("m1")["healthy"]
    metrics = httpx.get(f"{g_pool.url}/metrics", timeout=10).text
    assert 'sollol_gateway_node_breaker_open{node="m1"} 1.0' in metrics
    m1.start()  # same port
    wait_until(lambda: (n := g_pool.node("m1"))["healthy"] and n["breaker"] == "closed", 60, "m1 to rejoin the pool")
    assert "m1" in {route_of(g_pool, MODEL)[1] for _ in range(4)}
