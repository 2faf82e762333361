"""Speculative decoding for a sharded model (issue 18): `up --draft MODEL|ngram|none` and the inventory's
sollol_draft_models. With real rpc-servers, a real llama-server and the real SmolLM2 model (its own draft:
acceptance is then ~100%, which is what a correctness test wants), the greedy answer with a draft is the
answer without one; a draft of another vocabulary is refused before anything starts, one that does not fit
the coordinator with the numbers. The choice, the sizing, the command line and the inventory variable are
unit-tested below."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures_gguf import tokens_of, write_vocab_gguf
from helpers import Local, assert_clean_failure, run_cli
from placementparts import GIB, model_info
from ports import free_port

from sollol_ops.cluster import rpc
from sollol_ops.cluster.inventory import Backend, Coordinator, cluster_from_inventory_data, load_cluster
from sollol_ops.cluster.placement import MIB, build_slots, plan_placement
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.dev.devstore import CHATML_TEMPLATE, SMOLLM2_PARAMS, write_store
from sollol_ops.errors import InventoryError, PlacementError, UsageError
from sollol_ops.model.ollama import resolve_model
from sollol_ops.serve import server_http, statefile
from sollol_ops.serve.command import StartOptions, check_extra_args, command
from sollol_ops.serve.coordinator import CoordinatorState
from sollol_ops.serve.draft import Draft, DraftMode, choose, fit, host_room, same_choice
from sollol_ops.serve.server_log import parse_distribution

MODEL = "smollm2:135m"
TOOLCHAIN = Toolchain(Path("/opt/x/bin/ggml-rpc-server"), Path("/opt/x/bin/llama-server"), None)
DRAFT = Draft(
    DraftMode.MODEL, "small:1b", Path("/d.gguf"), "sha256:d", weight_bytes=90 * MIB, kv_bytes=20 * MIB,
    compute_bytes=40 * MIB,
)  # fmt: skip


def _probe(free: int, endpoint: str) -> rpc.ProbeResult:
    return rpc.ProbeResult(endpoint, rpc.Status.READY, "7.0.0", [rpc.DeviceMemory(0, free, free)])


def _workers(*memory_mib: int) -> list[tuple[Backend, rpc.ProbeResult]]:
    return [
        (Backend(f"w{i}", f"10.0.0.{i + 1}", 50052, memory_mib=m), _probe(8 * GIB, f"10.0.0.{i + 1}:50052"))
        for i, m in enumerate(memory_mib)
    ]


# --------------------------------------------------------------------------- which draft, and its flags


def test_the_option_wins_over_the_inventory_and_names_are_canonical() -> None:
    drafts = {"big:7b": "small:1b", "other:latest": "ngram"}
    assert choose(None, drafts, "big:7b") == ("small:1b", "sollol_draft_models")
    assert choose(None, drafts, "other:latest") == ("ngram", "sollol_draft_models")
    assert choose(None, drafts, "third:1b") == ("none", "sollol_draft_models")
    assert choose("none", drafts, "big:7b") == ("none", "--draft")
    assert choose("library/tiny", drafts, "big:7b") == ("tiny:latest", "--draft")
    with pytest.raises(UsageError, match="--draft: bad model name 'a b'"):
        choose("a b", drafts, "big:7b")
    assert same_choice(None, "none") and not same_choice(None, "ngram")
    assert same_choice(DRAFT.state(), "small:1b") and not same_choice(DRAFT.state(), "none")


def test_the_command_line_of_each_kind_of_draft() -> None:
    probes = _workers(1000, 1000)
    plan = plan_placement(model_info(), build_slots(probes), n_ctx=1024)
    opts = StartOptions(port=9000, n_ctx=1024)
    plain = command(TOOLCHAIN, Path("/m"), opts, plan)
    assert command(TOOLCHAIN, Path("/m"), opts, plan, draft=Draft()) == plain
    assert command(TOOLCHAIN, Path("/m"), opts, plan, draft=Draft(DraftMode.NGRAM)) == [
        *plain, "--spec-type", "ngram-simple"
    ]  # fmt: skip
    cpu = command(TOOLCHAIN, Path("/m"), StartOptions(port=9000, threads=3), plan, draft=DRAFT)
    assert cpu[cpu.index("-lv") + 2 :] == [
        "--spec-type", "draft-simple", "--model-draft", "/d.gguf", "--spec-draft-n-max", "16",
        "--device-draft", "none", "--spec-draft-threads", "3",
    ]  # fmt: skip
    gpu = Draft(DraftMode.MODEL, "small:1b", Path("/d.gguf"), device="CUDA0")
    argv = command(TOOLCHAIN, Path("/m"), opts, plan, draft=gpu)
    assert argv[-4:] == ["--device-draft", "CUDA0", "--gpu-layers-draft", "999"]
    assert "--spec-draft-threads" not in argv


@pytest.mark.parametrize(
    "arg", ["-md", "--model-draft=/x.gguf", "--spec-type", "-devd", "--device-draft", "-ngld", "--spec-draft-hf"]
)
def test_server_args_that_set_the_draft_are_refused(arg: str) -> None:
    with pytest.raises(UsageError, match="use --draft instead"):
        check_extra_args([arg])


def test_the_draft_is_recorded_in_the_state_file_and_read_back(tmp_path: Path) -> None:
    state = CoordinatorState(
        pid=123, start_time=1, host="127.0.0.1", port=9000, model="big:7b", digest="sha256:t", blob="/t",
        backends=["10.0.0.1:50052"], command=["llama-server"], started_at=0.0, log="/l", n_ctx=1024,
        kv_per_layer=1, draft=DRAFT.state(),
    )  # fmt: skip
    path = tmp_path / "coordinator.json"
    statefile.write(path, state, "coordinator state")
    back = statefile.load(path, CoordinatorState, "coordinator state")
    assert back == state and back.draft is not None
    assert (back.draft.model, back.draft.device, back.draft.need_mib, back.draft.source) == (
        "small:1b",
        "CPU",
        150.0,
        "--draft",
    )
    data = json.loads(path.read_text())
    data["draft"] = {"mode": 7}
    path.write_text(json.dumps(data))
    warned: list[str] = []
    assert statefile.load(path, CoordinatorState, "coordinator state", warned.append) is None and warned


# --------------------------------------------------------------------------- its memory on the coordinator


def test_the_draft_is_taken_out_of_the_coordinators_offer() -> None:
    cpu = Coordinator("c", "127.0.0.1", memory_mib=400)
    slots = build_slots(_workers(1000), coordinator=cpu, local_available=8 * GIB)
    fitted, notes = fit(DRAFT, slots, model_info())
    assert fitted[0].usable_bytes == 250 * MIB and fitted[0].source == "sollol_coordinator_memory_mib - draft"
    assert fitted[1:] == slots[1:] and notes == ["the draft small:1b takes 150 MiB of the coordinator's CPU"]
    # what is left cannot hold one layer of the target with its compute buffer: the coordinator takes none
    small = build_slots(_workers(1000), coordinator=Coordinator("c", "127.0.0.1", 160), local_available=8 * GIB)
    fitted, notes = fit(DRAFT, small, model_info())
    assert [s.name for s in fitted] == ["RPC0"] and notes[0].endswith("no target layers there")
    assert fit(Draft(DraftMode.NGRAM), slots, model_info()) == (slots, [])


def test_a_draft_over_the_offer_is_refused_with_the_numbers() -> None:
    slots = build_slots(_workers(1000), coordinator=Coordinator("c", "127.0.0.1", 100), local_available=8 * GIB)
    with pytest.raises(PlacementError) as err:
        fit(DRAFT, slots, model_info())
    assert str(err.value) == (
        "draft small:1b does not fit the coordinator: it needs 150 MiB (weights 90 + KV cache 20 + compute 40), "
        "its CPU (sollol_coordinator_memory_mib) offers 100 MiB; raise --coordinator-memory / "
        "sollol_coordinator_memory_mib, lower --ctx-size, or use --draft ngram"
    )


def test_without_an_offer_the_draft_takes_the_hosts_memory_first() -> None:
    assert host_room(DRAFT, None, available=1000 * MIB) == 850 * MIB
    assert host_room(DRAFT, Coordinator("c", "127.0.0.1", 500), available=1000 * MIB) is None  # inside the offer
    assert host_room(Draft(DraftMode.NGRAM), None, available=0) is None
    with pytest.raises(PlacementError, match=r"needs 150 MiB .*this host \(MemAvailable; the coordinator offers no"):
        host_room(DRAFT, None, available=100 * MIB)


def test_the_drafts_buffers_in_the_log_are_its_own_row() -> None:
    log = "\n".join(
        [
            "load_tensors: offloaded 31/31 layers to GPU",
            "load_tensors:   CPU_Mapped model buffer size =    28.69 MiB",
            "load_tensors: RPC0[127.0.0.1:29911] model buffer size =    33.82 MiB",
            "llama_kv_cache: RPC0[127.0.0.1:29911] KV buffer size =    12.00 MiB",
            "sched_reserve:        CPU compute buffer size =     9.67 MiB",
            "common_speculative_init_result: loading draft model '/d.gguf'",
            "load_tensors: offloaded 0/31 layers to GPU",
            "load_tensors:   CPU_Mapped model buffer size =    92.10 MiB",
            "llama_kv_cache:        CPU KV buffer size =    22.50 MiB",
            "sched_reserve:        CPU compute buffer size =    14.51 MiB",
        ]
    )
    dist = parse_distribution(log, kv_per_layer=int(0.75 * MIB))
    coordinator = next(d for d in dist.devices if d.name == "coordinator CPU")
    assert (coordinator.model_mib, coordinator.kv_mib, coordinator.layers) == (28.69, 0.0, None)
    assert dist.offloaded == (31, 31) and dist.rpc()[0].layers == 16
    assert dist.draft is not None and (dist.draft.model_mib, dist.draft.kv_mib, dist.draft.compute_mib) == (
        92.10, 22.50, 14.51
    )  # fmt: skip


# --------------------------------------------------------------------------- sollol_draft_models


def _data(drafts: Any) -> dict[str, Any]:
    return {
        "rpc_servers": {"hosts": ["w1"]},
        "_meta": {"hostvars": {"w1": {"ansible_host": "10.0.0.1", "sollol_draft_models": drafts}}},
    }


def test_the_inventorys_drafts_are_read_with_canonical_names() -> None:
    cluster = cluster_from_inventory_data(_data({"codellama:13b": "codellama:7b", "qwen": "ngram"}), Path("i"))
    assert cluster.draft_models == {"codellama:13b": "codellama:7b", "qwen:latest": "ngram"}
    js = '{"library/big:7b": "small", "x:1": "none"}'  # a JSON object in a string (a quoted YAML value)
    assert cluster_from_inventory_data(_data(js), Path("i")).draft_models == {"big:7b": "small:latest", "x:1": "none"}
    unset = {"rpc_servers": {"hosts": ["w1"]}, "_meta": {"hostvars": {"w1": {"ansible_host": "10.0.0.1"}}}}
    assert cluster_from_inventory_data(unset, Path("i")).draft_models == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["a:1", "b:1"], "sollol_draft_models must map model names to a draft model or 'ngram'"),
        ("codellama:7b", "sollol_draft_models must map model names"),
        ("{not json", "sollol_draft_models is not a valid JSON object"),
        ({"big:7b": 7}, "sollol_draft_models: the draft of big:7b must be a model name, got 7"),
        ({"big:7b": ["small:1b"]}, "the draft of big:7b must be a model name"),
        ({"big:7b": "{{ draft }}"}, "the draft of big:7b must be a model name"),
        ({"big:7b": "sm all"}, "the draft of big:7b: bad model name 'sm all': no whitespace allowed"),
        ({"a/b/c/d": "small"}, "a target: bad model name 'a/b/c/d'"),
        ({"big:7b": "small:1b", "library/big:7b": "ngram"}, "names big:7b twice, with drafts small:1b and ngram"),
        ({f"m{i}:1": "ngram" for i in range(4097)}, "has 4097 entries (the limit is 4096)"),
    ],
)
def test_bad_draft_models_are_inventory_errors(value: Any, message: str) -> None:
    with pytest.raises(InventoryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cluster_from_inventory_data(_data(value), Path("i"))


def test_an_ini_inventory_sets_them_in_all_vars(tmp_path: Path) -> None:
    """Through the real `ansible-inventory`: an [all:vars] line holds a Python/JSON literal dict."""
    inv = tmp_path / "inv.ini"
    inv.write_text('[rpc_servers]\nw1 ansible_host=10.0.0.1\n\n[all:vars]\nsollol_draft_models={"big:7b": "ngram"}\n')
    cluster = load_cluster(inv, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert cluster.draft_models == {"big:7b": "ngram"}


# --------------------------------------------------------------------------- real llama-server, real rpc-servers


def _inventory(path: Path, endpoints: list[str], all_vars: str = "", coordinator_vars: str = "") -> str:
    lines = ["[rpc_servers]"]
    for i, endpoint in enumerate(endpoints):
        host, port = endpoint.rsplit(":", 1)
        lines.append(f"w{i} ansible_host={host} sollol_rpc_port={port}")
    lines += ["", "[coordinator]", f"localhost ansible_connection=local {coordinator_vars}".rstrip(), ""]
    if all_vars:
        lines += ["[all:vars]", all_vars, ""]
    path.write_text("\n".join(lines))
    return str(path)


PROMPT = "List the days of the week, twice."  # SmolLM2's answer repeats itself: n-gram drafting finds matches
# ngram-simple looks up the last 12 tokens by default; 3 lets it draft within this short answer.
NGRAM_SIZE = ["--server-arg", "--spec-ngram-simple-size-n", "--server-arg", "3"]


def _answer(cluster: Local) -> tuple[str, dict[str, Any]]:
    """The greedy answer (temperature 0, fixed seed and length) and `status --json`'s coordinator."""
    state = CoordinatorState(
        **json.loads((Path(cluster.env["XDG_STATE_HOME"]) / "sollol-ops/coordinator.json").read_text())
    )
    messages = [{"role": "user", "content": PROMPT}]
    text = server_http.stream_chat(state.endpoint, messages, 64, extra={"seed": 42}).text
    status = json.loads(cluster.cli("status", "--json").stdout)
    return text, status["coordinator"]


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.slow
def test_a_draft_model_and_ngram_answer_as_without_a_draft(local2: Local, tmp_path: Path) -> None:
    port = str(free_port())
    answers: dict[str, str] = {}
    for draft in ("none", MODEL, "ngram"):
        extra = NGRAM_SIZE if draft == "ngram" else []
        proc = local2.cli("up", MODEL, "--port", port, "-c", "1024", "--draft", draft, "--replace", "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert sum(p["layers"] for p in out["plan"]) == 30  # the target's layers; the draft is not one of them
        answers[draft], coordinator = _answer(local2)
        assert answers[draft].strip()
        if draft == "none":
            assert out["draft"] is None and coordinator["draft"] is None and "--spec-type" not in out["command"]
        elif draft == MODEL:
            argv = out["command"]
            assert argv[argv.index("--spec-type") + 1] == "draft-simple"
            assert argv[argv.index("--device-draft") + 1] == "none"
            assert out["draft"]["model"] == MODEL and out["draft"]["device"] == "CPU"
            assert out["distribution"]["draft"]["model_mib"] > 80  # its weights, in the coordinator's memory
            assert sum(d["layers"] or 0 for d in out["distribution"]["devices"]) == 30
            d = coordinator["draft"]
            assert d["mode"] == "model" and d["model"] == MODEL and d["drafted"] > 0
            assert 0 < d["accepted"] <= d["drafted"] and d["acceptance_rate"] == round(d["accepted"] / d["drafted"], 4)
            table = local2.cli("status").stdout
            assert f"draft: {MODEL} on the coordinator's CPU" in table and "acceptance" in table
        else:
            assert out["command"][out["command"].index("--spec-type") + 1] == "ngram-simple"
            d = coordinator["draft"]
            assert d["mode"] == "ngram" and d["model"] is None and d["drafted"] > 0 and d["accepted"] <= d["drafted"]
    assert answers[MODEL] == answers["none"]
    assert answers["ngram"] == answers["none"]
    assert run_cli("down", env=local2.env).returncode == 0


@pytest.mark.model
def test_a_draft_of_another_vocabulary_is_refused_before_anything_starts(
    sollol_env: dict[str, str], smollm2_store: Path, tmp_path: Path
) -> None:
    """Refused in one line before the backends are probed: the inventory's rpc-server is a port nobody listens on."""
    store = tmp_path / "store"
    blob = resolve_model(MODEL, smollm2_store).blob
    write_store(store, MODEL, blob, template=CHATML_TEMPLATE, params=SMOLLM2_PARAMS, link="hardlink")
    other = write_vocab_gguf(tmp_path / "llama-vocab.gguf", tokens_of(32000), model="llama")
    write_store(store, "tiny:1b", other)
    env = {**sollol_env, "OLLAMA_MODELS": str(store)}
    nobody = f"127.0.0.1:{free_port()}"
    want = (
        "draft tiny:1b has vocabulary 32000 tokens (llama), smollm2:135m has 49152 tokens (gpt2): a draft must "
        "share its target's vocabulary"
    )
    inv = _inventory(tmp_path / "inv.ini", [nobody])
    proc = run_cli("-i", inv, "up", MODEL, "--port", str(free_port()), "--draft", "tiny:1b", env=env)
    assert assert_clean_failure(proc, want).endswith("(--draft)")
    assert proc.returncode == PlacementError.exit_code
    listed = _inventory(tmp_path / "drafts.ini", [nobody], 'sollol_draft_models={"smollm2:135m": "tiny:1b"}')
    proc = run_cli("-i", listed, "up", MODEL, "--port", str(free_port()), env=env)
    assert assert_clean_failure(proc, want).endswith("(sollol_draft_models)")
    missing = run_cli("-i", inv, "up", MODEL, "--draft", "absent:1b", env=env)
    assert_clean_failure(missing, "draft (--draft): model 'absent:1b' not in any Ollama store")
    state = Path(env["XDG_STATE_HOME"]) / "sollol-ops"
    assert not (state / "coordinator.json").exists() and not (state / "coordinator.log").exists()  # nothing spawned


@pytest.mark.toolchain
@pytest.mark.model
def test_a_draft_that_does_not_fit_the_coordinator_is_refused_with_the_numbers(local2: Local, tmp_path: Path) -> None:
    inv = _inventory(tmp_path / "inv.ini", local2.endpoints, coordinator_vars="sollol_coordinator_memory_mib=400")
    args = ["-i", inv, "up", MODEL, "--port", str(free_port()), "-c", "1024", "--draft", MODEL]
    proc = run_cli(*args, "--coordinator-memory", "10", env=local2.env)
    err = assert_clean_failure(proc, f"draft {MODEL} does not fit the coordinator: it needs 156 MiB", "offers 10 MiB")
    assert "weights 92 + KV cache 22 + compute 41" in err and proc.returncode == PlacementError.exit_code
    # the inventory's 400 MiB hold it: the rest of the offer takes target layers, the draft is shown beside them
    fits = run_cli(*args, "--dry-run", "--json", env=local2.env)
    assert fits.returncode == 0, fits.stderr
    out = json.loads(fits.stdout)
    cpu = next(p for p in out["plan"] if p["device"] == "CPU")
    assert cpu["usable_mib"] == pytest.approx(400 - out["draft"]["need_mib"], abs=0.2)
    assert cpu["usable_source"].endswith(" - draft") and cpu["layers"] > 0
    table = run_cli(*args, "--dry-run", env=local2.env).stdout
    assert f"draft {MODEL} (--draft)" in table and "the draft smollm2:135m takes 156 MiB" in table
