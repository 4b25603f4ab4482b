"""Google's Secret Manager (and the OAuth token endpoint), faked behind a loopback HTTPS proxy.

The Google client libraries honour the standard environment (proxy, CA bundle, credentials),
so nothing in the code under test is pointed anywhere: `fake.env()` sets `HTTPS_PROXY` to this
proxy, `REQUESTS_CA_BUNDLE`/`SSL_CERT_FILE` to a CA made here, and
`GOOGLE_APPLICATION_CREDENTIALS` to a service account whose RSA key is made here. The proxy
answers `CONNECT` only for the hosts it fakes, terminates TLS with a certificate for that host
signed by the test CA, and serves the REST surface that `SecretManagerServiceClient(transport=
"rest")` uses, with answers built from the library's own types. Every request must carry a
bearer token signed by the service account's key (a self-signed JWT, or one issued by the
fake token endpoint): a library that sent no credentials would be refused as Google would.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import socket
import ssl
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.cloud.secretmanager_v1 import types as sm
from google.iam.v1 import iam_policy_pb2  # type: ignore[import-untyped]
from google.protobuf import json_format  # type: ignore[import-untyped]

SECRET_MANAGER = "secretmanager.googleapis.com"
OAUTH = "oauth2.googleapis.com"
HOSTS = (SECRET_MANAGER, OAUTH)
RESET = 0  # a failure "status": the connection closes without an answer


class TestCA:
    """A certificate authority for one test session, and leaf certificates for named hosts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook-relay test CA")])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.bundle = directory / "ca.pem"
        self.bundle.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def server_context(self, host: str) -> ssl.SSLContext:
        with self._lock:
            if host not in self._contexts:
                self._contexts[host] = self._make_context(host)
            return self._contexts[host]

    def _make_context(self, host: str) -> ssl.SSLContext:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        chain = self.directory / f"{host}.pem"
        chain.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
        return context


@dataclass(frozen=True)
class Call:
    host: str
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class Version:
    number: int
    data: bytes
    state: str = "ENABLED"
    create_time: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass
class FakeSecret:
    name: str  # projects/P/secrets/S
    versions: list[Version] = field(default_factory=list)
    create_time: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def latest(self) -> Version | None:
        return self.versions[-1] if self.versions else None


@dataclass
class _Failure:
    pattern: re.Pattern[str]
    status: int
    times: int  # remaining; -1: forever
    method: str | None


Route = Callable[["_Request"], tuple[int, Any]]


@dataclass
class _Request:
    call: Call
    match: re.Match[str]


