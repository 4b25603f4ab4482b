"""The smallest HTTP function: the cold-start and import-time baseline for functions/main.py."""

import flask
import functions_framework


@functions_framework.http
def hello(request: flask.Request) -> str:
    return '{"status": "ok"}'  # a JSON answer, as the relay's, for the same HTTP client
