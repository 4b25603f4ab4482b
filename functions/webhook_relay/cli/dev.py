"""`webhook-relay dev`: the whole relay on this machine, on the Firestore and Pub/Sub emulators.

Starts (or reuses) the emulators, creates the routed topics with one `<topic>-dev`
subscription each, makes a development secret, an RSA key (JWTs) and an Ed25519 key (`v1a`
entries: dynamic deliveries as they have been seen live) whose key set it serves on loopback,
then runs functions-framework with the function (dynamic deliveries on). Everything it starts
runs in a process group of its own and is stopped on Ctrl-C (SIGINT) or SIGTERM, also when start-up
fails half-way; emulators it merely reused are left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click
from google.api_core import exceptions
from google.cloud import firestore, pubsub_v1

import webhook_relay

from ..config import load_settings
from ..emulators import Emulator, EmulatorError, answers, stop_process_group
from ..errors import ConfigError
from ..routing import DEFAULT_TOPIC_PREFIX
from ..signing import Ed25519DevKey, RsaSigner, new_secret
from . import state as dev_state
from ._common import DEFAULT_PROJECT, api_error, fail, note
from .send import KEYSET_KEY_FILE
from .tail import DEV_SUFFIX

HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 60.0
STOP_SECONDS = 10.0
JWKS_PATH = "/.well-known/jwks.json"
TARGET = "receive_webhook"
WARM_UP_COLLECTION = "webhook-relay-dev-warm-up"
EMULATOR_KINDS = {"firestore": "Firestore", "pubsub": "Pub/Sub"}


DEFAULT_CONCURRENCY = 40  # infra/variables.tf `concurrency`


@click.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    help="Port of the relay on 127.0.0.1.",
)
@click.option(
    "--project", default=DEFAULT_PROJECT, show_default=True, help="Project of the emulators."
)
@click.option(
    "--prefix",
    default=DEFAULT_TOPIC_PREFIX,
    envvar="RELAY_TOPIC_PREFIX",
    show_default=True,
    show_envvar=True,
    help="Topic prefix (RELAY_ROUTES, when set, is honoured too).",
)
@dev_state.state_dir_option()
def dev(port: int, project: str, prefix: str, state_dir: Path) -> None:
    """Serve the relay on localhost, on the Firestore and Pub/Sub emulators.

    Starts the emulators (or reuses those named by FIRESTORE_EMULATOR_HOST and
    PUBSUB_EMULATOR_HOST), creates the topics with a `<topic>-dev` subscription each,
    generates a development secret and the keys of a dev key set (served on loopback): an
    RSA key for JWTs and an Ed25519 key for `v1a` (dynamic deliveries are on),
    and runs the function with functions-framework. Prints the URL, the secret and a
    `webhook-relay send` command; `send` and `tail` find them in the state directory.
    Ctrl-C stops everything it started.
    """
    main_py = _main_py()
    state_dir = state_dir.resolve()
    _check_state_dir(state_dir)
    _check_port(port)
    url = f"http://{HOST}:{port}"
    base_env = {
        **os.environ,
        "RELAY_TOPIC_PREFIX": prefix,
        "GOOGLE_CLOUD_PROJECT": project,
        "WEBHOOK_SIGNING_SECRETS": new_secret(),
        "GEMINI_JWT_AUDIENCE": f"{url},http://localhost:{port}",
        "GEMINI_JWKS_URL": f"http://{HOST}:1{JWKS_PATH}",  # checked now, set for real below
        "GEMINI_DYNAMIC_WEBHOOKS": "true",
        "PYTHONUNBUFFERED": "1",
        # functions-framework serves 4 threads per CPU unless told; Cloud Functions sends up to
        # the per-instance concurrency at once (infra: var.concurrency), so match it.
        "THREADS": os.environ.get("THREADS", str(DEFAULT_CONCURRENCY)),
    }
    try:
        topics = load_settings(base_env).routes.topics()
    except ConfigError as error:
        fail(f"bad configuration: {error}")

    stopping = threading.Event()
    with _signals(stopping), contextlib.ExitStack() as stack:
        _serve(stack, stopping, main_py, state_dir, url, port, project, prefix, topics, base_env)
    click.echo("stopped: the relay, the JWKS server and the emulators started here.")


def _serve(
    stack: contextlib.ExitStack,
    stopping: threading.Event,
    main_py: Path,
    state_dir: Path,
    url: str,
    port: int,
    project: str,
    prefix: str,
    topics: list[str],
    base_env: dict[str, str],
) -> None:
    """Start everything (each stop registered on `stack`), then wait for a stop signal."""
    dev_state.prepare(state_dir)
    stack.callback(dev_state.remove, state_dir)
    hosts, started = _emulators(stack)
    if stopping.is_set():
        return
    _create_topics(hosts["pubsub"], project, topics)
    _warm_firestore(hosts["firestore"], project)

    signer = RsaSigner()
    key_path = state_dir / dev_state.KEY_FILE
    signer.save(key_path)
    ed25519_key = Ed25519DevKey.generate()
    ed25519_path = state_dir / KEYSET_KEY_FILE
    stack.callback(ed25519_path.unlink, missing_ok=True)
    ed25519_key.save(ed25519_path)
    jwks_url = stack.enter_context(_jwks_server([signer.jwk(), ed25519_key.jwk()]))
    env = base_env | {
        "GEMINI_JWKS_URL": jwks_url,
        "FIRESTORE_EMULATOR_HOST": hosts["firestore"],
        "PUBSUB_EMULATOR_HOST": hosts["pubsub"],
    }
    click.echo(f"starting the relay on {url} …")
    function = stack.enter_context(_function(main_py, port, env, stopping))
    if function is None:
        return

    state = dev_state.DevState(
        url=url,
        secret=env["WEBHOOK_SIGNING_SECRETS"],
        jwks_url=jwks_url,
        kid=signer.kid,
        private_key=str(key_path),
        project=project,
        prefix=prefix,
        firestore_host=hosts["firestore"],
        pubsub_host=hosts["pubsub"],
        topics=topics,
        subscriptions={topic + DEV_SUFFIX: topic for topic in topics},
        pids={
            "dev": os.getpid(),
            "function": function.pid,
            **{kind: (emulator.pid if emulator else None) for kind, emulator in started.items()},
        },
    )
    state_file = dev_state.write(state_dir, state)
    _banner(state, started, state_file, state_dir)

    while not stopping.wait(0.5):
        if function.poll() is not None:
            fail(f"the relay exited (status {function.returncode}); stopped everything else")
        for kind, emulator in started.items():
            if emulator is not None and not dev_state.process_alive(emulator.pid or 0):
                fail(f"the {EMULATOR_KINDS[kind]} emulator exited; stopped everything else")


def _main_py() -> Path:
    main_py = Path(webhook_relay.__file__).resolve().parents[1] / "main.py"
    if not main_py.is_file():
        fail(
            f"cannot find the function's entry point {main_py}: `webhook-relay dev` runs from "
            "a source checkout (pip install -e .), not from an installed wheel"
        )
    return main_py


def _check_state_dir(state_dir: Path) -> None:
    previous = dev_state.read(state_dir)
    if previous is None:
        return
    if previous.dev_alive():
        fail(
            f"another `webhook-relay dev` (pid {previous.pids.get('dev')}) uses {state_dir}; "
            "stop it, or give this one another --state-dir"
        )
    leftovers = [
        f"{name} {pid}"
        for name, pid in previous.pids.items()
        if name != "dev" and pid and dev_state.process_alive(pid)
    ]
    if leftovers:
        note(
            "a previous `webhook-relay dev` did not stop cleanly; these may still run: "
            + ", ".join(leftovers)
        )


def _check_port(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            fail(f"port {port} is already in use on {HOST}; choose another with --port")


@contextlib.contextmanager
def _signals(stopping: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM ask for a stop; the command notices between steps and unwinds."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            click.echo(f"\n{signal.Signals(signum).name}: stopping …", err=True)
        stopping.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _emulators(stack: contextlib.ExitStack) -> tuple[dict[str, str], dict[str, Emulator | None]]:
    """The emulator hosts, and the emulators started here (None: reused)."""
    hosts: dict[str, str] = {}
    started: dict[str, Emulator | None] = {}
    to_start: list[Emulator] = []
    for kind, label in EMULATOR_KINDS.items():
        variable = "FIRESTORE_EMULATOR_HOST" if kind == "firestore" else "PUBSUB_EMULATOR_HOST"
        given = os.environ.get(variable, "").strip()
        if given:
            if not answers(given, timeout=2):
                fail(f"{variable}={given} but no emulator answers there; unset it to start one")
            hosts[kind], started[kind] = given, None
            click.echo(f"{label} emulator: reusing {given}")
        else:
            emulator = Emulator(kind)
            to_start.append(emulator)
            hosts[kind], started[kind] = emulator.host, emulator
    if not to_start:
        return hosts, started

    click.echo(f"starting the {' and '.join(EMULATOR_KINDS[e.kind] for e in to_start)} emulators …")
    errors: dict[str, BaseException] = {}

    def start(emulator: Emulator) -> None:
        try:
            emulator.start()
        except Exception as error:  # reported below, once every start has ended
            errors[emulator.kind] = error

    stack.callback(_stop_all, to_start)
    threads = []
    for emulator in to_start:
        thread = threading.Thread(target=start, args=(emulator,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:  # no early exit: a stop must not race an emulator's start
        while thread.is_alive():
            thread.join(0.2)
    for kind, error in errors.items():
        if isinstance(error, EmulatorError):
            lines = str(error).splitlines()
            for detail in lines[1:]:
                note(f"  {detail}")
            fail(f"{lines[0] if lines else error} (needs gcloud's emulators and Java)")
        fail(f"the {EMULATOR_KINDS[kind]} emulator did not start: {error}")
    return hosts, started


def _stop_all(emulators: list[Emulator]) -> None:
    """Stop the emulators side by side: each takes a couple of seconds."""
    threads = [threading.Thread(target=emulator.stop) for emulator in emulators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _create_topics(pubsub_host: str, project: str, topics: list[str]) -> None:
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub_host  # read when a client is made
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        for topic in topics:
            topic_path = f"projects/{project}/topics/{topic}"
            subscription_path = f"projects/{project}/subscriptions/{topic}{DEV_SUFFIX}"
            with contextlib.suppress(exceptions.AlreadyExists):
                publisher.create_topic(name=topic_path, timeout=10)
            with contextlib.suppress(exceptions.AlreadyExists):
                subscriber.create_subscription(name=subscription_path, topic=topic_path, timeout=10)
    except exceptions.GoogleAPIError as error:
        fail(f"cannot create the topics on the Pub/Sub emulator: {api_error(error)}")
    finally:
        publisher.stop()
        subscriber.close()
    click.echo(f"topics: {', '.join(topics)} (subscription <topic>{DEV_SUFFIX} each)")


def _warm_firestore(firestore_host: str, project: str) -> None:
    """A fresh emulator takes seconds over its first writes: more than the relay allows a
    Firestore call. Pay that here, so the first delivery is answered like any other."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host  # read when a client is made
    client = firestore.Client(project=project)
    document = client.collection(WARM_UP_COLLECTION).document(secrets.token_hex(8))
    try:
        document.create({"at": firestore.SERVER_TIMESTAMP}, timeout=30)

        @firestore.transactional
        def touch(transaction: firestore.Transaction) -> None:
            document.get(transaction=transaction)
            transaction.update(document, {"touched": True})

        touch(client.transaction())
        document.delete(timeout=30)
    except exceptions.GoogleAPIError as error:
        fail(f"the Firestore emulator at {firestore_host} does not work: {api_error(error)}")
    finally:
        client.close()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _jwks_server(keys: list[dict[str, Any]]) -> Iterator[str]:
    document = json.dumps({"keys": keys}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != JWKS_PATH:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="jwks", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}{JWKS_PATH}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _functions_framework() -> list[str]:
    script = Path(sys.executable).parent / "functions-framework"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "functions_framework"]


