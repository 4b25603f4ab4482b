"""The artifact that ships: functions/requirements.txt is a complete, current lock, and the zip
Terraform uploads, built here as `archive_file` builds it, serves a delivery from a fresh
virtualenv holding only that lock.

The virtualenv is kept in .venv-artifact/ keyed by the lock's hash (and the Python), so only
a changed lock pays for the install; pip's own cache serves the wheels to a new one.
"""

from __future__ import annotations

import difflib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hcl2
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.integration.harness import RelayServer, Stack
from tests.support.signing import headers_v1, new_secret
from webhook_relay.emulators import EmulatorError

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
LOCK = ROOT / "functions" / "requirements.txt"
LOCK_INPUT = ROOT / "functions" / "requirements.in"
VENVS = ROOT / ".venv-artifact"  # ignored, as .venv-*/
# Cloud Functions' python3xx runtimes run on Ubuntu 22.04 (glibc 2.35), x86_64: every
# manylinux tag up to 2.35 (pip does not expand a given --platform to the older ones).
RUNTIME_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + [
    f"manylinux{legacy}_x86_64" for legacy in ("2014", "2010", "1")
]
# What must never ship: the command line, development helpers, caches.
NOT_SHIPPED = re.compile(
    r"(^|/)(__pycache__/|[^/]*\.pyc$|[^/]*\.egg-info/)"
    r"|^webhook_relay/(cli/|emulators\.py$|signing\.py$)"
)


def _unquote(value: object) -> str:
    # python-hcl2 8 keeps the quotes of string literals and labels; older versions drop them.
    text = str(value)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _terraform_block(kind: str, type_name: str, name: str) -> dict[str, object]:
    with (INFRA / "function.tf").open() as handle:
        parsed = hcl2.load(handle)
    for block in parsed.get(kind, []):
        for found_type, named in block.items():
            for found_name, body in named.items():
                if (_unquote(found_type), _unquote(found_name)) == (type_name, name):
                    return dict(body)
    raise AssertionError(f"infra/function.tf has no {kind} {type_name}.{name}")


@dataclass(frozen=True)
class Archive:
    """`data "archive_file" "source"` as infra/function.tf declares it."""

    source_dir: Path
    excludes: tuple[str, ...]
    file_mode: int | None

    @classmethod
    def declared(cls) -> Archive:
        body = _terraform_block("data", "archive_file", "source")
        source = _unquote(body["source_dir"]).replace("${path.module}", str(INFRA))
        assert "${" not in source, f"source_dir {source!r} needs more than path.module"
        excludes = body.get("excludes", [])
        assert isinstance(excludes, list)
        mode = body.get("output_file_mode")
        return cls(
            Path(os.path.normpath(source)),
            tuple(_unquote(pattern) for pattern in excludes),
            None if mode is None else _go_uint(_unquote(mode)),
        )


def _go_uint(text: str) -> int:
    """Go's strconv.ParseUint(text, 0, 32), as the provider reads output_file_mode."""
    return int(text, 8) if re.fullmatch(r"0[0-7]+", text) else int(text, 0)


def runtime_version() -> tuple[int, int]:
    function = _terraform_block("resource", "google_cloudfunctions2_function", "relay")
    build = function["build_config"]
    build = build[0] if isinstance(build, list) else build
    assert isinstance(build, dict)
    runtime = _unquote(build["runtime"])
    match = re.fullmatch(r"python3(\d+)", runtime)
    assert match, f"runtime {runtime!r} is not a python3xx runtime"
    return 3, int(match.group(1))


def glob_regex(pattern: str) -> re.Pattern[str]:
    """doublestar's PathMatch, which archive_file's excludes use: `*` and `?` stay within one
    path segment, a `**` segment spans any number of segments (none included), so a trailing
    `/**` matches the directory itself and all below it."""
    if any(char in pattern for char in "[]{}\\"):
        raise ValueError(f"exclude {pattern!r}: only *, ? and ** are implemented here")
    segments = pattern.split("/")
    regex = ""
    for index, segment in enumerate(segments):
        first, last = index == 0, index == len(segments) - 1
        if segment == "**":
            if first and last:
                regex += ".*"
            elif first:
                regex += "(?:.*/)?"
            elif last:
                regex += "(?:/.*)?"
            else:
                regex += "/(?:.*/)?"
            continue
        if not first and segments[index - 1] != "**":
            regex += "/"
        regex += re.escape(segment).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.compile(regex)


