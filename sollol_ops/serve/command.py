"""The llama-server command line, built here and nowhere else: sharded by a placement plan (`--rpc`,
`--device`, `--tensor-split`), upstream's own defaults over RPC, or plain local; the flags sollol-ops manages;
the default thread count; and the coordinator's own devices (`--list-devices`)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops import procs
from sollol_ops.cluster.placement import LocalDevice, Plan
from sollol_ops.cluster.toolchain import Toolchain
from sollol_ops.errors import CoordinatorError, UsageError
from sollol_ops.serve.draft import NO_DRAFT, Draft

MIB = 1 << 20


@dataclass
class StartOptions:
    """How llama-server is started (the parts that are not the placement plan)."""

    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 4096  # of each slot (sharded: llama-server gets --ctx-size n_ctx x parallel)
    parallel: int = 1  # slots; 0 (cluster.parallel.AUTO): as many as the placement leaves room for
    threads: int | None = None
    extra_args: list[str] = field(default_factory=list)
    alias: str | None = None
    embeddings: bool = False  # --embeddings (the inventory's sollol_embeddings): /v1/embeddings on the model


# Speculative decoding's flags, set from `up --draft` / sollol_draft_models (serve/draft.py), in every spelling.
DRAFT_FLAGS = (
    "-md", "--model-draft", "--spec-draft-model", "-devd", "--device-draft", "--spec-draft-device",
    "-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft", "--spec-draft-ngl", "--spec-type", "--spec-default",
    "-hfd", "-hfrd", "--hf-repo-draft", "--spec-draft-hf", "-td", "--threads-draft", "--spec-draft-threads",
)  # fmt: skip

# llama-server flags that sollol-ops sets itself, from its own options or its plan. Passing one again through
# --server-arg would make llama-server do something other than what the state file, `status` and the
# placement table say (llama.cpp takes the last occurrence), so they are refused.
MANAGED_FLAGS: dict[str, str] = {
    "--host": "--host",
    "--port": "--port",
    "-m": "the MODEL argument",
    "--model": "the MODEL argument",
    "--rpc": "the inventory",
    "-dev": "the placement plan",
    "--device": "the placement plan",
    "-ts": "the placement plan",
    "--tensor-split": "the placement plan",
    "-ngl": "the placement plan",
    "--n-gpu-layers": "the placement plan",
    "--gpu-layers": "the placement plan",
    "-c": "--ctx-size",
    "--ctx-size": "--ctx-size",
    "-np": "--parallel",
    "--parallel": "--parallel",
    "-t": "--threads",
    "--threads": "--threads",
    "-a": "the model name",
    "--alias": "the model name",
    "-lv": "the log level sollol-ops parses",
    "--log-verbosity": "the log level sollol-ops parses",
    "--log-file": "the coordinator log sollol-ops parses",
    **dict.fromkeys(DRAFT_FLAGS, "--draft"),
    "--embeddings": "sollol_embeddings in the inventory",
    "--embedding": "sollol_embeddings in the inventory",
}


def check_extra_args(extra: list[str]) -> None:
    """UsageError when a --server-arg repeats a flag sollol-ops manages."""
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag in MANAGED_FLAGS:
            raise UsageError(
                f"--server-arg {arg} conflicts with what sollol-ops sets itself; use {MANAGED_FLAGS[flag]} instead"
            )


def command(
    toolchain: Toolchain,
    blob: Path,
    opts: StartOptions,
    plan: Plan | None = None,
    rpc: Sequence[str] = (),
    draft: Draft = NO_DRAFT,
) -> list[str]:
    """The llama-server command line. With a plan: sharded as sollol-ops serves (explicit --device and a
    matching --tensor-split, every layer offloaded, metrics, the -lv 4 log the distribution is parsed
    from), and the draft's flags when it has one (serve/draft.py). With RPC endpoints but no plan:
    upstream's own defaults (`--rpc ... -ngl 99`). With neither: a plain local llama-server (the
    benchmark's baseline)."""
    base = [str(toolchain.llama_server), "--model", str(blob)]
    where = ["--host", opts.host, "--port", str(opts.port)]
    if plan is None and rpc:
        return [*base, "--rpc", ",".join(rpc), "-ngl", "99", "--ctx-size", str(opts.n_ctx), *where, *opts.extra_args]
    threads = opts.threads or (
        default_threads(plan.rpc_endpoints, plan.host_layers) if plan is not None else default_threads(())
    )
    if plan is None:
        return [*base, "--ctx-size", str(opts.n_ctx), "--threads", str(threads), *where, *opts.extra_args]
    # Every layer offloaded, unless the coordinator's CPU keeps the first ones (plan.n_gpu_layers).
    ngl = "999" if plan.n_gpu_layers is None else str(plan.n_gpu_layers)
    argv = [
        *base,
        "--rpc", ",".join(plan.rpc_endpoints),
        "--device", ",".join(plan.devices),
        "--tensor-split", ",".join(f"{s:g}" for s in plan.tensor_split),
        "--n-gpu-layers", ngl,
        "--fit", "off",
        "--ctx-size", str(opts.n_ctx * max(1, opts.parallel)),  # llama-server splits it: n_ctx for each slot
        "--parallel", str(max(1, opts.parallel)),
        "--threads", str(threads),
        *where,
        "--metrics",
        "-lv", "4",
    ]  # fmt: skip
    if opts.alias:
        argv += ["--alias", opts.alias]
    # A draft on the coordinator's CPU computes there, beside any rpc-server of this host: it gets the
    # cores as the coordinator's own layers would (default_threads with host layers).
    argv += draft.args(opts.threads or default_threads(plan.rpc_endpoints, host_layers=1))
    if opts.embeddings:  # mean pooling: a chat model's GGUF names none (a --server-arg --pooling comes later, wins)
        argv += ["--embeddings", "--pooling", "mean"]
    return argv + list(opts.extra_args)


