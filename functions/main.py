"""Cloud Functions entry point: `receive_webhook`, an HTTP function."""

import flask
import functions_framework

from webhook_relay.app import start

# At import, i.e. instance start-up: a bad configuration stops here, not on each request.
_handle = start()


@functions_framework.http
def receive_webhook(request: flask.Request) -> flask.Response:
    return _handle(request)
