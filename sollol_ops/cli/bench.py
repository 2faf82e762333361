"""`sollol-ops bench MODEL...`: sharded vs. local-only, measured in one session (logic in sollol_ops.bench)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from sollol_ops import bench as lib
from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.ui import to_jsonable


@click.command()
@click.argument("models", nargs=-1)
@click.option("--backends", default="1,2", show_default=True, help="rpc-server counts to compare, e.g. 1,2,3.")
@click.option("--repeats", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--tokens", type=click.IntRange(1, 4096), default=32, show_default=True, help="Generated tokens.")
@click.option("--prompt-tokens", type=click.IntRange(1, 8192), default=128, show_default=True)
@click.option(
    "--ctx", "n_ctx", type=click.IntRange(128, 1 << 20), default=1024, show_default=True, help="Context size."
)
@click.option(
    "--links",
    default="none",
    show_default=True,
    help="none (loopback), bridge (namespaces, unshaped) and/or tc rates such as 1gbit,100mbit.",
)
@click.option(
    "--stage",
    is_flag=True,
    help="With shaped --links: also the first load unstaged vs. staged (sollol-ops stage) vs. warm.",
)
@click.option("--grid", is_flag=True, help="Also compare sollol/upstream defaults and a thread/batch grid.")
@click.option(
    "--gateway",
    is_flag=True,
    help="Instead: the gateway vs. direct, a pool of 2 vs. 1, and loading on demand (first model, loopback parts).",
)
@click.option(
    "--coordinator-device",
    is_flag=True,
    help="Also compare coordinator + 1 worker (its CPU keeps layers) with 2 workers on the same cores (first model).",
)
@click.option(
    "--speculative",
    is_flag=True,
    help="Also compare speculative decoding (a draft model, n-gram) with plain generation on the first model "
    "re-encoded to F32, sharded over 2 rpc-servers, on loopback and behind 0.3 ms / 2 ms / 1 Gbit links.",
)
@click.option(
    "--placement",
    is_flag=True,
    help="Also compare the speed planner's split with llama.cpp's memory split and >= 20 swept splits on an uneven "
    "cluster of 3 rpc-servers (one in a CPU quota, one behind a slower link), the first model re-encoded to F32.",
)
@click.option("--grid-repeats", type=click.IntRange(1, 50), help="Rounds of the --grid cells (default: --repeats).")
@click.option(
    "--inventory-hosts",
    help="Instead: read generated inventories of these host counts (e.g. 10000,95000): first read vs. the cache.",
)
@click.option("--use-inventory", is_flag=True, help="Use the inventory's running rpc-servers (no shaping).")
@options.ollama_models_option(options.STORE_FIRST_HELP)
@click.option("--timeout", type=click.FloatRange(5, 3600), default=300, show_default=True, help="Seconds per load.")
@click.option(
    "--up-before",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="A source tree (e.g. a git worktree of main) whose `sollol-ops up` is timed too, phase by phase.",
)
@options.json_option("Print the results as JSON (schema: sollol_ops.bench).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a PNG plot (needs matplotlib).")
@click.option("--out-md", type=click.Path(path_type=Path), help="Write/update this run's sections in a markdown file.")
@click.option("--plot-link", help="Image link written into --out-md (default: the --plot path).")
@click.pass_obj
def bench(
    ctx: Context,
    models: tuple[str, ...],
    backends: str,
    n_ctx: int,
    links: str,
    as_json: bool,
    plot_path: Path | None,
    out_md: Path | None,
    plot_link: str | None,
    inventory_hosts: str | None,
    **params: Any,
) -> None:
    """Benchmark MODEL(s) sharded over rpc-servers against a local-only llama-server.

    MODEL is an Ollama ref (smollm2:135m) or a synthetic llama model synthetic:LAYERSxN_EMBD[-f16|-q8_0].
    With --gateway: `sollol-ops gateway` in front of the first MODEL instead (sections in docs/gateway.md).
    With --inventory-hosts N,...: no MODEL; reading generated inventories of N hosts, first and from the cache.
    """
    if plot_path is not None:
        lib.require_matplotlib()
    cfg = lib.BenchConfig(
        models=list(models),
        backends=lib.parse_int_list(backends, "--backends"),
        ctx=n_ctx,
        links=lib.parse_links(links),
        inventory_hosts=lib.parse_int_list(inventory_hosts, "--inventory-hosts", 2, 1 << 20) if inventory_hosts else [],
        command="sollol-ops " + shlex.join(sys.argv[1:]),
        **params,  # the other options by their BenchConfig name
    )
    if cfg.up_before is not None and not (cfg.up_before / "sollol_ops" / "cli" / "main.py").is_file():
        raise click.BadParameter(f"{cfg.up_before} has no sollol_ops/cli/main.py", param_hint="--up-before")
    if cfg.use_inventory:
        cfg.inventory_backends = list(ctx.cluster().backends)
    doc = lib.run_bench(cfg, log=lambda line: click.echo(line, err=True))
    if plot_path is not None:
        lib.plot(doc, plot_path)
    if out_md is not None:
        link = plot_link or (str(plot_path) if plot_path else None)
        existing = out_md.read_text() if out_md.is_file() else ""
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_md.write_text(lib.merge_markdown(existing, lib.render_markdown(doc, link)))
    if as_json:
        click.echo(json.dumps(to_jsonable(doc), indent=2))
    else:
        click.echo(lib.render_text(doc))
