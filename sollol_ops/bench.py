"""`sollol-ops bench`: what sharding over llama.cpp RPC costs, measured against one plain node in the same run.

For each model: a local-only baseline (plain llama-server, no RPC), then 1..N rpc-servers (a loopback
cluster started here, cores split between them; or the inventory's running backends with
--use-inventory). Per setup and repeat: a cold load (fresh rpc-servers, empty tensor cache: its own
LLAMA_CACHE directory), one streamed query, a warm load (llama-server restarted against the same
rpc-servers, whose `-c` cache the cold load filled), a second query; the repeats of the baseline and
the sharded setups are interleaved (round r of every setup, then round r+1). Queries stream
/v1/chat/completions (time to the first content chunk = TTFT) and read prompt and generation rates
from the `timings` llama-server sends in the last chunk (prompt cache off, ignore_eos on, so every
query processes the whole prompt and generates exactly --tokens tokens).

Also measured, on the largest backend count: TTFT of a repeated query on a persistent coordinator vs.
a coordinator started per query (spawn llama-server --rpc, wait /health, query, kill: time from spawn
to first token), and `sollol-ops up` to ready vs. a raw `llama-server --rpc` to ready on the same
backends. --links adds setups whose rpc-servers run in network namespaces behind veth + a bridge,
each link shaped with `tc tbf` at the given rate on both veth ends ("bridge": namespaces, no
shaping); those rows add a load without the rpc-server cache (-c off). There is no latency emulation:
this kernel has no netem, so shaped links have the rate limit and ~0.05 ms bridge latency only.
--grid compares sollol-ops defaults, upstream defaults and a small grid on the first model.

Models are Ollama refs (the user's stores) or synthetic llama models `synthetic:<layers>x<n_embd>[-f16|-q8_0]`
(random weights, real 1B-class shapes: n_ff = 2.75 n_embd, 64-wide heads, 8 query heads per KV head,
SmolLM2's tokenizer and chat template copied from the smollm2:135m GGUF), written once into
$XDG_CACHE_HOME/sollol-ops/bench/ and laid out in a temporary Ollama store of this run, never the user's.

JSON schema (`--json`, "schema": "sollol-ops-bench/1"):
  schema: str; started_at: float (unix); wall_s: float; command: str
  machine: {cpu_model: str, cores: int, ram_mib: int, kernel: str, llama_cpp_version: str,
            rpc_protocol: str, loadavg_start: [float x3], loadavg_end: [float x3]}
  settings: {repeats, tokens, prompt_tokens, ctx: int; backends: [int]; links: [str]; grid, use_inventory: bool}
  models: [{ref: str, synthetic: bool, size_mib: float, layers: int, n_embd: int, file_type: str, params: int}]
  rows: [{section: "sharding" | "links" | "coordinator" | "grid",
          model: str, size_mib: float,
          setup: "baseline" | "rpc",        backends: int (0 for the baseline),
          link: "local" | "loopback" | "bridge" | "<rate>" (e.g. "1gbit"), settings: str,
          metrics: {NAME: {median: float, min: float, max: float, n: int}},
          ratios: {NAME: float | null},    # row median / baseline median of the same model in this run
          loadavg_1m: float}]              # the host's 1-minute load average when the row was finished
     metric NAMEs: load_cold_s, load_warm_s, load_nocache_s, ready_s (seconds to /health 200 or to `up`
     returning), ttft_s (seconds), prompt_tps, gen_tps (tokens/s); prompt_n, gen_n (tokens per query).
     The baseline of load_nocache_s is load_cold_s, of ready_s is load_warm_s; others: the same name.
  comparisons: [{model: str, what: str, a: str, b: str, metric: str, a_median: float, b_median: float,
                 ratio: float}]          # ratio = b_median / a_median
  notes: [str]
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops import cluster_vars, coordinator, local_cluster, procs, rpc
from sollol_ops.coordinator import StartOptions
from sollol_ops.errors import BenchError, SollolError
from sollol_ops.gguf_info import GGUFInfo, read_gguf
from sollol_ops.inventory import Backend
from sollol_ops.local_cluster import RpcServerSpec
from sollol_ops.netlab import RATE, NetLab
from sollol_ops.ollama import resolve_model
from sollol_ops.paths import cache_dir
from sollol_ops.placement import build_slots, plan_placement
from sollol_ops.rpc import CLIENT_PROTOCOL
from sollol_ops.synthetic import parse_synthetic, synthetic_store
from sollol_ops.toolchain import Toolchain, find_toolchain

SCHEMA = "sollol-ops-bench/1"
MIB = 1 << 20
NETNS_SUBNET = "10.213"
RPC_PORT_NETNS = cluster_vars.DEFAULT_PORT
NO_LATENCY_NOTE = (
    "no latency emulation: this kernel has no netem qdisc, so shaped links limit the rate (tc tbf) "
    "and add no delay (bridge round trip ~0.05 ms)"
)
BASELINE_OF = {"load_nocache_s": "load_cold_s", "ready_s": "load_warm_s"}
_TEXT = (
    "the quick brown fox jumps over a lazy dog while seven small birds sing about rain and "
    "sunlight in an old green garden near the river where children play every summer"
)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    n: int


def summarize(values: Sequence[float]) -> Stat | None:
    """Median and spread (min-max) of the samples; None when there are none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return Stat(statistics.median(vals), min(vals), max(vals), len(vals))


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, None when either is missing or base is zero."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def row_ratios(metrics: dict[str, Stat], baseline: dict[str, Stat] | None) -> dict[str, float | None]:
    """Each metric's median over the baseline's (see BASELINE_OF for the metrics it lacks)."""
    out: dict[str, float | None] = {}
    for name, stat in metrics.items():
        if name in ("prompt_n", "gen_n"):
            continue
        base = (baseline or {}).get(BASELINE_OF.get(name, name))
        out[name] = None if base is None else _round(ratio(stat.median, base.median), 3)
    return out


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------- configuration


