"""`sollol-ops plan MODEL [--measure]` and `up` on the speed split, with real rpc-servers on loopback and the
SmolLM2 store.

The uneven cluster: three real rpc-servers, the last one deliberately slow (1 thread where the others have 2),
each offering 100 MiB, so that any two hold the model at -c 512 and one alone does not. On two shared cores the
measured figures are whatever they are, so the planner tests inject the slow server's figure (4x slower) into the
cache; a separate test checks that `--measure` really measures real rpc-servers and writes the cache."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import assert_clean_failure, run_cli
from hostile import HostilePeer
from ports import free_ports
from speedparts import worker

from sollol_ops import procs
from sollol_ops.cluster import rpc, speed_cache
from sollol_ops.cluster.link import LinkResult
from sollol_ops.cluster.local import LocalServer, RpcServerSpec, start_rpc_server, wait_ready
from sollol_ops.cluster.speed import ComputeSpeed, SpeedResult
from sollol_ops.cluster.toolchain import find_toolchain
from sollol_ops.serve import plan_report

MODEL = "smollm2:135m"
CTX = "512"
FAST = ComputeSpeed("Q4_1", ns_per_byte=0.2, node_us=8.0, dispatch_ms=0.05)
SLOW = ComputeSpeed("Q4_1", ns_per_byte=0.8, node_us=32.0, dispatch_ms=0.2)


def write_inventory(path: Path, endpoints: list[str], memory_mib: int = 100, **all_vars: str) -> str:
    lines = ["[rpc_servers]"]
    lines += [f"w{i} ansible_host=127.0.0.1 sollol_rpc_port={e.rsplit(':', 1)[1]} sollol_rpc_memory_mib={memory_mib}"
              for i, e in enumerate(endpoints)]  # fmt: skip
    lines += ["", "[coordinator]", "localhost ansible_connection=local", "", "[all:vars]"]
    lines += [f"{k}={v}" for k, v in all_vars.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def uneven(tmp_path: Path) -> Iterator[list[tuple[str, LocalServer]]]:
    """Three real rpc-servers on loopback: 2, 2 and 1 threads."""
    toolchain, servers = find_toolchain(), []
    try:
        for port, threads in zip(free_ports(3), (2, 2, 1), strict=True):
            spec = RpcServerSpec("127.0.0.1", port, threads, tmp_path / f"rpc-{port}.log")
            servers.append((f"127.0.0.1:{port}", start_rpc_server(toolchain, spec)))
        wait_ready([e for e, _ in servers], timeout=20)
        yield servers
    finally:
        for _, s in servers:
            procs.stop_process(s.pid, s.start_time, timeout=5, argv0=s.argv0)


def cache_path(env: dict[str, str]) -> Path:
    return Path(env["XDG_CACHE_HOME"]) / "sollol-ops" / speed_cache.CACHE_NAME


def inject(env: dict[str, str], endpoints: list[str], speeds: list[ComputeSpeed]) -> None:
    """The cache `plan --measure` would write, with these figures (each device's real total memory)."""
    cache = speed_cache.SpeedCache(cache_path(env))
    build = speed_cache.build_id(find_toolchain())
    for endpoint, result, speed in zip(endpoints, rpc.probe_all(endpoints), speeds, strict=True):
        total = result.devices[0].total
        cache.record_speed(build, SpeedResult(endpoint, 0, rpc.Status.READY, "done", speed=speed, device_total=total))
        cache.record_link(LinkResult(endpoint, rpc.Status.READY, "done", rtt_ms=0.05, throughput_bps=8e9))
    cache.save()


def plan_json(env: dict[str, str], inventory: str, *args: str) -> dict:
    proc = run_cli("-i", inventory, "plan", MODEL, "-c", CTX, "--json", *args, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.toolchain
@pytest.mark.model
def test_plan_leaves_the_slow_worker_out_and_says_why(
    uneven: list[tuple[str, LocalServer]], sollol_env: dict[str, str], tmp_path: Path
) -> None:
    endpoints = [e for e, _ in uneven]
    inventory = write_inventory(tmp_path / "inventory.ini", endpoints)
    before = plan_json(sollol_env, inventory)
    assert before["used"] == "memory" and len(before["unmeasured"]) == 3
    assert all(w["memory_layers"] > 0 and w["speed_layers"] is None for w in before["workers"])

    inject(sollol_env, endpoints, [FAST, FAST, SLOW])
    report = plan_json(sollol_env, inventory)
    slow = report["workers"][2]
    assert report["used"] == "speed" and report["unmeasured"] == []
    assert slow["memory_layers"] > 0 and slow["speed_layers"] == 0, report["workers"]
    assert slow["note"].startswith("left out: 4.0x slower than RPC"), slow
    assert report["left_out"] == [f"RPC2 ({endpoints[2]}) {slow['note']}"]
    assert report["speed_ms"] < report["memory_ms"]
    assert report["rpc"] == endpoints[:2] and sum(report["tensor_split"]) == 31

    text = run_cli("-i", inventory, "plan", MODEL, "-c", CTX, env=sollol_env, timeout=120)
    assert text.returncode == 0, text.stderr
    assert f"RPC2 ({endpoints[2]}) left out: 4.0x slower than RPC" in text.stdout
    assert "predicted: speed split" in text.stdout and "memory split" in text.stdout
    assert "up uses the speed split (sollol_placement=speed)" in text.stdout

    dry = run_cli("-i", inventory, "up", MODEL, "-c", CTX, "--dry-run", env=sollol_env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert f"--rpc {','.join(endpoints[:2])} --device RPC0,RPC1 --tensor-split" in dry.stdout
    assert "split by measured speed" in dry.stdout and "RPC2 left out: 4.0x slower" in dry.stdout

    by_memory = write_inventory(tmp_path / "memory.ini", endpoints, sollol_placement="memory")
    memory = plan_json(sollol_env, by_memory)
    assert memory["used"] == "memory" and memory["rpc"] == endpoints
    assert memory["speed_ms"] == report["speed_ms"]  # still shown, not used


@pytest.mark.toolchain
@pytest.mark.model
def test_up_serves_on_the_speed_split(
    uneven: list[tuple[str, LocalServer]], sollol_env: dict[str, str], tmp_path: Path
) -> None:
    """`up` starts llama-server on the two fast workers only, and the model answers."""
    endpoints = [e for e, _ in uneven]
    inventory = write_inventory(tmp_path / "inventory.ini", endpoints)
    inject(sollol_env, endpoints, [FAST, FAST, SLOW])
    port = str(free_ports(1)[0])
    try:
        up = run_cli("-i", inventory, "up", MODEL, "-c", CTX, "--port", port, "--json", env=sollol_env, timeout=300)
        assert up.returncode == 0, up.stderr
        outcome = json.loads(up.stdout)
        assert outcome["kind"] == "started"
        assert [r["endpoint"] for r in outcome["plan"]] == endpoints[:2], outcome["plan"]
        assert rpc.probe(endpoints[2]).status is rpc.Status.READY  # left out: not held by llama-server
        answer = run_cli("ask", "Say hi", "--max-tokens", "4", env=sollol_env, timeout=120)
        assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
    finally:
        run_cli("down", "--timeout", "5", env=sollol_env)


@pytest.mark.toolchain
@pytest.mark.model
def test_measure_measures_real_rpc_servers_and_writes_the_cache(
    uneven: list[tuple[str, LocalServer]], sollol_env: dict[str, str], tmp_path: Path
) -> None:
    endpoints = [e for e, _ in uneven]
    inventory = write_inventory(tmp_path / "inventory.ini", endpoints)
    report = plan_json(sollol_env, inventory, "--measure", "--measure-mib", "16")
    assert report["unmeasured"] == [] and len(report["measured"]) == 6, report["measured"]
    for w in report["workers"]:
        assert w["ms_per_gib"] > 0 and w["rtt_ms"] > 0 and w["mb_per_s"] > 0, w
        assert w["speed_layers"] is not None
    data = json.loads(cache_path(sollol_env).read_text())
    assert {k.split("|")[1] for k in data["compute"]} == set(endpoints)
    assert set(data["links"]) == set(endpoints)
    assert all(v["ggml_type"] == "Q4_1" and v["ns_per_byte"] > 0 for v in data["compute"].values())
    for endpoint, server in uneven:
        assert procs.is_alive(server.pid, server.start_time)
        assert rpc.probe(endpoint).status is rpc.Status.READY
    again = plan_json(sollol_env, inventory)  # read back from the cache, measured nothing
    assert again["measured"] == [] and again["unmeasured"] == []


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.parametrize("content", [b"\x00garbage{", b'{"format": 1, "compute": {"x": {"ns_per_byte": 1e999}}}'])
def test_a_hostile_cache_is_a_warning_and_a_memory_plan(
    uneven: list[tuple[str, LocalServer]], sollol_env: dict[str, str], tmp_path: Path, content: bytes
) -> None:
    endpoints = [e for e, _ in uneven]
    inventory = write_inventory(tmp_path / "inventory.ini", endpoints)
    cache_path(sollol_env).parent.mkdir(parents=True)
    cache_path(sollol_env).write_bytes(content)
    for args in (("plan", MODEL, "-c", CTX), ("up", MODEL, "-c", CTX, "--dry-run")):
        proc = run_cli("-i", inventory, *args, env=sollol_env, timeout=120)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sollol-ops: warning: ignoring the speed cache"), lines
    assert "not measured: RPC0" in proc.stdout or "no speed measured for RPC0" in proc.stdout


@pytest.mark.toolchain
@pytest.mark.model
def test_a_worker_answering_garbage_during_measurement_is_one_line(
    uneven: list[tuple[str, LocalServer]], sollol_env: dict[str, str], tmp_path: Path
) -> None:
    """A peer that passes the probe (HELLO, devices, memory) but answers ALLOC_BUFFER with garbage: `plan --measure`
    fails in one line naming it, in bounded time, and caches what the real workers measured."""
    with HostilePeer(worker("alloc_garbage")) as peer:
        inventory = write_inventory(tmp_path / "inventory.ini", [uneven[0][0], peer.endpoint])
        t0 = time.monotonic()
        proc = run_cli("-i", inventory, "plan", MODEL, "-c", CTX, "--measure", env=sollol_env, timeout=120)
        elapsed = time.monotonic() - t0
    err = assert_clean_failure(proc, "measuring failed: RPC1", peer.endpoint, "malformed reply")
    assert proc.returncode == 6, err
    assert elapsed < 60, f"took {elapsed:.0f}s"
    assert uneven[0][0] in cache_path(sollol_env).read_text()


def _temporary_rpc_servers() -> set[int]:
    """Pids of rpc-servers on the ports plan_report searches for the coordinator's temporary one."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = procs.cmdline(int(entry.name))
        if argv and Path(argv[0]).name in ("ggml-rpc-server", "rpc-server") and "-p" in argv:
            port = argv[argv.index("-p") + 1] if argv.index("-p") + 1 < len(argv) else ""
            if port.isdigit() and 0 <= int(port) - plan_report.COORDINATOR_PORT_SEARCH < 100:
                found.add(int(entry.name))
    return found


@pytest.mark.toolchain
@pytest.mark.model
def test_measure_measures_the_coordinators_own_device(
    uneven: list[tuple[str, LocalServer]], sollol_env: dict[str, str], tmp_path: Path
) -> None:
    """With the coordinator offering its CPU, `--measure` measures it through a temporary rpc-server, stopped after."""
    endpoints = [e for e, _ in uneven]
    inventory = write_inventory(tmp_path / "inventory.ini", endpoints[:2])
    before = _temporary_rpc_servers()
    report = plan_json(sollol_env, inventory, "--measure", "--measure-mib", "8", "--coordinator-memory", "80")
    assert [w["slot"] for w in report["workers"]] == ["CPU", "RPC0", "RPC1"]
    assert report["unmeasured"] == [] and report["workers"][0]["ms_per_gib"] > 0
    assert any(m.startswith("coordinator CPU compute") for m in report["measured"]), report["measured"]
    assert "|coordinator:CPU|0|Q4_1" in cache_path(sollol_env).read_text()
    assert _temporary_rpc_servers() <= before
