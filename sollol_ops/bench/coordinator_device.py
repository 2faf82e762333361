"""--coordinator-device: the coordinator's CPU as a device (coordinator + 1 worker) against 2 workers, on the
same cores.

Both setups run on loopback with the same thread budget: t = cores // 2 threads for each process that
computes layers. "2 workers": two rpc-servers with -t t each hold every layer (llama-server -t t only runs
the input embeddings and sampling). "coordinator + 1 worker": one rpc-server with -t t and llama-server
-t t, whose CPU keeps the leading layers (`up --coordinator-memory`). Every slot offers the same memory,
so both split the layers equally (16 / 14 + output for SmolLM2). Rounds interleave the two setups, with at
least 3 repeats; each round is a cold load + query and a warm load + query, as in the other sections.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from sollol_ops.bench.settings import Settings

if TYPE_CHECKING:
    from sollol_ops.bench.backends import RpcBackends
    from sollol_ops.bench.harness import Harness
    from sollol_ops.bench.models import BenchModel

SECTION = "coordinator-device"
MIN_REPEATS = 3
# What every slot offers (MiB): equal shares, far above what the bench's models need per slot.
OFFER_MIB = 2048


def setups(cores: int | None = None) -> list[tuple[int, Settings]]:
    """(rpc-servers, settings) of the two setups, with the same threads per computing process."""
    t = max(1, (cores or os.cpu_count() or 1) // 2)
    workers = Settings("2 workers", rpc_threads=t, server_threads=t, backend_mib=OFFER_MIB)
    coordinator = Settings(
        "coordinator + 1 worker", rpc_threads=t, server_threads=t, backend_mib=OFFER_MIB, coordinator_mib=OFFER_MIB
    )
    return [(2, workers), (1, coordinator)]


def run(bench: Harness, model: BenchModel, backends: RpcBackends, link: str) -> None:
    """Rows of both setups and the comparisons coordinator + 1 worker / 2 workers."""
    pairs = setups()
    samples: list[dict[str, list[float]]] = [{} for _ in pairs]
    for r in range(max(MIN_REPEATS, bench.cfg.repeats)):
        for (k, settings), acc in zip(pairs, samples, strict=True):
            for name, vals in bench.measure(model, backends, k, settings, rounds=[r]).items():
                acc.setdefault(name, []).extend(vals)
    rows = [
        bench.add_row(SECTION, model, "rpc", k, link, settings.name, acc)
        for (k, settings), acc in zip(pairs, samples, strict=True)
    ]
    for metric in ("gen_tps", "prompt_tps", "ttft_s", "load_cold_s"):
        bench.add_comparison(SECTION, model, "coordinator + 1 worker vs. 2 workers", rows[0], rows[1], metric)