@dataclass
class BenchConfig:
    models: list[str]
    backends: list[int] = field(default_factory=lambda: [1, 2])
    repeats: int = 3
    tokens: int = 32
    prompt_tokens: int = 128
    ctx: int = 1024
    links: list[str] = field(default_factory=lambda: ["none"])
    grid: bool = False
    use_inventory: bool = False
    inventory_backends: list[Backend] = field(default_factory=list)
    ollama_models: str | None = None
    timeout: float = 300.0
    command: str = "sollol-ops bench"


def parse_int_list(text: str, what: str, lo: int = 1, hi: int = 16) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise BenchError(f"{what} must be a comma-separated list of integers, got {text!r}") from exc
    if not values or any(not lo <= v <= hi for v in values):
        raise BenchError(f"{what} must list integers in {lo}..{hi}, got {text!r}")
    return sorted(set(values))


def parse_links(text: str) -> list[str]:
    """`none` (loopback), `bridge` (namespaces, unshaped) or a tc rate such as 1gbit / 100mbit."""
    links = [x.strip().lower() for x in text.split(",") if x.strip()]
    for link in links:
        if link not in ("none", "bridge") and not RATE.match(link):
            raise BenchError(f"--links: {link!r} is not none, bridge or a rate like 1gbit / 100mbit")
    if not links:
        raise BenchError("--links is empty")
    return list(dict.fromkeys(links))


def link_label(link: str) -> str:
    return "loopback" if link == "none" else link


# --------------------------------------------------------------------------- machine


def machine_info(toolchain: Toolchain | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) // 1024
    version = "unknown"
    if toolchain is not None:
        with contextlib.suppress(SollolError):
            version = toolchain.version().removeprefix("version:").strip()
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count() or 1,
        "ram_mib": ram,
        "kernel": platform.release(),
        "llama_cpp_version": version,
        "rpc_protocol": ".".join(str(v) for v in CLIENT_PROTOCOL),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "loadavg_end": None,
    }


# --------------------------------------------------------------------------- processes


