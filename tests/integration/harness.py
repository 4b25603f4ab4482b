"""The real parts, on loopback: both emulators, the relay served as in production
(functions-framework, gunicorn), and clients to look at what it did."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.services.firestore import FirestoreClient
from google.cloud.firestore_v1.services.firestore.transports.grpc import FirestoreGrpcTransport
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.pubsub_v1.types import PubsubMessage
from google.pubsub_v1.services.publisher import PublisherClient as GeneratedPublisher

from webhook_relay.claim import document_id
from webhook_relay.emulators import Emulator, free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "relay-test"
PREFIX = "gemini-"
TOPICS = [f"{PREFIX}{name}" for name in ("batch", "interaction", "video", "unrouted")]


@contextmanager
def emulator_env(firestore_host: str, pubsub_host: str) -> Iterator[None]:
    """Clients read the emulator variables when made; set them only for that moment, so
    nothing else in this test process (or its children) is pointed at these emulators."""
    names = {"FIRESTORE_EMULATOR_HOST": firestore_host, "PUBSUB_EMULATOR_HOST": pubsub_host}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class Stack:
    """Emulators plus clients to inspect them. Topics are (re)created by `create_topics`."""

    firestore_emulator: Emulator
    pubsub_emulator: Emulator
    publisher: PublisherClient = field(init=False)
    subscriber: SubscriberClient = field(init=False)
    db: firestore.Client = field(init=False)

    def __post_init__(self) -> None:
        with emulator_env(self.firestore_emulator.host, self.pubsub_emulator.host):
            self.publisher = PublisherClient()
            self.subscriber = SubscriberClient()
            self.db = firestore.Client(project=PROJECT)

    @classmethod
    def start(cls) -> Stack:
        firestore_emulator, pubsub_emulator = Emulator("firestore"), Emulator("pubsub")
        try:
            firestore_emulator.start()
            pubsub_emulator.start()
        except Exception:
            firestore_emulator.stop()
            pubsub_emulator.stop()
            raise
        stack = cls(firestore_emulator, pubsub_emulator)
        stack.create_topics()
        stack.warm()
        return stack

    def warm(self) -> None:
        """A just-started emulator answers its first calls slowly (class loading, JIT): more
        than the relay's 2.5 s cap per call on a busy machine. Pay for that here, once, with
        a patient timeout, rather than in whichever test comes first."""
        warmup = self.db.collection("warmup").document("warmup")
        warmup.set({"at": time.time()}, timeout=60)
        warmup.get(timeout=60)
        warmup.delete(timeout=60)
        # Published before any subscription exists: dropped, seen by no test.
        GeneratedPublisher.publish(
            self.publisher,
            topic=self.publisher.topic_path(PROJECT, TOPICS[0]),
            messages=[PubsubMessage(data=b"warmup")],
            timeout=60,
        )

    def db_through(self, interceptor: Any) -> firestore.Client:
        """Another client of the emulator whose calls all pass `interceptor` (a gRPC client
        interceptor) on its channel, whichever layer, the library's or ours, makes them."""
        with emulator_env(self.firestore_emulator.host, self.pubsub_emulator.host):
            db = firestore.Client(project=PROJECT)
        channel = grpc.intercept_channel(
            grpc.insecure_channel(self.firestore_emulator.host), interceptor
        )
        transport = FirestoreGrpcTransport(channel=channel)
        db._firestore_api_internal = FirestoreClient(transport=transport)
        return db

    def stop(self) -> None:
        self.subscriber.close()
        self.firestore_emulator.stop()
        self.pubsub_emulator.stop()

    def env(self) -> dict[str, str]:
        return {
            "FIRESTORE_EMULATOR_HOST": self.firestore_emulator.host,
            "PUBSUB_EMULATOR_HOST": self.pubsub_emulator.host,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }

    def create_topics(self) -> None:
        for topic in TOPICS:
            with suppress(api_exceptions.AlreadyExists):
                self.publisher.create_topic(name=self.publisher.topic_path(PROJECT, topic))

    def subscribe(self, topic: str) -> str:
        """A new subscription: it sees only what is published from now on."""
        name = f"{topic}-{time.monotonic_ns()}"
        path = f"projects/{PROJECT}/subscriptions/{name}"
        self.subscriber.create_subscription(
            name=path, topic=self.publisher.topic_path(PROJECT, topic)
        )
        return path

    def pull(self, subscription: str, settle: float = 0.5) -> list[Any]:
        """Every message that arrives until none has for `settle` seconds; all acked.

        The relay answers only after Pub/Sub confirmed the publish, so once the answers are
        in, every message it published is already waiting here."""
        received: list[Any] = []
        quiet_until = time.monotonic() + settle
        while time.monotonic() < quiet_until:
            try:
                answer = self.subscriber.pull(
                    subscription=subscription, max_messages=100, timeout=settle
                )
            except api_exceptions.DeadlineExceeded:
                continue
            if answer.received_messages:
                received.extend(answer.received_messages)
                self.subscriber.acknowledge(
                    subscription=subscription,
                    ack_ids=[message.ack_id for message in answer.received_messages],
                )
                quiet_until = time.monotonic() + settle
            else:
                time.sleep(0.1)
        return received

    def record(self, collection: str, webhook_id: str) -> dict[str, Any] | None:
        snapshot = self.db.collection(collection).document(document_id(webhook_id)).get()
        return snapshot.to_dict() if snapshot.exists else None


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]


