"""`webhook-relay watch` and `webhook-relay reconcile`: the safety net from the command line.

Both read the project and Firestore settings from the environment (GOOGLE_CLOUD_PROJECT,
FIRESTORE_EMULATOR_HOST, RELAY_JOBS_COLLECTION; `reconcile` also its own and GEMINI_API_KEY),
as the deployed `reconcile` function does; `--project` overrides the project.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import click

from ..errors import ConfigError, RelayError
from ..jobs import key_for_name
from ..reconcile_app import build
from ..watching import watch_key
from ._common import fail


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
def reconcile(project: str | None) -> int:
    """Run the safety net once, as the scheduled `reconcile` function does: log lines, then
    the run's summary as one JSON line. Exit status 1 if it reached neither Firestore nor the
    Gemini API."""
    try:
        reconciler = build(_env(project))
    except ConfigError as error:
        fail(f"bad configuration: {error}")
    summary = reconciler.run()
    click.echo(json.dumps(summary.to_json()))
    return 1 if summary.unavailable else 0
