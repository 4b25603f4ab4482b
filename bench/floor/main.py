"""The fair cold-start floor for functions/main.py: the same five packages the receive path
needs (what it imports for ed25519, JWT, Firestore and Pub/Sub), imported and not used."""

import flask
import functions_framework
import jwt  # noqa: F401
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: F401
from google.cloud import firestore, pubsub_v1  # noqa: F401


@functions_framework.http
def floor(request: flask.Request) -> str:
    return "ok"
