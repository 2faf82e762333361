"""The coordinator as a device: its CPU (or GPU) takes layers next to the rpc-servers.

The placement's prediction is checked against what a real llama-server did (its `-lv 4` log, parsed into
the distribution) for several splits, with real rpc-servers and the real SmolLM2 model; the rule, the
fit checks, the inventory variables and the parsing of `--list-devices` are unit-tested below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Local, assert_clean_failure, run_cli
from placementparts import GIB, model_info, refusal
from ports import free_port

from sollol_ops.cluster import rpc
from sollol_ops.cluster.inventory import Backend, Cluster, Coordinator, cluster_from_inventory_data
from sollol_ops.cluster.placement import MIB, LocalDevice, build_slots, layer_counts, plan_placement
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import InventoryError, PlacementError
from sollol_ops.serve.command import StartOptions, command, parse_list_devices
from sollol_ops.serve.server_log import parse_distribution


def _probe(free: int, endpoint: str) -> rpc.ProbeResult:
    return rpc.ProbeResult(endpoint, rpc.Status.READY, "7.0.0", [rpc.DeviceMemory(0, free, free)])


def _remote(name: str, address: str, memory_mib: int) -> tuple[Backend, rpc.ProbeResult]:
    return Backend(name, address, 50052, memory_mib=memory_mib), _probe(8 * GIB, f"{address}:50052")


TOOLCHAIN = Toolchain(Path("/opt/x/bin/ggml-rpc-server"), Path("/opt/x/bin/llama-server"), None)


# --------------------------------------------------------------------------- the rule, as llama.cpp applies it


def test_cpu_keeps_the_leading_layers_and_devices_split_the_rest() -> None:
    """-ngl N leaves the first n+1-N layers on the CPU; llama.cpp splits the N others by -ts alone."""
    cpu = Coordinator("c", "127.0.0.1", memory_mib=1000)
    slots = build_slots([_remote("w", "10.0.0.1", 1000)], coordinator=cpu, local_available=8 * GIB)
    assert [s.name for s in slots] == ["CPU", "RPC0"] and slots[0].on_host
    assert layer_counts(slots, [0.5, 0.5], 30) == [16, 15]
    # three slots: the CPU's share picks how many it keeps, the devices' own -ts splits the other 19
    slots3 = build_slots(
        [_remote("a", "10.0.0.1", 1000), _remote("b", "10.0.0.2", 1000)], coordinator=cpu, local_available=8 * GIB
    )
    assert layer_counts(slots3, [0.4, 0.2, 0.4], 30) == [13, 6, 12]


def test_plan_with_the_coordinator_cpu_builds_ngl_and_leaves_it_out_of_device() -> None:
    cpu = Coordinator("c", "127.0.0.1", memory_mib=1000)
    slots = build_slots([_remote("w", "10.0.0.1", 1000)], coordinator=cpu, local_available=8 * GIB)
    plan = plan_placement(model_info(), slots, n_ctx=1024)
    assert plan.tensor_split == [0.5] and plan.devices == ["RPC0"]
    assert plan.host_layers == 16 and plan.n_gpu_layers == 15
    host, worker = plan.shares
    assert (host.layers, host.has_output, worker.layers, worker.has_output) == (16, False, 14, True)
    assert host.weight_bytes == (16 * 2 + 28) * MIB  # its layers and the input embeddings
    argv = command(TOOLCHAIN, Path("/m"), StartOptions(port=9000, threads=2), plan)
    assert argv[argv.index("--device") + 1] == "RPC0" and argv[argv.index("--tensor-split") + 1] == "0.5"
    assert argv[argv.index("--n-gpu-layers") + 1] == "15" and argv[argv.index("--rpc") + 1] == "10.0.0.1:50052"


def test_off_leaves_the_command_line_byte_for_byte_as_before() -> None:
    """No offer, or an offer of 0 MiB: the exact argv sollol-ops built before the coordinator could be a device."""
    probes = [_remote("a", "10.0.0.1", 1000), _remote("b", "10.0.0.2", 3000)]
    expected = [
        "/opt/x/bin/llama-server", "--model", "/m", "--rpc", "10.0.0.1:50052,10.0.0.2:50052",
        "--device", "RPC0,RPC1", "--tensor-split", "0.25,0.75", "--n-gpu-layers", "999", "--fit", "off",
        "--ctx-size", "1024", "--parallel", "1", "--threads", "2", "--host", "127.0.0.1", "--port", "9000",
        "--metrics", "-lv", "4",
    ]  # fmt: skip
    for offer in (None, Coordinator("c", "127.0.0.1", memory_mib=0), Coordinator("c", "127.0.0.1", 0, "CUDA0")):
        plan = plan_placement(model_info(), build_slots(probes, coordinator=offer), n_ctx=1024)
        assert plan.n_gpu_layers is None
        assert command(TOOLCHAIN, Path("/m"), StartOptions(port=9000, n_ctx=1024, threads=2), plan) == expected


# A line as llama.cpp prints it (common_print_available_devices in common/arg.cpp of the pinned source:
# "  %s: %s (%zu MiB, %zu MiB free)"); this machine has no GPU, so the text is built from that format.
GPU_LIST = """\
Available devices:
  CUDA0: NVIDIA GeForce RTX 3090 (24135 MiB, 23695 MiB free)
  CUDA1: NVIDIA GeForce RTX 3060 (12044 MiB, 11811 MiB free)