_LIST_DEVICE = re.compile(r"^\s+(\S+?)\s*:\s*(.*)\((\d+) MiB, (\d+) MiB free\)\s*$")


def parse_list_devices(text: str) -> list[LocalDevice]:
    """The devices of `llama-server --list-devices` (`  CUDA0: NVIDIA ... (24135 MiB, 23695 MiB free)`; a
    CPU-only build prints `  (none)`: llama.cpp lists no CPU device there, it cannot be a --device)."""
    out = []
    for line in text.splitlines():
        if m := _LIST_DEVICE.match(line):
            out.append(LocalDevice(m.group(1), m.group(2).strip(), int(m.group(3)) * MIB, int(m.group(4)) * MIB))
    return out


def list_devices(toolchain: Toolchain, timeout: float = 60.0) -> list[LocalDevice]:
    """The coordinator's own devices, from its llama-server (GPU backends initialise: allow some time)."""
    try:
        proc = subprocess.run(
            [str(toolchain.llama_server), "--list-devices"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CoordinatorError(f"`llama-server --list-devices` failed: {exc}") from exc
    if proc.returncode != 0:
        raise CoordinatorError(f"`llama-server --list-devices` exited {proc.returncode}: {last_text(proc.stderr)}")
    return parse_list_devices(proc.stdout)


def last_text(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


# llama-server's threads when an rpc-server of its plan runs on the same host (see default_threads).
COLOCATED_THREADS = 1


def default_threads(rpc_endpoints: Sequence[str], host_layers: int = 0) -> int:
    """llama-server's --threads when none is given: all cores, unless one of its rpc-servers runs on this
    host; then COLOCATED_THREADS. Every layer is on an RPC device, so llama-server's own CPU work is the
    input embeddings and sampling; more threads than that need would only spin on cores the rpc-servers
    here compute on (measured: docs/benchmarks.md, "Defaults vs. tuned settings"). When the coordinator's
    CPU keeps layers itself (host_layers > 0), it computes them: the cores are shared evenly between it and
    the rpc-servers on this host."""
    cores = max(1, os.cpu_count() or 1)
    here = sum(1 for e in rpc_endpoints if procs.is_this_host(e.rsplit(":", 1)[0].strip("[]")))
    if host_layers > 0:
        return max(1, cores // (1 + here))
    return COLOCATED_THREADS if here else cores
