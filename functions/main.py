"""Cloud Functions entry points: `receive_webhook` (public) and `reconcile` (private, scheduled).

Both are deployed from this one source, each with only its own configuration: the instance
serving one never needs the other's variables, and `receive_webhook` never imports reconcile's
google-genai. The served target checks its configuration at start-up (one log line naming a
bad variable, then exit); the other one, should it ever be called there, does so on first use.
"""

import os
from collections.abc import Callable

import flask
import functions_framework

from webhook_relay.app import Lazy, start

Handler = Callable[[flask.Request], flask.Response]


def _start_reconcile() -> Handler:
    # Imported here: google-genai is reconcile's dependency alone.
    from webhook_relay.reconcile_app import start as start_reconcile  # noqa: PLC0415

    return start_reconcile()


_receive: Lazy[Handler] = Lazy(start)
_reconcile: Lazy[Handler] = Lazy(_start_reconcile)

# functions-framework (even given only `--target`) and Cloud Functions set FUNCTION_TARGET
# before importing this file. Unset (an `import main` elsewhere): the webhook receiver.
if os.environ.get("FUNCTION_TARGET", "receive_webhook") == "reconcile":
    _reconcile()
else:
    _receive()


@functions_framework.http
def receive_webhook(request: flask.Request) -> flask.Response:
    return _receive()(request)


@functions_framework.http
def reconcile(request: flask.Request) -> flask.Response:
    return _reconcile()(request)
