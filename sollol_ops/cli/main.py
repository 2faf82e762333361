"""The `sollol-ops` click group, global options, and the one place errors become exit codes."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import click

from sollol_ops import __version__
from sollol_ops.cli import options
from sollol_ops.cli.context import Context
from sollol_ops.cluster.facts import COORDINATOR_GROUP, RPC_GROUP
from sollol_ops.errors import SollolError

# Commands are imported lazily so that fast read commands (rpc-list) do not pay for the heavy ones.
COMMANDS: dict[str, str] = {
    "backends": "sollol_ops.cli.backends:backends",
    "rpc-list": "sollol_ops.cli.rpc_list:rpc_list",
    "models": "sollol_ops.cli.models:models",
    "resolve": "sollol_ops.cli.resolve:resolve",
    "status": "sollol_ops.cli.status:status",
    "up": "sollol_ops.cli.up:up",
    "plan": "sollol_ops.cli.plan:plan",
    "down": "sollol_ops.cli.down:down",
    "heal": "sollol_ops.cli.heal:heal",
    "logs": "sollol_ops.cli.logs:logs",
    "local": "sollol_ops.cli.local:local",
    "bench": "sollol_ops.cli.bench:bench",
    "provision": "sollol_ops.cli.provision:provision",
    "toolchain": "sollol_ops.cli.toolchain:toolchain",
    "ask": "sollol_ops.cli.ask:ask",
    "doctor": "sollol_ops.cli.doctor:doctor",
    "inventory": "sollol_ops.cli.inventory:inventory",
    "gateway": "sollol_ops.cli.gateway:gateway",
    "stage": "sollol_ops.cli.stage:stage",
}

INTERNAL_ERROR_EXIT = 70


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._exists(name))

    @staticmethod
    def _exists(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not self._exists(cmd_name):
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="sollol-ops")
@click.option(
    "-i",
    "--inventory",
    "inventory",
    metavar="PATH",
    help="Ansible inventory (default: $SOLLOL_INVENTORY, the nearest ansible.cfg's inventory, ./inventory.ini).",
)
@click.option("-v", "--verbose", count=True, help="More output; -vv shows tracebacks of internal errors.")
@options.group_option("--rpc-group", default=RPC_GROUP, members="RPC workers")
@options.group_option("--coordinator-group", default=COORDINATOR_GROUP, members="coordinators")
@click.pass_context
def cli(ctx: click.Context, inventory: str | None, verbose: int, rpc_group: str, coordinator_group: str) -> None:
    """Serve one LLM sharded across llama.cpp RPC workers provisioned by Ansible.

    Read commands take --json for machine-readable output.
    """
    state = ctx.ensure_object(Context)  # main() hands one in, to read -v back when a command fails
    state.inventory_option = inventory
    state.verbose = verbose
    state.rpc_group = rpc_group
    state.coordinator_group = coordinator_group


def main(argv: list[str] | None = None) -> Any:
    state = Context()
    args = sys.argv[1:] if argv is None else argv
    try:
        return cli.main(args=args, prog_name="sollol-ops", standalone_mode=False, obj=state)
    except SollolError as exc:
        click.echo(f"sollol-ops: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("sollol-ops: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("sollol-ops: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as exc:  # a bug: still one line unless asked for more
        if state.verbose >= 2:
            raise
        click.echo(
            f"sollol-ops: internal error: {type(exc).__name__}: {exc} (run with -vv for the traceback)",
            err=True,
        )
        sys.exit(INTERNAL_ERROR_EXIT)


if __name__ == "__main__":
    main()
