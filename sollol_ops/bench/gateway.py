"""`sollol-ops bench --gateway`: what the gateway costs and buys, measured against the same parts without it
in one run (issues 11 and 12).

- section "gateway": time to first token and generation tokens/s through the gateway (`sollol-ops gateway
  --mode pool`, its own process, as a user starts it) vs. direct to the same llama-server, a pool member
  of the `openai` kind; through the gateway's OpenAI route (relayed as it is) and its Ollama /api/chat route
  (translated both ways). Requests interleaved route by route, one client.
- section "gateway-pool": a pool of 2 members vs. 1 under CLIENTS concurrent streamed clients, each member a
  llama-server with one thread pinned to its own core (taskset); aggregate generated tokens/s.
- section "ondemand": a gateway in shard mode over loopback rpc-servers: time to first token of the first
  request (the gateway loads the model: probes, placement, llama-server --rpc) vs. `sollol-ops up` + the
  same request sent by hand to the coordinator; the same request repeated and a new one on the loaded
  model; a swap (the other model loaded and idle, to the first token of this one).

Sections "gateway" and "gateway-pool" are sollol_ops.bench.gateway_pool, "ondemand" sollol_ops.bench.gateway_ondemand;
clients stream with httpx and time what they see (sollol_ops.bench.streaming). Every process started goes through
the Bench's Reaper (sollol_ops.bench.gateway_parts)."""

from __future__ import annotations

from collections.abc import Sequence

from sollol_ops.bench import gateway_ondemand, gateway_pool
from sollol_ops.bench.gateway_parts import GatewayParts
from sollol_ops.bench.models import BenchModel


class GatewayBench(GatewayParts):
    """The gateway's sections of one bench run; rows, comparisons and notes as in the JSON document."""

    def run(self, models: Sequence[BenchModel]) -> None:
        if not models:
            return
        model = models[0]
        if len(models) > 1:
            self.notes.append(f"--gateway measures the first model only ({model.ref})")
        self.say(f"== gateway on {model.ref} ({model.size_mib:,.0f} MiB)")
        try:
            gateway_pool.pool_sections(self, model)
            gateway_ondemand.ondemand_section(self, model)
        finally:
            self.reaper.stop_all()
