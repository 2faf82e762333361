"""`sollol-ops bench`: pure helpers, the synthetic model writer, and end-to-end runs with tiny settings.

No assertion here depends on how fast anything is: the figures are only checked for shape and sanity.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from gguf import GGUFValueType
from helpers import assert_clean_failure, run_cli

from sollol_ops import bench
from sollol_ops.dev import netlab, synthetic
from sollol_ops.errors import BenchError, NetworkLabError
from sollol_ops.model.gguf_info import read_gguf

TINY = ("--repeats", "1", "--tokens", "4", "--prompt-tokens", "16", "--ctx", "512", "--json")


# --------------------------------------------------------------------------- pure helpers


def test_summarize_median_and_spread() -> None:
    s = bench.summarize([3.0, 1.0, 2.0, 10.0])
    assert s == bench.Stat(median=2.5, min=1.0, max=10.0, n=4)
    assert bench.summarize([4.0]) == bench.Stat(4.0, 4.0, 4.0, 1)
    assert bench.summarize([]) is None


def test_ratio_and_row_ratios() -> None:
    assert bench.ratio(3.0, 2.0) == 1.5
    assert bench.ratio(1.0, 0.0) is None and bench.ratio(None, 2.0) is None and bench.ratio(2.0, None) is None
    base = {"gen_tps": bench.Stat(100, 90, 110, 3), "load_cold_s": bench.Stat(0.5, 0.4, 0.6, 3)}
    base["load_warm_s"] = bench.Stat(0.25, 0.2, 0.3, 3)
    row = {
        "gen_tps": bench.Stat(50, 40, 60, 3),
        "load_nocache_s": bench.Stat(1.0, 1, 1, 1),  # compared with the baseline's cold load
        "ready_s": bench.Stat(1.0, 1, 1, 1),  # compared with the baseline's warm load
        "ttft_s": bench.Stat(0.1, 0.1, 0.1, 1),  # the baseline has none
        "gen_n": bench.Stat(4, 4, 4, 1),  # counts get no ratio
    }
    assert bench.row_ratios(row, base) == {"gen_tps": 0.5, "load_nocache_s": 2.0, "ready_s": 4.0, "ttft_s": None}
    assert bench.row_ratios(row, None)["gen_tps"] is None


def test_parsers() -> None:
    assert bench.parse_int_list("3,1,2,2", "--backends") == [1, 2, 3]
    for bad in ("", "0", "a,b", "1,99"):
        with pytest.raises(BenchError):
            bench.parse_int_list(bad, "--backends")
    assert bench.parse_links("none,1gbit,100MBIT,bridge,none") == ["none", "1gbit", "100mbit", "bridge"]
    with pytest.raises(BenchError, match="rate"):
        bench.parse_links("fast")
    assert synthetic.parse_synthetic("smollm2:135m") is None
    spec = synthetic.parse_synthetic("synthetic:4x2048-q8_0")
    assert spec == synthetic.SyntheticSpec(4, 2048, "q8_0")
    assert (spec.n_ff, spec.heads, spec.heads_kv) == (5632, 32, 4)  # TinyLlama-1.1B's shapes
    assert synthetic.parse_synthetic("synthetic:2x128").ftype == "q8_0"
    for bad in ("synthetic:4", "synthetic:4x100", "synthetic:0x128", "synthetic:2x128-q4_0"):
        with pytest.raises(BenchError):
            synthetic.parse_synthetic(bad)


def test_tbf_args() -> None:
    assert netlab.tbf_args("1gbit") == ["rate", "1gbit", "burst", "500000", "latency", "50ms"]
    assert netlab.tbf_args("100mbit")[3] == str(128 * 1024)  # never below one GSO super-packet's worth
    with pytest.raises(NetworkLabError):
        netlab.tbf_args("none")


def test_merge_markdown_keeps_foreign_sections() -> None:
    existing = (
        "# Benchmarks\n\nintro\n\n## rpc-list vs ansible-inventory\n\nkeep me\n\n## Sharding vs. a single node\n\nold\n"
    )
    new = {
        "## Sharding vs. a single node": "## Sharding vs. a single node\n\nnew\n",
        "## Links and x": "## Links and x\n\nl\n",
    }
    out = bench.merge_markdown(existing, new)
    assert "keep me" in out and "intro" in out and "new" in out and "old" not in out
    assert out.index("## rpc-list") < out.index("## Sharding") < out.index("## Links")
    assert bench.merge_markdown(out, new) == out  # idempotent
    assert bench.merge_markdown("", new).startswith("# Benchmarks\n\n## Sharding")


# --------------------------------------------------------------------------- synthetic models


def _tiny_tokenizer(n: int = 300) -> list[tuple[str, object, GGUFValueType, GGUFValueType | None]]:
    return [
        ("tokenizer.ggml.model", "gpt2", GGUFValueType.STRING, None),
        ("tokenizer.ggml.tokens", [f"t{i}" for i in range(n)], GGUFValueType.ARRAY, GGUFValueType.STRING),
        ("tokenizer.ggml.token_type", [1] * n, GGUFValueType.ARRAY, GGUFValueType.INT32),
        ("tokenizer.ggml.eos_token_id", 2, GGUFValueType.UINT32, None),
    ]


@pytest.mark.parametrize("ftype", ["q8_0", "f16"])
def test_synthetic_writer_shapes(tmp_path: Path, ftype: str) -> None:
    spec = synthetic.SyntheticSpec(3, 128, ftype)
    path = synthetic.write_synthetic_gguf(tmp_path / "m.gguf", spec, _tiny_tokenizer())
    info = read_gguf(path)
    assert info.architecture == "llama" and info.block_count == 3 and len(info.layer_bytes) == 3
    assert (info.embedding_length, info.head_count, info.head_count_kv) == (128, 2, 1)
    assert info.file_type_name == ftype.upper() and info.vocab_size == 300
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.model
@pytest.mark.slow
def test_synthetic_store_copies_the_smollm2_tokenizer(tmp_path: Path, smollm2_store: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = synthetic.SyntheticSpec(2, 256, "q8_0")
    source = bench.tokenizer_source(str(smollm2_store))
    synthetic.synthetic_store([spec], tmp_path / "store", source)
    from sollol_ops.model.ollama import resolve_model

    resolved = resolve_model(spec.ref, tmp_path / "store")
    assert resolved.gguf is not None and resolved.gguf.block_count == 2
    keys = {k for k, *_ in synthetic.read_tokenizer(resolved.blob)}
    assert {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"} <= keys
    assert not (smollm2_store / "manifests/registry.ollama.ai/library/synthetic-2x256").exists()


# --------------------------------------------------------------------------- the CLI


def _check_stat(stat: dict) -> None:
    assert set(stat) == {"median", "min", "max", "n"}
    assert stat["min"] <= stat["median"] <= stat["max"] and stat["n"] >= 1


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
def test_bench_smoke_end_to_end(sollol_env: dict[str, str]) -> None:
    proc = run_cli("bench", "smollm2:135m", "--backends", "1", "--links", "none", *TINY, env=sollol_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == bench.SCHEMA
    top = {"started_at", "wall_s", "command", "machine", "settings", "models", "rows", "comparisons", "notes"}
    assert top <= set(doc)
    m = doc["machine"]
    assert {"cpu_model", "cores", "ram_mib", "llama_cpp_version", "rpc_protocol", "loadavg_start"} <= set(m)
    assert isinstance(m["cores"], int) and m["cores"] >= 1 and m["ram_mib"] > 0 and m["llama_cpp_version"]
    assert doc["settings"]["backends"] == [1] and doc["settings"]["repeats"] == 1
    assert doc["models"][0]["ref"] == "smollm2:135m" and doc["models"][0]["layers"] == 30
    rows = doc["rows"]
    for row in rows:
        keys = {"section", "model", "size_mib", "setup", "backends", "link", "settings", "metrics", "ratios"}
        assert keys | {"loadavg_1m"} <= set(row)
        assert isinstance(row["loadavg_1m"], float)
        for stat in row["metrics"].values():
            _check_stat(stat)
        for name, value in row["ratios"].items():
            assert name in row["metrics"] and (value is None or isinstance(value, float))
    base = [r for r in rows if r["setup"] == "baseline"]
    assert len(base) == 1 and base[0]["backends"] == 0
    assert {"load_cold_s", "load_warm_s", "prompt_tps", "gen_tps", "ttft_s"} <= set(base[0]["metrics"])
    assert base[0]["ratios"]["gen_tps"] == 1.0
    rpc = [r for r in rows if r["section"] == "sharding" and r["setup"] == "rpc"]
    assert [r["backends"] for r in rpc] == [1] and rpc[0]["link"] == "loopback"
    assert isinstance(rpc[0]["ratios"]["gen_tps"], float) and rpc[0]["ratios"]["gen_tps"] > 0
    assert rpc[0]["metrics"]["gen_n"]["median"] == 4  # ignore_eos: exactly --tokens generated
    coord = {r["settings"]: r for r in rows if r["section"] == "coordinator"}
    assert set(coord) == {"persistent coordinator", "coordinator per query", "raw llama-server --rpc", "sollol-ops up"}
    assert {c["what"] for c in doc["comparisons"]} == {"TTFT of a repeated query", "start to ready"}
    # `up` traced phase by phase (SOLLOL_OPS_TRACE), beside the raw llama-server's spawn-to-ready
    phases = {e["label"]: e["phases"] for e in doc["up_phases"] if e["model"] == "smollm2:135m"}
    assert {"readiness wait", "backend probes", "interpreter + imports", "wall: spawn to return"} <= set(
        phases["sollol-ops up"]
    )
    assert set(phases["raw llama-server --rpc"]) == {"wall: spawn to return"}
    for stat in (*phases["sollol-ops up"].values(), *phases["raw llama-server --rpc"].values()):
        _check_stat(stat)
    up_wall = phases["sollol-ops up"]["wall: spawn to return"]["median"]
    assert coord["sollol-ops up"]["metrics"]["ready_s"]["median"] == pytest.approx(up_wall)
    assert all(c["ratio"] > 0 for c in doc["comparisons"])
    # nothing left running or behind
    state = Path(sollol_env["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json"
    assert not state.exists()
    assert not list((Path(sollol_env["XDG_CACHE_HOME"]) / "sollol-ops" / "bench").glob("run-*"))


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
def test_bench_text_and_markdown(sollol_env: dict[str, str], tmp_path: Path) -> None:
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\n## rpc-list vs ansible-inventory\n\nother helper's figures\n")
    png = tmp_path / "bench.png"
    args = ("--repeats", "1", "--tokens", "2", "--prompt-tokens", "8", "--ctx", "512", "--backends", "1")
    proc = run_cli("bench", "smollm2:135m", *args, "--out-md", str(md), "--plot", str(png), env=sollol_env)
    assert proc.returncode == 0, proc.stderr
    assert "local only" in proc.stdout and "GEN x" in proc.stdout and "comparisons" in proc.stdout
    text = md.read_text()
    assert "other helper's figures" in text
    for title in (
        "## Sharding vs. a single node",
        "## Persistent coordinator vs. per-query start",
        "## Where `up` spends its time",
    ):
        assert text.count(title) == 1
    assert f"]({png})" in text and "cores" in text and "sollol-ops bench smollm2:135m" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.model
def test_bench_refuses_bad_options(sollol_env: dict[str, str]) -> None:
    assert_clean_failure(run_cli("bench", "smollm2:135m", "--links", "fast", env=sollol_env), "--links")
    assert_clean_failure(run_cli("bench", "smollm2:135m", "--backends", "0", env=sollol_env), "--backends")
    assert_clean_failure(run_cli("bench", "synthetic:3", env=sollol_env), "synthetic")
    assert_clean_failure(run_cli("bench", "nosuch:1b", "--repeats", "1", env=sollol_env), "nosuch")
    assert_clean_failure(run_cli("bench", "smollm2:135m", "--gateway", "--grid", env=sollol_env), "--gateway")


@pytest.mark.model
def test_plot_without_matplotlib_is_one_line(sollol_env: dict[str, str], tmp_path: Path) -> None:
    fake = tmp_path / "nompl" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {**sollol_env, "PYTHONPATH": str(fake.parent)}
    proc = run_cli("bench", "smollm2:135m", "--plot", str(tmp_path / "x.png"), env=env)
    assert_clean_failure(proc, "pip install matplotlib")


def _our_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("sb")}


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.netns
@pytest.mark.slow
def test_bench_over_shaped_namespace_links(sollol_env: dict[str, str]) -> None:
    before = _our_namespaces()
    args = ("--backends", "1", "--links", "1gbit", "--repeats", "1", "--tokens", "2", "--prompt-tokens", "8")
    proc = run_cli("bench", "smollm2:135m", *args, "--ctx", "512", "--json", env=sollol_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    links = [r for r in doc["rows"] if r["section"] == "links"]
    assert len(links) == 1 and links[0]["link"] == "1gbit"
    assert {"load_cold_s", "load_warm_s", "load_nocache_s", "gen_tps"} <= set(links[0]["metrics"])
    assert isinstance(links[0]["ratios"]["load_nocache_s"], float)
    assert not [r for r in doc["rows"] if r["section"] == "coordinator"]  # no loopback cluster asked for
    assert any("netem" in n for n in doc["notes"])
    assert _our_namespaces() == before  # namespaces and bridge removed
    links_out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=False).stdout
    assert not [ln for ln in links_out.splitlines() if ln.startswith("sb") and "br " in ln]


# --------------------------------------------------------------------------- --gateway (issues 11 and 12)

GATEWAY_SECTIONS = {
    "## Gateway vs. direct to llama-server": "gateway",
    "## Gateway pool: 2 members vs. 1": "gateway-pool",
    "## Sharded models on demand through the gateway": "ondemand",
}
GATEWAY_COMPARISONS = {
    ("gateway", "TTFT through the gateway (OpenAI route)", "ttft_s", "<= 1.05x"),
    ("gateway", "generation tok/s (OpenAI route)", "gen_tps", ">= 0.98x"),
    ("gateway", "TTFT through the gateway (Ollama route)", "ttft_s", "<= 1.05x"),
    ("gateway", "generation tok/s (Ollama route)", "gen_tps", ">= 0.98x"),
    ("gateway-pool", "aggregate tok/s, 4 clients", "agg_tps", ">= 1.7x"),
    ("ondemand", "TTFT of the first request", "ttft_s", "<= 1.05x"),
    ("ondemand", "TTFT of a repeated request", "ttft_s", "<= 0.05x"),
    ("ondemand", "TTFT of a new request", "ttft_s", None),
    ("ondemand", "swap vs. a cold load", "ttft_s", None),
}


def test_gateway_stream_lines_are_read_as_each_api_sends_them() -> None:
    from sollol_ops.bench.streaming import _piece

    chunk = {"choices": [{"delta": {"content": "Hi"}}]}
    assert _piece("data: " + json.dumps(chunk), "openai", "u") == ("Hi", False, None)
    last = {"choices": [{"delta": {}}], "timings": {"predicted_n": 7}}
    assert _piece("data: " + json.dumps(last), "openai", "u") == ("", False, 7)
    assert _piece("data: [DONE]", "openai", "u") == ("", True, None)
    assert _piece(": keep-alive", "openai", "u") == ("", False, None)
    line = {"message": {"role": "assistant", "content": "Hi"}, "done": False, "eval_count": 99}
    assert _piece(json.dumps(line), "ollama", "u") == ("Hi", False, None)  # a count only on the done line
    done = {"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 7}
    assert _piece(json.dumps(done), "ollama", "u") == ("", True, 7)
    with pytest.raises(BenchError, match="broke off"):
        _piece('data: {"error": {"message": "upstream died"}}', "openai", "u")
    with pytest.raises(BenchError, match="broke off"):
        _piece('{"error": "upstream died"}', "ollama", "u")
    with pytest.raises(BenchError, match="not JSON"):
        _piece("{oops", "ollama", "u")


def _procs_mentioning(text: str) -> list[str]:
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            out.append(argv)
    return out


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.slow
def test_bench_gateway_end_to_end(sollol_env: dict[str, str], tmp_path: Path) -> None:
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\n## Sharding vs. a single node\n\nthe sharding run's figures\n")
    args = ("--gateway", "--backends", "2", "--repeats", "1", "--tokens", "3", "--prompt-tokens", "8")
    proc = run_cli("bench", "smollm2:135m", *args, "--ctx", "512", "--json", "--out-md", str(md), env=sollol_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == bench.SCHEMA and doc["settings"]["gateway"] is True
    rows = doc["rows"]
    by_section: dict[str, list[dict]] = {}
    for row in rows:
        by_section.setdefault(row["section"], []).append(row)
        keys = {"section", "model", "size_mib", "setup", "backends", "members", "link", "settings", "metrics"}
        assert keys | {"ratios", "loadavg_1m"} <= set(row)
        assert row["model"] == "smollm2:135m" and isinstance(row["loadavg_1m"], float)
        for stat in row["metrics"].values():
            _check_stat(stat)
        for name, value in row["ratios"].items():
            assert name in row["metrics"] and isinstance(value, float) and value > 0
    assert set(by_section) == set(GATEWAY_SECTIONS.values())  # no sharding rows in a --gateway run
    for section_rows in by_section.values():  # the first row is the section's reference
        assert all(v == 1.0 for v in section_rows[0]["ratios"].values()) and section_rows[0]["ratios"]

    gw = by_section["gateway"]
    assert [(r["setup"], r["members"], r["backends"]) for r in gw] == [("direct", 1, 0)] + [("gateway", 1, 0)] * 2
    assert [r["settings"] for r in gw][1:] == ["gateway, OpenAI /v1/chat/completions", "gateway, Ollama /api/chat"]
    for r in gw:
        assert {"ttft_s", "gen_tps", "gen_n"} <= set(r["metrics"]) and r["metrics"]["ttft_s"]["n"] == 1
        assert r["metrics"]["gen_n"]["median"] == 3  # --ignore-eos: exactly --tokens, one chunk each, every route
    pool = by_section["gateway-pool"]
    assert [r["members"] for r in pool] == [1, 2]
    for r in pool:
        assert {"agg_tps", "wall_s", "ttft_s", "gen_n"} <= set(r["metrics"])
        assert r["metrics"]["gen_n"]["median"] == 4 * 3  # 4 clients x --tokens
        assert r["metrics"]["ttft_s"]["n"] == 4  # one per client
    od = by_section["ondemand"]
    assert [r["setup"] for r in od] == ["gateway", "by hand", "gateway", "gateway", "gateway"]
    assert all(r["backends"] == 2 and set(r["metrics"]) == {"ttft_s"} for r in od)
    assert "sollol-ops up" in od[1]["settings"] and "swap" in od[4]["settings"]

    comps = doc["comparisons"]
    by_settings = {(r["section"], r["settings"]): r for r in rows}
    assert {(c["section"], c["what"], c["metric"], c["goal"]) for c in comps} == GATEWAY_COMPARISONS
    for c in comps:
        assert {"model", "a", "b", "unit", "a_median", "b_median", "ratio", "met"} <= set(c)
        assert c["unit"] == ("tok/s" if c["metric"].endswith("_tps") else "s")
        assert c["a_median"] > 0 and c["b_median"] > 0
        a, b = (by_settings[c["section"], c[x]]["metrics"][c["metric"]]["median"] for x in ("a", "b"))
        assert c["ratio"] == round(b / a, 3)
        if c["goal"] is None:
            assert c["met"] is None
        else:
            op, bound = c["goal"].split()
            expect = c["ratio"] <= float(bound[:-1]) if op == "<=" else c["ratio"] >= float(bound[:-1])
            assert c["met"] is expect
    assert set(doc["section_notes"]) == set(GATEWAY_SECTIONS.values())

    text = md.read_text()
    assert "the sharding run's figures" in text  # the other sections are kept
    for title in GATEWAY_SECTIONS:
        assert text.count(title) == 1
        section = text.split(title, 1)[1].split("\n## ", 1)[0]
        assert "| goal | met |" in section and "--gateway" in section
    # nothing left running or behind: gateways, coordinators (their argv names the run's work dir), state
    assert not _procs_mentioning(sollol_env["XDG_CACHE_HOME"])
    assert not (Path(sollol_env["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json").exists()
    assert not list((Path(sollol_env["XDG_CACHE_HOME"]) / "sollol-ops" / "bench").glob("run-*"))


@pytest.mark.toolchain
@pytest.mark.model
def test_coordinator_device_setups_share_the_cores_and_split_equally(
    rpc_server: tuple[str, object], smollm2_store: Path
) -> None:
    """The two setups of --coordinator-device: same threads per computing process; the coordinator's CPU
    keeps half the layers in one, two workers hold them all in the other."""
    from sollol_ops.bench import coordinator_device
    from sollol_ops.bench.models import BenchModel
    from sollol_ops.bench.server import server_argv
    from sollol_ops.cluster.toolchain import find_toolchain
    from sollol_ops.model.ollama import resolve_model

    (k2, workers), (k1, coordinator) = coordinator_device.setups(cores=4)
    assert (k2, k1) == (2, 1)
    assert workers.rpc_threads_for(2) == coordinator.rpc_threads_for(1) == 2
    assert workers.server_threads == coordinator.server_threads == 2
    assert workers.coordinator_mib == 0 and coordinator.coordinator_mib == workers.backend_mib
    endpoint, _server = rpc_server
    r = resolve_model("smollm2:135m", str(smollm2_store))
    model = BenchModel(r.ref, r.ref, r.blob, r.gguf or read_gguf(r.blob), False)
    argv = server_argv(find_toolchain(), model, 9, [endpoint], coordinator, 512)
    assert argv[argv.index("--n-gpu-layers") + 1] == "15" and argv[argv.index("--device") + 1] == "RPC0"
    assert argv[argv.index("--threads") + 1] == "2"


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
def test_bench_coordinator_device_rows(sollol_env: dict[str, str], tmp_path: Path) -> None:
    md = tmp_path / "benchmarks.md"
    args = ("smollm2:135m", "--backends", "1", "--links", "none", "--coordinator-device", "--out-md", str(md))
    proc = run_cli("bench", *args, *TINY, env=sollol_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["settings"]["coordinator_device"] is True
    rows = {r["settings"]: r for r in doc["rows"] if r["section"] == "coordinator-device"}
    assert set(rows) == {"2 workers", "coordinator + 1 worker"}
    assert rows["2 workers"]["backends"] == 2 and rows["coordinator + 1 worker"]["backends"] == 1
    for row in rows.values():  # at least 3 rounds whatever --repeats says, each a cold and a warm query
        assert row["metrics"]["load_cold_s"]["n"] == 3 and row["metrics"]["gen_tps"]["n"] == 6
        assert row["metrics"]["gen_n"]["median"] == 4
    comps = [c for c in doc["comparisons"] if c["section"] == "coordinator-device"]
    assert {c["metric"] for c in comps} == {"gen_tps", "prompt_tps", "ttft_s", "load_cold_s"}
    assert all(c["a"] == "2 workers" and c["b"] == "coordinator + 1 worker" and c["ratio"] > 0 for c in comps)
    text = md.read_text()
    assert text.count("## The coordinator as a device: coordinator + 1 worker vs. 2 workers") == 1
    assert "tok/s" in text


@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.netns
@pytest.mark.slow
def test_bench_stage_rows_on_a_shaped_link(sollol_env: dict[str, str], tmp_path: Path) -> None:
    """--stage: unstaged vs. staged vs. warm first loads, bytes counted on the veths, rendered as its section."""
    args = ("--backends", "1", "--links", "1gbit", "--stage", "--repeats", "1", "--tokens", "2", "--prompt-tokens", "8")
    out_md = tmp_path / "bench.md"
    proc = run_cli("bench", "smollm2:135m", *args, "--ctx", "512", "--json", "--out-md", str(out_md), env=sollol_env)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["staging"]
    m = row["metrics"]
    unstaged, staged, warm = (m[p]["sent_mib"]["median"] for p in ("unstaged", "staged", "warm"))
    # SmolLM2's only tensor over 10 MiB is token_embd (28.7 MiB), loaded again as the output on the rpc-server:
    # staged, it no longer crosses the link; the rest always does.
    assert unstaged - staged > 28
    assert abs(staged - warm) < 1
    assert row["link_limit_s"] > 0 and row["link_use"] > 0 and row["staged_over_unstaged"] > 0
    assert "## Staging: first load unstaged vs. staged vs. warm" in out_md.read_text()


def test_grid_summary_names_the_best_cell_and_the_ratios() -> None:
    from sollol_ops.bench.report import grid_summary

    def row(settings: str, gen: float, prompt: float) -> dict:
        stat = lambda v: {"median": v, "min": v * 0.9, "max": v * 1.1, "n": 6}  # noqa: E731
        metrics = {"gen_tps": stat(gen), "prompt_tps": stat(prompt)}
        return {"section": "grid", "settings": settings, "metrics": metrics}

    rows = [row("sollol defaults", 45.0, 200.0), row("upstream defaults", 40.0, 250.0), row("rpc -t 1", 50.0, 100.0)]
    lines = grid_summary(rows, 3)
    assert "3 round(s)" in lines[1]
    gen = next(x for x in lines if x.startswith("| GEN tok/s"))
    assert "rpc -t 1: 50.0 (45.0-55.0)" in gen and "| 0.90x | 1.12x |" in gen
    prompt = next(x for x in lines if x.startswith("| PROMPT tok/s"))
    assert "upstream defaults: 250.0" in prompt and "| 0.80x | 0.80x |" in prompt
    assert grid_summary([row("rpc -t 1", 1.0, 1.0)], 3) == []  # no defaults row: nothing to compare


def test_bench_inventory_rows_and_markdown(tmp_path: Path) -> None:
    """`bench --inventory-hosts`: no model, no llama.cpp; rows per host count and read, each read checked."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state"), "SOLLOL_INVENTORY": ""}
    md = tmp_path / "benchmarks.md"
    proc = run_cli("bench", "--inventory-hosts", "40", "--repeats", "2", "--json", "--out-md", str(md), env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = [r for r in doc["rows"] if r["section"] == "inventory"]
    assert [(r["model"], r["setup"]) for r in rows] == [
        ("40 hosts", "first read"),
        ("40 hosts", "cached read"),
        ("40 hosts", "rpc-list, cached"),
    ]
    for r in rows:
        _check_stat(r["metrics"]["read_s"])
        assert r["metrics"]["read_s"]["n"] == 2
    assert doc["comparisons"] == []  # the goal is for 10k hosts or more
    text = md.read_text()
    assert "## Reading a big inventory: first read vs. the cache" in text and "| 40 hosts | cached read |" in text
    assert not list((tmp_path / "cache" / "sollol-ops" / "bench").glob("run-*"))  # the work dir is removed


def test_bench_inventory_refuses_a_model_beside_it(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "SOLLOL_INVENTORY": ""}
    assert_clean_failure(run_cli("bench", "smollm2:135m", "--inventory-hosts", "40", env=env), "--inventory-hosts")
    assert_clean_failure(run_cli("bench", "--inventory-hosts", "1", env=env), "--inventory-hosts")
    assert_clean_failure(run_cli("bench", env=env), "MODEL")


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
@pytest.mark.netns
def test_bench_speculative_rows(sollol_env: dict[str, str], tmp_path: Path) -> None:
    """--speculative: plain, draft and n-gram rows per link on the F32 re-encoding, the greedy answers compared
    with plain (identical), the draft's acceptance read from llama-server, the goal on the shaped 1 Gbit link."""
    from sollol_ops.bench import speculative

    md = tmp_path / "benchmarks.md"
    args = ("smollm2:135m", "--backends", "1", "--speculative", "--out-md", str(md))
    proc = run_cli("bench", *args, "--repeats", "1", "--tokens", "8", "--prompt-tokens", "16", "--ctx", "512",
                   "--json", env=sollol_env, timeout=1500)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = [r for r in doc["rows"] if r["section"] == "speculative"]
    links = {link.name for link in speculative.LINKS}
    assert {r["link"] for r in rows} == links and len(rows) == 3 * len(links)
    assert all(r["model"].endswith("re-encoded F32") and r["size_mib"] > 4 * 94 for r in rows)
    for row in rows:
        assert row["metrics"]["identical"]["median"] == 1.0, row  # greedy output as plain generation's
        if row["settings"].startswith("draft"):
            assert 0 < row["metrics"]["accept_rate"]["median"] <= 1
    comps = [c for c in doc["comparisons"] if c["section"] == "speculative"]
    goal = [c for c in comps if c["goal"]]
    assert len(comps) == 2 * len(links) and len(goal) == 1 and speculative.GOAL_LINK in goal[0]["what"]
    assert isinstance(goal[0]["met"], bool)
    assert "## Speculative decoding on a sharded model" in md.read_text()


@pytest.mark.slow
@pytest.mark.toolchain
@pytest.mark.model
def test_bench_placement_rows(sollol_env: dict[str, str], tmp_path: Path) -> None:
    """--placement: the planner's split, the memory split and >= 20 swept splits on the uneven cluster, each
    loaded and measured, with the planner's prediction beside; the two goals compared and reported."""
    from sollol_ops.bench import placement

    proc = run_cli("bench", "smollm2:135m", "--backends", "1", "--placement", *TINY, env=sollol_env, timeout=1500)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {r["settings"]: r for r in doc["rows"] if r["section"] == "placement"}
    swept = [name for name in rows if name.startswith("sweep")]
    assert len(swept) >= placement.MIN_SWEEP
    assert any(n.startswith("planner ") for n in rows) and any(n.startswith("memory ") for n in rows)
    for name, row in rows.items():
        split = [int(x) for x in name.split()[-1].split("/")]
        assert sum(split) == 31  # SmolLM2: 30 blocks and the output layer
        assert row["metrics"]["gen_tps"]["n"] == placement.MIN_ROUNDS and row["metrics"]["pred_tps"]["median"] > 0
    assert rows[next(n for n in rows if n.startswith("memory "))]["settings"] == "memory 11/10/10"
    comps = {c["what"]: c for c in doc["comparisons"] if c["section"] == "placement"}
    assert set(comps) == {"planner vs. best swept split", "planner vs. memory split"}
    assert all(isinstance(c["met"], bool) and c["goal"] for c in comps.values())


def test_the_command_in_docs_names_no_machine_path() -> None:
    from sollol_ops.bench.report import public_command

    home = str(Path.home())
    assert (
        public_command(f"sollol-ops bench x --up-before {home}/.cache/b") == "sollol-ops bench x --up-before ~/.cache/b"
    )
