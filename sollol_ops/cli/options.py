"""The click options more than one command takes, each defined once (a command passes its own help where it differs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

STORE_HELP = "Ollama store root (default: $OLLAMA_MODELS, ~/.ollama/models, ...)."
STORE_FIRST_HELP = "Ollama store root searched first."
LOOPBACK = "127.0.0.1"


def json_option(help: str | None = None) -> Decorator[F]:
    """`--json` (as_json): machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def ollama_models_option(help: str = STORE_HELP) -> Decorator[F]:
    """`--ollama-models PATH`: the Ollama store root (sollol_ops.model.ollama.store_roots)."""
    return click.option("--ollama-models", "ollama_models", metavar="PATH", help=help)


def ctx_size_option(help: str | None = None) -> Decorator[F]:
    """`-c/--ctx-size`: the coordinator's context size."""
    return click.option(
        "-c",
        "--ctx-size",
        type=click.IntRange(64, 1 << 22),
        default=4096,
        show_default=True,
        help=help or "Context of each parallel slot, tokens.",
    )


def host_option(help: str) -> Decorator[F]:
    """`--host`: the address to listen on or bind, loopback by default."""
    return click.option("--host", default=LOOPBACK, show_default=True, help=help)


def port_option(name: str, default: int, help: str | None = None) -> Decorator[F]:
    """A TCP port option (`--port`, `--coordinator-port`)."""
    return click.option(name, type=click.IntRange(1, 65535), default=default, show_default=True, help=help)


def parallel_option(help: str) -> Decorator[F]:
    """`-np/--parallel`: the coordinator's parallel slots, each with --ctx-size of context; 0 (the default): as
    many as the memory left after placement holds, up to 4 (sollol_ops.cluster.parallel)."""
    return click.option(
        "-np",
        "--parallel",
        type=click.IntRange(0, 256),
        default=0,
        show_default="0: as many as fit, up to 4",
        help=help + " Each gets --ctx-size of context.",
    )


def threads_option(help: str, short: bool = True) -> Decorator[F]:
    """`-t/--threads` (only `--threads` where `short` is off): threads of a llama.cpp server."""
    names = ("-t", "--threads") if short else ("--threads",)
    return click.option(*names, type=click.IntRange(1, 1024), help=help)


def load_timeout_option(name: str, help: str) -> Decorator[F]:
    """Seconds a coordinator may take to load (`up --timeout`, `gateway --load-timeout`)."""
    return click.option(name, type=click.FloatRange(1, 86400), default=600, show_default=True, help=help)


def stall_timeout_option(most: float, default: float, help: str) -> Decorator[F]:
    """`--stall-timeout`: seconds of silence from the coordinator that count as stalled."""
    return click.option(
        "--stall-timeout", type=click.FloatRange(0.1, most), default=default, show_default=True, help=help
    )


def skip_unhealthy_option(help: str) -> Decorator[F]:
    """`--[no-]skip-unhealthy`: load degraded without unhealthy backends (None: the inventory's choice)."""
    return click.option("--skip-unhealthy/--no-skip-unhealthy", default=None, help=help)


def server_args_option() -> Decorator[F]:
    """`--server-arg ARG` (server_args, repeatable): extra llama-server arguments."""
    return click.option(
        "--server-arg", "server_args", multiple=True, metavar="ARG", help="Extra llama-server argument (repeatable)."
    )


def dry_run_option(help: str) -> Decorator[F]:
    """`--dry-run`: show what would be done, do nothing."""
    return click.option("--dry-run", is_flag=True, help=help)


def state_dir_option(help: str | None = None) -> Decorator[F]:
    """`--dir` (root): the state directory of the local rpc-servers."""
    return click.option("--dir", "root", type=click.Path(path_type=Path), help=help)


def group_option(name: str, default: str, members: str) -> Decorator[F]:
    """`--rpc-group`/`--coordinator-group`: the inventory group a role's hosts are in."""
    help = f"Inventory group of {members} (also for the playbooks of `provision`)."
    return click.option(name, default=default, show_default=True, help=help)
