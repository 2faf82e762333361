"""--speculative: speculative decoding against plain generation on the same sharded target, per link.

The target is the first model re-encoded to F32 (sollol_ops.dev.reencode: the same weights dequantized, the same
tokenizer, ~5x the bytes per token for SmolLM2's Q4_1), sharded over 2 rpc-servers; the draft is the model as
given, on the coordinator's CPU (`up --draft`'s placement). Links: loopback; a delay relay in front of each
rpc-server adding 0.3 ms (a wired LAN) or 2 ms (Wi-Fi) one way (sollol_ops.dev.delayrelay: this kernel has no
netem); and with network namespaces the rpc-servers behind a `tc tbf` 1 Gbit link plus the 0.3 ms relay (the
shaped 1 Gbit link of the goal). Per link the rpc-servers start once (their -c cache warm after the first load);
each round loads the target plain, with the draft model and with n-gram drafting, in that order, and sends the
same greedy request (temperature 0) to each: generation tok/s, TTFT, the draft acceptance rate (llama-server's
`timings.draft_n_accepted / draft_n`), and whether the answer is identical to the plain one of the same round.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sollol_ops import procs
from sollol_ops.bench.backends import NetnsBackends, RpcBackends
from sollol_ops.bench.base import make_prompt
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.server import Server
from sollol_ops.bench.settings import Settings
from sollol_ops.cluster.inventory import Backend
from sollol_ops.cluster.placement import compute_reserve_bytes
from sollol_ops.dev.reencode import reencode
from sollol_ops.errors import BenchError, SollolError
from sollol_ops.model.gguf_info import read_gguf
from sollol_ops.paths import cache_dir
from sollol_ops.serve import lifecycle, server_http
from sollol_ops.serve.command import StartOptions
from sollol_ops.serve.draft import NO_DRAFT, Draft, DraftMode

if TYPE_CHECKING:
    from sollol_ops.bench.harness import Harness

SECTION = "speculative"
BACKENDS = 2
GOAL = (">=", 1.5)
GOAL_LINK = "1gbit+0.3ms"
RELAY_START_S = 10.0


@dataclass(frozen=True)
class Link:
    name: str
    delay_ms: float
    rate: str | None = None  # tc tbf rate on the namespaces' veths (None: loopback rpc-servers)


LINKS = (Link("loopback", 0.0), Link("0.3ms", 0.3), Link("2ms", 2.0), Link(GOAL_LINK, 0.3, "1gbit"))
MODES = ("plain", "draft", "ngram")


def target_model(model: BenchModel) -> BenchModel:
    """The model re-encoded to F32 once per source file (cached beside the synthetic models)."""
    if model.info.file_type_name == "F32":
        raise BenchError(f"--speculative re-encodes its model to F32 as the target; {model.ref} already is F32")
    path = cache_dir() / "bench" / "targets" / f"{model.blob.name}-f32.gguf"
    if not path.is_file():
        reencode(model.blob, path, "f32")
    return BenchModel(f"{model.ref} re-encoded F32", model.resolved_ref, path, read_gguf(path), model.synthetic)


class Relays:
    """A delay relay (a process of this run) in front of each endpoint."""

    def __init__(self, bench: Harness) -> None:
        self.bench = bench
        self.pids: list[int] = []

    def start(self, endpoints: Sequence[str], delay_ms: float) -> list[str]:
        if delay_ms <= 0:
            return list(endpoints)
        ports = procs.free_ports("127.0.0.1", len(endpoints), 29600)
        out = []
        for endpoint, port in zip(endpoints, ports, strict=True):
            log = self.bench.logs / f"relay-{self.bench.next_run():03d}-{port}.log"
            argv = [sys.executable, "-m", "sollol_ops.dev.delayrelay", "--listen", f"127.0.0.1:{port}",
                    "--to", endpoint, "--delay-ms", f"{delay_ms:g}"]  # fmt: skip
            pid = self.bench.reaper.spawn(argv, log)
            self.pids.append(pid)
            _wait_listening(log, pid)
            out.append(f"127.0.0.1:{port}")
        return out

    def stop(self) -> None:
        for pid in self.pids:
            self.bench.reaper.stop(pid)
        self.pids = []


def _wait_listening(log: Path, pid: int) -> None:
    deadline = time.monotonic() + RELAY_START_S
    while time.monotonic() < deadline:
        if "listening" in (log.read_text(errors="replace") if log.is_file() else ""):
            return
        if not procs.is_alive(pid):
            break
        time.sleep(0.05)
    raise BenchError(f"the delay relay did not start (log {log})")


def _backends(endpoints: Sequence[str]) -> list[Backend]:
    out = []
    for i, endpoint in enumerate(endpoints):
        host, port = endpoint.rsplit(":", 1)
        out.append(Backend(f"bench-{i}", host, int(port)))
    return out


def drafts(draft: BenchModel, n_ctx: int) -> dict[str, Draft]:
    """Each mode's draft, as `up --draft` resolves it: none, the model on the coordinator's CPU, n-gram."""
    model = Draft(
        DraftMode.MODEL,
        draft.resolved_ref,
        draft.blob,
        weight_bytes=draft.info.tensor_bytes,
        kv_bytes=draft.info.kv_cache_bytes(n_ctx),
        compute_bytes=compute_reserve_bytes(draft.info),
        source="bench",
    )
    return {"plain": NO_DRAFT, "draft": model, "ngram": Draft(DraftMode.NGRAM, source="bench")}


def _argv(bench: Harness, target: BenchModel, draft: Draft, endpoints: Sequence[str], port: int) -> list[str]:
    """The target's llama-server through `up`'s own path (probe, plan, command), with the mode's draft."""
    opts = StartOptions(port=port, n_ctx=bench.cfg.ctx, alias=target.resolved_ref)
    return lifecycle.plan_command(
        target.resolved_ref, target.blob, target.info, _backends(endpoints), opts, bench.toolchain, draft=draft
    ).command


