"""Loading progress while the gateway loads a sharded model (issue 12, item 1), with real parts: two local
rpc-servers, the coordinators the gateway starts, the official `ollama` and `openai` clients streaming.

With `sollol_gateway_loading_progress` (or --loading-progress) a streamed request that waits for a cold load
gets progress chunks in the API's reasoning/thinking field first, then the same answer as without it;
without the setting it gets none. While a load is held up, /api/ps and `sollol-ops status` show the
loading model and its progress."""

from __future__ import annotations

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
from ondemandparts import od
from ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.toolchain, pytest.mark.model]

MESSAGES = [{"role": "user", "content": "Name three colours."}]
OPTS = {"num_predict": 12, "temperature": 0, "seed": 7}
RPC_SERVERS = 2  # the module's local rpc-servers (conftest.local)


def inventory(path: Path, local: Local, progress: bool | None) -> Path:
    lines = ["[rpc_servers]"]
    for i, endpoint in enumerate(local.endpoints):
        lines.append(f"w{i} ansible_host=127.0.0.1 sollol_rpc_port={endpoint.split(':')[1]}")
    if progress is not None:
        lines += ["", "[all:vars]", f"sollol_gateway_loading_progress={'yes' if progress else 'no'}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def gateway(env: dict[str, Any], local: Local, name: str, progress: bool | None) -> GatewayProc:
    """A gateway with its own state directory (so neither adopts the other's coordinator)."""
    own = {**env["env"], "XDG_STATE_HOME": str(env["root"] / f"state-{name}")}
    inv = inventory(env["root"] / f"{name}.ini", local, progress)
    args = ["--coordinator-port", str(free_port()), "-c", "1024", "-t", "1"]
    proc = GatewayProc(own, inv, env["root"], name, *args)
    proc.env = own  # type: ignore[attr-defined]
    proc.inventory = inv  # type: ignore[attr-defined]
    return proc


@pytest.fixture(scope="module")
def gw_on(env: dict[str, Any], local: Local) -> Iterator[GatewayProc]:
    proc = gateway(env, local, "on", True)  # the inventory variable turns it on
    yield proc
    proc.stop()


def unload(gw: GatewayProc) -> None:
    r = httpx.post(f"{gw.url}/api/generate", json={"model": MODEL, "keep_alive": 0, "stream": False}, timeout=60)
    assert r.status_code == 200, r.text
    try:
        wait_until(lambda: od(gw)["phase"] == "idle", 30, "the coordinator to be stopped")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {od(gw)}; gateway log: {gw.log_lines()[-12:]}") from None


def cold_streams(gw: GatewayProc) -> dict[str, tuple[list[str], str]]:
    """Each official client streaming against a cold coordinator: (progress texts before the first content,
    the answer). Progress after content fails the test."""
    out: dict[str, tuple[list[str], str]] = {}

    def collect(kind: str, pieces: Iterator[tuple[str, str]]) -> None:
        progress: list[str] = []
        answer = ""
        for thinking, content in pieces:
            if thinking:
                assert not answer, f"{kind}: progress after the answer began: {thinking!r}"
                progress.append(thinking)
            answer += content
        out[kind] = (progress, answer)

    assert od(gw)["phase"] == "idle"
    client = ollama.Client(host=gw.url)
    stream = client.chat(model=MODEL, messages=MESSAGES, options=OPTS, stream=True)
    collect("ollama chat", ((c.message.thinking or "", c.message.content or "") for c in stream))
    unload(gw)
    stream = client.generate(model=MODEL, prompt="Name three colours.", options=OPTS, stream=True)
    collect("ollama generate", ((c.thinking or "", c.response or "") for c in stream))
    unload(gw)
    oa = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    chunks = oa.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, seed=7, stream=True
    )
    collect(
        "openai chat",
        (
            ((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "", c.choices[0].delta.content or "")
            for c in chunks
            if c.choices
        ),
    )
    unload(gw)
    return out


def test_streams_carry_loading_progress_only_when_asked_and_the_answer_is_unchanged(
    gw_on: GatewayProc, env: dict[str, Any], local: Local
) -> None:
    on = cold_streams(gw_on)
    for kind, (progress, answer) in on.items():
        assert progress and answer, (kind, progress, answer)
        assert all(p.startswith(f"loading {MODEL}") or p.startswith("waiting") for p in progress), (kind, progress)
    gw_on.stop()  # the rpc-servers serve one coordinator at a time
    gw_off = gateway(env, local, "off", None)  # no inventory variable: off by default
    try:
        off = cold_streams(gw_off)
    finally:
        gw_off.stop()
    for kind, (progress, answer) in off.items():
        assert progress == [] and answer == on[kind][1], (kind, progress, answer, on[kind][1])
    # --no-loading-progress overrides the inventory's yes
    args = ["--no-loading-progress", "--coordinator-port", str(free_port()), "-c", "1024", "-t", "1"]
    gw = GatewayProc(gw_on.env, gw_on.inventory, env["root"], "override", *args)  # type: ignore[attr-defined]
    try:
        client = ollama.Client(host=gw.url)
        parts = list(client.chat(model=MODEL, messages=MESSAGES, options=OPTS, stream=True))
        assert not any(p.message.thinking for p in parts)
        assert "".join(p.message.content or "" for p in parts) == on["ollama chat"][1]
        unload(gw)
    finally:
        gw.stop()


def test_a_held_up_load_shows_in_the_stream_api_ps_and_status(env: dict[str, Any], local: Local) -> None:
    """One rpc-server is stopped (SIGSTOP) once llama-server reads the model, so the load waits on it: progress
    chunks keep coming, /api/ps and `sollol-ops status` show the model loading with its progress; SIGCONT
    lets the load finish and the same request is answered."""
    gw = gateway(env, local, "held", True)
    state_file = Path(gw.env["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json"  # type: ignore[attr-defined]
    lines: list[dict[str, Any]] = []
    stopped = False
    try:
        body = {"model": MODEL, "messages": MESSAGES, "options": OPTS, "stream": True}

        def stream() -> None:
            with (
                httpx.Client(timeout=httpx.Timeout(10, read=None)) as c,
                c.stream("POST", f"{gw.url}/api/chat", json=body) as r,
            ):
                for raw in r.iter_lines():
                    if raw.strip():
                        lines.append(json.loads(raw))

        reader = threading.Thread(target=stream)
        reader.start()
        log = state_file.with_name("coordinator.log")

        def model_loading() -> bool:  # llama-server has found its RPC devices and reads the model
            return log.is_file() and "llama_model_loader" in log.read_text(errors="replace")

        wait_until(model_loading, 60, "llama-server to start loading the model", poll=0.02)
        os.kill(local.pids[0], signal.SIGSTOP)
        stopped = True

        def thinking() -> list[str]:
            return [ln["message"]["thinking"] for ln in list(lines) if ln.get("message", {}).get("thinking")]

        wait_until(lambda: any("llama-server:" in t for t in thinking()), 30, "progress naming llama-server's log")
        n = len(thinking())
        wait_until(lambda: len(thinking()) > n, 10, "another progress chunk while the load is held up")

        ps = httpx.get(f"{gw.url}/api/ps", timeout=10).json()["models"]
        entry = next(m for m in ps if m["model"] == MODEL)
        assert entry["status"] == "loading" and entry["progress"]["step"] == "llama-server loading", entry
        assert entry["progress"]["elapsed_s"] >= 0 and entry["progress"]["log"], entry

        st = run_cli("-i", str(gw.inventory), "status", "--json", env=gw.env)  # type: ignore[attr-defined]
        coord = json.loads(st.stdout)["coordinator"]
        assert coord["model"] == MODEL and coord["state"] == "loading", coord
        assert coord["progress"]["elapsed_s"] >= 0 and coord["progress"]["log"], coord
        table = run_cli("-i", str(gw.inventory), "status", env=gw.env)  # type: ignore[attr-defined]
        assert f"coordinator: {MODEL}" in table.stdout and "loading" in table.stdout, table.stdout
        assert "so far; last log line:" in table.stdout, table.stdout

        # a second streamed request joins the queue, gets its first progress line, and leaves: it leaves the queue
        assert od(gw)["queued"] == {MODEL: 1}
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=30)) as c,
            c.stream("POST", f"{gw.url}/api/chat", json=body) as r,
        ):
            first = json.loads(next(r.iter_lines()))
            assert first["message"]["thinking"].startswith(f"loading {MODEL}") and first["done"] is False
        wait_until(lambda: od(gw)["queued"] == {MODEL: 1}, 10, "the request that left to leave the queue")
        wait_until(lambda: any("(client left)" in line for line in gw.log_lines()), 10, "the 499 line")

        os.kill(local.pids[0], signal.SIGCONT)
        stopped = False
        reader.join(120)
        assert not reader.is_alive()
        content = "".join(ln["message"]["content"] for ln in lines if "message" in ln)
        assert lines[-1]["done"] and content, lines[-3:]
        unload(gw)
    finally:
        if stopped:
            os.kill(local.pids[0], signal.SIGCONT)
        gw.stop()


