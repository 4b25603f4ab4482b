"""`webhook-relay watch` and `webhook-relay reconcile`: the safety net from the command line.

Both read the project and Firestore settings from the environment (GOOGLE_CLOUD_PROJECT,
FIRESTORE_EMULATOR_HOST, RELAY_JOBS_COLLECTION; `reconcile` also its own and GEMINI_API_KEY),
as the deployed `reconcile` function does; `--project` overrides the project.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence

import click

from ..errors import ConfigError, RelayError
from ..jobs import key_for_name
from ..reconcile import Summary
from ..reconcile_app import build
from ..watching import watch_key
from ._common import fail

PROGRESS_SECONDS = 1.5  # a line at least every 2 s: a person sees the run is alive


def _env(project: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if project:
        env["GOOGLE_CLOUD_PROJECT"] = project
    return env


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--project", help="Default: GOOGLE_CLOUD_PROJECT.")
def watch(names: Sequence[str], project: str | None) -> None:
    """Watch interactions or video operations: `reconcile` then publishes the terminal event
    of each even if Gemini never delivers it (batch jobs need no watching: it lists them).

    \b
    NAME: interactions/ID or a bare interaction ID, models/MODEL/operations/ID for a video,
    or batches/ID.
    """
    keys = []
    for name in names:
        try:
            keys.append((key_for_name(name), name.strip()))
        except ValueError as error:
            fail(str(error))
    env = _env(project)
    for key, name in keys:
        try:
            added = watch_key(key, name, project, env)
        except ConfigError as error:
            fail(f"bad configuration: {error}")
        except RelayError as error:
            fail(f"cannot watch {name}: {error.detail}")
        click.echo(f"{'watching' if added else 'already known'} {key.kind} {name}")


@click.command()
@click.option("--project", help="Default: GOOGLE_CLOUD_PROJECT.")
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0.05),
    default=PROGRESS_SECONDS,
    show_default=True,
    help="Seconds between progress lines on stderr.",
)
def reconcile(project: str | None, progress_every: float) -> int:
    """Run the safety net once, as the scheduled `reconcile` function does: log lines, then
    the run's summary as one JSON line, on stdout; a progress line on stderr every
    --progress-every seconds meanwhile. Exit status 1 if it reached neither Firestore nor
    the Gemini API."""
    from ..gemini import api_key  # noqa: PLC0415 - the SDK loads only when the command runs

    env = _env(project)
    try:
        service = build(env)
        api_key(env)  # the function reports a missing key per run; a person wants it now
    except ConfigError as error:
        fail(f"bad configuration: {error}")
    summary = Summary()
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(progress_every):
            click.echo(progress_line(summary, time.monotonic() - started), err=True)

    reporter = threading.Thread(target=report, name="reconcile-progress", daemon=True)
    reporter.start()
    try:
        service.run(summary)
    finally:
        done.set()
        reporter.join()
    click.echo(json.dumps(summary.to_json()))
    return 1 if summary.unavailable else 0


def progress_line(summary: Summary, elapsed: float) -> str:
    return (
        f"reconcile: {elapsed:.0f} s, {summary.step or 'starting'}: checked "
        f"{summary.checked_batches} batches, {summary.checked_watched} watched; "
        f"reconciled {summary.reconciled}, already delivered {summary.already_delivered}, "
        f"errors {summary.errors}"
    )
