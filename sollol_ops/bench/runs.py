"""The sharding Bench: rows of cold/warm loads and streamed queries per setup, the coordinator comparisons, the
shaped links and the settings grid, interleaved so that other load on the host hits every setup alike."""

from __future__ import annotations

from collections.abc import Sequence

from sollol_ops.bench import coordinator, coordinator_device, placement, speculative, staged
from sollol_ops.bench.backends import InventoryBackends, LoopbackBackends, NetnsBackends, RpcBackends
from sollol_ops.bench.harness import Harness
from sollol_ops.bench.models import BenchModel
from sollol_ops.bench.settings import NO_LATENCY_NOTE, Settings, grid_settings


class Bench(Harness):
    """The sections of a sharding bench run (sharding, links, staging, coordinator, coordinator-device, grid)."""

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
                            staged.rows(self, model, lab, kmax, link)
                    lab.shape(None)
                if "none" in cfg.links or cfg.use_inventory:
                    coordinator.rows(self, model, loop, kmax, loop_link)
            if cfg.coordinator_device and not cfg.use_inventory and models:
                model = models[0]
                self.say(f"== {model.ref}: coordinator + 1 worker vs. 2 workers")
                coordinator_device.run(self, model, loop, loop_link)
            if cfg.speculative and models:
                speculative.run(self, models[0], loop)
            if cfg.placement and models:
                placement.run(self, models[0])
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
