"""`python -m bench` (`make bench`): measure, then write bench/results.md and print it.

Needs the gcloud emulators (as the integration tests do). Whatever happens, Ctrl-C included,
the emulators and every served function are stopped before it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from bench import claims, coldstart, e2e, micro
from bench.table import Row, machine, render
from tests.integration.harness import Stack
from tests.support.signing import Ed25519Signer, JwksServer, new_secret
from webhook_relay.emulators import Emulator

RESULTS = Path(__file__).resolve().parent / "results.md"


@dataclass(frozen=True)
class Sizes:
    micro_rounds: int
    per_cell: int  # end-to-end deliveries a side, at each concurrency
    e2e_rounds: int
    warm_up: int  # deliveries a side before the end-to-end rounds
    starts: int
    imports: int
    memory: tuple[int, ...]
    claim_rounds: int
    threads_cell: int  # deliveries a side at each concurrency of the THREADS rows
    threads_rounds: int


FULL = Sizes(21, 1600, 16, 600, 7, 9, e2e.MEMORY_CHECKPOINTS, 5, 1200, 8)
QUICK = Sizes(5, 60, 3, 20, 2, 2, (50, 100, 200), 1, 80, 2)


class Progress:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, step: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {step}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so that the `finally` blocks stop what was started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, to check the bench itself; no file"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even where the parent shell ignores it
    progress = Progress()
    info = machine()

    progress("1, 2: verification")
    rows = micro.run(sizes.micro_rounds)
    with contextlib.ExitStack() as running:  # stops everything, in reverse, whatever happens
        firestore_emulator, pubsub_emulator = Emulator("firestore"), Emulator("pubsub")
        running.callback(firestore_emulator.stop)
        running.callback(pubsub_emulator.stop)
        progress("starting the emulators")
        firestore_emulator.start()
        pubsub_emulator.start()
        stack = Stack(firestore_emulator, pubsub_emulator)
        running.callback(stack.stop)
        stack.create_topics()
        rows += with_emulators(stack, sizes, progress, running)

    rows.sort(key=lambda row: row.section)
    text = render(info, rows, progress.elapsed())
    if not args.quick:
        args.output.write_text(text)
    print(text)
    return 0


def with_emulators(
    stack: Stack, sizes: Sizes, progress: Progress, running: contextlib.ExitStack
) -> list[Row]:
    secret = new_secret()
    # Every function served here runs as many threads as Terraform gives an instance.
    plain_env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")
    } | {"THREADS": str(e2e.THREADS)}
    ours = coldstart.Function(
        coldstart.OURS,
        "receive_webhook",
        {**plain_env, **stack.env(), "WEBHOOK_SIGNING_SECRETS": secret},
    )
    floor = coldstart.Function(coldstart.FLOOR, "floor", plain_env)
    hello = coldstart.Function(coldstart.HELLO, "hello", plain_env)
    progress("4: cold start, import time, modules loaded")
    first_deliveries = e2e.sign(secret, sizes.starts)
    rows = coldstart.run(ours, floor, hello, first_deliveries, sizes.starts, sizes.imports)

    progress("3: end to end")
    # The key set of dynamic deliveries, served on loopback; the relay accepts both forms.
    keyset = Ed25519Signer()
    jwks = running.enter_context(JwksServer(keyset).running())
    dynamic = {"GEMINI_JWKS_URL": jwks.url, "GEMINI_DYNAMIC_WEBHOOKS": "true"}
    relay = e2e.Served(stack, secret, extra=dynamic)
    running.callback(relay.stop)
    relay.start()
    rows += e2e.throughput_rows(
        stack, relay, secret, sizes.per_cell, sizes.e2e_rounds, sizes.warm_up
    )
    progress("3: non-terminal and dynamic deliveries")
    rows += e2e.variant_rows(stack, relay, secret, keyset, sizes.per_cell, sizes.e2e_rounds)
    relay.stop()

    progress("3: THREADS set vs unset")
    rows += e2e.threads_rows(stack, secret, sizes.threads_cell, sizes.threads_rounds, sizes.warm_up)

    progress("3: the HTTP stack alone")
    rows.append(e2e.http_stack_row(secret, sizes.per_cell, sizes.e2e_rounds, sizes.warm_up))

    progress("5: memory")
    fresh = e2e.Served(stack, secret)  # a new worker: memory from its first delivery on
    running.callback(fresh.stop)
    fresh.start()
    rows.append(e2e.memory_row(fresh, secret, sizes.memory))
    fresh.stop()

    progress("6: concurrent claims")
    rows += claims.run(stack.db, sizes.claim_rounds)
    return rows


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the emulators and served functions are stopped", file=sys.stderr)
        sys.exit(130)