@contextlib.contextmanager
def _function(
    main_py: Path, port: int, env: Mapping[str, str], stopping: threading.Event
) -> Iterator[subprocess.Popen[bytes] | None]:
    command = [
        *_functions_framework(),
        f"--source={main_py}",
        f"--target={TARGET}",
        f"--host={HOST}",
        f"--port={port}",
    ]
    process = subprocess.Popen(  # noqa: S603 - our own command line
        command,
        cwd=main_py.parent,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as a whole, not by the tty
    )
    assert process.stdout is not None  # noqa: S101 - stdout=PIPE
    recent: deque[str] = deque(maxlen=50)
    pump = threading.Thread(
        target=_pump, args=(process.stdout, recent), name="relay-log", daemon=True
    )
    pump.start()
    try:
        yield _wait_ready(process, port, stopping, lambda: _why(pump, recent))
    finally:
        stop_process_group(process, STOP_SECONDS)
        pump.join(2)


def _wait_ready(
    process: subprocess.Popen[bytes],
    port: int,
    stopping: threading.Event,
    why: Callable[[], str],
) -> subprocess.Popen[bytes] | None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if stopping.is_set():
            return None
        if process.poll() is not None:
            fail(f"the relay exited at start-up (status {process.returncode}): {why()}")
        if _live(port):
            return process
        stopping.wait(0.2)
    raise click.ClickException(
        f"the relay did not answer on port {port} within {READY_TIMEOUT_SECONDS:.0f} s"
    )