"""


def test_list_devices_parsing() -> None:
    devices = parse_list_devices(GPU_LIST)
    assert devices == [
        LocalDevice("CUDA0", "NVIDIA GeForce RTX 3090", 24135 * MIB, 23695 * MIB),
        LocalDevice("CUDA1", "NVIDIA GeForce RTX 3060", 12044 * MIB, 11811 * MIB),
    ]
    assert parse_list_devices("Available devices:\n  (none)\n") == []


def test_a_coordinator_gpu_is_one_more_device_first_in_the_list() -> None:
    devices = parse_list_devices(GPU_LIST)
    greedy = Coordinator("c", "127.0.0.1", memory_mib=100_000, device="CUDA1")
    slot = build_slots([_remote("w", "10.0.0.1", 8000)], coordinator=greedy, local_devices=devices)[0]
    # bounded by what the device has free, less 5%, like an rpc-server's GPU
    assert slot.name == "CUDA1" and slot.usable_bytes == int(11811 * MIB * 0.95) and slot.source == "device free - 5%"
    gpu = Coordinator("c", "127.0.0.1", memory_mib=8000, device="CUDA1")
    slots = build_slots([_remote("w", "10.0.0.1", 8000)], coordinator=gpu, local_devices=devices)
    plan = plan_placement(model_info(), slots, n_ctx=1024)
    assert plan.devices == ["CUDA1", "RPC0"] and plan.tensor_split == [0.5, 0.5] and plan.n_gpu_layers is None
    assert plan.rpc_endpoints == ["10.0.0.1:50052"]
    assert [s.layers for s in plan.shares] == [16, 14] and plan.shares[1].has_output
    assert plan.shares[0].weight_bytes == 16 * 2 * MIB  # the input embeddings stay in host memory, not on the GPU
    argv = command(TOOLCHAIN, Path("/m"), StartOptions(port=9000, threads=2), plan)
    assert argv[argv.index("--device") + 1] == "CUDA1,RPC0" and argv[argv.index("--n-gpu-layers") + 1] == "999"


def test_a_coordinator_device_llama_server_does_not_list_is_refused() -> None:
    gpu = Coordinator("c", "127.0.0.1", memory_mib=1000, device="CUDA0")
    with pytest.raises(PlacementError, match=r"CUDA0 is not one llama-server lists here \(--list-devices: none\)"):
        build_slots([_remote("w", "10.0.0.1", 1000)], coordinator=gpu, local_devices=[])


def test_coordinator_cpu_is_bounded_by_memavailable_and_local_workers_share_the_rest() -> None:
    cpu = Coordinator("c", "127.0.0.1", memory_mib=6 * 1024)
    local = Backend("l", "127.0.0.1", 50052)
    slots = build_slots([(local, _probe(24 * GIB, "127.0.0.1:50052"))], coordinator=cpu, local_available=8 * GIB)
    assert slots[0].usable_bytes == 6 * GIB and slots[0].source == "sollol_coordinator_memory_mib"
    assert slots[1].usable_bytes == 2 * GIB and "coordinator" in slots[1].source
    greedy = Coordinator("c", "127.0.0.1", memory_mib=64 * 1024)
    slot = build_slots([(local, _probe(24 * GIB, "127.0.0.1:50052"))], coordinator=greedy, local_available=8 * GIB)[0]
    assert slot.usable_bytes == 8 * GIB and slot.source == "MemAvailable (this host)"


def test_refusal_names_the_coordinator_like_a_backend() -> None:
    cpu = Coordinator("c", "127.0.0.1", memory_mib=40)
    slots = build_slots([_remote("w", "10.0.0.1", 40)], coordinator=cpu, local_available=8 * GIB)
    text = refusal(slots, n_ctx=1024)
    assert "big:1b does not fit" in text and "coordinator CPU needs" in text and "10.0.0.1:50052 needs" in text
    assert "sollol_coordinator_memory_mib" in text and "backends offer 80 MiB" in text


def test_distribution_names_the_coordinators_rows_and_counts_their_layers() -> None:
    log = (
        "load_tensors: offloaded 20/31 layers to GPU\n"
        "load_tensors:   CPU_Mapped model buffer size =    92.10 MiB\n"
        "load_tensors: RPC0[127.0.0.1:47825] model buffer size =    21.14 MiB\n"
        "llama_kv_cache:        CPU KV buffer size =     8.25 MiB\n"
        "llama_kv_cache: RPC0[127.0.0.1:47825] KV buffer size =     7.50 MiB\n"
        "load_tensors:    CUDA_Host model buffer size =    10.00 MiB\n"
        "load_tensors:        CUDA0 model buffer size =    40.00 MiB\n"
        "llama_kv_cache:      CUDA0 KV buffer size =     3.00 MiB\n"
    )
    dist = parse_distribution(log, kv_per_layer=int(0.75 * MIB))
    rows = {d.name: d for d in dist.devices}
    assert rows["coordinator CPU"].layers == 11 and rows["coordinator CPU"].model_mib == pytest.approx(102.10)
    assert rows["coordinator CUDA0"].layers == 4 and rows["127.0.0.1:47825"].layers == 10
    assert dist.offloaded == (20, 31)


# --------------------------------------------------------------------------- inventory variables


def _data(coord_vars: dict[str, object], hosts: int = 1) -> dict[str, object]:
    coords = [f"coord{i}" for i in range(hosts)]
    return {
        "all": {"children": ["rpc_servers", "coordinator"]},
        "rpc_servers": {"hosts": ["w1"]},
        "coordinator": {"hosts": coords},
        "_meta": {"hostvars": {"w1": {"ansible_host": "10.0.0.1"}, **{c: dict(coord_vars) for c in coords}}},
    }


def _offer(cluster: Cluster, here: str | None = None) -> Coordinator | None:
    return cluster.offering_coordinator(lambda address: address == here)


def test_inventory_variables_of_the_coordinator_host() -> None:
    cluster = cluster_from_inventory_data(_data({"ansible_host": "10.0.0.9"}), Path("i"))
    assert cluster.coordinators == [Coordinator("coord0", "10.0.0.9")] and _offer(cluster) is None
    data = _data({"ansible_host": "10.0.0.9", "sollol_coordinator_memory_mib": "2048"})
    offer = _offer(cluster_from_inventory_data(data, Path("i")))
    assert offer == Coordinator("coord0", "10.0.0.9", 2048, "CPU")
    data = _data(
        {"ansible_host": "10.0.0.9", "sollol_coordinator_memory_mib": 8000, "sollol_coordinator_device": "CUDA0"}
    )
    assert _offer(cluster_from_inventory_data(data, Path("i"))) == Coordinator("coord0", "10.0.0.9", 8000, "CUDA0")


def test_several_offering_coordinators_pick_this_machine_or_refuse() -> None:
    data = _data({"sollol_coordinator_memory_mib": 1024}, hosts=2)
    data["_meta"]["hostvars"]["coord1"]["ansible_host"] = "10.0.0.8"  # type: ignore[index]
    cluster = cluster_from_inventory_data(data, Path("i"))
    assert _offer(cluster, here="10.0.0.8") == Coordinator("coord1", "10.0.0.8", 1024)
    with pytest.raises(InventoryError, match="cannot tell which one is this machine"):
        _offer(cluster, here="10.9.9.9")
    data["_meta"]["hostvars"]["coord0"]["ansible_connection"] = "local"  # type: ignore[index]
    assert _offer(cluster_from_inventory_data(data, Path("i")), here="10.9.9.9").host == "coord0"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"sollol_coordinator_memory_mib": "lots"}, "host coord0: sollol_coordinator_memory_mib must be an integer"),
        ({"sollol_coordinator_memory_mib": -1}, "sollol_coordinator_memory_mib=-1 is out of range"),
        ({"sollol_coordinator_device": "CUDA 0"}, "sollol_coordinator_device must be a device name like CPU or CUDA0"),
        ({"sollol_coordinator_device": "{{ dev }}"}, "sollol_coordinator_device must be a device name"),
    ],
)
def test_bad_coordinator_variables_are_inventory_errors(variables: dict[str, object], message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        cluster_from_inventory_data(_data(variables), Path("i"))


# --------------------------------------------------------------------------- real llama-server, real rpc-servers


def _inventory(path: Path, endpoints: list[str], memory: list[int], coordinator_vars: str = "") -> str:
    lines = ["[rpc_servers]"]
    for i, (endpoint, mib) in enumerate(zip(endpoints, memory, strict=True)):
        host, port = endpoint.rsplit(":", 1)
        lines.append(f"w{i} ansible_host={host} sollol_rpc_port={port} sollol_rpc_memory_mib={mib}")
    lines += ["", "[coordinator]", f"localhost ansible_connection=local {coordinator_vars}".rstrip(), ""]
    path.write_text("\n".join(lines))
    return str(path)


def _check_prediction(out: dict) -> dict[str, int]:
    """Every device's predicted layers (the plan) equal what llama.cpp did (its -lv 4 log); returns them."""
    predicted = {p["endpoint"]: p["layers"] for p in out["plan"]}
    observed = {d["name"]: d["layers"] for d in out["distribution"]["devices"] if d["layers"] is not None}
    assert predicted == observed, (predicted, observed, out["command"])
    total = sum(predicted.values())
    assert total == 30
    host = next(p for p in out["plan"] if p["device"] == "CPU")
    ngl = int(out["command"][out["command"].index("--n-gpu-layers") + 1])
    assert ngl == 31 - host["layers"]
    assert out["distribution"]["offloaded"] == [ngl, 31]
    # the weights too: an rpc-server's model buffer is the plan's weights (llama.cpp pads each tensor a little).
    # The CPU's is the mapped span of the file from its first tensor to its last (CPU_Mapped, mmap): the GGUF
    # orders blocks as blk.0, blk.1, blk.10, ..., so that span holds the weights predicted and usually more.
    buffers = {d["name"]: d["model_mib"] for d in out["distribution"]["devices"]}
    for p in out["plan"]:
        if p["device"] == "CPU":
            assert buffers[p["endpoint"]] >= p["weights_mib"] - 0.5, (p, buffers)
        else:
            assert abs(buffers[p["endpoint"]] - p["weights_mib"]) < 0.5, (p, buffers)
    return predicted


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "memory", "coordinator", "via"),
    [
        (1, [400], 400, "inventory"),  # coordinator + 1 worker, equal: 16 layers on the CPU
        (2, [300, 900], 600, "option"),  # coordinator + 2 workers, unequal memory
        (2, [500, 500], 250, "inventory"),  # a small CPU share
    ],
)
def test_placement_with_the_coordinator_cpu_predicts_llama_cpp(
    local2: Local, tmp_path: Path, workers: int, memory: list[int], coordinator: int, via: str
) -> None:
    endpoints = local2.endpoints[:workers]
    extra = f"sollol_coordinator_memory_mib={coordinator}" if via == "inventory" else ""
    inv = _inventory(tmp_path / "inv.ini", endpoints, memory, extra)
    port = free_port()
    args = ["-i", inv, "up", "smollm2:135m", "--port", str(port), "-c", "1024", "--json"]
    if via == "option":
        args += ["--coordinator-memory", str(coordinator)]
    proc = run_cli(*args, env=local2.env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["kind"] == "started"
    predicted = _check_prediction(out)
    assert predicted["coordinator CPU"] > 0 and all(predicted[e] > 0 for e in endpoints)
    assert out["command"][out["command"].index("--device") + 1] == ",".join(f"RPC{i}" for i in range(workers))

    answer = run_cli("ask", "Name a colour.", "--max-tokens", "12", env=local2.env)
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
    status = json.loads(run_cli("-i", inv, "status", "--json", env=local2.env).stdout)
    rows = {d["name"]: d["layers"] for d in status["coordinator"]["distribution"]["devices"]}
    assert rows["coordinator CPU"] == predicted["coordinator CPU"]
    table = run_cli("-i", inv, "status", env=local2.env).stdout
    assert "coordinator CPU" in table
    assert run_cli("down", env=local2.env).returncode == 0


@pytest.mark.toolchain
@pytest.mark.model
def test_up_refuses_an_offer_that_does_not_fit(local2: Local, tmp_path: Path) -> None:
    inv = _inventory(tmp_path / "inv.ini", local2.endpoints[:1], [300], "sollol_coordinator_memory_mib=20")
    proc = run_cli("-i", inv, "up", "smollm2:135m", "--port", str(free_port()), "-c", "1024", env=local2.env)
    assert_clean_failure(proc, "does not fit", "coordinator CPU needs", "sollol_coordinator_memory_mib")
    assert proc.returncode == PlacementError.exit_code


@pytest.mark.toolchain
@pytest.mark.model
def test_doctor_memory_check_counts_the_coordinator(local2: Local, tmp_path: Path) -> None:
    """doctor's memory check plans as `up` does: with the coordinator's offer, and its refusal."""
    for offer, status, needle in ((400, "ok", "fits at -c 1024"), (20, "fail", "coordinator CPU needs")):
        inv = _inventory(
            tmp_path / f"d{offer}.ini", local2.endpoints[:1], [300], f"sollol_coordinator_memory_mib={offer}"
        )
        proc = run_cli("-i", inv, "doctor", "smollm2:135m", "-c", "1024", "--no-hosts", "--json", env=local2.env)
        memory = next(c for c in json.loads(proc.stdout)["checks"] if c["check"] == "memory")
        assert memory["status"] == status and needle in memory["detail"], memory
    assert (
        "of 700 MiB usable"
        in run_cli(
            "-i", str(tmp_path / "d400.ini"), "doctor", "smollm2:135m", "-c", "1024", "--no-hosts", env=local2.env
        ).stdout
    )


@pytest.mark.toolchain
@pytest.mark.model
def test_up_off_by_default_and_with_zero(local2: Local, tmp_path: Path) -> None:
    """The variable unset, set to 0, or --coordinator-memory 0: the same command, every layer on the workers."""
    port = str(free_port())
    commands = []
    for extra, option in (
        ("", []),
        ("sollol_coordinator_memory_mib=0", []),
        ("sollol_coordinator_memory_mib=500", ["--coordinator-memory", "0"]),
    ):
        inv = _inventory(tmp_path / f"inv{len(commands)}.ini", local2.endpoints, [400, 400], extra)
        proc = run_cli("-i", inv, "up", "smollm2:135m", "--port", port, "--dry-run", "--json", *option, env=local2.env)
        assert proc.returncode == 0, proc.stderr
        commands.append(json.loads(proc.stdout)["command"])
    assert commands[0] == commands[1] == commands[2]
    assert commands[0][commands[0].index("--n-gpu-layers") + 1] == "999"
    assert commands[0][commands[0].index("--device") + 1] == "RPC0,RPC1"
    bad = run_cli("-i", inv, "up", "smollm2:135m", "--coordinator-device", "CUDA 0", "--dry-run", env=local2.env)
    assert_clean_failure(bad, "--coordinator-device must be a device name")
    gpu = run_cli(
        "-i", inv, "up", "smollm2:135m", "--coordinator-memory", "100", "--coordinator-device", "CUDA0", "--dry-run",
        env=local2.env,
    )  # fmt: skip
    assert_clean_failure(gpu, "CUDA0 is not one llama-server lists here (--list-devices: none)")
    assert gpu.returncode == PlacementError.exit_code
    unset = str(tmp_path / "inv0.ini")  # the inventory offers nothing: a device alone is refused
    alone = run_cli("-i", unset, "up", "smollm2:135m", "--coordinator-device", "CUDA0", "--dry-run", env=local2.env)
    assert_clean_failure(alone, "--coordinator-device CUDA0 without memory to offer", "--coordinator-memory")


# llama.cpp computes the split points in single precision. For 19 layers and -ts 0.5785,0.2715,0.15 the
# second cumulative point is 0.85 = 17/20 in double precision (layer 17 would go to the third device) but
# lies just below it in single precision, where layer 17 goes to the second one: [12, 5, 3], not [12, 6, 2].
BOUNDARY = ([0.5785, 0.2715, 0.15], 19, [12, 5, 3])


def test_assign_layers_in_single_precision_at_a_boundary() -> None:
    from sollol_ops.cluster.placement import assign_layers

    splits, n_layer, expected = BOUNDARY
    assert assign_layers(splits, n_layer) == expected


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.slow
def test_boundary_split_matches_a_real_llama_server(
    local3: Local, tmp_path: Path, smollm2_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case above on a real llama-server over 3 real rpc-servers (a tiny synthetic 19-layer model)."""
    from sollol_ops import procs
    from sollol_ops.cluster.placement import Plan, _shares
    from sollol_ops.cluster.toolchain import find_toolchain
    from sollol_ops.dev.synthetic import parse_synthetic, synthetic_store
    from sollol_ops.model.gguf_info import read_gguf
    from sollol_ops.model.ollama import resolve_model
    from sollol_ops.serve.server_http import base_url, wait_ready

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    splits, n_layer, expected = BOUNDARY
    spec = parse_synthetic(f"synthetic:{n_layer}x64")
    assert spec is not None
    synthetic_store([spec], tmp_path / "store", resolve_model("smollm2:135m", str(smollm2_store)).blob)
    blob = resolve_model(spec.ref, str(tmp_path / "store")).blob
    info = read_gguf(blob)
    hosts = [e.rsplit(":", 1) for e in local3.endpoints]
    probes = [(Backend(f"w{i}", h, int(p), memory_mib=1000), _probe(GIB, f"{h}:{p}")) for i, (h, p) in enumerate(hosts)]
    kv_per_layer = info.kv_cache_bytes(2048) // n_layer
    plan = Plan(_shares(info, build_slots(probes), splits, 2048), 2048, n_layer, info.token_embd_bytes, kv_per_layer)
    assert [s.layers + s.has_output for s in plan.shares] == expected
    port = free_port()
    argv = command(find_toolchain(), blob, StartOptions(port=port, n_ctx=2048, threads=1), plan)
    log = tmp_path / "server.log"
    pid = procs.spawn_detached(argv, log)
    start = procs.process_start_time(pid)
    try:
        wait_ready(base_url("127.0.0.1", port), lambda: procs.is_alive(pid), log, timeout=120)
        dist = parse_distribution(log.read_text(), plan.kv_per_layer)
    finally:
        procs.stop_process(pid, start, timeout=10)
    observed = {d.name: d.layers for d in dist.rpc()}
    assert observed == {e: s.layers for e, s in zip(local3.endpoints, plan.shares, strict=True)}, observed
