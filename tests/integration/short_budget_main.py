"""The receiver of functions/main.py with the request budget the test gives it (in
TEST_BUDGET_SECONDS, a variable of this test file, not of the relay): the tests of that budget
would otherwise wait 8 s each."""

import os

import flask
import functions_framework

from webhook_relay.app import start

_receive = start(budget_seconds=float(os.environ["TEST_BUDGET_SECONDS"]))


@functions_framework.http
def receive_webhook(request: flask.Request) -> flask.Response:
    return _receive(request)