def archive_entries(archive: Archive) -> list[tuple[str, Path]]:
    """(name in the zip, file) in the provider's order: filepath.Walk, names sorted, an
    excluded directory skipped whole, symbolic links followed."""
    patterns = [glob_regex(pattern) for pattern in archive.excludes if pattern]
    entries: list[tuple[str, Path]] = []

    def walk(directory: Path, prefix: str) -> None:
        for name in sorted(os.listdir(directory), key=os.fsencode):
            path, relative = directory / name, prefix + name
            if any(pattern.fullmatch(relative) for pattern in patterns):
                continue
            if path.is_dir():
                walk(path, relative + "/")
            else:
                entries.append((relative, path))

    walk(archive.source_dir, "")
    return entries


def build_zip(archive: Archive, output: Path) -> Path:
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, path in archive_entries(archive):
            # The provider zeroes modification times; 1980 is the zip format's earliest.
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = archive.file_mode if archive.file_mode is not None else path.stat().st_mode
            info.external_attr = (stat.S_IFREG | stat.S_IMODE(mode)) << 16
            bundle.writestr(info, path.read_bytes())
    return output


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor = result.stdout.split()
    return int(major), int(minor)


def interpreter_for(version: tuple[int, int]) -> str:
    """The deployed runtime's Python where this machine has one (on PATH, or installed by
    pyenv), else this one: the lock is proven to install on the runtime's either way (see
    test_lock_installs_on_the_deployed_runtime)."""
    name = "python{}.{}".format(*version)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(name), *map(str, sorted(pyenv.glob(f"versions/*/bin/{name}")))]
    for candidate in candidates:
        if candidate and _version_of(candidate) == version:
            return candidate
    return sys.executable


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One test run at a time builds a virtualenv (several people share this checkout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_venv(python: str) -> Path:
    """A virtualenv holding exactly the lock, installed with --require-hashes; reused while
    the lock and the Python are the same. A venv cannot move, so it is built in place and
    counts as built only once its marker is written."""
    version = "{}.{}".format(*(_version_of(python) or (0, 0)))
    key = hashlib.sha256(LOCK.read_bytes() + version.encode()).hexdigest()[:16]
    venv = VENVS / f"py{version}-{key}"
    marker = venv / ".installed"
    with _exclusive(VENVS / ".lock"):
        if marker.exists():
            return venv
        for stale in VENVS.glob(f"py{version}-*"):
            shutil.rmtree(stale)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "--disable-pip-version-check"]
        subprocess.run(
            [*pip, "install", "--quiet", "--require-hashes", "-r", str(LOCK)], check=True
        )
        marker.touch()
    return venv


def _lock_pins(text: str) -> list[str]:
    return [line.rstrip(" \\") for line in text.splitlines() if "==" in line]


