"""The cached key set: what is fetched, when, and what a failed fetch means."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest

from tests.support.fakes import FakeClock, jwks_server, rsa_key
from tests.support.signing import Ed25519Signer, RsaKey
from webhook_relay.errors import Unauthorized, Unavailable
from webhook_relay.jwks import (
    FETCH_TIMEOUT_SECONDS,
    MAX_ED25519_KEYS,
    REFRESH_INTERVAL_SECONDS,
    KeySet,
    fetch_url,
    parse_key_set,
    unverified_header,
)

A, B = rsa_key("a"), rsa_key("b")
URL = "https://keys.example/jwks.json"


def document(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(entries)}).encode()


class Fetcher:
    """A key set endpoint in memory: serves `keys`, or raises `error`; counts its calls."""

    def __init__(self, *keys: RsaKey) -> None:
        self.keys = list(keys)
        self.error: Exception | None = None
        self.calls = 0
        self.timeouts: list[float] = []

    def __call__(self, url: str, timeout: float) -> bytes:
        self.calls += 1
        self.timeouts.append(timeout)
        if self.error is not None:
            raise self.error
        return document(*(key.jwk() for key in self.keys))


def key_set(fetch: Fetcher, clock: FakeClock) -> KeySet:
    return KeySet(URL, fetch=fetch, clock=clock)


# --- parse_key_set -------------------------------------------------------------------------


def test_parse_keeps_rsa_signing_keys_by_kid() -> None:
    assert set(parse_key_set(document(A.jwk(), B.jwk())).rsa) == {A.kid, B.kid}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"kty": "EC"}, id="not-rsa"),
        pytest.param({"alg": "RS512"}, id="other-alg"),
        pytest.param({"use": "enc"}, id="encryption-key"),
        pytest.param({"kid": 7}, id="kid-not-a-string"),
        pytest.param({"n": "!!"}, id="broken-modulus"),
    ],
)
def test_parse_skips_unusable_key_without_failing(change: dict[str, Any]) -> None:
    assert set(parse_key_set(document(A.jwk() | change, B.jwk())).rsa) == {B.kid}


def test_parse_skips_key_without_kid() -> None:
    entry = A.jwk()
    del entry["kid"]
    assert parse_key_set(document(entry)).rsa == {}


def raw_ed25519(keys: tuple[Any, ...]) -> list[bytes]:
    return [key.public_bytes_raw() for key in keys]


def test_parse_keeps_rsa_and_ed25519_keys_apart() -> None:
    okp = Ed25519Signer()
    keys = parse_key_set(document(A.jwk(), okp.jwk()))
    assert set(keys.rsa) == {A.kid}  # the OKP key's kid names no JWT key
    assert raw_ed25519(keys.ed25519) == [okp.private.public_key().public_bytes_raw()]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"crv": "X25519"}, id="key-agreement-curve"),
        pytest.param({"alg": "RS256"}, id="rsa-algorithm"),
        pytest.param({"use": "enc"}, id="encryption-key"),
        pytest.param({"x": "AAAA"}, id="wrong-length"),
        pytest.param({"x": 7}, id="x-not-a-string"),
    ],
)
def test_parse_skips_unusable_ed25519_key(change: dict[str, Any]) -> None:
    good = Ed25519Signer()
    keys = parse_key_set(document(Ed25519Signer().jwk() | change, good.jwk()))
    assert raw_ed25519(keys.ed25519) == [good.private.public_key().public_bytes_raw()]


def test_rsa_key_labelled_eddsa_is_no_jwt_key() -> None:
    assert parse_key_set(document(A.jwk() | {"alg": "EdDSA"})).rsa == {}


def test_parse_keeps_at_most_8_ed25519_keys() -> None:
    signers = [Ed25519Signer() for _ in range(MAX_ED25519_KEYS + 2)]
    keys = parse_key_set(document(*(signer.jwk() for signer in signers)))
    assert len(keys.ed25519) == MAX_ED25519_KEYS == 8


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"keys": {}}', b"\xff"])
def test_parse_refuses_a_document_that_is_not_a_jwks(raw: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - KeySet maps every ValueError to 503
        parse_key_set(raw)


# --- caching and refresh -------------------------------------------------------------------


def test_first_use_fetches_and_later_uses_do_not() -> None:
    fetch = Fetcher(A)
    keys = key_set(fetch, FakeClock())
    keys.key_for(A.kid)
    keys.key_for(A.kid)
    assert fetch.calls == 1


def test_fetch_timeout_is_at_most_3_seconds() -> None:
    fetch = Fetcher(A)
    key_set(fetch, FakeClock()).key_for(A.kid)
    assert fetch.timeouts == [FETCH_TIMEOUT_SECONDS]
    assert FETCH_TIMEOUT_SECONDS <= 3


def test_unknown_kid_after_the_interval_refreshes_once_and_finds_a_rotated_key() -> None:
    fetch, clock = Fetcher(A), FakeClock()
    keys = key_set(fetch, clock)
    keys.key_for(A.kid)
    fetch.keys.append(B)
    clock.advance(REFRESH_INTERVAL_SECONDS)
    assert keys.key_for(B.kid) is not None
    assert fetch.calls == 2


def test_unknown_kid_still_unknown_after_refresh_is_unauthorized() -> None:
    fetch, clock = Fetcher(A), FakeClock()
    keys = key_set(fetch, clock)
    keys.key_for(A.kid)
    clock.advance(REFRESH_INTERVAL_SECONDS)
    with pytest.raises(Unauthorized, match="unknown JWT key id"):
        keys.key_for("made-up")
    assert fetch.calls == 2


def test_flood_of_unknown_kids_is_one_fetch_per_interval() -> None:
    fetch, clock = Fetcher(A), FakeClock()
    keys = key_set(fetch, clock)
    for number in range(50):
        with pytest.raises(Unauthorized):
            keys.key_for(f"made-up-{number}")
        clock.advance(REFRESH_INTERVAL_SECONDS / 10)
    assert fetch.calls == 5


def test_set_down_at_first_use_is_unavailable() -> None:
    fetch = Fetcher(A)
    fetch.error = OSError("connection refused")
    with pytest.raises(Unavailable):
        key_set(fetch, FakeClock()).key_for(A.kid)


def test_set_down_at_first_use_is_not_fetched_again_within_the_interval() -> None:
    # Otherwise every JWT delivery waits for its own fetch timeout (serialized on the lock)
    # while the set is down, and a burst of them outlasts the 10 s answer budget.
    fetch, clock = Fetcher(A), FakeClock()
    fetch.error = OSError("connection refused")
    keys = key_set(fetch, clock)
    for _ in range(3):
        with pytest.raises(Unavailable):
            keys.key_for(A.kid)
    assert fetch.calls == 1


def test_set_back_after_a_failed_first_use_is_fetched_after_the_interval() -> None:
    fetch, clock = Fetcher(A), FakeClock()
    fetch.error = OSError("connection refused")
    keys = key_set(fetch, clock)
    with pytest.raises(Unavailable):
        keys.key_for(A.kid)
    fetch.error = None
    clock.advance(REFRESH_INTERVAL_SECONDS)
    assert keys.key_for(A.kid) is not None


def test_set_down_on_refresh_for_unknown_kid_is_unavailable() -> None:
    fetch, clock = Fetcher(A), FakeClock()
    keys = key_set(fetch, clock)
    keys.key_for(A.kid)
    fetch.error = TimeoutError("timed out")
    clock.advance(REFRESH_INTERVAL_SECONDS)
    with pytest.raises(Unavailable):
        keys.key_for(B.kid)


def test_cached_key_keeps_working_when_a_stale_refresh_fails() -> None:
    fetch, clock = Fetcher(A), FakeClock()
    keys = key_set(fetch, clock)
    keys.key_for(A.kid)
    fetch.error = OSError("down")
    clock.advance(7200)
    assert keys.key_for(A.kid) is not None
    assert fetch.calls == 2


def test_stale_set_is_replaced() -> None:
    fetch, clock = Fetcher(A), FakeClock()
    keys = key_set(fetch, clock)
    keys.key_for(A.kid)
    fetch.keys = [B]
    clock.advance(7200)
    with pytest.raises(Unauthorized):
        keys.key_for(A.kid)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(http.client.IncompleteRead(b"{"), id="incomplete-read"),
        pytest.param(http.client.BadStatusLine("garbage"), id="bad-status-line"),
        pytest.param(ValueError("key set larger than 512 KiB"), id="too-large"),
    ],
)
def test_broken_answer_from_the_set_is_unavailable(error: Exception) -> None:
    fetch = Fetcher(A)
    fetch.error = error
    with pytest.raises(Unavailable):
        key_set(fetch, FakeClock()).key_for(A.kid)


def test_unavailable_detail_names_no_url() -> None:
    fetch = Fetcher(A)
    fetch.error = OSError(f"cannot reach {URL}")
    with pytest.raises(Unavailable) as caught:
        key_set(fetch, FakeClock()).key_for(A.kid)
    assert URL not in caught.value.detail


# --- fetch_url over loopback HTTP ----------------------------------------------------------


def test_fetch_url_reads_the_set() -> None:
    server = jwks_server(A)
    assert set(parse_key_set(fetch_url(server.url, 3.0)).rsa) == {A.kid}


def test_fetch_url_refuses_a_set_over_512_kib() -> None:
    server = jwks_server(*[A] * 1500)
    with pytest.raises(ValueError, match="512 KiB"):
        fetch_url(server.url, 3.0)


def test_fetch_url_error_status_is_an_oserror() -> None:
    server = jwks_server(A)
    server.down = True
    with pytest.raises(OSError):  # noqa: PT011 - KeySet maps every OSError to 503
        fetch_url(server.url, 3.0)


# --- the token header ----------------------------------------------------------------------


@pytest.mark.parametrize("token", ["a.b.c", "!!.??.**", "W10.e30.c2ln"])  # W10: `[]`
def test_unreadable_jwt_header_is_unauthorized(token: str) -> None:
    with pytest.raises(Unauthorized):
        unverified_header(token)


# --- bounds of a fetch ----------------------------------------------------------------------


@contextmanager
def raw_server(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A loopback HTTP server that answers one connection at a time with `answer`."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                with suppress(OSError):
                    answer(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/jwks.json"
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_fetch_url_bounds_the_whole_fetch_not_each_read() -> None:
    def trickle(connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):  # one byte every 0.1 s: each read is quick, the whole is 10 s
            connection.sendall(b" ")
            time.sleep(0.1)

    with raw_server(trickle) as url:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            fetch_url(url, 0.5)
        assert time.monotonic() - started < 2.0


def test_fetch_url_follows_no_redirect() -> None:
    target = jwks_server(A)
    redirect = f"HTTP/1.1 302 Found\r\nLocation: {target.url}\r\nContent-Length: 0\r\n\r\n"
    with (
        raw_server(lambda connection: connection.sendall(redirect.encode())) as url,
        pytest.raises(urllib.error.HTTPError, match="302"),
    ):
        fetch_url(url, 3.0)
    assert target.requests == 0


def test_no_request_waits_on_another_fetch_past_the_bound() -> None:
    # A fetch stuck where no socket timeout reaches (name resolution): every request waiting
    # for it, the one that started it and the ones that joined, gives up at its bound.
    release = threading.Event()

    def stuck(url: str, timeout: float) -> bytes:
        release.wait(10)
        return document(A.jwk())

    keys = KeySet(URL, fetch=stuck, timeout=0.3, clock=FakeClock())
    outcomes: list[tuple[type[Exception], float]] = []

    def request() -> None:
        started = time.monotonic()
        try:
            keys.key_for(A.kid)
        except Unavailable as error:
            outcomes.append((type(error), time.monotonic() - started))

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    release.set()
    assert [kind for kind, _ in outcomes] == [Unavailable] * 4
    assert max(waited for _, waited in outcomes) < 1.5
    assert keys.fetches == 1
