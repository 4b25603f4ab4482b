"""`register`, `rotate`, `status`: the webhook at Gemini, its secrets in Secret Manager.

Options and help only: what the commands do is in lifecycle_steps.py, imported when one of
them runs, so that the SDK, Secret Manager and Firestore do not slow down the rest of the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ._common import DEFAULT_SECRET

PING_WAIT_SECONDS = 30


def target_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--project",
            envvar="GOOGLE_CLOUD_PROJECT",
            required=True,
            help="Project of the relay's secret and Firestore (default: $GOOGLE_CLOUD_PROJECT).",
        ),
        click.option(
            "--url",
            envvar="RELAY_PUBLIC_URL",
            required=True,
            help="The URL Gemini delivers to, exactly as registered (default: $RELAY_PUBLIC_URL).",
        ),
        click.option(
            "--secret",
            "secret_name",
            default=DEFAULT_SECRET,
            show_default=True,
            metavar="NAME",
            help="Secret Manager secret the relay reads its signing secrets from (its name, not "
            "a value; or projects/P/secrets/NAME).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@target_options
@click.option(
    "--events",
    metavar="TYPE,...",
    help="Event types to subscribe to (default: every type the SDK lists).",
)
@click.option(
    "--wait",
    type=click.IntRange(0, 600),
    default=PING_WAIT_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the relay to record the ping.",
)
def register(project: str, url: str, secret_name: str, events: str | None, wait: int) -> None:
    """Register URL with Gemini, store its signing secret, and check the relay verifies a ping.

    \b
    Idempotent: a webhook already registered for URL is reported (enabled again if Gemini
    disabled it), not duplicated. The new signing secret is added to the relay's secret as
    a new version that keeps the secrets already there (the secret is created if missing).
    API key: GEMINI_API_KEY or GEMINI_API_KEY_FILE.
    """
    from .lifecycle_steps import run_register  # noqa: PLC0415 (lazy: the SDK is heavy)

    run_register(project, url, secret_name, events, wait)


@click.command()
@target_options
def rotate(project: str, url: str, secret_name: str) -> None:
    """Rotate the signing secret; the relay accepts old and new until Gemini drops the old.

    \b
    Writes one new version of the relay's secret: the new secret, and this webhook's previous
    ones marked with the time Gemini stops signing with them (signing_secrets[].expire_time,
    24 h after a rotation). The relay stops accepting each at that time: no second step, no
    redeploy. Secrets of other webhooks are left as they are; so is an untagged secret (stored
    by an older version) unless it is provably this webhook's.
    """
    from .lifecycle_steps import run_rotate  # noqa: PLC0415 (lazy: the SDK is heavy)

    run_rotate(project, url, secret_name)


@click.command()
@target_options
def status(project: str, url: str, secret_name: str) -> None:
    """Show the webhooks for URL, the relay's secrets (expiries, never values), the watch list."""
    from .lifecycle_steps import run_status  # noqa: PLC0415 (lazy: the SDK is heavy)

    run_status(project, url, secret_name)