def _live(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=1) as answer:
            return bool(answer.status == 200) and b'"ok"' in answer.read()
    except (OSError, urllib.error.URLError):
        return False


def _why(pump: threading.Thread, recent: deque[str]) -> str:
    pump.join(2)  # the rest of its output
    for text in reversed(recent):
        if "bad configuration" in text:
            return _log_message(text)
    for text in reversed(recent):
        if text.strip():
            return text.strip()
    return "no output"


def _log_message(text: str) -> str:
    try:
        entry = json.loads(text)
    except ValueError:
        return text
    return str(entry.get("message", text)) if isinstance(entry, dict) else text


def _pump(stream: IO[bytes], recent: deque[str]) -> None:
    """The function's log, one readable line per JSON entry, on dev's stdout."""
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", "replace").rstrip()
        recent.append(text)
        with contextlib.suppress(Exception):
            click.echo(_readable(text))


_SEVERITY_COLOURS = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "red"}
_SHOWN = (
    "http_status",
    "webhook_id",
    "topic",
    "message_id",
    "detail",
    "signature",
    "variable",
    "schemes",
    "topics",
)


def _readable(text: str) -> str:
    try:
        entry = json.loads(text)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or "message" not in entry:
        return click.style("relay | ", dim=True) + text
    severity = str(entry.get("severity", "INFO"))
    fields = " ".join(f"{key}={entry[key]}" for key in _SHOWN if entry.get(key) is not None)
    return (
        click.style("relay | ", dim=True)
        + click.style(f"{severity:<8}", fg=_SEVERITY_COLOURS.get(severity))
        + f" {entry['message']}"
        + (click.style(f"  {fields}", dim=True) if fields else "")
    )


