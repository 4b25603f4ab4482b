"""`webhook-relay`: run the relay locally on the emulators, send it events, watch them arrive.

Commands:
  dev      emulators + topics + subscriptions + the function on localhost
  send     deliver a signed Gemini event, as Gemini does (retries, duplicates)
  tail     print the normalized events arriving on the subscriptions
  redrive  re-publish the messages waiting in a subscription through the routing table
  watch    put interactions or video operations on the safety net's watch list
  reconcile  run the safety net once (publish terminal events Gemini never delivered)
  register   register the webhook with Gemini, store its secret, confirm a verified ping
  rotate     rotate the webhook's signing secret (old and new accepted until the old expires)
  status     the webhook's state and events, the relay's secrets (expiries), the watch list

Bad input ends with one `Error: …` line on stderr and a non-zero exit status, never a
traceback (set WEBHOOK_RELAY_DEBUG=1 to see one for an unexpected error).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import click

from .. import __version__
from .dev import dev
from .lifecycle import register, rotate, status
from .reconcile import reconcile, watch
from .redrive import redrive
from .send import send
from .tail import tail

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="webhook-relay")
def cli() -> None:
    """Run the Gemini webhook relay locally, send it events, and watch them arrive.

    \b
    Quick start (two shells):
      webhook-relay dev        # emulators + the relay on http://127.0.0.1:8080
      webhook-relay send       # a signed batch.succeeded delivery
      webhook-relay tail       # the normalized events on the dev subscriptions
    """


cli.add_command(dev)
cli.add_command(send)
cli.add_command(tail)
cli.add_command(redrive)
cli.add_command(register)
cli.add_command(rotate)
cli.add_command(status)
cli.add_command(watch)
cli.add_command(reconcile)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: the exit status instead of a traceback."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="webhook-relay",
            standalone_mode=False,
        )
    except click.UsageError as error:
        # One line, with where to look, instead of click's usage block.
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
        click.echo(f"Error: {error.format_message()}{hint}", err=True)
        return error.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except Exception as error:
        if os.environ.get("WEBHOOK_RELAY_DEBUG"):
            raise
        message = " ".join(str(error).split()) or "no details"
        click.echo(
            f"Error: unexpected {type(error).__name__}: {message} "
            "(set WEBHOOK_RELAY_DEBUG=1 for the traceback)",
            err=True,
        )
        return 1
    return result if isinstance(result, int) else 0
