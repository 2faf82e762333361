"""The gateway's page (`GET /ui`, issue 19) in headless Chromium (Debian's chromium package under Playwright),
against a real `sollol-ops gateway` over two real rpc-servers and one real llama-server pool member: the nodes and
their states, the sharded model's layer bar against `sollol-ops status`, the requests, the unload and load buttons,
a killed worker turning `lost`. Without the key the data endpoints answer 401; every string is shown as text.

Screenshots go to $SOLLOL_TEST_ARTIFACTS (else a temporary directory); docs/ui.png is one of them."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewayparts import MODEL, GatewayProc, Member, wait_until
from helpers import Local, run_cli
from ports import free_port

from sollol_ops.gateway.app import Gateway, create_app
from sollol_ops.gateway.catalog import Catalog
from sollol_ops.gateway.pool import Pool
from sollol_ops.gateway.requests_log import tokens_from_tail
from sollol_ops.gateway.routing import GatewayConfig
from sollol_ops.gateway.ui import static_file
from sollol_ops.model.ollama import resolve_model

SHARDED = "smollm2:sharded"  # the store's second name for the weights: no pool node has it, so it is sharded
STORE_MODELS = (MODEL, SHARDED)
RPC_SERVERS = 2  # the module's local rpc-servers (conftest.local)
KEY = "ui-test-key-5678"
OPTS = {"num_predict": 4, "temperature": 0}
HOSTILE = '<img src=x onerror="window.__pwned=1">'
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("SOLLOL_TEST_ARTIFACTS")
    if given:
        out = Path(given) / "ui"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path_factory.mktemp("ui-artifacts")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless system Chromium under Playwright's sync API (module scope: its event loop stays in this module)."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).is_file():
        pytest.fail("no chromium: install Debian's chromium package (.ci/run does)", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# --------------------------------------------------------------------------- without processes


def test_the_answers_token_count_is_read_from_its_tail() -> None:
    assert tokens_from_tail(b'{"done":false}\n{"done":true,"eval_count":17,"prompt_eval_count":3}\n') == 17
    assert tokens_from_tail(b'data: {"usage":{"completion_tokens":9,"prompt_tokens":2}}\n\ndata: [DONE]\n\n') == 9
    assert tokens_from_tail(b'..."timings":{"predicted_n":5}}') == 5 and tokens_from_tail(b"no counts") is None


def test_without_the_key_the_data_endpoints_answer_401(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    gw = Gateway(GatewayConfig(mode="shard", api_key=KEY), Pool([], None), Catalog(str(tmp_path / "store")))
    with TestClient(create_app(gw)) as client:
        for method, path in [
            ("GET", "/gateway/status"),
            ("GET", "/gateway/status?cluster=1"),
            ("GET", "/gateway/events"),
            ("POST", "/gateway/load"),
            ("POST", "/gateway/unload"),
            ("GET", "/api/ps"),
            ("GET", "/metrics"),
        ]:
            r = client.request(method, path, json={"model": MODEL} if method == "POST" else None)
            assert r.status_code == 401, (path, r.text)
            bad = client.request(method, path, headers={"Authorization": "Bearer wrong"})
            assert bad.status_code == 401 and "invalid API key" in bad.json()["error"], path
        page = client.get("/ui")  # the page itself: a browser opens it by its address, then it asks for the key
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/ui/ui.js").status_code == 200 and client.get("/ui/ui.css").status_code == 200
        assert client.get("/ui/app.py").status_code == 404 and client.get("/ui/..%2fapp.py").status_code == 404
        ok = client.get("/gateway/status?cluster=1", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["cluster"]["backends"] == [] and ok.json()["gateway"]["api_key"]
        assert ok.json()["requests"] == []  # the refused calls are not listed on the page
        with client.stream("GET", "/gateway/events", headers={"X-API-Key": KEY}) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            data = next(line for line in events.iter_lines() if line.startswith("data: "))
        assert json.loads(data[6:])["mode"] == "shard"


def test_an_open_page_does_not_hold_up_the_gateways_stop(tmp_path: Path) -> None:
    """uvicorn waits for open responses when told to stop: the event streams end at SIGTERM."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CACHE_HOME": str(tmp_path / "cache"), "SOLLOL_INVENTORY": ""}
    inv = tmp_path / "empty.ini"
    inv.write_text("[rpc_servers]\n")
    gw = GatewayProc(env, inv, tmp_path, "stop", "--mode", "shard", "--no-load-on-demand")
    try:
        client = httpx.Client(timeout=httpx.Timeout(5, read=20))
        with client, client.stream("GET", f"{gw.url}/gateway/events") as events:
            lines = events.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            gw.proc.send_signal(signal.SIGTERM)
            for _ in lines:  # the stream ends (raises ReadTimeout if it does not)
                pass
        assert gw.proc.wait(10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has stopped
    finally:
        gw.stop()


def hostile_snapshot() -> dict[str, Any]:
    h = HOSTILE
    device = {"name": f"{h}:1", "model_mib": 1.0, "kv_mib": 1.0, "compute_mib": 1.0, "layers": 3}
    coordinator = {"state": "serving", "model": h, "endpoint": h, "pid": 1, "detail": h, "degraded": False}
    coordinator["distribution"] = {"devices": [device], "offloaded": [3, 3], "draft": {"name": h, "model_mib": 1.0}}
    coordinator["draft"] = {"mode": h, "model": h, "device": h, "need_mib": 9, "drafted": 10, "accepted": 7}
    coordinator["draft"]["acceptance_rate"] = 0.7
    request = {"id": 1, "started_at": 0, "model": h, "endpoint": h, "route": h, "node": h, "state": "failed"}
    request.update(status=500, ttft_s=0.1, duration_s=1.0, tokens=3, tok_s=3.0, error=h)
    return {
        "mode": h,
        "pins": {},
        "gateway": {"version": h, "uptime_s": 1, "api_key": True, "pages": 1},
        "pool": [{"node": h, "url": h, "api": h, "state": "down", "outstanding": 0, "loaded": [h], "last_error": h}],
        "on_demand": {
            "model": h,
            "phase": "serving",
            "owned": True,
            "in_flight": 0,
            "expires_in_s": 5,
            "last_error": h,
        },
        "cluster": {
            "coordinator": coordinator,
            "backends": [{"host": h, "endpoint": f"{h}:1", "state": "ready", "version": h, "devices": [], "detail": h}],
            "error": h,
        },
        "requests": [request],
        "series": {"t": [1, 2], "tok_s": [1, 2], "in_flight": [0, 1]},
        "load": {"model": h, "phase": "loading", "elapsed_s": 1, "step": h, "log": h, "staged_bytes": None},
    }


@pytest.mark.browser
def test_the_page_shows_every_string_as_text_and_reconnects(chromium: Any, artifacts: Path) -> None:
    """Hostile names everywhere the page shows one (answered by Playwright in place of a gateway): rendered as
    text, nothing run; the stream's end shows `reconnecting` and the page connects again."""
    streams = []
    snapshot = json.dumps(hostile_snapshot())

    def answer(route: Any) -> None:
        path = route.request.url.split("ui.test", 1)[1].split("?")[0]
        if path == "/ui":
            route.fulfill(body=static_file("ui.html"), content_type="text/html")
        elif path in ("/ui/ui.js", "/ui/ui.css"):
            kind = "text/javascript" if path.endswith(".js") else "text/css"
            route.fulfill(body=static_file(path[4:]), content_type=kind)
        elif path == "/gateway/events":
            streams.append(route.request.headers.get("authorization"))
            route.fulfill(body=f"event: status\ndata: {snapshot}\n\n", content_type="text/event-stream")
        elif path == "/api/tags":
            route.fulfill(body=json.dumps({"models": [{"name": HOSTILE}]}), content_type="application/json")
        else:
            route.fulfill(status=404, body="{}")

    page = chromium.new_page()
    try:
        page.route("http://ui.test/**", answer)
        page.goto(f"http://ui.test/ui?key={KEY}")
        page.locator('.node[data-kind="pool node"] .title').filter(has_text=HOSTILE).wait_for(timeout=10000)
        page.wait_for_function("document.querySelector('#conn').textContent.startsWith('reconnecting')", timeout=10000)
        for _ in range(150):  # Playwright answers the page's requests while the test waits in it, not in sleep()
            if len(streams) >= 2:
                break
            page.wait_for_timeout(100)
        assert len(streams) >= 2, "the page did not connect again"
        assert set(streams) == {f"Bearer {KEY}"}, streams  # the key from ?key=, sent as the header
        assert "key=" not in page.url  # and dropped from the address bar
        assert page.locator("#keyform").is_hidden()  # so the page never asked for it
        page.screenshot(path=str(artifacts / "ui-hostile.png"))
        assert page.evaluate("window.__pwned") is None
        assert page.locator("img").count() == 0
        text = page.inner_text("body")
        assert text.count(HOSTILE) >= 10, text
        assert page.locator("#models option").filter(has_text=HOSTILE).count() == 1
        draft = page.locator("#draft .draft").inner_text()
        assert (
            draft
            == f"draft {HOSTILE} on the coordinator's {HOSTILE} · 1.0 MiB weights · acceptance 70.0% (7 of 10 drafted)"
        )
    finally:
        page.close()


# --------------------------------------------------------------------------- real parts


@pytest.fixture(scope="module")
def member(env: dict[str, Any], smollm2_store: Path) -> Iterator[Member]:
    m = Member(resolve_model(MODEL, smollm2_store).blob, env["root"], "m1").start()
    yield m
    m.kill()


@pytest.fixture(scope="module")
def gw(env: dict[str, Any], local: Local, member: Member) -> Iterator[GatewayProc]:
    inv = env["root"] / "ui.ini"
    pool = f"m1 ansible_host=127.0.0.1 sollol_ollama_port={member.port} sollol_ollama_api=openai"
    inv.write_text(Path(local.inventory).read_text() + f"\n[ollama_nodes]\n{pool}\n")
    args = ["--coordinator-port", str(free_port()), "-c", "1024", "-t", "1", "--keep-alive", "10m"]
    proc = GatewayProc(env["env"], inv, env["root"], "ui", *args, api_key=KEY)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def page(chromium: Any, gw: GatewayProc) -> Iterator[Any]:
    p = chromium.new_page(viewport={"width": 1280, "height": 900})
    yield p
    p.close()


def od(gw: GatewayProc) -> dict[str, Any]:
    return gw.status()["on_demand"]


def chat(gw: GatewayProc, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Name a colour."}], "options": OPTS}
    r = httpx.post(f"{gw.url}/api/chat", json={**body, "stream": False}, headers=gw.headers, timeout=300)
    assert r.status_code == 200, r.text
    return r


def node(page: Any, name: str) -> Any:
    return page.locator(f'.node[data-name="{name}"]')


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.browser
def test_the_page_asks_for_the_key_and_lists_every_node(
    page: Any, gw: GatewayProc, local: Local, artifacts: Path
) -> None:
    assert any(f"the cluster's page is at {gw.url}/ui" in line for line in gw.log_lines()), gw.log_lines()[-5:]
    doctor = local.cli("doctor", "--no-hosts", "--link-mib", "4", "--json", timeout=120)
    links = [c for c in json.loads(doctor.stdout)["checks"] if c["check"] == "link"]  # type: ignore[attr-defined]
    assert len(links) == RPC_SERVERS and all(c["status"] == "ok" for c in links), links
    page.goto(f"{gw.url}/ui")
    page.wait_for_selector("#keyform:not([hidden])", timeout=10000)  # 401 without the key: the page asks
    page.fill("#key", KEY)
    page.click("#keyform button")
    page.wait_for_selector('#conn[data-state="live"]', timeout=10000)
    for endpoint in local.endpoints:
        node(page, endpoint).and_(page.locator('[data-state="ready"]')).wait_for(timeout=10000)
    assert node(page, "m1").get_attribute("data-state") == "ready"
    assert node(page, "m1").get_attribute("data-kind") == "pool node"
    assert node(page, "coordinator").get_attribute("data-state") == "not running"
    for endpoint in local.endpoints:  # device memory from the probe, the link as doctor measured it
        text = node(page, endpoint).inner_text()
        assert "free of" in text and "(doctor)" in text and "Gbit/s" in text, text
    page.screenshot(path=str(artifacts / "ui-idle.png"), full_page=True)


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.browser
def test_a_request_loads_the_model_and_the_bar_shows_the_layers_status_shows(
    page: Any, gw: GatewayProc, local: Local, env: dict[str, Any], artifacts: Path
) -> None:
    chat(gw, SHARDED)  # loads the sharded model on demand over both rpc-servers
    chat(gw, MODEL)  # served by the pool member
    st = run_cli("-i", local.inventory, "status", "--json", env=env["env"])
    assert st.returncode == 0, st.stderr
    dist = json.loads(st.stdout)["coordinator"]["distribution"]
    want = {d["name"]: d["layers"] for d in dist["devices"] if d["layers"]}
    assert set(local.endpoints) <= set(want), want  # both workers hold layers
    page.locator(".layerbar .seg").nth(len(want) - 1).wait_for(timeout=10000)
    segs = page.locator(".layerbar .seg")
    shown = {
        segs.nth(i).get_attribute("data-where"): int(segs.nth(i).get_attribute("data-layers") or 0)
        for i in range(segs.count())
    }
    assert shown == want
    for where, layers in want.items():
        assert f"{where}: {layers} layers" in page.locator(f'.legend li[data-where="{where}"]').inner_text()
    for endpoint in local.endpoints:  # held by the coordinator: serving, not probed
        node(page, endpoint).and_(page.locator('[data-state="serving"]')).wait_for(timeout=10000)
    shard_row = page.locator(f'#requests tr[data-route="shard"]:has-text("{SHARDED}")')
    pool_row = page.locator(f'#requests tr[data-route="pool"]:has-text("{MODEL}")')
    shard_row.first.wait_for(timeout=10000)
    pool_row.first.wait_for(timeout=10000)
    assert "coordinator" in shard_row.first.inner_text() and "m1" in pool_row.first.inner_text()
    assert shard_row.first.get_attribute("data-state") == "done"
    page.screenshot(path=str(artifacts / "ui.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: one column, the table scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(artifacts / "ui-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.browser
def test_the_unload_button_unloads_and_the_load_button_loads(page: Any, gw: GatewayProc) -> None:
    assert od(gw)["phase"] == "serving" and od(gw)["model"] == SHARDED
    page.click(f'button.unload[data-model="{SHARDED}"]')
    wait_until(lambda: od(gw)["phase"] == "idle", 30, "the unload to stop the coordinator")
    ps = httpx.get(f"{gw.url}/api/ps", headers=gw.headers, timeout=10).json()["models"]
    # nothing the gateway loaded is left; the pool member's llama-server keeps its one model for its whole life
    assert [m for m in ps if m["node"] != "m1"] == [], ps
    page.wait_for_selector("#model:has-text('no sharded model loaded')", timeout=10000)
    assert page.locator("button.unload").count() == 0
    page.select_option("#models", SHARDED)
    page.click("#load-btn")
    wait_until(lambda: od(gw)["phase"] == "serving", 120, "the load button to load the model")
    page.locator(".layerbar .seg").nth(1).wait_for(timeout=10000)
    page.wait_for_selector('#requests tr[data-route="shard"]:has-text("load")', timeout=10000)


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.browser
def test_a_killed_worker_turns_lost_on_the_page_within_3s(
    page: Any, gw: GatewayProc, local: Local, artifacts: Path
) -> None:
    endpoint = local.endpoints[0]
    node(page, endpoint).and_(page.locator('[data-state="serving"]')).wait_for(timeout=10000)
    os.kill(local.pids[0], signal.SIGKILL)  # an rpc-server this module started (conftest.local)
    node(page, endpoint).and_(page.locator('[data-state="lost"]')).wait_for(timeout=3000)
    page.screenshot(path=str(artifacts / "ui-lost.png"), full_page=True)
    assert KEY not in "\n".join(gw.log_lines())  # the key is never in the gateway's log