def _banner(
    state: dev_state.DevState,
    started: Mapping[str, Emulator | None],
    state_file: Path,
    state_dir: Path,
) -> None:
    me = _self_command()
    where = {
        kind: "started here" if started.get(kind) is not None else "reused"
        for kind in EMULATOR_KINDS
    }
    state_option = ""
    if state_dir != (Path.cwd() / dev_state.DEFAULT_STATE_DIR).resolve():
        state_option = f" --state-dir {shlex.quote(str(state_dir))}"
    bold = click.style
    rows = [
        ("relay", bold(state.url, bold=True, fg="green")),
        ("secret", state.secret),
        ("JWKS", f"{state.jwks_url} (kid {state.kid}; key {state.private_key})"),
        ("dynamic", "GEMINI_DYNAMIC_WEBHOOKS=true: v1a from the key set (send --scheme keyset)"),
        ("project", state.project),
        ("Firestore", f"{state.firestore_host} (emulator, {where['firestore']})"),
        ("Pub/Sub", f"{state.pubsub_host} (emulator, {where['pubsub']})"),
        ("topics", " ".join(state.topics)),
        ("state", str(state_file)),
    ]
    click.echo("")
    for label, value in rows:
        click.echo(f"  {label:<10} {value}")
    click.echo("")
    click.echo("Send a signed event (from another shell):")
    click.echo(f"  {me} send batch.succeeded --url {state.url} --secret {state.secret}")
    click.echo("Watch the events arrive:")
    click.echo(f"  {me} tail{state_option}")
    click.echo("Point your own subscriber at the emulator:")
    click.echo(
        f"  export PUBSUB_EMULATOR_HOST={state.pubsub_host} GOOGLE_CLOUD_PROJECT={state.project}"
    )
    click.echo("")
    click.secho("Ready. Ctrl-C stops the relay and the emulators started here.", bold=True)


def _self_command() -> str:
    invoked = sys.argv[0] if sys.argv else ""
    if os.sep in invoked and Path(invoked).name == "webhook-relay":
        return shlex.quote(invoked)
    return "webhook-relay"
