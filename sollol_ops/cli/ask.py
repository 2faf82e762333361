"""`sollol-ops ask PROMPT`: one chat completion against the running coordinator's OpenAI endpoint."""

from __future__ import annotations

import click

from sollol_ops.cli import options
from sollol_ops.serve import lifecycle


@click.command()
@click.argument("prompt")
@click.option("--max-tokens", type=click.IntRange(1, 1 << 16), default=64, show_default=True)
@options.stall_timeout_option(
    86400, 120, "Fail when the coordinator sends nothing for this many seconds (a frozen or lost worker)."
)
def ask(prompt: str, max_tokens: int, stall_timeout: float) -> None:
    """Send PROMPT to the coordinator (POST /v1/chat/completions, streamed) and print the answer."""
    click.echo(lifecycle.ask(prompt, max_tokens=max_tokens, stall_timeout=stall_timeout).strip())