_STATUS = {
    400: "FAILED_PRECONDITION",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class FakeGoogle:
    """`with FakeGoogle(tmp_path) as google:`; run the code under test with `google.env()`."""

    def __init__(self, directory: Path, project: str = "relay-test") -> None:
        self.directory = directory
        self.project = project
        self.ca = TestCA(directory)
        self.secrets: dict[str, FakeSecret] = {}
        self.calls: list[Call] = []
        # Permissions testIamPermissions reports missing (e.g. "secretmanager.versions.add").
        self.denied: set[str] = set()
        self._mounts: dict[str, list[Path]] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.client_email = f"relay-cli@{project}.iam.gserviceaccount.com"
        self.credentials = directory / "service-account.json"
        self._write_credentials()
        self._tokens: set[str] = set()
        self._failures: list[_Failure] = []
        # Called with every call before it is served, outside the fake's lock: a test may
        # block in it to force an interleaving of concurrent commands.
        self.before_call: Callable[[Call], None] | None = None
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        base = r"/v1/(?P<secret>projects/[^/]+/secrets/[^/:]+)"
        self._routes: list[tuple[str, str, re.Pattern[str], Route]] = [
            (OAUTH, "POST", re.compile(r"/token"), self._token),
            (
                SECRET_MANAGER,
                "POST",
                re.compile(r"/v1/(?P<parent>projects/[^/]+)/secrets"),
                self._create,
            ),
            (SECRET_MANAGER, "GET", re.compile(base), self._get),
            (SECRET_MANAGER, "POST", re.compile(base + ":addVersion"), self._add_version),
            (SECRET_MANAGER, "POST", re.compile(base + ":testIamPermissions"), self._test_iam),
            (
                SECRET_MANAGER,
                "GET",
                re.compile(base + r"/versions/(?P<version>[^/:]+):access"),
                self._access,
            ),
        ]

    # --- what tests use -----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The standard variables that send the Google client libraries here."""
        proxy = f"http://127.0.0.1:{self.port}"
        loopback = "127.0.0.1,localhost,::1"
        return {
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "NO_PROXY": loopback,
            "no_proxy": loopback,
            "REQUESTS_CA_BUNDLE": str(self.ca.bundle),
            "SSL_CERT_FILE": str(self.ca.bundle),
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.credentials),
        }

    def secret(self, name: str, project: str | None = None) -> FakeSecret | None:
        return self.secrets.get(f"projects/{project or self.project}/secrets/{name}")

    def add_secret(self, name: str, *versions: bytes, project: str | None = None) -> FakeSecret:
        """Seed a secret, as Terraform (and a placeholder version) would have made it."""
        full = f"projects/{project or self.project}/secrets/{name}"
        secret = FakeSecret(full)
        for data in versions:
            secret.versions.append(Version(len(secret.versions) + 1, data))
        self.secrets[full] = secret
        return secret

    def add_version(self, name: str, data: bytes, project: str | None = None) -> Version:
        """A version added by someone else (gcloud, the console)."""
        secret = self.secret(name, project)
        assert secret is not None, f"no secret {name}"
        return self._append(secret, data)

    def _append(self, secret: FakeSecret, data: bytes) -> Version:
        version = Version(len(secret.versions) + 1, data)
        secret.versions.append(version)
        for path in self._mounts.get(secret.name, ()):
            path.write_bytes(data)
        return version

    def mount(self, name: str, path: Path, project: str | None = None) -> None:
        """Keep `path` holding the latest version of the secret, as a Cloud Run secret volume
        (version `latest`) does: written now, and again whenever a version is added."""
        full = f"projects/{project or self.project}/secrets/{name}"
        self._mounts.setdefault(full, []).append(path)
        secret = self.secrets.get(full)
        latest = secret.latest() if secret else None
        if latest is not None:
            path.write_bytes(latest.data)

    def fail(self, path_regex: str, status: int, times: int = 1, method: str | None = None) -> None:
        """Answer the next `times` (-1: all) Secret Manager calls matching with `status`
        (`RESET`: close the connection without an answer, as a reset does)."""
        with self._lock:
            self._failures.append(
                _Failure(re.compile(path_regex), status, times, method and method.upper())
            )

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and pattern.search(c.path)]

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def start(self) -> FakeGoogle:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._proxy_handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGoogle:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- credentials ----------------------------------------------------------------------------

    def _write_credentials(self) -> None:
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": "test-key-1",
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "token_uri": f"https://{OAUTH}/token",
        }
        self.credentials.write_text(json.dumps(info))
        self.credentials.chmod(0o600)

    def _authorized(self, header: str | None) -> bool:
        token = (header or "").removeprefix("Bearer ").strip()
        if token in self._tokens:
            return True
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                options={"verify_aud": False},
            )
        except jwt.PyJWTError:
            return False
        return bool(claims.get("iss") == self.client_email)

    def _token(self, request: _Request) -> tuple[int, Any]:
        # The JWT-bearer grant: the assertion must be signed by the service account's key.
        assertion = (request.call.body or {}).get("assertion", "")
        if not self._authorized(f"Bearer {assertion}"):
            return 400, {"error": "invalid_grant", "error_description": "bad assertion"}
        token = "ya29.fake-" + secrets.token_urlsafe(16)
        self._tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    # --- Secret Manager -------------------------------------------------------------------------

    def _found(self, request: _Request) -> FakeSecret | tuple[int, Any]:
        secret = self.secrets.get(unquote(request.match["secret"]))
        if secret is None:
            return _error(404, f"Secret [{request.match['secret']}] not found.")
        return secret

    def _create(self, request: _Request) -> tuple[int, Any]:
        parent = request.match["parent"]
        secret_id = request.call.query.get("secretId", "")
        name = f"{parent}/secrets/{secret_id}"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", secret_id):
            return _error(400, "Invalid secretId.", "INVALID_ARGUMENT")
        if name in self.secrets:
            return _error(409, f"Secret [{name}] already exists.")
        secret = FakeSecret(name)
        self.secrets[name] = secret
        return 200, _proto(sm.Secret(name=name, create_time=secret.create_time), request)

    def _get(self, request: _Request) -> tuple[int, Any]:
        secret = self._found(request)
        if not isinstance(secret, FakeSecret):
            return secret
        return 200, _proto(sm.Secret(name=secret.name, create_time=secret.create_time), request)

    def _add_version(self, request: _Request) -> tuple[int, Any]:
        secret = self._found(request)
        if not isinstance(secret, FakeSecret):
            return secret
        body = sm.AddSecretVersionRequest.from_json(
            json.dumps(request.call.body or {}), ignore_unknown_fields=True
        )
        version = self._append(secret, bytes(body.payload.data))
        return 200, _proto(_version_message(secret, version), request)

    def _access(self, request: _Request) -> tuple[int, Any]:
        secret = self._found(request)
        if not isinstance(secret, FakeSecret):
            return secret
        wanted = request.match["version"]
        if wanted == "latest":
            version = secret.latest()
        else:
            version = next((v for v in secret.versions if str(v.number) == wanted), None)
        if version is None:
            return _error(404, f"Secret Version [{secret.name}/versions/{wanted}] not found.")
        if version.state != "ENABLED":
            return _error(
                400,
                f"Secret Version [{secret.name}/versions/{version.number}] is in DISABLED state.",
            )
        return 200, _proto(
            sm.AccessSecretVersionResponse(
                name=f"{secret.name}/versions/{version.number}",
                payload=sm.SecretPayload(data=version.data),
            ),
            request,
        )

    def _test_iam(self, request: _Request) -> tuple[int, Any]:
        secret = self._found(request)
        if not isinstance(secret, FakeSecret):
            return secret
        asked = iam_policy_pb2.TestIamPermissionsRequest()
        json_format.ParseDict(request.call.body or {}, asked, ignore_unknown_fields=True)
        answer = iam_policy_pb2.TestIamPermissionsResponse(
            permissions=[p for p in asked.permissions if p not in self.denied]
        )
        return 200, json_format.MessageToDict(answer)

    # --- HTTP plumbing ---------------------------------------------------------------------------

    def _dispatch(self, call: Call, authorization: str | None) -> tuple[int, Any]:
        with self._lock:
            self.calls.append(call)
            if call.host == SECRET_MANAGER:
                for failure in self._failures:
                    if failure.times == 0 or (failure.method and failure.method != call.method):
                        continue
                    if failure.pattern.search(call.path):
                        failure.times -= 1 if failure.times > 0 else 0
                        if failure.status == RESET:
                            return RESET, None
                        return _error(failure.status, f"Injected {failure.status}.")
                if not self._authorized(authorization):
                    return _error(401, "Request had invalid authentication credentials.")
            for host, method, pattern, route in self._routes:
                match = pattern.fullmatch(call.path)
                if host == call.host and method == call.method and match:
                    return route(_Request(call, match))
        return _error(404, f"No route for {call.method} {call.path}.")

    def _proxy_handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Inner(BaseHTTPRequestHandler):
            """HTTP inside the TLS tunnel, for `host`."""

            protocol_version = "HTTP/1.1"
            host = ""

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                kind = self.headers.get("content-type") or ""
                body: Any = None
                if raw and "x-www-form-urlencoded" in kind:
                    body = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
                elif raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                call = Call(self.host, self.command, parts.path, query, body)
                if fake.before_call is not None:
                    fake.before_call(call)
                status, answer = fake._dispatch(call, self.headers.get("authorization"))
                if status == RESET:
                    self.close_connection = True
                    return
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json; charset=UTF-8")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Proxy(BaseHTTPRequestHandler):
            def do_CONNECT(self) -> None:
                host, _, port = self.path.rpartition(":")
                if host not in HOSTS or port != "443":
                    # Nothing leaves this machine: only the faked hosts are tunnelled.
                    self.send_error(403, "not a faked host")
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                try:
                    tunnel = fake.ca.server_context(host).wrap_socket(
                        self.connection, server_side=True
                    )
                except (ssl.SSLError, OSError):
                    return
                handler = type("Tunnel", (Inner,), {"host": host})
                try:
                    handler(tunnel, self.client_address, self.server)
                except (ssl.SSLError, OSError):
                    pass
                finally:
                    with suppress(OSError):
                        tunnel.shutdown(socket.SHUT_RDWR)
                    tunnel.close()

            def do_GET(self) -> None:
                self.send_error(403, "plain HTTP is not proxied")

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Proxy


def _error(status: int, message: str, name: str | None = None) -> tuple[int, Any]:
    """Google's JSON error shape, which google-api-core maps to its exception classes."""
    return status, {
        "error": {"code": status, "message": message, "status": name or _STATUS.get(status)}
    }


def _proto(message: Any, request: _Request) -> Any:
    # The REST transport asks for `$alt=json;enum-encoding=int`; Google honours it.
    ints = "enum-encoding=int" in request.call.query.get("$alt", "")
    return json.loads(type(message).to_json(message, use_integers_for_enums=ints))


def _version_message(secret: FakeSecret, version: Version) -> sm.SecretVersion:
    return sm.SecretVersion(
        name=f"{secret.name}/versions/{version.number}",
        create_time=version.create_time,
        state=getattr(sm.SecretVersion.State, version.state),
    )
