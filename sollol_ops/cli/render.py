"""Renderers shared by up/status: plan, distribution and backend tables, progress on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import click

from sollol_ops.cluster.placement import Plan
from sollol_ops.serve.draft import NO_DRAFT, Draft, DraftMode
from sollol_ops.serve.lifecycle import Reporter
from sollol_ops.serve.server_log import Distribution
from sollol_ops.timings import PhaseClock
from sollol_ops.ui import echo_table, human_bytes

MIB = 1 << 20


class CliReporter(Reporter):
    """Progress on stderr: steps as lines and loading as one live line on a terminal; nothing when
    stderr is not a terminal (so a failure stays one line in pipes and logs) unless -v asks for it,
    then a line every 5 s."""

    def __init__(self, quiet: bool = False, verbose: int = 0, clock: PhaseClock | None = None) -> None:
        self.clock = clock or PhaseClock()
        self.tty = sys.stderr.isatty()
        self.quiet = quiet or not (self.tty or verbose > 0)
        self._last_plain = 0.0
        self._spin = 0

    def step(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"• {message}", err=True)

    def loading(self, elapsed: float, last_log_line: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self._spin = (self._spin + 1) % 4
            spinner = "|/-\\"[self._spin]
            line = f"{spinner} loading {elapsed:5.1f}s  {last_log_line[:90]}"
            click.echo(f"\r\033[K{line}", err=True, nl=False)
        elif time.monotonic() - self._last_plain > 5:
            self._last_plain = time.monotonic()
            click.echo(f"  loading {elapsed:5.1f}s: {last_log_line[:100]}", err=True)

    def phase(self, name: str) -> None:
        self.clock.mark(name)

    def done(self) -> None:
        if self.tty and not self.quiet:
            click.echo("\r\033[K", err=True, nl=False)


def _draft_row(draft: Draft) -> list[str]:
    """The draft model as one more row of the plan: on the coordinator, its own weights, KV cache and compute."""
    return [
        f"coordinator {draft.device}",
        draft.device,
        "-",
        "draft",
        f"{draft.weight_bytes / MIB:,.1f}",
        f"{draft.kv_bytes / MIB:,.1f}",
        f"{draft.compute_bytes / MIB:,.1f}",
        f"{draft.need_bytes / MIB:,.0f}",
        "-",
        f"draft {draft.model} ({draft.source})",
    ]


def echo_plan(plan: Plan, draft: Draft = NO_DRAFT) -> None:
    echo_table(
        ["BACKEND", "DEVICE", "SPLIT", "LAYERS", "WEIGHTS", "KV", "COMPUTE", "NEED", "USABLE", "USABLE FROM"],
        [
            [
                s.slot.endpoint,
                s.slot.name,
                f"{s.split:.3f}",
                f"{s.layers}{'+out' if s.has_output else ''}",
                f"{s.weight_bytes / MIB:,.1f}",
                f"{s.kv_bytes / MIB:,.1f}",
                f"{s.compute_bytes / MIB:,.1f}",
                f"{s.need_bytes / MIB:,.0f}",
                f"{s.slot.usable_bytes / MIB:,.0f}",
                s.slot.source,
            ]
            for s in plan.shares
        ]
        + ([_draft_row(draft)] if draft.mode is DraftMode.MODEL else []),
        right=(2, 3, 4, 5, 6, 7, 8),
    )
    where = (
        f"the coordinator's CPU keeps the first {plan.host_layers} layers (-ngl {plan.n_gpu_layers}); its weights "
        f"include the input embeddings, {plan.local_bytes / MIB:,.1f} MiB"
        if plan.n_gpu_layers is not None
        else f"input embeddings {plan.local_bytes / MIB:,.1f} MiB stay on the coordinator"
    )
    click.echo(f"(MiB; ctx {plan.n_ctx}; {plan.n_layer} layers + output; {where}; {'; '.join(plan.notes)})")
    if draft.mode is DraftMode.NGRAM:
        click.echo(f"speculative decoding: n-gram drafts from the text so far, no draft model ({draft.source})")


def echo_distribution(dist: Distribution) -> None:
    rows = [
        [
            d.name,
            "-" if d.layers is None else d.layers,
            f"{d.model_mib:,.2f}",
            f"{d.kv_mib:,.2f}",
            f"{d.compute_mib:,.2f}",
        ]
        for d in dist.devices
    ]
    if dist.draft is not None:
        d = dist.draft
        rows.append(["draft", "-", f"{d.model_mib:,.2f}", f"{d.kv_mib:,.2f}", f"{d.compute_mib:,.2f}"])
    echo_table(["WHERE", "LAYERS", "MODEL MiB", "KV MiB", "COMPUTE MiB"], rows, right=(1, 2, 3, 4))
    if dist.offloaded:
        done, total = dist.offloaded
        rest = "" if done >= total else f"; the other {total - done} stay on the coordinator's CPU"
        click.echo(f"(offloaded {done}/{total} layers to devices{rest})")


def echo_staged(rows: Sequence[Mapping[str, Any]]) -> None:
    """The staging ledger: which model's share is in which rpc-server's cache (sollol-ops stage)."""
    echo_table(
        ["STAGED MODEL", "ENDPOINT", "WHERE", "FILES", "BYTES", "CACHE DIR"],
        [[r["model"], r["endpoint"], r["where"], r["files"], human_bytes(r["bytes"]), r["cache_dir"]] for r in rows],
        right=(3, 4),
    )