class RelayServer:
    """`functions-framework` serving functions/main.py, as Cloud Functions does; `source` and
    `server` (a functions-framework executable) serve another copy, e.g. the unpacked zip."""

    def __init__(
        self,
        env: Mapping[str, str],
        source: Path = ROOT / "functions" / "main.py",
        server: Path | None = None,
        target: str = "receive_webhook",
    ) -> None:
        self.source = source
        self.target = target
        self.server = server or Path(sys.executable).with_name("functions-framework")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self._env = {**os.environ, **env}
        for name in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"):
            if name not in env:
                self._env.pop(name, None)
        self.log = Path(f"/tmp/webhook-relay-test-{self.port}.log")  # noqa: S108
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RelayServer:
        command = [
            str(self.server),
            "--source",
            str(self.source),
            "--target",
            self.target,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_serving(self._process)
        except BaseException:
            self.stop()  # whatever went wrong, no server outlives its failed start
            raise
        return self

    def _wait_until_serving(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the relay exited at start:\n{self.log.read_text()[-3000:]}")
            with suppress(OSError):
                if self.get().status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("the relay did not answer within 30 s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, patience=10)

    def get(self) -> Answer:
        return self._send(urllib.request.Request(self.url, method="GET"))

    def post(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        # Header values go out as UTF-8, as Gemini's would; http.client would use latin-1.
        encoded: Any = {name: value.encode() for name, value in headers.items()}
        request = urllib.request.Request(self.url, data=body, headers=encoded, method="POST")
        return self._send(request)

    @staticmethod
    def _send(request: urllib.request.Request) -> Answer:
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return Answer(response.status, json.loads(response.read()), dict(response.headers))
        except urllib.error.HTTPError as error:
            return Answer(error.code, json.loads(error.read()), dict(error.headers))

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            with suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines


def freeze(emulator: Emulator) -> None:
    """The emulator stopped dead (SIGSTOP on its whole process group, the JVM included): its
    connections stay open and every call hangs, as on a stalled backend, until `thaw`."""
    if emulator.pid is None:
        raise RuntimeError(f"the {emulator.kind} emulator is not running")
    os.killpg(emulator.pid, signal.SIGSTOP)


def thaw(emulator: Emulator) -> None:
    """Resume a frozen emulator (harmless on one that is not)."""
    if emulator.pid is not None:
        os.killpg(emulator.pid, signal.SIGCONT)


@contextmanager
def frozen(emulator: Emulator) -> Iterator[None]:
    freeze(emulator)
    try:
        yield
    finally:
        thaw(emulator)


def kill(server: RelayServer) -> None:
    """SIGKILL the relay's whole process group, as an instance dies: nothing it holds is
    finished, released or recorded. Returns once the process is gone."""
    process, server._process = server._process, None
    if process is not None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class ReconcileProcess:
    """functions-framework serving `reconcile` (the target given only on its command line), as
    Cloud Functions does; `run()` is one scheduled invocation."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.port = free_port()
        self.log = Path(f"/tmp/webhook-relay-reconcile-{self.port}.log")  # noqa: S108
        command = [
            str(Path(sys.executable).with_name("functions-framework")),
            *("--source", str(ROOT / "functions" / "main.py"), "--target", "reconcile"),
            *("--host", "127.0.0.1", "--port", str(self.port)),
        ]
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                command, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        # Listening means the app is loaded (functions-framework imports it before binding);
        # a GET would already be a run.
        deadline = time.monotonic() + 30
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"reconcile exited at start:\n{self.log.read_text()[-3000:]}")
            with suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("reconcile did not listen within 30 s")
            time.sleep(0.1)

    def run(self, timeout: float = 150) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self) -> None:
        stop_process_group(self._process, patience=10)
