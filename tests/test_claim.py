"""Owner tokens (claim.new_owner): one per request, never shared, even across forked workers.
The claim's records themselves are tested against the emulator (tests/integration)."""

from __future__ import annotations

import subprocess
import sys
import threading

from webhook_relay.claim import new_owner

FORKED = """
import os
from webhook_relay.claim import new_owner
print(new_owner(), flush=True)  # the parent's, as gunicorn's arbiter would hold it
pid = os.fork()
print(new_owner(), flush=True)
if pid:
    os.waitpid(pid, 0)
"""


def test_tokens_are_unique_across_threads() -> None:
    tokens: list[str] = []

    def draw() -> None:
        tokens.extend(new_owner() for _ in range(2000))

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(tokens)) == len(tokens) == 16_000


def test_a_forked_worker_draws_its_own_tokens() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FORKED], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()

    first, *after_fork = out
    assert len(after_fork) == 2
    prefixes = {token.rsplit("-", 1)[0] for token in after_fork}
    assert len(prefixes) == 2  # parent and child: each its own prefix
    assert first.rsplit("-", 1)[0] in prefixes  # the parent kept its own
