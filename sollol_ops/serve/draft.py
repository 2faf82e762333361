"""The draft of speculative decoding for a sharded model: which one it gets (`up --draft`, else the inventory's
sollol_draft_models, else none), the draft model resolved from the target's store and checked against its
vocabulary before anything starts, where it runs (the coordinator: its CPU, or its own GPU when that is the
device it offers) and the memory it takes there, counted in the coordinator's fit check.

Each token of a sharded model costs a round of RPC calls through every worker; with a draft, llama-server
verifies several drafted tokens in about the same round. A draft model runs on the coordinator alone (never
over RPC): `--device-draft none` keeps it in host memory, `--device-draft CUDA0 --gpu-layers-draft 999` on a
GPU of the coordinator. `ngram` drafts from the text so far (llama.cpp's ngram-simple), with no model."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sollol_ops.cluster.inventory import DRAFT_NGRAM, DRAFT_NONE, HOST_DEVICE, Coordinator
from sollol_ops.cluster.placement import MIB, Slot, compute_reserve_bytes, mem_available_bytes
from sollol_ops.errors import ModelNotFound, PlacementError, UsageError
from sollol_ops.model.gguf_info import GGUFInfo, read_gguf
from sollol_ops.model.names import parse_model_ref
from sollol_ops.model.ollama import ResolvedModel, resolve_model
from sollol_ops.model.vocab import mismatch, read_vocabulary

# llama.cpp's speculative types (`--spec-type`) for the two kinds of draft. ngram-simple is the one its
# docs call the simplest self-speculative mode with the least overhead: it looks up the last n-gram in the
# text so far and drafts the tokens that followed it (docs/cli.md, "Speculative decoding").
SPEC_TYPE_MODEL = "draft-simple"
SPEC_TYPE_NGRAM = "ngram-simple"
# Tokens drafted per round (llama.cpp's default is 3). Measured here (SmolLM2 Q4_1 drafting for its F32
# re-encoding over 2 rpc-servers): 3 -> 1.05x plain, 8 -> 1.3x, 16 -> 1.4-1.5x; a --spec-draft-p-min of 0.5-0.75
# stopped drafting so early that it fell below plain (0.65x). A --server-arg --spec-draft-n-max comes later, wins.
DRAFT_N_MAX = 16


class DraftMode(StrEnum):
    NONE = "none"
    MODEL = "model"
    NGRAM = "ngram"


@dataclass
class DraftState:
    """The draft a coordinator was started with, as its state file records it."""

    mode: str
    model: str | None = None
    digest: str | None = None
    blob: str | None = None
    device: str | None = None  # where the draft model runs: CPU (host memory) or a GPU of the coordinator
    weights_mib: float = 0.0
    kv_mib: float = 0.0
    compute_mib: float = 0.0
    need_mib: float = 0.0
    source: str = ""  # --draft or sollol_draft_models

    @property
    def choice(self) -> str:
        return self.model or self.mode

    @property
    def where(self) -> str:
        return f"coordinator {self.device}" if self.device else "-"


@dataclass(frozen=True)
class Draft:
    """A target's draft, resolved: none, llama.cpp's n-gram drafting, or a model on the coordinator."""

    mode: DraftMode = DraftMode.NONE
    model: str | None = None
    blob: Path | None = None
    digest: str | None = None
    device: str = HOST_DEVICE
    weight_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    source: str = "--draft"

    @property
    def need_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.compute_bytes

    @property
    def on_host(self) -> bool:
        return self.device == HOST_DEVICE

    @property
    def choice(self) -> str:
        return self.model or self.mode.value

    def state(self) -> DraftState | None:
        if self.mode is DraftMode.NONE:
            return None
        model = self.mode is DraftMode.MODEL
        return DraftState(
            mode=self.mode.value,
            model=self.model,
            digest=self.digest,
            blob=str(self.blob) if self.blob else None,
            device=self.device if model else None,
            weights_mib=round(self.weight_bytes / MIB, 1),
            kv_mib=round(self.kv_bytes / MIB, 1),
            compute_mib=round(self.compute_bytes / MIB, 1),
            need_mib=round(self.need_bytes / MIB, 1),
            source=self.source,
        )

    def args(self, threads: int) -> list[str]:
        """llama-server's flags for this draft (serve/command.py adds them; `threads`: the draft's own)."""
        if self.mode is DraftMode.NGRAM:
            return ["--spec-type", SPEC_TYPE_NGRAM]
        if self.mode is not DraftMode.MODEL:
            return []
        argv = ["--spec-type", SPEC_TYPE_MODEL, "--model-draft", str(self.blob), "--spec-draft-n-max", str(DRAFT_N_MAX)]
        if self.on_host:
            return [*argv, "--device-draft", "none", "--spec-draft-threads", str(threads)]
        return [*argv, "--device-draft", self.device, "--gpu-layers-draft", "999"]


NO_DRAFT = Draft()


@dataclass(frozen=True)
class DraftStatus:
    """A running coordinator's draft and how it fares: tokens drafted and accepted since llama-server started."""

    mode: str
    model: str | None
    device: str | None
    need_mib: float
    drafted: int | None = None  # None: llama-server's counters could not be read
    accepted: int | None = None
    acceptance_rate: float | None = None  # accepted / drafted (None before anything was drafted)

    def describe(self) -> str:
        what = f"{self.model} on the coordinator's {self.device}, {self.need_mib:,.0f} MiB" if self.model else "n-gram"
        if self.drafted is None:
            return f"draft: {what}; acceptance not readable"
        rate = "-" if self.acceptance_rate is None else f"{self.acceptance_rate:.1%}"
        return f"draft: {what}; drafted {self.drafted}, accepted {self.accepted} (acceptance {rate})"


