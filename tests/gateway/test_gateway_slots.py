"""Open WebUI must not starve its user (issue 20): the gateway admits requests to the sharded model no faster than
the coordinator has slots, the user's chat ahead of Open WebUI's background tasks; a token limit for requests
that set none; embeddings of a sharded model only when the inventory asks for them (else a documented 501).

Real parts: `sollol-ops gateway` in shard mode over one local rpc-server, loading SmolLM2 on demand.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from gatewayparts import MODEL, GatewayProc
from helpers import Local
from ondemandparts import od
from ports import free_port

from sollol_ops.gateway.priority import Priority, admit, classify, slots_of

pytestmark = [pytest.mark.slow, pytest.mark.toolchain, pytest.mark.model]

RPC_SERVERS = 1
LIMIT = 6  # the gateway's --default-num-predict here
# What Open WebUI sends for its follow-up suggestions (its default template's shape, words of our own).
TASK = (
    "### Task:\nSuggest three short messages the user might send next.\n### Output:\n"
    'JSON format: { "follow_ups": ["..."] }\n### Chat History:\n<chat_history>\nUSER: hi\nASSISTANT: hello\n'
    "</chat_history>"
)


# --------------------------------------------------------------------------- no processes


def test_open_webui_task_prompts_are_background() -> None:
    assert classify({"messages": [{"role": "user", "content": TASK}]}) is Priority.BACKGROUND
    tags = "Generate tags for this.\n<chat_history>\nUSER: x\n</chat_history>"  # a customised template
    assert (
        classify({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": tags}]}) == "background"
    )
    parts = [{"type": "text", "text": TASK}]
    assert classify({"messages": [{"role": "user", "content": parts}]}) is Priority.BACKGROUND  # OpenAI parts
    assert classify({"prompt": TASK}) is Priority.BACKGROUND  # /api/generate
    chat = {"messages": [{"role": "user", "content": TASK}, {"role": "assistant", "content": "{}"},
                         {"role": "user", "content": "Tell me about ### Task: headers"}]}  # fmt: skip
    assert classify(chat) is Priority.INTERACTIVE  # the last user message is the user's own
    assert classify({"messages": [{"role": "user", "content": TASK}]}, {"x-sollol-priority": "interactive"}) == (
        "interactive"
    )
    assert classify({"prompt": "hi"}, {"x-sollol-priority": "Background"}) is Priority.BACKGROUND
    assert classify({"messages": "not a list"}) is Priority.INTERACTIVE


class T:
    def __init__(self, name: str, priority: Priority) -> None:
        self.name, self.priority = name, priority

    def __repr__(self) -> str:
        return f"{self.name}/{self.priority}"


def test_admission_fills_free_slots_interactive_first_and_keeps_one_from_background() -> None:
    bg, me, other = T("m", Priority.BACKGROUND), T("m", Priority.INTERACTIVE), T("x", Priority.INTERACTIVE)
    bg2 = T("m", Priority.BACKGROUND)
    assert admit([bg, me], "m", 0, 0, 1) == [me]  # one slot: the user's chat goes first
    assert admit([bg, bg2], "m", 0, 0, 1) == [bg]  # background alone may use the only slot
    assert admit([bg, me], "m", 1, 0, 1) == []  # the slot is taken
    assert admit([bg, bg2, me], "m", 0, 0, 2) == [me, bg]  # two slots: one stays free of background work
    assert admit([bg2], "m", 1, 1, 2) == []
    assert admit([other, bg], "m", 0, 0, 4) == [bg]  # only the served model's tickets
    assert slots_of(["llama-server", "--parallel", "3"]) == 3 and slots_of(["x", "-np", "2"]) == 2
    assert slots_of(["x", "--parallel=4"]) == 4 and slots_of(["x"]) == 1


# --------------------------------------------------------------------------- real parts


@pytest.fixture(scope="module")
def gw(env: dict[str, Any], local: Local) -> Iterator[GatewayProc]:
    own = {**env["env"], "XDG_STATE_HOME": str(env["root"] / "state-slots")}
    args = ["--mode", "shard", "--coordinator-port", str(free_port()), "-c", "1024", "-np", "1", "-t", "1"]
    args += ["--default-num-predict", str(LIMIT)]
    proc = GatewayProc(own, Path(local.inventory), env["root"], "slots", *args, "--keep-alive", "-1")
    r = httpx.post(f"{proc.url}/api/chat", json=chat_body("Hi."), timeout=300)  # loads the model
    assert r.status_code == 200, r.text
    yield proc
    proc.stop()


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": False, **extra}


def test_a_request_without_a_limit_gets_the_default_and_an_explicit_one_wins(gw: GatewayProc) -> None:
    client = ollama.Client(host=gw.url)
    prompt = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]
    r = client.chat(model=MODEL, messages=prompt, options={"temperature": 0})
    assert r.eval_count == LIMIT and r.done_reason == "length"
    r = client.chat(model=MODEL, messages=prompt, options={"temperature": 0, "num_predict": 3})
    assert r.eval_count == 3
    oa = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    c = oa.chat.completions.create(model=MODEL, messages=prompt, temperature=0)  # type: ignore[arg-type]
    assert c.usage is not None and c.usage.completion_tokens == LIMIT and c.choices[0].finish_reason == "length"
    c = oa.chat.completions.create(model=MODEL, messages=prompt, temperature=0, max_completion_tokens=2)  # type: ignore[arg-type]
    assert c.usage is not None and c.usage.completion_tokens == 2


def test_the_users_chat_starts_before_a_queued_background_task(gw: GatewayProc) -> None:
    """Open WebUI's pattern on the one slot (-np 1): a long task in flight, its follow-up task queued behind it,
    then the user's next message. The user's chat is admitted as soon as the slot frees, ahead of the task."""
    assert od(gw)["phase"] == "serving"
    done: dict[str, float] = {}

    async def post(client: httpx.AsyncClient, name: str, path: str, body: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        r = await client.post(f"{gw.url}{path}", json=body)
        assert r.status_code == 200, r.text
        done[name] = time.monotonic()

    # the long one: a title task over the OpenAI route (ignore_eos: it runs its whole 300 tokens)
    long_task = {
        "model": MODEL,
        "messages": [{"role": "user", "content": TASK}],
        "max_tokens": 300,
        "ignore_eos": True,
        "stream": False,
    }
    follow_up = chat_body(TASK, options={"num_predict": 40})  # queued behind it
    user = chat_body("What is the capital of France?")

    async def run() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
            await asyncio.gather(
                post(client, "long", "/v1/chat/completions", long_task, 0),
                post(client, "follow-up", "/api/chat", follow_up, 0.3),
                post(client, "user", "/api/chat", user, 0.6),
                watch_queue(),
            )

    async def watch_queue() -> None:  # both wait in the gateway's queue while the long task holds the slot
        await asyncio.sleep(0.9)
        async with httpx.AsyncClient(timeout=5) as c:
            s = (await c.get(f"{gw.url}/gateway/status")).json()["on_demand"]
        assert s["in_flight"] == 1 and s["queued"] == {MODEL: 2}, s
        assert "long" not in done, "the long task finished before the others were queued: make it longer"

    asyncio.run(run())
    assert done["long"] < done["user"] < done["follow-up"], done


@pytest.fixture(scope="module")
def embeddings_inventory(env: dict[str, Any], local: Local) -> Path:
    path = env["root"] / "embeddings.ini"
    path.write_text(Path(local.inventory).read_text() + "\n[all:vars]\nsollol_embeddings=true\n")
    return path


def test_embeddings_of_a_sharded_model_are_a_501_naming_the_variable(gw: GatewayProc) -> None:
    r = httpx.post(f"{gw.url}/api/embed", json={"model": MODEL, "input": "hi"}, timeout=30)
    assert r.status_code == 501 and "sollol_embeddings: true" in r.json()["error"], r.text
    r = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": "hi"}, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 501 and err["type"] == "not_supported_error" and "sollol_embeddings" in err["message"]


def test_embeddings_when_the_inventory_asks_for_them(
    gw: GatewayProc, env: dict[str, Any], embeddings_inventory: Path
) -> None:
    r = httpx.post(f"{gw.url}/api/generate", json={"model": MODEL, "keep_alive": 0, "stream": False}, timeout=60)
    assert r.status_code == 200 and od(gw)["phase"] == "idle", r.text  # the one rpc-server is free again
    own = {**env["env"], "XDG_STATE_HOME": str(env["root"] / "state-embed")}
    args = ["--mode", "shard", "--coordinator-port", str(free_port()), "-c", "512", "-t", "1", "--keep-alive", "-1"]
    proc = GatewayProc(own, embeddings_inventory, env["root"], "embed", *args)
    try:
        e = ollama.Client(host=proc.url).embed(model=MODEL, input=["hello", "world"])
        assert len(e.embeddings) == 2 and len(e.embeddings[0]) == 576
        oa = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="unused", max_retries=0)
        assert len(oa.embeddings.create(model=MODEL, input="hi").data[0].embedding) == 576
        state = json.loads((Path(own["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json").read_text())
        assert "--embeddings" in state["command"]
        r = ollama.Client(host=proc.url).chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
        assert r.message.content  # chat still works beside them
    finally:
        proc.stop()
