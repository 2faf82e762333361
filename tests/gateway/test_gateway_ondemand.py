"""Sharded models on demand through `sollol-ops gateway` (issue 12), with real parts: two local rpc-servers,
real llama-server coordinators started by the gateway itself, the official `ollama` and `openai` clients.

One gateway for the module (shard mode, nothing loaded at start); each test leaves the coordinator
unloaded again. Loads of the 135M test model take a few seconds, so the module stays under a few minutes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from gatewayparts import MODEL, GatewayProc, wait_until
from helpers import Local, run_cli
from ondemandparts import gone, od, revive
from ports import free_port

from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.keepalive import parse_keep_alive

pytestmark = [pytest.mark.slow, pytest.mark.toolchain, pytest.mark.model]

OTHER = "smollm2:other"  # the same GGUF under a second name: a second sharded model
OPTS = {"num_predict": 4, "temperature": 0}
MESSAGES = [{"role": "user", "content": "Name a colour."}]
QUEUE = 8
STORE_MODELS = (MODEL, OTHER)
RPC_SERVERS = 2  # the module's local rpc-servers (conftest.local)


@pytest.fixture(scope="module")
def gw(env: dict[str, Any], local: Local) -> Iterator[GatewayProc]:
    args = ["--coordinator-port", str(free_port()), "-c", "1024", "-np", "2", "-t", "1"]
    proc = GatewayProc(env["env"], Path(local.inventory), env["root"], "ondemand", *args, "--queue-size", str(QUEUE))
    yield proc
    proc.stop()


def state_file(env: dict[str, Any]) -> Path:
    return Path(env["env"]["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json"


def unload(gw: GatewayProc, model: str) -> None:
    r = httpx.post(f"{gw.url}/api/generate", json={"model": model, "keep_alive": 0, "stream": False}, timeout=60)
    assert r.status_code == 200 and r.json()["done_reason"] == "unload", r.text
    wait_until(lambda: od(gw)["phase"] == "idle", 30, "the coordinator to be stopped")


def chat(gw: GatewayProc, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "options": OPTS, "stream": False, **extra}
    return httpx.post(f"{gw.url}/api/chat", json=body, timeout=300)


# --------------------------------------------------------------------------- no processes


def test_keep_alive_is_parsed_as_ollama_does() -> None:
    assert parse_keep_alive(None, 300.0) == 300.0
    assert parse_keep_alive("5m", None) == 300.0 and parse_keep_alive("1h30m", None) == 5400.0
    assert parse_keep_alive(0, None) == 0 and parse_keep_alive("0", None) == 0 and parse_keep_alive("2.5s", 1) == 2.5
    assert parse_keep_alive(-1, 5) is None and parse_keep_alive("-1m", 5) is None and parse_keep_alive(30, None) == 30
    for bad in ("soon", "5 minutes", True, [1], ""):
        with pytest.raises(ApiError):
            parse_keep_alive(bad, None)


# --------------------------------------------------------------------------- real parts


def test_first_requests_load_the_model_queue_and_all_answer(gw: GatewayProc, env: dict[str, Any], local: Local) -> None:
    assert od(gw)["phase"] == "idle" and not state_file(env).exists()
    seen_loading: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch_ps() -> None:  # /api/ps shows the model while it loads
        while not stop.is_set():
            with httpx.Client(timeout=5) as c:
                for m in c.get(f"{gw.url}/api/ps").json()["models"]:
                    if m.get("status") == "loading":
                        seen_loading.append(m)
            stop.wait(0.1)

    watcher = threading.Thread(target=watch_ps)
    watcher.start()
    n = QUEUE + 2  # QUEUE requests queue while it loads; two more are turned away

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        await asyncio.sleep(0.02 * i)
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Say {i}."}], "options": OPTS}
        return await client.post(f"{gw.url}/api/chat", json={**body, "stream": False})

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
            return await asyncio.gather(*(one(client, i) for i in range(n)))

    try:
        results = asyncio.run(run())
    finally:
        stop.set()
        watcher.join()
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code != 200]
    assert len(ok) == QUEUE, [r.text for r in refused]
    for r in ok:
        assert r.json()["done"] and r.json()["message"]["content"] and r.headers["x-sollol-route"] == "shard"
    for r in refused:
        assert r.status_code == 503 and r.headers["retry-after"] and "queue-size" in r.json()["error"]
    assert seen_loading and seen_loading[0]["model"] == MODEL
    s = od(gw)
    assert s["phase"] == "serving" and s["model"] == MODEL and s["loads"] == 1 and s["owned"]
    # `sollol-ops status` sees it; the official clients are served from the loaded model at once
    st = run_cli("-i", local.inventory, "status", "--json", env=env["env"])
    assert MODEL in st.stdout, st.stdout + st.stderr
    client = ollama.Client(host=gw.url)
    assert client.chat(model=MODEL, messages=MESSAGES, options=OPTS).message.content
    assert MODEL in [m.model for m in client.ps().models]
    oa = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    assert oa.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4).choices[0].message.content
    assert od(gw)["loads"] == 1


def test_keep_alive_zero_and_expiry_stop_the_coordinator(gw: GatewayProc, env: dict[str, Any]) -> None:
    if od(gw)["phase"] != "serving":
        assert chat(gw, MODEL).status_code == 200
    pid = od(gw)["pid"]
    unload(gw, MODEL)  # Open WebUI's unload: /api/generate, no prompt, keep_alive 0
    assert gone(pid) and not state_file(env).exists()
    # a short keep_alive on a request: stopped after that idle time
    r = chat(gw, MODEL, keep_alive="2s")
    assert r.status_code == 200, r.text
    s = od(gw)
    assert s["phase"] == "serving" and s["keep_alive_s"] == 2
    pid = s["pid"]
    wait_until(lambda: od(gw)["phase"] == "idle", 15, "keep_alive 2s to expire")
    assert gone(pid) and not state_file(env).exists()
    # keep_alive 0 on a request: unloaded as soon as it is answered
    r = chat(gw, MODEL, keep_alive=0)
    assert r.status_code == 200, r.text
    wait_until(lambda: od(gw)["phase"] == "idle", 15, "keep_alive 0 to unload")
    assert od(gw)["unloads"] >= 3


def test_two_sharded_models_asked_in_turn_swap_once(gw: GatewayProc) -> None:
    if od(gw)["phase"] != "idle":
        unload(gw, od(gw)["model"])
    before = od(gw)
    order = [MODEL, OTHER] * 3

    async def one(client: httpx.AsyncClient, i: int, model: str) -> httpx.Response:
        await asyncio.sleep(0.05 * i)
        body = {"model": model, "messages": MESSAGES, "options": OPTS, "stream": False}
        return await client.post(f"{gw.url}/api/chat", json=body)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
            return await asyncio.gather(*(one(client, i, m) for i, m in enumerate(order)))

    results = asyncio.run(run())
    assert [r.status_code for r in results] == [200] * 6, [r.text for r in results]
    assert [r.json()["model"] for r in results] == order
    after = od(gw)
    assert after["loads"] - before["loads"] == 2 and after["swaps"] - before["swaps"] == 1, after
    metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
    assert f"sollol_gateway_shard_swaps_total {float(after['swaps'])}" in metrics
    # one more request for each, in turn: a swap each (no more than that)
    assert chat(gw, MODEL).status_code == 200 and chat(gw, OTHER).status_code == 200
    assert od(gw)["swaps"] - after["swaps"] == 2
    unload(gw, OTHER)


def test_a_killed_llama_server_is_an_api_error_and_the_next_request_reloads(
    gw: GatewayProc, local: Local, env: dict[str, Any]
) -> None:
    assert chat(gw, MODEL).status_code == 200
    s = od(gw)
    pid, deaths = s["pid"], s["deaths"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}], "stream": True}
    body["options"] = {"num_predict": 400, "temperature": 1.0}
    lines: list[dict[str, Any]] = []
    with httpx.Client(timeout=httpx.Timeout(10, read=60)) as c, c.stream("POST", f"{gw.url}/api/chat", json=body) as r:
        assert r.status_code == 200
        for raw in r.iter_lines():
            if not raw.strip():
                continue
            lines.append(json.loads(raw))
            if len(lines) == 3:
                os.kill(pid, signal.SIGKILL)
    assert "error" in lines[-1] and not lines[-1].get("done"), lines[-3:]
    wait_until(lambda: od(gw)["deaths"] == deaths + 1, 10, "the gateway to notice the dead coordinator")
    revive(local, env)
    r = chat(gw, MODEL)
    assert r.status_code == 200 and r.json()["message"]["content"], r.text
    assert od(gw)["pid"] != pid
    # the same through the OpenAI API, streamed: an error event in OpenAI's shape
    assert chat(gw, MODEL).status_code == 200
    pid = od(gw)["pid"]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    ask = [{"role": "user", "content": "Write a long story."}]
    stream = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=400, stream=True)
    with pytest.raises(openai.APIError) as err:
        for i, _chunk in enumerate(stream):
            if i == 2:
                os.kill(pid, signal.SIGKILL)
    assert "broke off" in str(err.value)
    wait_until(lambda: od(gw)["deaths"] == deaths + 2, 10, "the gateway to notice the second death")
    revive(local, env)
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4).choices[0].message.content
    # not streamed: a 502 in OpenAI's shape
    pid = od(gw)["pid"]
    threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=MODEL, messages=ask, max_tokens=2000, temperature=1.0)
    assert err.value.status_code == 502 and "coordinator@" in str(err.value)  # before or after its headers
    wait_until(lambda: od(gw)["deaths"] == deaths + 3, 10, "the gateway to notice the third death")
    revive(local, env)
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4).choices[0].message.content
    unload(gw, MODEL)


def test_a_coordinator_started_by_hand_is_adopted(gw: GatewayProc, local: Local, env: dict[str, Any]) -> None:
    if od(gw)["phase"] != "idle":
        unload(gw, od(gw)["model"])
    port = str(free_port())
    up = local.cli("up", OTHER, "--port", port, "-c", "1024", "-t", "1")
    assert up.returncode == 0, up.stderr
    pid = json.loads(state_file(env).read_text())["pid"]
    wait_until(lambda: od(gw)["phase"] == "serving", 10, "the gateway to adopt the coordinator")
    loads = od(gw)["loads"]
    r = chat(gw, OTHER, keep_alive=0)
    assert r.status_code == 200 and r.headers["x-sollol-node"] == f"coordinator@127.0.0.1:{port}"
    s = od(gw)
    assert s["loads"] == loads and not s["owned"] and s["pid"] == pid
    assert not gone(pid)  # keep_alive applies only to coordinators it started
    down = local.cli("down")
    assert down.returncode == 0, down.stderr
    wait_until(lambda: od(gw)["phase"] == "idle", 10, "the gateway to see it stopped")


def test_a_lost_rpc_server_is_noticed_and_the_reload_refusal_names_it(gw: GatewayProc, local: Local) -> None:
    """Last: it kills one of the module's rpc-servers."""
    assert chat(gw, MODEL).status_code == 200
    deaths = od(gw)["deaths"]
    os.kill(local.pids[1], signal.SIGKILL)
    wait_until(lambda: od(gw)["deaths"] == deaths + 1, 15, "the gateway to notice the lost backend")
    wait_until(lambda: od(gw)["phase"] == "idle", 30, "the coordinator that lost a backend to be stopped")
    assert "lost backend" in od(gw)["last_error"] and local.endpoints[1] in od(gw)["last_error"]
    r = chat(gw, MODEL)
    assert r.status_code == 503 and local.endpoints[1] in r.json()["error"], r.text
    assert "--skip-unhealthy" in r.json()["error"]  # the same refusal as `sollol-ops up`