def draft_status(state: DraftState, counters: tuple[int, int] | None) -> DraftStatus:
    drafted, accepted = counters if counters is not None else (None, None)
    rate = round(accepted / drafted, 4) if drafted and accepted is not None else None
    return DraftStatus(state.mode, state.model, state.device, state.need_mib, drafted, accepted, rate)


def choose(requested: str | None, drafts: Mapping[str, str], model: str) -> tuple[str, str]:
    """(choice, where it came from): `--draft` when given, else the inventory's entry for `model`, else none."""
    if requested is not None:
        text = requested.strip()
        if text in (DRAFT_NONE, DRAFT_NGRAM):
            return text, "--draft"
        try:
            return str(parse_model_ref(text)), "--draft"
        except UsageError as exc:
            raise UsageError(f"--draft: {exc}; or give ngram, or none") from exc
    return drafts.get(model, DRAFT_NONE), "sollol_draft_models"


def same_choice(state: DraftState | None, choice: str) -> bool:
    """Whether a coordinator started with `state` runs the draft `choice` names."""
    return (state.choice if state is not None else DRAFT_NONE) == choice


def resolve(
    choice: str,
    source: str,
    target: ResolvedModel,
    target_info: GGUFInfo,
    n_ctx: int,
    ollama_models: str | None = None,
    coordinator: Coordinator | None = None,
) -> Draft:
    """The draft `choice` names, resolved; a model's vocabulary checked against the target's (PlacementError
    naming the mismatch) and its memory sized: its weights, its own KV cache at the target's n_ctx and a
    compute buffer. It runs on the coordinator's GPU when that is the device the coordinator offers, else on
    its CPU."""
    if choice == DRAFT_NONE:
        return NO_DRAFT
    if choice == DRAFT_NGRAM:
        return Draft(DraftMode.NGRAM, source=source)
    try:
        found = resolve_model(choice, ollama_models)
    except ModelNotFound as exc:
        raise ModelNotFound(f"draft ({source}): {exc}") from exc
    info = found.gguf or read_gguf(found.blob)
    if (why := mismatch(found.ref, read_vocabulary(found.blob), target.ref, read_vocabulary(target.blob))) is not None:
        raise PlacementError(f"{why} ({source})")
    device = coordinator.device if coordinator is not None and coordinator.memory_mib > 0 else HOST_DEVICE
    return Draft(
        DraftMode.MODEL,
        found.ref,
        found.blob,
        found.digest,
        device,
        weight_bytes=info.tensor_bytes,
        kv_bytes=info.kv_cache_bytes(n_ctx),
        compute_bytes=compute_reserve_bytes(info),
        source=source,
    )


