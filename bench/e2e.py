"""Rows 3 and 5: deliveries through the served function against the emulators, next to a
floor that does the same Firestore and Pub/Sub calls with the raw clients and no HTTP."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import hcl2
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.pubsub_v1 import PublisherClient
from google.cloud.pubsub_v1.types import BatchSettings, PubsubMessage
from google.pubsub_v1.services.publisher import PublisherClient as GeneratedPublisher

from bench.micro import envelope
from bench.table import Row, Spread, quantile, ratio_of_rounds, times
from tests.integration.harness import PROJECT, RelayServer, Stack, emulator_env
from tests.support.signing import Ed25519Signer, headers_v1
from webhook_relay.claim import CLAIMED, PUBLISHED, TTL_FIELD, document_id
from webhook_relay.normalize import normalize

COLLECTION = "webhook_deliveries"  # the relay's default
TOPIC = "gemini-batch"  # where the relay routes batch.succeeded
CONCURRENCIES = (1, 8, 32)
THREADS_AT = (32, 40)  # concurrencies of the THREADS rows, up to the deployed default
DEFAULT_THREADS = 4 * (os.cpu_count() or 1)  # functions-framework's, when THREADS is unset
DIRECT_AT = 8  # the concurrency at which the floor's publish variant is measured too
LEASE = timedelta(seconds=30)
TTL = timedelta(hours=72)
MEMORY_CHECKPOINTS = (100, 1_000, 2_500, 5_000, 7_500, 10_000)


def deployed_threads() -> int:
    """THREADS as Terraform sets it: the per-instance concurrency (infra/variables.tf)."""
    with (Path(__file__).resolve().parents[1] / "infra" / "variables.tf").open() as handle:
        parsed = hcl2.load(handle)
    for block in parsed["variable"]:
        for name, body in block.items():
            if name.strip('"') == "concurrency":
                return int(body["default"])
    raise RuntimeError("infra/variables.tf declares no `concurrency`")


THREADS = deployed_threads()


@dataclass(frozen=True)
class Signed:
    """One delivery as Gemini sends it, plus what the floor needs to do the same work."""

    webhook_id: str
    body: bytes
    headers: dict[str, str]
    data: bytes
    attributes: dict[str, str]


def sign(
    secret: str,
    count: int,
    event_type: str = "batch.succeeded",
    keyset: Ed25519Signer | None = None,
) -> list[Signed]:
    """`count` new deliveries: HMAC-signed, or with `keyset`, signed `v1a` by a key of the
    key set as dynamic deliveries reportedly are (python-genai issue 2927)."""
    deliveries = []
    for _ in range(count):
        body = envelope(300, event_type)
        headers = headers_v1(secret, body, webhook_id="msg_" + secrets.token_hex(12))
        webhook_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
        scheme = "hmac"
        if keyset is not None:
            headers["webhook-signature"] = keyset.sign(webhook_id, timestamp, body)
            scheme = "keyset-ed25519"
        event = normalize(webhook_id, timestamp, body, scheme)
        deliveries.append(Signed(webhook_id, body, headers, event.data(), event.attributes()))
    return deliveries


@dataclass
class Run:
    seconds: float
    latencies: list[float]
    statuses: Counter[str]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


Worker = Callable[[Signed], str]


def drive(items: Sequence[Signed], concurrency: int, new_worker: Callable[[], Worker]) -> Run:
    """`concurrency` threads share the items; the clock runs from all-ready to all-done."""
    queue: Iterator[Signed] = iter(items)  # next() on a list iterator is atomic in CPython
    latencies: list[float] = []
    statuses: list[str] = []
    errors: list[BaseException] = []
    ready = threading.Barrier(concurrency + 1)

    def work() -> None:
        try:
            worker = new_worker()
        except BaseException as error:
            errors.append(error)
            ready.abort()
            return
        try:
            ready.wait()
            for item in queue:
                started = time.perf_counter()
                status = worker(item)
                latencies.append(time.perf_counter() - started)
                statuses.append(status)
        except BaseException as error:
            errors.append(error)
        finally:
            close = getattr(worker, "close", None)
            if close is not None:
                close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed: see errors
        ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed") from errors[0]
    return Run(seconds, latencies, Counter(statuses))


class HttpWorker:
    """A keep-alive connection to the relay, as a load balancer would hold."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self._connection.connect()

    def __call__(self, item: Signed) -> str:
        self._connection.request("POST", "/", body=item.body, headers=item.headers)
        response = self._connection.getresponse()
        answer = json.loads(response.read())
        return str(answer["status"])

    def close(self) -> None:
        self._connection.close()


