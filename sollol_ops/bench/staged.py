"""The staging rows of the sharding bench (--stage with shaped --links): per repeat, the first load unstaged,
then staging, the first load staged and a warm load, with the bytes sent into the namespaces."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict

from sollol_ops.bench.backends import NetnsBackends
from sollol_ops.bench.harness import Harness
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.settings import Settings
from sollol_ops.bench.stats import ratio, round_or_none, summarize
from sollol_ops.errors import BenchError


def rows(bench: Harness, model: BenchModel, lab: NetnsBackends, k: int, link: str) -> None:
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
        server = bench.serve(model, endpoints, settings, tag)
        bench.unload(server)
        return server.ready_s, sum(lab.tx_bytes(i) - b for i, b in enumerate(before))

    for r in range(bench.cfg.repeats):
        for phase in ("unstaged", "staged"):
            run = bench.next_run()
            cache = bench.work / f"stage-cache-{run:03d}"
            endpoints = lab.start(k, settings.rpc_threads_for(k), cache, own_caches=True)
            try:
                if phase == "staged":
                    backends = [Backend(f"bench-{i}", *_split(e)) for i, e in enumerate(endpoints)]
                    prepared = staging.place(model.resolved_ref, "bench", model.blob, model.info, backends,
                                             bench.cfg.ctx)  # fmt: skip
                    dirs = {e: lab.cache_dir(cache, i) for i, e in enumerate(endpoints)}
                    t0 = time.perf_counter()
                    staging.stage_via_commands(
                        prepared, bench.work / f"packs-{run:03d}", dirs,
                        lambda share, eps=endpoints: lab.lab.exec_argv(eps.index(share.endpoint), []),
                        "bench", root=bench.work / "ledger",
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
                shutil.rmtree(bench.work / f"packs-{run:03d}", ignore_errors=True)
        last = [f"{p} {m['load_s'][-1]:.2f}s/{m['sent_mib'][-1]:.0f} MiB" for p, m in samples.items()]
        bench.say(f"  staging     rpc x{k} {link:<10} round {r + 1}: " + ", ".join(last))
    stats = {p: {n: summarize(v) for n, v in m.items()} for p, m in samples.items()}
    rate = link_rate_bytes(link)
    unstaged, staged_load = stats["unstaged"]["load_s"], stats["staged"]["load_s"]
    sent = stats["unstaged"]["sent_mib"]
    if not (unstaged and staged_load and sent):
        raise BenchError("the staging rows measured nothing")
    limit_s = sent.median * (1 << 20) / rate
    bench.staging.append(
        {
            "model": model.ref,
            "size_mib": model.size_mib,
            "backends": k,
            "link": link,
            "metrics": {p: {n: asdict(st) for n, st in m.items() if st} for p, m in stats.items()},
            "stage_s": asdict(summarize(stage_s)) if summarize(stage_s) else None,
            "staged_over_unstaged": round_or_none(ratio(staged_load.median, unstaged.median)),
            "link_limit_s": round(limit_s, 3),
            "link_use": round_or_none(ratio(limit_s, unstaged.median)),
        }
    )


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