def test_a_refused_load_ends_the_progress_stream_with_the_apis_error(env: dict[str, Any], local: Local) -> None:
    """The status line went out first, so the refusal (an rpc-server down) is the stream's last event, in the
    API's error shape: both official clients raise it with `up`'s message naming the host."""
    dead = free_port()
    own = {**env["env"], "XDG_STATE_HOME": str(env["root"] / "state-refused")}
    inv = inventory(env["root"] / "refused.ini", local, True)
    inv.write_text(
        inv.read_text().replace("[all:vars]", f"ghost ansible_host=127.0.0.1 sollol_rpc_port={dead}\n\n[all:vars]")
    )
    gw = GatewayProc(own, inv, env["root"], "refused", "-t", "1")
    try:
        parts: list[Any] = []
        with pytest.raises(ollama.ResponseError) as err:
            for part in ollama.Client(host=gw.url).chat(model=MODEL, messages=MESSAGES, options=OPTS, stream=True):
                parts.append(part)
        assert f"ghost (127.0.0.1:{dead}) is down" in str(err.value) and "cannot load" in str(err.value)
        assert parts and all(p.message.thinking and not p.message.content for p in parts), parts
        oa = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        seen: list[Any] = []
        with pytest.raises(openai.APIError) as oerr:
            for chunk in oa.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, stream=True):
                seen.append(chunk)
        assert f"ghost (127.0.0.1:{dead}) is down" in str(oerr.value)
        assert seen and all((c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in seen)
        assert od(gw)["queued"] == {} and od(gw)["phase"] == "idle"
        assert any("POST /api/chat 503" in line for line in gw.log_lines())
    finally:
        gw.stop()
