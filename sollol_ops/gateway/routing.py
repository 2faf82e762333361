"""Which upstream serves a model: the pool nodes that hold it or the sharded coordinator, by mode and pins."""

from __future__ import annotations

from dataclasses import dataclass, field

from sollol_ops.gateway.catalog import Catalog
from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.limits import DEFAULT_NUM_PREDICT
from sollol_ops.gateway.pool import Node, Pool, normalize
from sollol_ops.serve.coordinator import CoordinatorState


@dataclass
class GatewayConfig:
    mode: str  # shard | pool | hybrid
    pins: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None
    max_body: int = 32 << 20
    default_num_predict: int = (
        DEFAULT_NUM_PREDICT  # gateway.limits: the token limit of a request that sets none (0: none)
    )
    embeddings: bool = False  # sollol_embeddings: the coordinator runs with --embeddings
    coordinator_ollama_url: str = ""  # sollol_coordinator_ollama_url: where pulls for the shard go (models_admin)


@dataclass
class Target:
    route: str  # pool | shard
    node_name: str
    url: str
    api: str  # ollama | openai (what the upstream speaks)
    node: Node | None = None


class Router:
    """The targets of a model, best first, or the API error that says where it looked."""

    def __init__(self, config: GatewayConfig, pool: Pool, catalog: Catalog) -> None:
        self.config = config
        self.pool = pool
        self.catalog = catalog
        self.pins = {normalize(k): v for k, v in config.pins.items()}
        self.on_demand = False  # the shard route loads store models itself (Gateway.shard)

    @property
    def uses_pool(self) -> bool:
        return self.config.mode in ("pool", "hybrid")

    @property
    def uses_shard(self) -> bool:
        return self.config.mode in ("shard", "hybrid")

    def coordinator_target(self, state: CoordinatorState) -> Target:
        return Target("shard", f"coordinator@{state.listen}", state.endpoint, "openai")

    def targets(self, model: str) -> list[Target]:
        """Where `model` can be served, best first; ApiError 404 (nobody has it) or 503 (nobody can now)."""
        name = normalize(model)
        pin = self.pins.get(name)
        pool_ok = self.uses_pool and pin != "shard"
        shard_ok = self.uses_shard and pin != "pool"
        looked: list[str] = []
        unavailable: list[str] = []
        store = self.catalog.models() if shard_ok else {}
        if pool_ok:
            size = store[name].size if name in store else None
            nodes = self.pool.candidates(name, size)
            if nodes:
                return [Target("pool", n.name, n.url, n.api, n) for n in nodes]
            looked.append("pool nodes " + (", ".join(n.name for n in self.pool.nodes) or "(none)"))
            for n in self.pool.holders(name):
                if not n.usable():
                    why = "breaker open" if n.breaker_open else f"unhealthy: {n.last_error or 'not checked yet'}"
                    unavailable.append(f"pool node {n.name} ({why})")
                elif not n.fits(name, size):
                    unavailable.append(f"pool node {n.name} (does not fit its sollol_ollama_memory_mib)")
        if shard_ok and self.on_demand and name in store:
            return [Target("shard", "coordinator", "", "openai")]  # the gateway loads it (OnDemand)
        if shard_ok:
            state = self.catalog.running()
            if state is not None and normalize(state.model) == name:
                return [self.coordinator_target(state)]
            roots = ", ".join(str(r) for r in self.catalog.roots()) or "no store found"
            looked.append(f"the coordinator's store ({roots})")
            if name in store:
                if state is None:
                    unavailable.append(
                        f"the coordinator's store, but no coordinator is running (`sollol-ops up {name}`)"
                    )
                else:
                    unavailable.append(
                        f"the coordinator's store, but the coordinator serves {state.model} "
                        f"(`sollol-ops up {name} --replace`)"
                    )
        if unavailable:
            raise ApiError(503, f"model '{model}' is in {'; '.join(unavailable)}")
        where = " and ".join(looked) or "nowhere (no pool nodes and no coordinator in this mode)"
        pin_note = f" (pinned to {pin})" if pin else ""
        raise ApiError(404, f"model '{model}' not found{pin_note}; looked in {where}")