def test_lock_inputs_are_the_pyproject_ranges() -> None:
    """requirements.in may name fewer packages than pyproject.toml (the command line's
    extras stay out of the zip), but never another range."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    lines = [line.strip() for line in LOCK_INPUT.read_text().splitlines()]
    inputs = [Requirement(line) for line in lines if line and not line.startswith("#")]
    assert inputs
    for requirement in inputs:
        twin = declared.get(canonicalize_name(requirement.name))
        assert twin is not None, f"{requirement.name} is locked but not in pyproject.toml"
        assert requirement.specifier == twin.specifier, f"{requirement} vs pyproject's {twin}"


def test_lock_is_current(tmp_path: Path) -> None:
    """Recompiled from requirements.in (keeping the lock's pins where they still fit), the
    lock comes out unchanged: nothing added, removed or moved by an edited input."""
    recompiled = tmp_path / "requirements.txt"
    shutil.copy(LOCK, recompiled)
    uv = Path(sys.executable).with_name("uv")
    result = subprocess.run(
        [str(ROOT / ".ci" / "lock")],
        env={**os.environ, "LOCK_OUTPUT": str(recompiled), "UV": str(uv)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = LOCK.read_text(), recompiled.read_text()
    changes = "\n".join(difflib.unified_diff(_lock_pins(before), _lock_pins(after), lineterm=""))
    assert before == after, f"functions/requirements.txt is stale; run `make lock`:\n{changes}"


def test_lock_pins_every_package_with_hashes() -> None:
    requirement = None
    hashed: dict[str, bool] = {}
    for line in LOCK.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("--hash=sha256:"):
            assert requirement is not None
            hashed[requirement] = True
            continue
        pinned = Requirement(text.rstrip(" \\"))
        assert [spec.operator for spec in pinned.specifier] == ["=="], text
        requirement = canonicalize_name(pinned.name)
        hashed[requirement] = False
    assert hashed
    assert [name for name, has_hashes in hashed.items() if not has_hashes] == []


def test_lock_installs_on_the_deployed_runtime(tmp_path: Path) -> None:
    """Every locked package has a wheel, with the locked hash, for the runtime Terraform
    deploys, whatever Python runs this test."""
    major, minor = runtime_version()
    target = [
        *("--only-binary=:all:", "--python-version", f"{major}.{minor}", "--implementation", "cp"),
        *("--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"),
        *(option for platform in RUNTIME_PLATFORMS for option in ("--platform", platform)),
    ]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    result = subprocess.run(
        [
            *pip,
            "download",
            "--quiet",
            *target,
            "--require-hashes",
            "-r",
            str(LOCK),
            "-d",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("**/__pycache__/**", "__pycache__", True),
        ("**/__pycache__/**", "webhook_relay/__pycache__", True),
        ("**/__pycache__/**", "webhook_relay/__pycache__/app.cpython-312.pyc", True),
        ("**/__pycache__/**", "webhook_relay/pycache.py", False),
        ("**/*.pyc", "main.pyc", True),
        ("**/*.pyc", "webhook_relay/cli/x.pyc", True),
        ("**/*.pyc", "webhook_relay/pyc.py", False),
        ("webhook_relay/cli/**", "webhook_relay/cli", True),
        ("webhook_relay/cli/**", "webhook_relay/cli/send.py", True),
        ("webhook_relay/cli/**", "webhook_relay/client.py", False),
        ("webhook_relay/cli/**", "other/webhook_relay/cli/send.py", False),
        ("webhook_relay/signing.py", "webhook_relay/signing.py", True),
        ("webhook_relay/signing.py", "webhook_relay/signing.pyi", False),
        ("*.py", "webhook_relay/app.py", False),
        ("webhook_relay/?pp.py", "webhook_relay/app.py", True),
        ("**/*.egg-info/**", "gemini_webhook_relay.egg-info/PKG-INFO", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/xb", False),
    ],
)
def test_excludes_match_as_archive_file_does(pattern: str, path: str, expected: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is expected


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zip(Archive.declared(), tmp_path_factory.mktemp("zip") / "function-source.zip")


def test_zip_holds_only_what_the_functions_run(shipped: Path) -> None:
    names = zipfile.ZipFile(shipped).namelist()
    assert {"main.py", "requirements.txt", "webhook_relay/app.py"} <= set(names)
    assert [name for name in names if NOT_SHIPPED.search(name)] == []


@pytest.fixture(scope="module")
def artifact_stack() -> Iterator[Stack]:
    try:
        stack = Stack.start()
    except EmulatorError as error:
        pytest.fail(f"the emulators did not start: {error}", pytrace=False)
    yield stack
    stack.stop()


@pytest.mark.emulators
def test_shipped_zip_accepts_a_signed_delivery(
    shipped: Path, artifact_stack: Stack, tmp_path: Path
) -> None:
    """The zip unpacked, served by the lock's functions-framework on the runtime's Python
    where this machine has it: a signed delivery is accepted and published."""
    venv = lock_venv(interpreter_for(runtime_version()))
    source = tmp_path / "source"
    zipfile.ZipFile(shipped).extractall(source)
    secret = new_secret()
    subscription = artifact_stack.subscribe("gemini-batch")
    server = RelayServer(
        {**artifact_stack.env(), "WEBHOOK_SIGNING_SECRETS": secret, "PYTHONPATH": ""},
        source=source / "main.py",
        server=venv / "bin" / "functions-framework",
    )
    webhook_id = "msg_" + secrets.token_hex(8)
    body = json.dumps(
        {
            "type": "batch.succeeded",
            "version": "v1",
            "timestamp": "2026-11-24T10:00:00Z",
            "data": {"id": "batches/shipped", "output_file_uri": "gs://bucket/out.jsonl"},
        }
    ).encode()
    try:
        server.start()
        answer = server.post(body, headers_v1(secret, body, webhook_id))
        log = server.log.read_text(errors="replace")[-3000:]
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)
    assert (answer.status, answer.body) == (
        200,
        {"status": "accepted", "webhook_id": webhook_id},
    ), log
    [received] = artifact_stack.pull(subscription)
    event = json.loads(received.message.data)
    assert (event["id"], event["type"], event["subject"]) == (
        webhook_id,
        "batch.succeeded",
        "batches/shipped",
    )