class Reaper:
    """Every process the bench starts, stopped on exit whatever happens (exceptions, Ctrl-C)."""

    def __init__(self) -> None:
        self.pids: dict[int, int | None] = {}

    def spawn(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> int:
        pid = procs.spawn_detached(argv, log, env=env)
        self.pids[pid] = procs.process_start_time(pid)
        return pid

    def stop(self, pid: int, timeout: float = 10.0) -> None:
        start = self.pids.pop(pid, None)
        procs.stop_process(pid, start, timeout=timeout)

    def stop_all(self) -> None:
        for pid in list(self.pids):
            self.stop(pid, timeout=5.0)


@dataclass
class Server:
    pid: int
    port: int
    log: Path
    ready_s: float


def wait_health(port: int, pid: int, log: Path, timeout: float, t0: float) -> float:
    """Seconds from t0 to /health answering 200; BenchError when the process dies or time runs out."""
    deadline = t0 + timeout
    while True:
        if not procs.is_alive(pid):
            raise BenchError(f"llama-server exited while loading: {coordinator.last_error(log)} (log {log})")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return time.perf_counter() - t0
            finally:
                conn.close()
        if time.perf_counter() > deadline:
            raise BenchError(f"llama-server not ready after {timeout:g}s: {coordinator.last_line(log)} (log {log})")
        time.sleep(0.02)


@dataclass
class Query:
    ttft_s: float
    total_s: float
    prompt_n: int
    prompt_tps: float | None
    gen_n: int
    gen_tps: float | None


def make_prompt(n_tokens: int, salt: int) -> str:
    vocab = _TEXT.split()
    words = [vocab[(i * 7 + salt) % len(vocab)] for i in range(max(1, n_tokens - 12))]
    return f"Request {salt}: continue this text. " + " ".join(words)


def stream_chat(
    port: int, prompt: str, max_tokens: int, timeout: float, cache_prompt: bool = False, max_chunks: int = 100000
) -> Query:
    """One streamed chat completion: TTFT = first chunk carrying content; rates from `timings`."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "cache_prompt": cache_prompt,
        "ignore_eos": True,
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    ttft = None
    timings: dict[str, Any] = {}
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"chat completion answered HTTP {resp.status}: {resp.read(300)!r}")
        for count, raw in enumerate(resp):
            if count > max_chunks or time.perf_counter() - t0 > timeout:
                raise BenchError(f"chat completion did not finish within {timeout:g}s / {max_chunks} chunks")
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            obj = json.loads(payload)
            if ttft is None and any((c.get("delta") or {}).get("content") for c in obj.get("choices", [])):
                ttft = time.perf_counter() - t0
            if obj.get("timings"):
                timings = obj["timings"]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise BenchError(f"chat completion on port {port} failed: {exc}") from exc
    finally:
        conn.close()
    total = time.perf_counter() - t0
    return Query(
        ttft_s=ttft if ttft is not None else total,
        total_s=total,
        prompt_n=int(timings.get("prompt_n", 0)),
        prompt_tps=timings.get("prompt_per_second"),
        gen_n=int(timings.get("predicted_n", 0)),
        gen_tps=timings.get("predicted_per_second"),
    )


# --------------------------------------------------------------------------- backends


class RpcBackends:
    """Start and stop k rpc-servers; endpoints as host:port."""

    kind = "loopback"
    fresh = True  # whether start() gives new processes with the cache dir asked for

    def start(self, k: int, threads: int | None, cache: Path | None) -> list[str]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def _rpc_argv(toolchain: Toolchain, spec: RpcServerSpec, threads: int | None) -> list[str]:
    argv = local_cluster.rpc_server_argv(toolchain, spec)
    if threads is None:  # upstream default: no -t (half the cores)
        i = argv.index("-t")
        del argv[i : i + 2]
    return argv


def wait_rpc_ready(endpoints: list[str], pids: Sequence[int], logs: Sequence[Path], timeout: float) -> None:
    """local_cluster.wait_ready, failing with the log of an rpc-server that died instead of a bare timeout."""
    try:
        local_cluster.wait_ready(endpoints, timeout)
    except SollolError as exc:
        dead = [(e, log) for e, pid, log in zip(endpoints, pids, logs, strict=True) if not procs.is_alive(pid)]
        detail = "; ".join(f"{e} exited: {coordinator.last_line(log)} (log {log})" for e, log in dead)
        raise BenchError(f"{exc}{'; ' + detail if detail else ''}") from exc


def _rpc_env(cache: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        env["LLAMA_CACHE"] = str(cache)
    return env


class SpawnedBackends(RpcBackends):
    """rpc-servers this run spawned (tracked by pid, stopped through the reaper)."""

    reaper: Reaper
    pids: list[int]

    def stop(self) -> None:
        for pid in self.pids:
            self.reaper.stop(pid)
        self.pids = []


class LoopbackBackends(SpawnedBackends):
    def __init__(self, toolchain: Toolchain, reaper: Reaper, logs: Path, timeout: float) -> None:
        self.toolchain, self.reaper, self.logs, self.timeout = toolchain, reaper, logs, timeout
        self.pids: list[int] = []

    def start(self, k: int, threads: int | None, cache: Path | None) -> list[str]:
        self.stop()
        ports = procs.free_ports("127.0.0.1", k, 50400)
        logs = []
        for port in ports:
            spec = RpcServerSpec("127.0.0.1", port, threads or 1, self.logs / f"rpc-{port}.log", cache)
            self.pids.append(self.reaper.spawn(_rpc_argv(self.toolchain, spec, threads), spec.log, _rpc_env(cache)))
            logs.append(spec.log)
        endpoints = [f"127.0.0.1:{p}" for p in ports]
        wait_rpc_ready(endpoints, self.pids, logs, self.timeout)
        return endpoints


class InventoryBackends(RpcBackends):
    """The inventory's running rpc-servers: nothing is started or stopped, caches are what they are."""

    kind = "inventory"
    fresh = False

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)

    def start(self, k: int, threads: int | None, cache: Path | None) -> list[str]:
        if k > len(self.backends):
            raise BenchError(f"--backends asks for {k} but the inventory lists {len(self.backends)}")
        endpoints = [b.endpoint for b in self.backends[:k]]
        local_cluster.wait_ready(endpoints, 10.0)
        return endpoints

    def stop(self) -> None:
        pass


class NetnsBackends(SpawnedBackends):
    """rpc-servers inside the namespaces of a NetLab, one per namespace, bound to its address."""

    kind = "netns"

    def __init__(self, toolchain: Toolchain, reaper: Reaper, logs: Path, timeout: float, count: int) -> None:
        self.lab = NetLab(count, prefix=f"sb{os.getpid() % 10_000_000}", subnet_base=NETNS_SUBNET)
        self.toolchain, self.reaper, self.logs, self.timeout = toolchain, reaper, logs, timeout
        self.pids: list[int] = []

    def up(self) -> None:
        self.lab.up()

    def shape(self, rate: str | None) -> None:
        self.lab.shape(rate)

    def start(self, k: int, threads: int | None, cache: Path | None) -> list[str]:
        self.stop()
        if k > self.lab.count:
            raise BenchError(f"the namespace lab has {self.lab.count} namespaces, {k} asked")
        endpoints, logs = [], []
        for i in range(k):
            spec = RpcServerSpec(self.lab.address(i), RPC_PORT_NETNS, threads or 1, self.logs / f"rpc-ns{i}.log", cache)
            argv = self.lab.exec_argv(i, _rpc_argv(self.toolchain, spec, threads))
            self.pids.append(self.reaper.spawn(argv, spec.log, _rpc_env(cache)))
            endpoints.append(f"{self.lab.address(i)}:{RPC_PORT_NETNS}")
            logs.append(spec.log)
        wait_rpc_ready(endpoints, self.pids, logs, self.timeout)
        return endpoints

    def down(self) -> None:
        self.stop()
        self.lab.down()


# --------------------------------------------------------------------------- models


