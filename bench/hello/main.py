"""The smallest HTTP function: the cold-start and import-time baseline for functions/main.py."""

import flask
import functions_framework


@functions_framework.http
def hello(request: flask.Request) -> str:
    return "ok"