class Floor:
    """The relay's storage and publish calls, made directly: create the claim, publish and
    wait for Pub/Sub's confirmation, mark the record published. Same batch settings as the
    relay's publisher (one message per request, no batching delay)."""

    def __init__(self, stack: Stack) -> None:
        with emulator_env(stack.firestore_emulator.host, stack.pubsub_emulator.host):
            self._db = firestore.Client(project=PROJECT)
            self._publisher = PublisherClient(
                batch_settings=BatchSettings(max_messages=1, max_latency=0.0)
            )
        self._collection = self._db.collection(COLLECTION)
        self._topic = self._publisher.topic_path(PROJECT, TOPIC)

    def _ref(self, item: Signed, prefix: str = "floor-") -> firestore.DocumentReference:
        return self._collection.document(document_id(prefix + item.webhook_id))

    def deliver(self, item: Signed) -> str:
        """As the issue asks: `PublisherClient.publish(...).result()`."""
        return self._deliver(self._ref(item), item, self._publish)

    def deliver_direct(self, item: Signed) -> str:
        """A variant: the generated client's synchronous call, no batching machinery."""
        return self._deliver(self._ref(item, "direct-"), item, self._publish_direct)

    def _publish(self, item: Signed) -> str:
        message_id: str = self._publisher.publish(
            self._topic, item.data, **item.attributes
        ).result()
        return message_id

    def _publish_direct(self, item: Signed) -> str:
        message = PubsubMessage(data=item.data, attributes=item.attributes)
        message_id: str = GeneratedPublisher.publish(
            self._publisher, topic=self._topic, messages=[message]
        ).message_ids[0]
        return message_id

    def _deliver(
        self, ref: firestore.DocumentReference, item: Signed, publish: Callable[[Signed], str]
    ) -> str:
        now = datetime.now(UTC)
        ref.create(
            {
                "webhook_id": item.webhook_id,
                "state": CLAIMED,
                "lease_until": now + LEASE,
                "attempts": 1,
                "event_type": item.attributes["event_type"],
                "subject": item.attributes.get("subject"),
                "topic": None,
                "message_id": None,
                "first_seen_at": now,
                "published_at": None,
                TTL_FIELD: now + TTL,
            }
        )
        message_id = publish(item)
        now = datetime.now(UTC)
        ref.update(
            {
                "state": PUBLISHED,
                "topic": TOPIC,
                "message_id": message_id,
                "published_at": now,
                TTL_FIELD: now + TTL,
            }
        )
        return "accepted"

    def duplicate(self, item: Signed) -> str:
        ref = self._ref(item)
        try:
            ref.create({"webhook_id": item.webhook_id, "state": CLAIMED})
        except api_exceptions.AlreadyExists:
            snapshot = ref.get()
            return "duplicate" if snapshot.get("state") == PUBLISHED else "other"
        return "created"

    def close(self) -> None:
        self._publisher.stop()
        self._db.close()  # type: ignore[no-untyped-call]


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    found = [pid]
    for child in children(pid):
        found += descendants(child)
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system time of these processes (all their threads), from /proc."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Meter:
    """CPU used so far by the relay's worker, this process (client or floor), the emulators."""

    worker: int
    emulators: tuple[int, ...]

    @classmethod
    def of(cls, stack: Stack, relay: Served) -> Meter:
        (worker,) = children(relay.pid)
        emulators = [stack.firestore_emulator.pid, stack.pubsub_emulator.pid]
        return cls(worker, tuple(p for pid in emulators if pid for p in descendants(pid)))

    def read(self) -> tuple[float, float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        own = usage.ru_utime + usage.ru_stime
        return cpu_seconds([self.worker]), own, cpu_seconds(self.emulators)


@dataclass
class Cell:
    """One side of one row: every round's run, and the CPU it took."""

    runs: list[Run] = field(default_factory=list)
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def measure(
        self,
        meter: Meter,
        items: Sequence[Signed],
        concurrency: int,
        new_worker: Callable[[], Worker],
    ) -> None:
        before = meter.read()
        self.runs.append(drive(items, concurrency, new_worker))
        for index, (start, end) in enumerate(zip(before, meter.read(), strict=True)):
            self.cpu[index] += end - start

    def rates(self) -> list[float]:
        return [run.rate for run in self.runs]

    def latencies(self) -> list[float]:
        return [latency for run in self.runs for latency in run.latencies]

    def statuses(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for run in self.runs:
            total.update(run.statuses)
        return total

    def cpu_ms(self) -> tuple[float, float, float]:
        """CPU milliseconds per delivery: relay worker, this process, emulators."""
        count = len(self.latencies())
        worker, own, emulators = (seconds * 1000 / count for seconds in self.cpu)
        return worker, own, emulators

    def show(self) -> str:
        latencies = self.latencies()
        return (
            f"{Spread.of(self.rates()).show('/s')}; "
            f"p50 {quantile(latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {quantile(latencies, 0.99) * 1000:.1f} ms"
        )


def _cpu_note(ours: Cell, floor: Cell) -> str:
    worker, client, our_emulators = ours.cpu_ms()
    _, floor_own, floor_emulators = floor.cpu_ms()
    return (
        f" CPU ms per delivery: ours {worker:.2f} (served function) + {client:.2f} "
        f"(HTTP client), floor {floor_own:.2f}; emulators {our_emulators:.2f} vs "
        f"{floor_emulators:.2f}."
    )


def _unexpected(cell: Cell, expected: str) -> str:
    others = {status: n for status, n in cell.statuses().items() if status != expected}
    return f" Unexpected answers: {others}." if others else ""


def throughput_rows(
    stack: Stack, relay: Served, secret: str, per_cell: int, rounds: int, warm_up: int
) -> list[Row]:
    """Row 3: new deliveries, then the same again (duplicates), at each concurrency.

    Rounds alternate the order (ours, floor; floor, ours; …), so a drift of the machine
    or the emulators (the JVM warms up for a long time) does not favour one side."""
    floor = Floor(stack)
    meter = Meter.of(stack, relay)
    rows: list[Row] = []

    def post() -> Worker:
        return HttpWorker(relay.port)

    try:
        # Warm both sides: connections, channels, the relay's lazily made clients, the JVMs.
        drive(sign(secret, warm_up), 8, post)
        drive(sign(secret, warm_up), 8, lambda: floor.deliver)
        for concurrency in CONCURRENCIES:
            # At least five waves of requests a round, so start and end effects stay small.
            size = max(per_cell // rounds, 5 * concurrency)
            count = max(2, per_cell // size)
            fresh = {"ours": Cell(), "floor": Cell(), "direct": Cell()}
            dups = {"ours": Cell(), "floor": Cell()}
            for index in range(count):
                batch = sign(secret, size)
                order: list[tuple[str, Callable[[], Worker], Callable[[], Worker] | None]] = [
                    ("ours", post, post),
                    ("floor", lambda: floor.deliver, lambda: floor.duplicate),
                ]
                if concurrency == DIRECT_AT:
                    order.append(("direct", lambda: floor.deliver_direct, None))
                for side, new, again in order if index % 2 == 0 else order[::-1]:
                    fresh[side].measure(meter, batch, concurrency, new)
                    if again is not None:
                        dups[side].measure(meter, batch, concurrency, again)
            ratio = ratio_of_rounds(fresh["ours"].rates(), fresh["floor"].rates())
            rows.append(
                Row(
                    "3",
                    f"end to end, new terminal deliveries, concurrency {concurrency}",
                    fresh["ours"].show(),
                    fresh["floor"].show(),
                    times(ratio, 2),
                    "≥ 0.8",
                    ratio >= 0.8,
                    f"{size * count} `batch.succeeded` deliveries a side in {count} rounds, each "
                    "a new job (the delivery's and the job's records, one commit); keep-alive HTTP "
                    "client threads in the bench process, served by gunicorn's 1 worker with "
                    f"{relay.threads or DEFAULT_THREADS} threads; floor: create, publish + "
                    "result(), update with the raw clients in as many threads as the concurrency."
                    + _cpu_note(fresh["ours"], fresh["floor"])
                    + _unexpected(fresh["ours"], "accepted"),
                )
            )
            if concurrency == DIRECT_AT:
                direct = ratio_of_rounds(fresh["ours"].rates(), fresh["direct"].rates())
                rows.append(
                    Row(
                        "3",
                        f"end to end, new deliveries, concurrency {concurrency}, vs a floor "
                        "that publishes with the generated client's call",
                        fresh["ours"].show(),
                        fresh["direct"].show(),
                        times(direct, 2),
                        "—",
                        None,
                        "floor variant, in the same rounds: the generated client's `publish(topic, "
                        "[message])`, which returns once Pub/Sub stored the message, without "
                        "`PublisherClient.publish`'s batching (two threads and a future per "
                        "message at max_messages=1)." + _cpu_note(fresh["ours"], fresh["direct"]),
                    )
                )
            dup_ratio = ratio_of_rounds(dups["ours"].rates(), dups["floor"].rates())
            rows.append(
                Row(
                    "3",
                    f"end to end, duplicates only, concurrency {concurrency}",
                    dups["ours"].show(),
                    dups["floor"].show(),
                    times(dup_ratio, 2),
                    "—",
                    None,
                    "each round's deliveries again, right after them: every answer "
                    "`duplicate`; floor: create (AlreadyExists) then get."
                    + _cpu_note(dups["ours"], dups["floor"])
                    + _unexpected(dups["ours"], "duplicate"),
                )
            )
    finally:
        floor.close()
    return rows


VARIANT_AT = 8  # the concurrency of the variant rows


def variant_rows(
    stack: Stack, relay: Served, secret: str, keyset: Ed25519Signer, per_cell: int, rounds: int
) -> list[Row]:
    """Row 3: deliveries other than the HMAC-signed terminal ones, each beside the floor in
    the same interleaved rounds: a non-terminal type (no job record at all), and a dynamic
    `v1a` delivery verified against the key set's Ed25519 keys."""
    variants = {
        "new non-terminal deliveries (`interaction.requires_action`: no job record)": partial(
            sign, secret, event_type="interaction.requires_action"
        ),
        "new dynamic `v1a` deliveries (Ed25519 key of the key set, `keyset-ed25519`)": partial(
            sign, secret, keyset=keyset
        ),
    }
    floor = Floor(stack)
    meter = Meter.of(stack, relay)
    rows: list[Row] = []
    try:
        for label, make in variants.items():
            size = max(per_cell // rounds, 5 * VARIANT_AT)
            count = max(2, per_cell // size)
            cells = {"ours": Cell(), "floor": Cell()}
            order: list[tuple[str, Callable[[], Worker]]] = [
                ("ours", partial(HttpWorker, relay.port)),
                ("floor", lambda: floor.deliver),
            ]
            for index in range(count):
                batch = make(size)
                for side, new in order if index % 2 == 0 else order[::-1]:
                    cells[side].measure(meter, batch, VARIANT_AT, new)
            ratio = ratio_of_rounds(cells["ours"].rates(), cells["floor"].rates())
            rows.append(
                Row(
                    "3",
                    f"end to end, {label}, concurrency {VARIANT_AT}",
                    cells["ours"].show(),
                    cells["floor"].show(),
                    times(ratio, 2),
                    "≥ 0.8",
                    ratio >= 0.8,
                    f"{size * count} deliveries a side in {count} rounds; floor as above."
                    + _cpu_note(cells["ours"], cells["floor"])
                    + _unexpected(cells["ours"], "accepted"),
                )
            )
    finally:
        floor.close()
    return rows


def threads_rows(stack: Stack, secret: str, per_cell: int, rounds: int, warm_up: int) -> list[Row]:
    """Row 3: two relays, THREADS as Terraform sets it vs unset, at the concurrencies an
    instance is sent; each round gives both sides as many new deliveries, in alternating
    order."""
    sides = {"tuned": Served(stack, secret), "default": Served(stack, secret, threads=None)}
    rows: list[Row] = []
    try:
        for relay in sides.values():
            relay.start()
            drive(sign(secret, warm_up), 8, partial(HttpWorker, relay.port))
        meters = {name: Meter.of(stack, relay) for name, relay in sides.items()}
        for concurrency in THREADS_AT:
            size = max(per_cell // rounds, 5 * concurrency)
            count = max(2, per_cell // size)
            cells = {name: Cell() for name in sides}
            for index in range(count):
                order = list(sides.items())
                for name, relay in order if index % 2 == 0 else order[::-1]:
                    worker = partial(HttpWorker, relay.port)
                    cells[name].measure(meters[name], sign(secret, size), concurrency, worker)
            tuned, default = cells["tuned"], cells["default"]
            ratio = ratio_of_rounds(tuned.rates(), default.rates())
            p99 = quantile(tuned.latencies(), 0.99) / quantile(default.latencies(), 0.99)
            rows.append(
                Row(
                    "3",
                    f"THREADS={THREADS} vs unset, new deliveries, concurrency {concurrency}",
                    tuned.show(),
                    default.show(),
                    f"{times(ratio, 2)} throughput, {times(p99, 2)} p99",
                    "—",
                    None,
                    f"{size * count} deliveries a side in {count} rounds. ours: THREADS="
                    f"{THREADS}, as Terraform sets it (the per-instance concurrency, default "
                    f"{THREADS}); reference: unset, so functions-framework runs "
                    f"{DEFAULT_THREADS} threads here (4 per CPU: 4 on the deployed 1 CPU) and "
                    "the other requests wait in gunicorn's queue, their latency counted from "
                    f"the client's send. CPU ms per delivery of the served function: ours "
                    f"{tuned.cpu_ms()[0]:.2f}, unset {default.cpu_ms()[0]:.2f}."
                    + _unexpected(tuned, "accepted")
                    + _unexpected(default, "accepted"),
                )
            )
    finally:
        for relay in sides.values():
            relay.stop()
    return rows


HELLO = Path(__file__).resolve().parent / "hello" / "main.py"
HTTP_STACK_AT = 8


def http_stack_row(secret: str, per_cell: int, rounds: int, warm_up: int) -> Row:
    """Row 3: what the HTTP stack alone (gunicorn, Flask, functions-framework) costs the served
    function per POST: the smallest HTTP function, served as ours is, sent the same deliveries
    by the same client. No function's code can shed that part of the rows above."""
    hello = ServedFunction({"THREADS": str(THREADS)}, source=HELLO, target="hello")
    hello.start()
    try:
        drive(sign(secret, warm_up), HTTP_STACK_AT, partial(HttpWorker, hello.port))
        (worker,) = children(hello.pid)
        per_post: list[float] = []
        size = max(per_cell // 4, 5)  # CPU time is read in 10 ms ticks: rounds of 0.2 s or more
        for _ in range(rounds):
            before = cpu_seconds([worker])
            run = drive(sign(secret, size), HTTP_STACK_AT, partial(HttpWorker, hello.port))
            per_post.append((cpu_seconds([worker]) - before) * 1000 / len(run.latencies))
    finally:
        hello.stop()
    return Row(
        "3",
        f"served CPU per POST of the HTTP stack alone, concurrency {HTTP_STACK_AT}",
        Spread.of(per_post).show(" ms", digits=2),
        "—",
        "—",
        "—",
        None,
        f"{size * rounds} signed deliveries in {rounds} rounds to bench/hello (answers at "
        f"once), served like ours (gunicorn's 1 worker, {THREADS} threads), keep-alive "
        "client threads: the share of each row's served CPU per delivery that is gunicorn, "
        "Flask and functions-framework. Subtract it from ours to compare our code with the "
        "floor's client calls.",
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def memory_row(server: Served, secret: str, checkpoints: Sequence[int] = MEMORY_CHECKPOINTS) -> Row:
    """Row 5: the gunicorn worker's resident size as deliveries accumulate."""
    (worker,) = children(server.pid)
    samples: dict[int, int] = {}
    sent = 0
    started = time.perf_counter()
    statuses: Counter[str] = Counter()
    for checkpoint in checkpoints:
        run = drive(sign(secret, checkpoint - sent), 8, lambda: HttpWorker(server.port))
        statuses.update(run.statuses)
        sent = checkpoint
        samples[checkpoint] = rss_kib(worker)
    seconds = time.perf_counter() - started
    first, last = samples[checkpoints[0]], samples[checkpoints[-1]]
    warm = samples[checkpoints[1]]
    growth = (last - first) / 1024
    late = (last - warm) / 1024
    # Noise: a few MiB of allocator slack; sustained growth would show over the last 9,000.
    met = late <= max(2.0, 0.03 * warm / 1024)
    trail = ", ".join(f"{n:,}: {kib / 1024:.1f}" for n, kib in samples.items())
    others = {status: n for status, n in statuses.items() if status != "accepted"}
    return Row(
        "5",
        f"RSS of the serving process (gunicorn worker), {checkpoints[-1]:,} vs "
        f"{checkpoints[0]:,} deliveries",
        f"{last / 1024:.1f} MiB after {checkpoints[-1]:,}",
        f"{first / 1024:.1f} MiB after {checkpoints[0]:,}",
        f"{growth:+.1f} MiB ({(last / first - 1) * 100:+.1f}%); "
        f"{late:+.1f} MiB from {checkpoints[1]:,} to {checkpoints[-1]:,}",
        "no growth beyond noise",
        met,
        f"MiB after n deliveries: {trail}. HMAC, 300 B bodies, concurrency 8, unique ids; "
        f"{checkpoints[-1]:,} took {seconds:.0f} s ({checkpoints[-1] / seconds:.0f}/s). "
        f"Met: ≤ max(2 MiB, 3%) growth from {checkpoints[1]:,} (warm) to {checkpoints[-1]:,}."
        + (f" Unexpected answers: {others}." if others else ""),
    )


class ServedFunction(RelayServer):
    """A function served as the tests serve the relay, plus what a benchmark needs: its pid
    and a clean-up."""

    @property
    def pid(self) -> int:
        process = self._process
        if process is None:
            raise RuntimeError("not started")
        return process.pid

    def stop(self) -> None:
        super().stop()
        self.log.unlink(missing_ok=True)


class Served(ServedFunction):
    """The relay. THREADS is set as Terraform sets it unless `threads` is None (the
    framework's default)."""

    def __init__(
        self,
        stack: Stack,
        secret: str,
        threads: int | None = THREADS,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        env = {**stack.env(), "WEBHOOK_SIGNING_SECRETS": secret, **(extra or {})}
        if threads is not None:
            env["THREADS"] = str(threads)
        super().__init__(env)
        if threads is None:
            self._env.pop("THREADS", None)  # nor from this process's environment
        self.threads = threads
