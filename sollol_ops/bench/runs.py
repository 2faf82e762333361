"""The Bench: rows of cold/warm loads and streamed queries per setup, the coordinator comparisons, the
shaped links and the settings grid, interleaved so that other load on the host hits every setup alike."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sollol_ops
from sollol_ops import procs, timings
from sollol_ops.bench import coordinator_device
from sollol_ops.bench.backends import InventoryBackends, LoopbackBackends, NetnsBackends, Reaper, RpcBackends
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.server import Query, Server, server_argv, stream_chat, upstream_argv, wait_health
from sollol_ops.bench.settings import NO_LATENCY_NOTE, BenchConfig, Settings, grid_settings
from sollol_ops.bench.stats import Stat, _round, ratio, row_ratios, summarize
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import BenchError

UP_AFTER = "sollol-ops up"
UP_BEFORE = "sollol-ops up (before)"
RAW = "raw llama-server --rpc"
WALL = "wall: spawn to return"
INVENTORY_COLD = "inventory, empty cache (ansible-inventory; warm-up run)"

_TEXT = (
    "the quick brown fox jumps over a lazy dog while seven small birds sing about rain and "
    "sunlight in an old green garden near the river where children play every summer"
)


def make_prompt(n_tokens: int, salt: int) -> str:
    vocab = _TEXT.split()
    words = [vocab[(i * 7 + salt) % len(vocab)] for i in range(max(1, n_tokens - 12))]
    return f"Request {salt}: continue this text. " + " ".join(words)


class BenchBase:
    """What every bench of a session collects, the lists of the JSON document (sollol_ops.bench): one
    constructor for the sharding Bench and the GatewayBench, so the session reads the same fields of both."""

    def __init__(
        self, cfg: BenchConfig, toolchain: Toolchain, work: Path, log: Callable[[str], None] = lambda _m: None
    ) -> None:
        self.cfg, self.toolchain, self.work, self.say = cfg, toolchain, work, log
        self.reaper = Reaper()
        self.logs = work / "logs"
        self.rows: list[dict[str, Any]] = []
        self.comparisons: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.section_notes: dict[str, list[str]] = {}
        self.staging: list[dict[str, Any]] = []
        self.up_phases: dict[str, dict[str, dict[str, list[float]]]] = {}  # model -> label -> phase -> samples

    def add_comparison(
        self,
        section: str,
        model: BenchModel,
        what: str,
        a: dict[str, Any],
        b: dict[str, Any],
        metric: str,
        goal: tuple[str, float] | None = None,
    ) -> None:
        """b against a on `metric` (ratio of the row medians), with the issue's goal when there is one."""
        am, bm = a["metrics"].get(metric), b["metrics"].get(metric)
        if not am or not bm:
            return
        value = _round(ratio(bm["median"], am["median"]))
        met = None
        if goal is not None and value is not None:
            met = value <= goal[1] if goal[0] == "<=" else value >= goal[1]
        self.comparisons.append(
            {
                "section": section,
                "model": model.ref,
                "what": what,
                "a": a["settings"],
                "b": b["settings"],
                "metric": metric,
                "unit": "tok/s" if metric.endswith("_tps") else "s",
                "a_median": round(am["median"], 6),  # as the rows show them (rounded only for the text)
                "b_median": round(bm["median"], 6),
                "ratio": value,
                "goal": None if goal is None else f"{goal[0]} {goal[1]:g}x",
                "met": met,
            }
        )

    def run(self, models: Sequence[BenchModel]) -> None:
        raise NotImplementedError