@dataclass
class BenchModel:
    ref: str  # as given (synthetic:... for synthetic models)
    resolved_ref: str
    blob: Path
    info: GGUFInfo
    synthetic: bool

    @property
    def size_mib(self) -> float:
        return round(self.info.file_size / MIB, 1)

    def describe(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "synthetic": self.synthetic,
            "size_mib": self.size_mib,
            "layers": self.info.block_count,
            "n_embd": self.info.embedding_length,
            "file_type": self.info.file_type_name,
            "params": self.info.parameter_count,
        }


def tokenizer_source(ollama_models: str | None) -> Path:
    try:
        return resolve_model("smollm2:135m", ollama_models).blob
    except SollolError as exc:
        raise BenchError(
            f"synthetic models copy their tokenizer from smollm2:135m, which is missing ({exc}); run `make model`"
        ) from exc


def resolve_models(cfg: BenchConfig, store: Path) -> list[BenchModel]:
    specs = {m: parse_synthetic(m) for m in cfg.models}
    wanted = [s for s in specs.values() if s is not None]
    if wanted:
        synthetic_store(wanted, store, tokenizer_source(cfg.ollama_models))
    out = []
    for ref, spec in specs.items():
        r = resolve_model(spec.ref, store) if spec is not None else resolve_model(ref, cfg.ollama_models)
        out.append(BenchModel(ref, r.ref, r.blob, r.gguf or read_gguf(r.blob), spec is not None))
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class Settings:
    """How rpc-servers and llama-server are started for one row."""

    name: str = "sollol defaults"
    rpc_threads: int | None = 0  # 0: sollol default (cores // k); None: upstream default (no -t)
    server_threads: int | None = None  # None: sollol default (all cores) / upstream: no --threads
    batch: int | None = None
    upstream: bool = False  # no --device/--tensor-split/--threads/--fit off: llama-server's own defaults

    def rpc_threads_for(self, k: int) -> int | None:
        if self.rpc_threads == 0:
            return max(1, (os.cpu_count() or 1) // k)
        return self.rpc_threads


def grid_settings() -> list[Settings]:
    out = [Settings(), Settings("upstream defaults", rpc_threads=None, upstream=True)]
    for rt in (1, 2):
        for st in (1, 2):
            for b in (256, 512):
                out.append(Settings(f"rpc -t {rt}, server -t {st}, -b {b}", rt, st, b))
    return out


class Bench:
    def __init__(
        self, cfg: BenchConfig, toolchain: Toolchain, work: Path, log: Callable[[str], None] = lambda _m: None
    ) -> None:
        self.cfg, self.toolchain, self.work, self.say = cfg, toolchain, work, log
        self.reaper = Reaper()
        self.logs = work / "logs"
        self.rows: list[dict[str, Any]] = []
        self.comparisons: list[dict[str, Any]] = []
        self.baselines: dict[str, dict[str, Stat]] = {}
        self.notes: list[str] = []
        self._runs = 0

    # ---- llama-server

    def _port(self) -> int:
        return procs.free_ports("127.0.0.1", 1, 18700)[0]

    def server_argv(
        self, model: BenchModel, port: int, endpoints: Sequence[str] | None, settings: Settings
    ) -> list[str]:
        cores = os.cpu_count() or 1
        if not endpoints:  # the local-only baseline: plain llama-server
            argv = [str(self.toolchain.llama_server), "--model", str(model.blob), "--ctx-size", str(self.cfg.ctx)]
            argv += ["--threads", str(settings.server_threads or cores), "--host", "127.0.0.1", "--port", str(port)]
            return argv
        if settings.upstream:
            return [
                str(self.toolchain.llama_server), "--model", str(model.blob), "--rpc", ",".join(endpoints),
                "-ngl", "99", "--ctx-size", str(self.cfg.ctx), "--host", "127.0.0.1", "--port", str(port),
            ]  # fmt: skip
        backends = []
        for i, endpoint in enumerate(endpoints):
            host, port_text = endpoint.rsplit(":", 1)
            backends.append(Backend(f"bench-{i}", host, int(port_text)))
        probes = list(zip(backends, rpc.probe_all(endpoints), strict=True))
        plan = plan_placement(model.info, build_slots(probes), self.cfg.ctx, model.resolved_ref)
        extra = ["--batch-size", str(settings.batch)] if settings.batch else []
        opts = StartOptions(
            port=port, n_ctx=self.cfg.ctx, threads=settings.server_threads, extra_args=extra, alias=model.resolved_ref
        )
        return coordinator.build_command(self.toolchain, model.blob, plan, opts)

    def load(self, argv: Sequence[str], port: int, tag: str) -> Server:
        self._runs += 1
        log = self.logs / f"server-{self._runs:03d}-{tag}.log"
        t0 = time.perf_counter()
        pid = self.reaper.spawn(argv, log)
        try:
            ready = wait_health(port, pid, log, self.cfg.timeout, t0)
        except BaseException:
            self.reaper.stop(pid)
            raise
        return Server(pid, port, log, ready)

    def serve(self, model: BenchModel, endpoints: Sequence[str] | None, settings: Settings, tag: str) -> Server:
        port = self._port()
        return self.load(self.server_argv(model, port, endpoints, settings), port, tag)

    def unload(self, server: Server) -> None:
        self.reaper.stop(server.pid)

    def query(self, server: Server, salt: int, cache_prompt: bool = False) -> Query:
        return stream_chat(
            server.port, make_prompt(self.cfg.prompt_tokens, salt), self.cfg.tokens, self.cfg.timeout, cache_prompt
        )

    # ---- rows

    def add_row(
        self,
        section: str,
        model: BenchModel,
        setup: str,
        k: int,
        link: str,
        settings: str,
        samples: dict[str, list[float]],
    ) -> dict[str, Any]:
        metrics = {name: s for name, vals in samples.items() if (s := summarize(vals)) is not None}
        if setup == "baseline" and section == "sharding":
            self.baselines[model.ref] = metrics
        row = {
            "section": section,
            "model": model.ref,
            "size_mib": model.size_mib,
            "setup": setup,
            "backends": k,
            "link": link,
            "settings": settings,
            "metrics": {n: asdict(s) for n, s in metrics.items()},
            "ratios": row_ratios(metrics, self.baselines.get(model.ref)),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        self.rows.append(row)
        self.say(_progress_line(row))
        return row

    @staticmethod
    def _take(samples: dict[str, list[float]], q: Query) -> None:
        for name in ("ttft_s", "prompt_tps", "gen_tps", "prompt_n", "gen_n"):
            value = getattr(q, name)
            if value is not None:
                samples.setdefault(name, []).append(value)

    def measure(
        self,
        model: BenchModel,
        backends: RpcBackends | None,
        k: int,
        settings: Settings,
        nocache: bool = False,
        queries: bool = True,
        rounds: Sequence[int] | None = None,
    ) -> dict[str, list[float]]:
        """Repeats of: cold load + query, warm load + query (and a load without -c when `nocache`)."""
        samples: dict[str, list[float]] = {}
        for r in range(self.cfg.repeats) if rounds is None else rounds:
            self._runs += 1
            cache = self.work / f"rpc-cache-{self._runs:03d}"
            endpoints = None
            if backends is not None:
                use_cache = cache if not settings.upstream else None
                endpoints = backends.start(k, settings.rpc_threads_for(k), use_cache)
            try:
                for phase in ("cold", "warm"):
                    server = self.serve(model, endpoints, settings, phase)
                    try:
                        samples.setdefault(f"load_{phase}_s", []).append(server.ready_s)
                        if queries:
                            self._take(samples, self.query(server, salt=r * 2 + (phase == "warm")))
                    finally:
                        self.unload(server)
                if nocache and backends is not None:
                    endpoints = backends.start(k, settings.rpc_threads_for(k), None)
                    server = self.serve(model, endpoints, settings, "nocache")
                    samples.setdefault("load_nocache_s", []).append(server.ready_s)
                    self.unload(server)
            finally:
                if backends is not None:
                    backends.stop()
                shutil.rmtree(cache, ignore_errors=True)
        return samples

    def coordinator_rows(self, model: BenchModel, backends: RpcBackends, k: int, link: str) -> None:
        """Persistent coordinator vs per-query start; `sollol-ops up` vs raw llama-server to ready."""
        settings = Settings()
        endpoints = backends.start(k, settings.rpc_threads_for(k), self.work / "rpc-cache-coord")
        try:
            prompt_salt = 999
            server = self.serve(model, endpoints, settings, "persistent")
            persistent: dict[str, list[float]] = {}
            try:
                self.query(server, prompt_salt, cache_prompt=True)  # the query a user repeats
                for _ in range(self.cfg.repeats):  # its prompt is cached: only TTFT means something here
                    persistent.setdefault("ttft_s", []).append(self.query(server, prompt_salt, True).ttft_s)
            finally:
                self.unload(server)
            per_query: dict[str, list[float]] = {"ttft_s": []}
            for _ in range(self.cfg.repeats):
                port = self._port()
                t0 = time.perf_counter()
                server = self.load(self.server_argv(model, port, endpoints, settings), port, "per-query")
                try:
                    q = self.query(server, prompt_salt, cache_prompt=True)
                    per_query["ttft_s"].append(time.perf_counter() - t0 - q.total_s + q.ttft_s)
                    per_query.setdefault("ready_s", []).append(server.ready_s)
                finally:
                    self.unload(server)
            a = self.add_row("coordinator", model, "rpc", k, link, "persistent coordinator", persistent)
            b = self.add_row("coordinator", model, "rpc", k, link, "coordinator per query", per_query)
            self._compare(model, "TTFT of a repeated query", a, b, "ttft_s")
            up, raw = self._up_vs_raw(model, endpoints)
            a = self.add_row("coordinator", model, "rpc", k, link, "raw llama-server --rpc", {"ready_s": raw})
            b = self.add_row("coordinator", model, "rpc", k, link, "sollol-ops up", {"ready_s": up})
            self._compare(model, "start to ready", a, b, "ready_s")
        finally:
            backends.stop()

    def _up_vs_raw(self, model: BenchModel, endpoints: Sequence[str]) -> tuple[list[float], list[float]]:
        inv = self.work / "up-inventory.ini"
        hosts = [e.rsplit(":", 1) for e in endpoints]
        lines = ["[rpc_servers]"] + [
            f"bench-{i} ansible_host={h} sollol_rpc_port={p}" for i, (h, p) in enumerate(hosts)
        ]
        inv.write_text("\n".join([*lines, "", "[coordinator]", "localhost ansible_connection=local", ""]))
        env = dict(os.environ)
        env.update(XDG_STATE_HOME=str(self.work / "up-state"), XDG_CACHE_HOME=str(self.work / "up-cache"))
        env.pop("SOLLOL_INVENTORY", None)
        store = str(model.blob.parent.parent)
        cli = [sys.executable, "-m", "sollol_ops.cli.main", "-i", str(inv)]
        up_times, raw_times = [], []
        for _ in range(self.cfg.repeats):
            port = self._port()
            argv = [*cli, "up", model.resolved_ref, "--port", str(port), "-c", str(self.cfg.ctx)]
            argv += ["--ollama-models", store, "--timeout", str(self.cfg.timeout)]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=self.cfg.timeout)
                up_times.append(time.perf_counter() - t0)
            finally:
                subprocess.run([*cli, "down"], capture_output=True, env=env, timeout=60, check=False)
            if proc.returncode != 0:
                raise BenchError(f"`sollol-ops up` failed in the bench: {proc.stderr.strip()[:300]}")
            port = self._port()
            raw = [str(self.toolchain.llama_server), "--model", str(model.blob), "--rpc", ",".join(endpoints)]
            raw += ["-ngl", "99", "--ctx-size", str(self.cfg.ctx), "--host", "127.0.0.1", "--port", str(port)]
            server = self.load(raw, port, "raw")
            raw_times.append(server.ready_s)
            self.unload(server)
        return up_times, raw_times

    def _compare(self, model: BenchModel, what: str, a: dict[str, Any], b: dict[str, Any], metric: str) -> None:
        am, bm = a["metrics"].get(metric), b["metrics"].get(metric)
        if am and bm:
            self.comparisons.append(
                {
                    "model": model.ref,
                    "what": what,
                    "a": a["settings"],
                    "b": b["settings"],
                    "metric": metric,
                    "a_median": round(am["median"], 4),
                    "b_median": round(bm["median"], 4),
                    "ratio": _round(ratio(bm["median"], am["median"])),
                }
            )

    # ---- the whole session

    def run(self, models: Sequence[BenchModel]) -> None:
        cfg = self.cfg
        kmax = max(cfg.backends)
        loop: RpcBackends
        if cfg.use_inventory:
            loop = InventoryBackends(cfg.inventory_backends)
            self.notes.append("inventory backends: cold = first load of the run (their caches are not cleared)")
        else:
            loop = LoopbackBackends(self.toolchain, self.reaper, self.logs, 30.0)
        loop_link = "inventory" if cfg.use_inventory else "loopback"
        shaped = [x for x in cfg.links if x != "none"]
        lab: NetnsBackends | None = None
        if shaped and not cfg.use_inventory:
            lab = NetnsBackends(self.toolchain, self.reaper, self.logs, 60.0, kmax)
            self.notes.append(NO_LATENCY_NOTE)
        elif shaped:
            self.notes.append("--use-inventory: --links ignored (no shaping of real hosts)")
        try:
            if lab is not None:
                lab.up()
            for model in models:
                self.say(f"== {model.ref} ({model.size_mib:,.0f} MiB)")
                # Rounds interleave the setups, so a burst of other load on the host hits them alike.
                setups: list[tuple[RpcBackends | None, int]] = [(None, 0)]
                if "none" in cfg.links or cfg.use_inventory:
                    setups += [(loop, k) for k in cfg.backends]
                per_setup: list[dict[str, list[float]]] = [{} for _ in setups]
                for r in range(cfg.repeats):
                    for (backends, k), acc in zip(setups, per_setup, strict=True):
                        for name, vals in self.measure(model, backends, k, Settings(), rounds=[r]).items():
                            acc.setdefault(name, []).extend(vals)
                for (backends, k), samples in zip(setups, per_setup, strict=True):
                    if backends is None:
                        self.add_row("sharding", model, "baseline", 0, "local", "plain llama-server", samples)
                    else:
                        self.add_row("sharding", model, "rpc", k, loop_link, "sollol defaults", samples)
                if lab is not None:
                    for link in shaped:
                        lab.shape(None if link == "bridge" else link)
                        samples = self.measure(model, lab, kmax, Settings(), nocache=True)
                        self.add_row("links", model, "rpc", kmax, link, "sollol defaults", samples)
                    lab.shape(None)
                if "none" in cfg.links or cfg.use_inventory:
                    self.coordinator_rows(model, loop, kmax, loop_link)
            if cfg.grid and models:
                model = models[0]
                self.say(f"== grid on {model.ref}, {kmax} backend(s)")
                for s in grid_settings():
                    if cfg.use_inventory and s.rpc_threads != 0:
                        continue  # the inventory's rpc-servers run with their own threads
                    self.add_row("grid", model, "rpc", kmax, loop_link, s.name, self.measure(model, loop, kmax, s))
        finally:
            loop.stop()
            self.reaper.stop_all()
            if lab is not None:
                lab.down()


def _progress_line(row: dict[str, Any]) -> str:
    m = row["metrics"]

    def g(name: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(m[name]["median"]) if name in m else "-"

    who = "baseline" if row["setup"] == "baseline" else f"rpc x{row['backends']} {row['link']}"
    return (
        f"  {row['section']:<11} {who:<18} {row['settings']:<26} cold {g('load_cold_s')}s warm {g('load_warm_s')}s "
        f"gen {g('gen_tps', '{:.1f}')} tok/s ttft {g('ttft_s', '{:.3f}')}s ready {g('ready_s')}s"
    )


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so processes, namespaces and the bridge are still removed."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    root = cache_dir() / "bench" / f"run-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        yield root
    except BaseException:
        kept = root.parent / "failed-logs"  # the logs of the last failed run, for `sollol-ops bench` errors
        shutil.rmtree(kept, ignore_errors=True)
        with contextlib.suppress(OSError):
            shutil.copytree(root / "logs", kept)
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """The whole benchmark session; returns the JSON document described in the module docstring."""
    if cfg.repeats < 1 or cfg.tokens < 1 or cfg.prompt_tokens < 1:
        raise BenchError("--repeats, --tokens and --prompt-tokens must be at least 1")
    toolchain = find_toolchain()
    started = time.time()
    t0 = time.perf_counter()
    machine = machine_info(toolchain)
    with _workdir() as work, _sigterm_interrupts():
        models = resolve_models(cfg, work / "store")
        bench = Bench(cfg, toolchain, work, log)
        bench.run(models)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "schema": SCHEMA,
        "started_at": round(started, 3),
        "wall_s": round(time.perf_counter() - t0, 2),
        "command": cfg.command,
        "machine": machine,
        "settings": {
            "repeats": cfg.repeats,
            "tokens": cfg.tokens,
            "prompt_tokens": cfg.prompt_tokens,
            "ctx": cfg.ctx,
            "backends": cfg.backends,
            "links": cfg.links,
            "grid": cfg.grid,
            "use_inventory": cfg.use_inventory,
        },
        "models": [m.describe() for m in models],
        "rows": bench.rows,
        "comparisons": bench.comparisons,
        "notes": bench.notes,
    }


# --------------------------------------------------------------------------- rendering


def _med(row: dict[str, Any], name: str) -> float | None:
    stat = row["metrics"].get(name)
    return None if stat is None else stat["median"]


def fmt_stat(row: dict[str, Any], name: str, digits: int = 2) -> str:
    stat = row["metrics"].get(name)
    if stat is None:
        return "-"
    if stat["n"] == 1 or stat["min"] == stat["max"]:
        return f"{stat['median']:.{digits}f}"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def fmt_ratio(row: dict[str, Any], name: str) -> str:
    value = row["ratios"].get(name)
    return "-" if value is None else f"{value:.2f}x"


def _who(row: dict[str, Any]) -> str:
    return "local only" if row["setup"] == "baseline" else f"{row['backends']} rpc ({row['link']})"


TABLE_HEADERS = (
    "MODEL", "MiB", "SETUP", "SETTINGS", "COLD LOAD s", "WARM LOAD s", "NO -c LOAD s",
    "PROMPT tok/s", "GEN tok/s", "GEN x", "TTFT s", "TTFT x", "READY s", "LOAD x",
)  # fmt: skip


def compact_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells, leaving out the metric columns no row has a value in."""
    cells = table_rows(rows)
    keep = [i for i in range(len(TABLE_HEADERS)) if i < 4 or any(row[i] != "-" for row in cells)]
    return [TABLE_HEADERS[i] for i in keep], [[row[i] for i in keep] for row in cells]


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        load_ratio = r["ratios"].get("load_cold_s") or r["ratios"].get("ready_s")
        out.append(
            [
                r["model"],
                f"{r['size_mib']:,.0f}",
                _who(r),
                r["settings"],
                fmt_stat(r, "load_cold_s"),
                fmt_stat(r, "load_warm_s"),
                fmt_stat(r, "load_nocache_s"),
                fmt_stat(r, "prompt_tps", 1),
                fmt_stat(r, "gen_tps", 1),
                fmt_ratio(r, "gen_tps"),
                fmt_stat(r, "ttft_s", 3),
                fmt_ratio(r, "ttft_s"),
                fmt_stat(r, "ready_s"),
                "-" if load_ratio is None else f"{load_ratio:.2f}x",
            ]
        )
    return out


def render_text(doc: dict[str, Any]) -> str:
    from sollol_ops.ui import table

    m = doc["machine"]
    headers, cells = compact_table(doc["rows"])
    lines = [
        f"machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_mib']:,} MiB RAM, llama.cpp {m['llama_cpp_version']}"
        f" (RPC {m['rpc_protocol']}); load average {m['loadavg_start'][0]} -> {(m['loadavg_end'] or ['?'])[0]}",
        f"settings: {doc['settings']['repeats']} repeat(s), {doc['settings']['tokens']} generated / "
        f"{doc['settings']['prompt_tokens']} prompt tokens, ctx {doc['settings']['ctx']}; median (min-max); "
        "x = ratio to the local-only baseline of the same model in this run",
        "",
        table(headers, cells, right=(1, *range(4, len(headers)))),
    ]
    if doc["comparisons"]:
        lines += ["", "comparisons (ratio = b / a):"]
        lines += [
            f"  {c['model']}: {c['what']}: {c['a']} {c['a_median']:.3f}s vs {c['b']} {c['b_median']:.3f}s "
            f"-> {c['ratio']:.2f}x"
            for c in doc["comparisons"]
        ]
    lines += [f"note: {n}" for n in doc["notes"]]
    lines.append(f"wall time: {doc['wall_s']:.1f}s")
    return "\n".join(lines)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(out)


SECTION_TITLES = {
    "sharding": "## Sharding vs. a single node",
    "coordinator": "## Persistent coordinator vs. per-query start",
    "links": "## Links and the rpc-server cache",
    "grid": "## Defaults vs. tuned settings",
}


def render_markdown(doc: dict[str, Any], plot: str | None = None) -> dict[str, str]:
    """Markdown sections keyed by their `## ` heading, for the sections this run has rows for."""
    m, s = doc["machine"], doc["settings"]
    machine = (
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_mib']:,} MiB RAM, kernel {m['kernel']}, "
        f"llama.cpp {m['llama_cpp_version']} (RPC protocol {m['rpc_protocol']}); load average "
        f"{m['loadavg_start'][0]} at the start, {(m['loadavg_end'] or ['?'])[0]} at the end (other work shares "
        f"these cores, so figures are noisy). Command: `{doc['command']}` ({s['repeats']} repeat(s), "
        f"{s['tokens']} generated / {s['prompt_tokens']} prompt tokens, ctx {s['ctx']}; run took "
        f"{doc['wall_s']:.0f} s). Cells: median (min-max); `x`: ratio to the local-only baseline of the same "
        "model measured in the same run."
    )
    sections: dict[str, str] = {}
    for key, title in SECTION_TITLES.items():
        rows = [r for r in doc["rows"] if r["section"] == key]
        if not rows or all(r["setup"] == "baseline" for r in rows):
            continue  # a run of baselines only (e.g. --links without none) leaves this section alone
        if key in ("links", "grid"):  # show the baseline and loopback reference rows too
            refs = [
                r
                for r in doc["rows"]
                if r["section"] == "sharding"
                and r["model"] in {x["model"] for x in rows}
                and (r["setup"] == "baseline" or r["backends"] == rows[0]["backends"])
            ]
            rows = refs + rows
        body = [title, "", machine, ""]
        body.append(_md_table(*compact_table(rows)))
        comps = [c for c in doc["comparisons"] if key == "coordinator"]
        if comps:
            body += ["", "| model | what | a | b | ratio b/a |", "|---|---|---|---|---|"]
            body += [
                f"| {c['model']} | {c['what']} | {c['a']}: {c['a_median']:.3f} s | {c['b']}: {c['b_median']:.3f} s "
                f"| {c['ratio']:.2f}x |"
                for c in comps
            ]
        if key == "links":
            body += ["", f"Note: {NO_LATENCY_NOTE}. COLD: fresh rpc-servers with an empty `-c` cache (filling it); "
                     "WARM: llama-server restarted against the same rpc-servers (cache filled); NO -c: rpc-servers "
                     "without the cache. The cache only holds tensors over 10 MiB."]  # fmt: skip
        if key == "grid":
            body += ["", "Upstream defaults: rpc-server without `-t` (half the cores), llama-server with `--rpc` "
                     "`-ngl 99` and its own split, threads and batch size."]  # fmt: skip
        if key == "sharding":
            body += ["", "All setups share this host's cores: `N rpc` runs N rpc-servers (cores split between them) "
                     "and llama-server side by side, so on one machine the ratios show what RPC and thread "
                     "placement cost or save, not what extra hardware buys."]  # fmt: skip
        if key == "sharding" and plot:
            body += ["", f"![cost vs. model size]({plot})"]
        body += [f"\n_{n}_" for n in doc["notes"] if key != "links" or n != NO_LATENCY_NOTE]
        sections[title] = "\n".join(body).rstrip() + "\n"
    return sections


def merge_markdown(existing: str, sections: dict[str, str], title: str = "# Benchmarks") -> str:
    """Replace the `## ` sections this run wrote, keep every other section (in place), append new ones."""
    if not existing.strip():
        existing = f"{title}\n"
    parts = re.split(r"(?m)^(?=## )", existing)
    out, seen = [], set()
    for part in parts:
        heading = part.splitlines()[0].strip() if part.startswith("## ") else None
        if heading in sections:
            out.append(sections[heading].rstrip() + "\n\n")
            seen.add(heading)
        else:
            out.append(part if part.endswith("\n\n") or not part.startswith("## ") else part.rstrip() + "\n\n")
    for heading, text in sections.items():
        if heading not in seen:
            if out and not out[-1].endswith("\n\n"):
                out[-1] = out[-1].rstrip() + "\n\n"
            out.append(text.rstrip() + "\n\n")
    return "".join(out).rstrip() + "\n"


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise BenchError("--plot needs matplotlib: pip install matplotlib (or pip install 'sollol-ops[plot]')") from exc


def plot(doc: dict[str, Any], path: Path) -> None:
    """Generation rate and cold load time against model size, one line per setup."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for r in doc["rows"]:
        if r["section"] not in ("sharding", "links") or r["settings"] not in ("plain llama-server", "sollol defaults"):
            continue
        series.setdefault(_who(r), []).append((r["size_mib"], _med(r, "gen_tps"), _med(r, "load_cold_s")))
    for label, pts in series.items():
        pts.sort()
        xs = [p[0] for p in pts]
        ax1.plot(xs, [p[1] for p in pts], marker="o", label=label)
        ax2.plot(xs, [p[2] for p in pts], marker="o", label=label)
    ax1.set(xlabel="model size (MiB)", ylabel="generation tok/s (median)", title="Generation rate")
    ax2.set(xlabel="model size (MiB)", ylabel="seconds to ready (median)", title="Cold load")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(
        f"sollol-ops bench: {m['cpu_model']}, {m['cores']} cores, llama.cpp {m['llama_cpp_version']}", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