@dataclass
class Answer:
    text: str
    gen_tps: float | None
    ttft_s: float
    drafted: int
    accepted: int


def _ask(server: Server, bench: Harness, salt: int) -> Answer:
    try:
        result = server_http.stream_chat(
            server_http.base_url("127.0.0.1", server.port),
            [{"role": "user", "content": make_prompt(bench.cfg.prompt_tokens, salt)}],
            bench.cfg.tokens,
            stall_timeout=bench.cfg.timeout,
            extra={"cache_prompt": False, "ignore_eos": True, "seed": 1},
            deadline_s=bench.cfg.timeout,
        )
    except SollolError as exc:
        raise BenchError(str(exc)) from exc
    t = result.timings
    return Answer(
        result.text,
        t.get("predicted_per_second"),
        result.ttft_s,
        int(t.get("draft_n", 0)),
        int(t.get("draft_n_accepted", 0)),
    )


def _serve(bench: Harness, argv: Callable[[int], list[str]], tag: str) -> Server:
    """bench.load with the command line of the port it picks."""
    port = bench.port()
    return bench.load(argv(port), port, tag)


def _rounds(
    bench: Harness, target: BenchModel, draft: BenchModel, endpoints: Sequence[str], link: Link
) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
    mismatches: list[str] = []
    by_mode = drafts(draft, bench.cfg.ctx)
    for r in range(bench.cfg.repeats):
        plain_text = None
        for mode in MODES:
            argv = functools.partial(_argv, bench, target, by_mode[mode], endpoints)
            server = _serve(bench, argv, f"spec-{mode}")
            try:
                answer = _ask(server, bench, salt=r)
            finally:
                bench.unload(server)
            acc = samples[mode]
            acc.setdefault("load_s", []).append(server.ready_s)
            acc.setdefault("ttft_s", []).append(answer.ttft_s)
            if answer.gen_tps is not None:
                acc.setdefault("gen_tps", []).append(answer.gen_tps)
            if answer.drafted:
                acc.setdefault("accept_rate", []).append(answer.accepted / answer.drafted)
            if mode == "plain":
                plain_text = answer.text
            acc.setdefault("identical", []).append(float(answer.text == plain_text))
            if answer.text != plain_text:
                mismatches.append(
                    f"{link.name} round {r + 1} {mode}: {answer.text[:60]!r} vs plain {plain_text[:60]!r}"
                )
    return samples, mismatches


def _lab(bench: Harness) -> NetnsBackends | None:
    """Namespaces for the shaped link, when this run may make them (root); None otherwise."""
    if os.geteuid() != 0:
        return None
    lab = NetnsBackends(bench.toolchain, bench.reaper, bench.logs, 60.0, BACKENDS)
    lab.up()
    return lab


def run(bench: Harness, model: BenchModel, loop: RpcBackends) -> None:
    """Rows per link and mode, and the comparisons draft / plain and ngram / plain of generation tok/s."""
    target = target_model(model)
    bench.say(f"== speculative: target {target.ref} ({target.size_mib:,.0f} MiB), draft {model.ref}")
    notes = bench.section_notes.setdefault(SECTION, [])
    notes.append(
        f"Target: {model.ref} dequantized to F32 with sollol_ops.dev.reencode ({target.size_mib:,.0f} MiB, the same "
        f"tokenizer and weights); draft: {model.ref} as stored ({model.size_mib:,.0f} MiB) on the coordinator's CPU; "
        f"{BACKENDS} rpc-servers. Links: loopback; a delay relay (sollol_ops.dev.delayrelay) in front of each "
        "rpc-server adding 0.3 ms or 2 ms one way; network namespaces behind `tc tbf` 1 Gbit plus the 0.3 ms relay."
    )
    relays, lab, mismatched = Relays(bench), _lab(bench), False
    try:
        for link in LINKS:
            backends = loop if link.rate is None else lab
            if backends is None:
                notes.append(f"{link.name}: not measured (network namespaces need root)")
                continue
            if link.rate is not None and lab is not None:
                lab.shape(link.rate)
            cache = bench.work / f"rpc-cache-spec-{bench.next_run():03d}"
            try:
                endpoints = relays.start(
                    backends.start(BACKENDS, Settings().rpc_threads_for(BACKENDS), cache), link.delay_ms
                )
                samples, mismatches = _rounds(bench, target, model, endpoints, link)
            finally:
                relays.stop()
                backends.stop()
            rows = {
                m: bench.add_row(SECTION, target, "rpc", BACKENDS, link.name, _label(m, model), samples[m])
                for m in MODES
            }
            for mode in ("draft", "ngram"):
                goal = GOAL if link.name == GOAL_LINK and mode == "draft" else None
                what = f"{_label(mode, model)} vs. plain over {link.name}"
                bench.add_comparison(SECTION, target, what, rows["plain"], rows[mode], "gen_tps", goal)
            notes.extend(f"Greedy output differed: {m}" for m in mismatches)
            mismatched = mismatched or bool(mismatches)
    finally:
        if lab is not None:
            lab.down()
    if not mismatched:
        notes.append("Greedy output: identical to plain generation in every round, mode and link (checked).")


def _label(mode: str, draft: BenchModel) -> str:
    return {"plain": "plain", "draft": f"draft {draft.ref}", "ngram": "ngram-simple"}[mode]