class Bench(BenchBase):
    def __init__(
        self, cfg: BenchConfig, toolchain: Toolchain, work: Path, log: Callable[[str], None] = lambda _m: None
    ) -> None:
        super().__init__(cfg, toolchain, work, log)
        self.baselines: dict[str, dict[str, Stat]] = {}
        self._runs = 0

    # ---- llama-server

    def _port(self) -> int:
        # From a place of this run's own (by pid): two benches on one host (other users, CI) that both took
        # the lowest free port would race for it between the check and llama-server's bind.
        return procs.free_ports("127.0.0.1", 1, 18700 + (os.getpid() * 7) % 8000)[0]

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
        for attempt in range(3):
            port = self._port()
            try:
                return self.load(server_argv(self.toolchain, model, port, endpoints, settings, self.cfg.ctx), port, tag)
            except BenchError as exc:  # another process took the port between the check and the bind
                if ("couldn't bind" not in str(exc) and "HTTP server error" not in str(exc)) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

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
                server = self.load(
                    server_argv(self.toolchain, model, port, endpoints, settings, self.cfg.ctx), port, "per-query"
                )
                try:
                    q = self.query(server, prompt_salt, cache_prompt=True)
                    per_query["ttft_s"].append(time.perf_counter() - t0 - q.total_s + q.ttft_s)
                    per_query.setdefault("ready_s", []).append(server.ready_s)
                finally:
                    self.unload(server)
            a = self.add_row("coordinator", model, "rpc", k, link, "persistent coordinator", persistent)
            b = self.add_row("coordinator", model, "rpc", k, link, "coordinator per query", per_query)
            self.add_comparison("coordinator", model, "TTFT of a repeated query", a, b, "ttft_s")
            up, raw = self._up_vs_raw(model, endpoints)
            a = self.add_row("coordinator", model, "rpc", k, link, "raw llama-server --rpc", {"ready_s": raw})
            b = self.add_row("coordinator", model, "rpc", k, link, "sollol-ops up", {"ready_s": up})
            self.add_comparison("coordinator", model, "start to ready", a, b, "ready_s")
        finally:
            backends.stop()

    def _up_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(XDG_STATE_HOME=str(self.work / "up-state"), XDG_CACHE_HOME=str(self.work / "up-cache"))
        env.pop("SOLLOL_INVENTORY", None)
        env[timings.TRACE_ENV] = "1"
        if env.pop("PYTHONDONTWRITEBYTECODE", None):
            # An installed sollol-ops has compiled bytecode; without it every `up` would compile its modules.
            env["PYTHONPYCACHEPREFIX"] = str(self.work / "pycache")
            note = "`up` ran with a bytecode cache (PYTHONDONTWRITEBYTECODE was set here), as an installed package has"
            if note not in self.notes:
                self.notes.append(note)
        return env

    def _up_vs_raw(self, model: BenchModel, endpoints: Sequence[str]) -> tuple[list[float], list[float]]:
        """Repeats of `sollol-ops up` (and of the --up-before tree's) and of a raw llama-server --rpc, interleaved;
        each `up` traced (SOLLOL_OPS_TRACE=1), its phases kept in self.up_phases."""
        inv = self.work / "up-inventory.ini"
        hosts = [e.rsplit(":", 1) for e in endpoints]
        lines = ["[rpc_servers]"] + [
            f"bench-{i} ansible_host={h} sollol_rpc_port={p}" for i, (h, p) in enumerate(hosts)
        ]
        inv.write_text("\n".join([*lines, "", "[coordinator]", "localhost ansible_connection=local", ""]))
        # Each tree's `up` imports that tree's sollol_ops, and only it: PYTHONPATH names the tree and -P keeps
        # Python from putting the working directory (a checkout has sollol_ops/ in it) before it.
        env = dict(self._up_env(), PYTHONPATH=str(Path(sollol_ops.__file__).resolve().parent.parent))
        store = str(model.blob.parent.parent)
        trees: list[tuple[str, dict[str, str]]] = [(UP_AFTER, env)]
        if self.cfg.up_before is not None:
            # its own inventory cache, so that its warm-up pays for ansible-inventory as the other one does
            before = dict(env, PYTHONPATH=str(self.cfg.up_before), XDG_CACHE_HOME=str(self.work / "up-cache-before"))
            trees.insert(0, (UP_BEFORE, before))
        cli = [sys.executable, "-P", "-m", "sollol_ops.cli.main", "-i", str(inv)]
        times: dict[str, list[float]] = {label: [] for label, _ in trees}
        phases = self.up_phases.setdefault(model.ref, {})
        for label, tree_env in trees:
            # Warm-up, as an operator's first look would be: fills the inventory cache (ansible-inventory runs
            # once) and the bytecode cache. Its inventory phase is kept as the empty-cache figure.
            argv = [*cli, "up", model.resolved_ref, "--dry-run", "-c", str(self.cfg.ctx), "--ollama-models", store]
            proc = subprocess.run(argv, capture_output=True, text=True, env=tree_env, timeout=self.cfg.timeout)
            if proc.returncode != 0:
                raise BenchError(f"`sollol-ops up --dry-run` failed in the bench: {_untimed(proc.stderr)[:300]}")
            for name, seconds in timings.parse_lines(proc.stderr):
                if name == "inventory":
                    phases.setdefault(label, {}).setdefault(INVENTORY_COLD, []).append(seconds)
        raw_times = []
        for r in range(self.cfg.repeats):
            for label, tree_env in trees if r % 2 == 0 else trees[::-1]:  # neither always runs first
                port = self._port()
                argv = [*cli, "up", model.resolved_ref, "--port", str(port), "-c", str(self.cfg.ctx)]
                argv += ["--ollama-models", store, "--timeout", str(self.cfg.timeout)]
                t0 = time.perf_counter()
                try:
                    proc = subprocess.run(argv, capture_output=True, text=True, env=tree_env, timeout=self.cfg.timeout)
                    times[label].append(time.perf_counter() - t0)
                finally:
                    subprocess.run([*cli, "down"], capture_output=True, env=tree_env, timeout=60, check=False)
                if proc.returncode != 0:
                    raise BenchError(f"`sollol-ops up` failed in the bench: {_untimed(proc.stderr)[:300]}")
                acc = phases.setdefault(label, {})
                for name, seconds in timings.parse_lines(proc.stderr):
                    acc.setdefault(name, []).append(seconds)
                acc.setdefault(WALL, []).append(times[label][-1])
            port = self._port()
            server = self.load(upstream_argv(self.toolchain, model, port, endpoints, self.cfg.ctx), port, "raw")
            raw_times.append(server.ready_s)
            self.unload(server)
            phases.setdefault(RAW, {}).setdefault(WALL, []).append(server.ready_s)
        if UP_BEFORE in times:
            self.add_row(
                "coordinator", model, "rpc", len(endpoints), "loopback", UP_BEFORE, {"ready_s": times[UP_BEFORE]}
            )
        return times[UP_AFTER], raw_times

    def staging_rows(self, model: BenchModel, lab: NetnsBackends, k: int, link: str) -> None:
        """Per repeat, on fresh rpc-servers with empty caches of their own: the first load unstaged (the cache
        fills), then on new empty caches: staging (the client inside each worker's namespace, from a pack),
        the first load staged, and a warm load. Bytes sent into the namespaces are counted on the veths."""
        from sollol_ops.cluster.inventory import Backend
        from sollol_ops.stage import staging

        settings = Settings()
        samples: dict[str, dict[str, list[float]]] = {"unstaged": {}, "staged": {}, "warm": {}}
        stage_s: list[float] = []

        def timed_load(tag: str, endpoints: Sequence[str]) -> tuple[float, int]:
            before = [lab.tx_bytes(i) for i in range(k)]
            server = self.serve(model, endpoints, settings, tag)
            self.unload(server)
            return server.ready_s, sum(lab.tx_bytes(i) - b for i, b in enumerate(before))

        for r in range(self.cfg.repeats):
            for phase in ("unstaged", "staged"):
                self._runs += 1
                cache = self.work / f"stage-cache-{self._runs:03d}"
                endpoints = lab.start(k, settings.rpc_threads_for(k), cache, own_caches=True)
                try:
                    if phase == "staged":
                        backends = [Backend(f"bench-{i}", *_split(e)) for i, e in enumerate(endpoints)]
                        prepared = staging.place(model.resolved_ref, "bench", model.blob, model.info, backends,
                                                 self.cfg.ctx)  # fmt: skip
                        dirs = {e: lab.cache_dir(cache, i) for i, e in enumerate(endpoints)}
                        t0 = time.perf_counter()
                        staging.stage_via_commands(
                            prepared, self.work / f"packs-{self._runs:03d}", dirs,
                            lambda share, eps=endpoints: lab.lab.exec_argv(eps.index(share.endpoint), []),
                            "bench", root=self.work / "ledger",
                        )  # fmt: skip
                        stage_s.append(time.perf_counter() - t0)
                    load_s, sent = timed_load(phase, endpoints)
                    samples[phase].setdefault("load_s", []).append(load_s)
                    samples[phase].setdefault("sent_mib", []).append(sent / (1 << 20))
                    if phase == "staged":
                        load_s, sent = timed_load("warm", endpoints)
                        samples["warm"].setdefault("load_s", []).append(load_s)
                        samples["warm"].setdefault("sent_mib", []).append(sent / (1 << 20))
                finally:
                    lab.stop()
                    shutil.rmtree(cache, ignore_errors=True)
                    shutil.rmtree(self.work / f"packs-{self._runs:03d}", ignore_errors=True)
            last = [f"{p} {m['load_s'][-1]:.2f}s/{m['sent_mib'][-1]:.0f} MiB" for p, m in samples.items()]
            self.say(f"  staging     rpc x{k} {link:<10} round {r + 1}: " + ", ".join(last))
        stats = {p: {n: summarize(v) for n, v in m.items()} for p, m in samples.items()}
        rate = link_rate_bytes(link)
        unstaged, staged_load = stats["unstaged"]["load_s"], stats["staged"]["load_s"]
        sent = stats["unstaged"]["sent_mib"]
        if not (unstaged and staged_load and sent):
            raise BenchError("the staging rows measured nothing")
        limit_s = sent.median * (1 << 20) / rate
        self.staging.append(
            {
                "model": model.ref,
                "size_mib": model.size_mib,
                "backends": k,
                "link": link,
                "metrics": {p: {n: asdict(st) for n, st in m.items() if st} for p, m in stats.items()},
                "stage_s": asdict(summarize(stage_s)) if summarize(stage_s) else None,
                "staged_over_unstaged": _round(ratio(staged_load.median, unstaged.median)),
                "link_limit_s": round(limit_s, 3),
                "link_use": _round(ratio(limit_s, unstaged.median)),
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
        if cfg.coordinator_device and cfg.use_inventory:
            self.notes.append("--use-inventory: --coordinator-device skipped (it starts its own rpc-servers)")
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
                        if cfg.stage and link != "bridge":
                            self.staging_rows(model, lab, kmax, link)
                    lab.shape(None)
                if "none" in cfg.links or cfg.use_inventory:
                    self.coordinator_rows(model, loop, kmax, loop_link)
            if cfg.coordinator_device and not cfg.use_inventory and models:
                model = models[0]
                self.say(f"== {model.ref}: coordinator + 1 worker vs. 2 workers")
                coordinator_device.run(self, model, loop, loop_link)
            if cfg.grid and models:
                model = models[0]
                self.say(f"== grid on {model.ref}, {kmax} backend(s)")
                cells = [s for s in grid_settings() if not (cfg.use_inventory and s.rpc_threads != 0)]
                # (the inventory's rpc-servers run with their own threads)
                grid: list[dict[str, list[float]]] = [{} for _ in cells]
                for r in range(cfg.grid_repeats or cfg.repeats):  # rounds: a burst of other load hits every cell alike
                    for s, acc in zip(cells, grid, strict=True):
                        for name, vals in self.measure(model, loop, kmax, s, rounds=[r]).items():
                            acc.setdefault(name, []).extend(vals)
                for s, samples in zip(cells, grid, strict=True):
                    self.add_row("grid", model, "rpc", kmax, loop_link, s.name, samples)
        finally:
            loop.stop()
            self.reaper.stop_all()
            if lab is not None:
                lab.down()


def link_rate_bytes(link: str) -> float:
    """Bytes per second of a tc rate such as 100mbit."""
    from sollol_ops.dev.netlab import RATE

    m = RATE.match(link)
    if not m:
        raise BenchError(f"not a shaped link rate: {link!r}")
    return float(m.group(1)) * {"k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)] / 8


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def _untimed(stderr: str) -> str:
    """A traced command's stderr without its timing lines (what is left is the error)."""
    return " ".join(ln for ln in stderr.strip().splitlines() if not ln.startswith(timings.PREFIX))


def _progress_line(row: dict[str, Any]) -> str:
    m = row["metrics"]

    def g(name: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(m[name]["median"]) if name in m else "-"

    who = "baseline" if row["setup"] == "baseline" else f"rpc x{row['backends']} {row['link']}"
    return (
        f"  {row['section']:<11} {who:<18} {row['settings']:<26} cold {g('load_cold_s')}s warm {g('load_warm_s')}s "
        f"gen {g('gen_tps', '{:.1f}')} tok/s ttft {g('ttft_s', '{:.3f}')}s ready {g('ready_s')}s"
    )
