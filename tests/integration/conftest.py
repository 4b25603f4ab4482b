from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from tests.integration.harness import RelayServer, Stack
from tests.support.signing import new_secret
from webhook_relay.emulators import EmulatorError

StartRelay = Callable[..., RelayServer]


def _start_stack() -> Stack:
    try:
        return Stack.start()
    except EmulatorError as error:
        # Never a skip: an integration suite that silently did not run proves nothing.
        pytest.fail(f"the emulators did not start: {error}", pytrace=False)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    stack = _start_stack()
    yield stack
    stack.stop()


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    """Emulators of this test alone, for tests that stop and restart them."""
    stack = _start_stack()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def secret() -> str:
    return new_secret()


def _relay_factory(stack: Stack, secret: str, resources: ExitStack) -> StartRelay:
    def start(**env: str) -> RelayServer:
        server = RelayServer({**stack.env(), "WEBHOOK_SIGNING_SECRETS": secret, **env})
        resources.callback(server.stop)
        return server.start()

    return start


@pytest.fixture(scope="session")
def relay(stack: Stack, secret: str) -> Iterator[RelayServer]:
    with ExitStack() as resources:
        yield _relay_factory(stack, secret, resources)()


@pytest.fixture
def start_relay(stack: Stack, secret: str) -> Iterator[StartRelay]:
    with ExitStack() as resources:
        yield _relay_factory(stack, secret, resources)


@pytest.fixture
def start_own_relay(own_stack: Stack, secret: str) -> Iterator[StartRelay]:
    with ExitStack() as resources:
        yield _relay_factory(own_stack, secret, resources)