def size_warning(draft: Draft, target_info: GGUFInfo) -> str | None:
    """The warning when a draft is not smaller than its target: it would cost as much as the target itself."""
    if draft.mode is not DraftMode.MODEL or draft.weight_bytes < target_info.tensor_bytes:
        return None
    return (
        f"draft {draft.model} ({draft.weight_bytes / MIB:,.0f} MiB) is not smaller than its target "
        f"({target_info.tensor_bytes / MIB:,.0f} MiB): each drafted token costs as much as the target's, so "
        "generation will be slower than without a draft; pick a small model of the same family, or --draft ngram"
    )


def _refusal(draft: Draft, offered: int, where: str, hint: str) -> PlacementError:
    return PlacementError(
        f"draft {draft.model} does not fit the coordinator: it needs {draft.need_bytes / MIB:,.0f} MiB (weights "
        f"{draft.weight_bytes / MIB:,.0f} + KV cache {draft.kv_bytes / MIB:,.0f} + compute "
        f"{draft.compute_bytes / MIB:,.0f}), {where} offers {offered / MIB:,.0f} MiB; {hint}, lower --ctx-size, "
        "or use --draft ngram"
    )


def host_room(draft: Draft, coordinator: Coordinator | None, available: int | None = None) -> int | None:
    """When the coordinator offers no memory, a draft model takes the host's: refused when over
    MemAvailable, else what is left for rpc-servers on this host (build_slots' local_available). None: the
    draft takes nothing outside the coordinator's offer (no draft model, or one inside the offer)."""
    if draft.mode is not DraftMode.MODEL or (coordinator is not None and coordinator.memory_mib > 0):
        return None
    available = mem_available_bytes() if available is None else available
    if draft.need_bytes > available:
        hint = "free memory here, or offer a GPU of this machine (--coordinator-memory MIB --coordinator-device CUDA0)"
        raise _refusal(draft, available, "this host (MemAvailable; the coordinator offers no memory)", hint)
    return available - draft.need_bytes


def fit(draft: Draft, slots: Sequence[Slot], target_info: GGUFInfo) -> tuple[list[Slot], list[str]]:
    """The slots with the draft model's memory taken out of the coordinator's offer (its first slot), and
    notes for the plan. Refused, with the numbers, when the offer cannot hold the draft; when what is left
    could not hold even one layer of the target, the coordinator takes none."""
    out = list(slots)
    if draft.mode is not DraftMode.MODEL or not out or not out[0].is_coordinator:
        return out, []
    slot = out[0]
    if draft.need_bytes > slot.usable_bytes:
        hint = "raise --coordinator-memory / sollol_coordinator_memory_mib"
        raise _refusal(draft, slot.usable_bytes, f"its {slot.name} ({slot.source})", hint)
    rest = slot.usable_bytes - draft.need_bytes
    smallest = compute_reserve_bytes(target_info) + target_info.per_layer_bytes_avg()
    if slot.on_host:
        smallest += target_info.token_embd_bytes
    note = f"the draft {draft.model} takes {draft.need_bytes / MIB:,.0f} MiB of the coordinator's {slot.name}"
    if rest < smallest:
        return out[1:], [f"{note}: no target layers there"]
    source = f"{slot.source} - draft"
    return [dataclasses.replace(slot, usable_bytes=rest, source=source), *out[1:]], [note]
