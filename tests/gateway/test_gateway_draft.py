"""The gateway loads a sharded model with the inventory's draft (sollol_draft_models, issue 18), with real parts:
two local rpc-servers, the coordinator the gateway starts on demand, the official `ollama` client. /api/ps shows
the draft and its acceptance; /metrics exports llama-server's drafted and accepted counts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from gatewayparts import MODEL, GatewayProc, wait_until
from helpers import Local, run_cli
from ondemandparts import od
from ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.toolchain, pytest.mark.model]

RPC_SERVERS = 2  # the module's local rpc-servers (conftest.local)
# SmolLM2 drafts for itself: every drafted token is accepted, which makes the counters easy to check.
DRAFTS = '{"smollm2:135m": "smollm2:135m"}'
MESSAGES = [{"role": "user", "content": "List the days of the week."}]


@pytest.fixture(scope="module")
def gw(env: dict[str, Any], local: Local) -> Iterator[GatewayProc]:
    inventory = Path(env["root"]) / "drafts.ini"
    lines = ["[rpc_servers]"]
    lines += [f"w{i} ansible_host=127.0.0.1 sollol_rpc_port={e.split(':')[1]}" for i, e in enumerate(local.endpoints)]
    lines += [
        "",
        "[coordinator]",
        "localhost ansible_connection=local",
        "",
        "[all:vars]",
        f"sollol_draft_models={DRAFTS}",
    ]
    inventory.write_text("\n".join(lines) + "\n")
    args = ["--coordinator-port", str(free_port()), "-c", "1024", "-t", "1"]
    proc = GatewayProc(env["env"], inventory, env["root"], "draft", *args)
    proc.inventory = inventory  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def _metric(text: str, name: str) -> float:
    m = re.search(rf'^{name}\{{draft="{MODEL}",model="{MODEL}"\}} (\S+)$', text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_an_on_demand_load_uses_the_inventorys_draft(gw: GatewayProc, env: dict[str, Any]) -> None:
    assert od(gw)["phase"] == "idle"
    client = ollama.Client(host=gw.url)
    answer = client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 48, "temperature": 0})
    assert answer.message.content
    assert od(gw)["phase"] == "serving" and od(gw)["loads"] == 1
    state = json.loads((Path(env["env"]["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json").read_text())
    assert state["draft"]["model"] == MODEL and state["draft"]["source"] == "sollol_draft_models"
    assert state["command"][state["command"].index("--spec-type") + 1] == "draft-simple"
    # /api/ps: the official client still reads it; the draft rides along beside Ollama's own fields
    assert MODEL in [m.model for m in client.ps().models]
    entry = next(m for m in httpx.get(f"{gw.url}/api/ps", timeout=10).json()["models"] if m["model"] == MODEL)
    draft = entry["draft"]
    assert draft["mode"] == "model" and draft["model"] == MODEL and draft["device"] == "CPU"
    assert draft["drafted"] > 0 and 0 < draft["accepted"] <= draft["drafted"]
    assert draft["acceptance_rate"] == round(draft["accepted"] / draft["drafted"], 4)
    # /metrics: llama-server's counts for the sharded model and its draft
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    drafted = _metric(text, "sollol_gateway_shard_draft_tokens_total")
    accepted = _metric(text, "sollol_gateway_shard_draft_accepted_tokens_total")
    assert drafted >= draft["drafted"] and 0 < accepted <= drafted
    assert _metric(text, "sollol_gateway_shard_draft_acceptance_ratio") == pytest.approx(accepted / drafted, abs=1e-3)
    # `sollol-ops status` reads the same counters
    status = json.loads(run_cli("-i", str(gw.inventory), "status", "--json", env=env["env"]).stdout)  # type: ignore[attr-defined]
    assert status["coordinator"]["draft"]["drafted"] == drafted


def test_without_a_coordinator_the_draft_metrics_have_no_samples(gw: GatewayProc) -> None:
    r = httpx.post(f"{gw.url}/api/generate", json={"model": MODEL, "keep_alive": 0, "stream": False}, timeout=60)
    assert r.status_code == 200 and r.json()["done_reason"] == "unload", r.text
    wait_until(lambda: od(gw)["phase"] == "idle", 30, "the coordinator to be stopped")
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    assert "# TYPE sollol_gateway_shard_draft_tokens_total counter" in text
    assert not re.search(r"^sollol_gateway_shard_draft_tokens_total\{", text, re.M)
