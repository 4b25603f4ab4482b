"""Row 4: process start to first 200, and the import time of the function's source, ours vs
the fair floor (bench/floor: the same five packages imported, nothing done) and a hello-world
function, all under the same server (functions-framework with gunicorn); and which modules
the receive path loads."""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.e2e import Signed
from bench.table import TIMES, Row, Spread, ratio_of_rounds, times
from webhook_relay.emulators import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / "functions" / "main.py"
HELLO = ROOT / "bench" / "hello" / "main.py"
FLOOR = ROOT / "bench" / "floor" / "main.py"
# Reconcile's and the command line's dependencies: the receive path must never load them.
NEVER_ON_RECEIVE = ("google.genai", "google.cloud.secretmanager", "webhook_relay.cli")
START_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.01
IMPORT_MARK = "BENCH_IMPORT_SECONDS"


@dataclass(frozen=True)
class Function:
    source: Path
    target: str
    env: Mapping[str, str]


@dataclass(frozen=True)
class Start:
    first_200: float
    first_delivery: float | None  # ours only: the first POST, which makes the clients


def _answer(port: int, method: str, body: bytes | None, headers: Mapping[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, "/", body=body, headers=dict(headers))
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def cold_start(function: Function, delivery: Signed | None = None) -> Start:
    port = free_port()
    executable = str(Path(sys.executable).with_name("functions-framework"))
    command = [executable, "--source", str(function.source), "--target", function.target]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=dict(function.env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{function.source} exited at start ({process.returncode})")
            if time.perf_counter() - started > START_TIMEOUT_SECONDS:
                raise RuntimeError(f"{function.source} did not answer in time")
            try:
                status = _answer(port, "GET", None, {})
            except OSError:
                time.sleep(POLL_SECONDS)
                continue
            if status == 200:
                break
        first_200 = time.perf_counter() - started
        first_delivery = None
        if delivery is not None:
            status = _answer(port, "POST", delivery.body, delivery.headers)
            if status != 200:
                raise RuntimeError(f"first delivery answered {status}")
            first_delivery = time.perf_counter() - started
        return Start(first_200, first_delivery)
    finally:
        stop_process_group(process, patience=10)


def _import_command(function: Function, *flags: str) -> list[str]:
    code = (
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(function.source.parent)!r})\n"
        "before = set(sys.modules)\n"
        "started = time.perf_counter()\n"
        "import main\n"
        "seconds = time.perf_counter() - started\n"
        "loaded = sorted(set(sys.modules) - before)\n"
        f"print({IMPORT_MARK!r}, json.dumps({{'seconds': seconds, 'modules': loaded}}))\n"
    )
    return [sys.executable, *flags, "-c", code]


@dataclass(frozen=True)
class Imported:
    seconds: float
    modules: list[str]


def import_main(function: Function) -> Imported:
    """`import main` in a fresh interpreter (its own start-up not counted), as the server
    would import it for `function.target`, and the modules that import loaded."""
    result = subprocess.run(
        _import_command(function),
        env={**function.env, "FUNCTION_TARGET": function.target},
        capture_output=True,
        check=True,
    )
    for line in result.stdout.decode().splitlines():
        if line.startswith(IMPORT_MARK):
            found = json.loads(line.removeprefix(IMPORT_MARK))
            return Imported(float(found["seconds"]), list(found["modules"]))
    raise RuntimeError(f"no import time from {function.source}")


def _package(module: str) -> str:
    """The distribution-sized part of a module name: `google.cloud.firestore_v1.x` →
    `google.cloud.firestore_v1`, `google.api_core.x` → `google.api_core`, `jwt.x` → `jwt`."""
    parts = module.split(".")
    size = 3 if parts[:2] == ["google", "cloud"] else 2 if parts[0] == "google" else 1
    return ".".join(parts[:size])


def modules_row(ours: Imported, floor: Imported) -> Row:
    """Row 4: what the receive path loads beyond the floor, and never reconcile's or the
    command line's dependencies."""
    forbidden = sorted(
        {prefix for prefix in NEVER_ON_RECEIVE for m in ours.modules if m.startswith(prefix)}
    )
    extra = sorted(set(ours.modules) - set(floor.modules))
    by_package: dict[str, int] = defaultdict(int)
    for module in extra:
        by_package[_package(module)] += 1
    largest = sorted(by_package.items(), key=lambda item: item[1], reverse=True)[:8]
    return Row(
        "4",
        "receive path: modules loaded by `import main` (FUNCTION_TARGET=receive_webhook)",
        f"{len(ours.modules):,} modules",
        f"{len(floor.modules):,} modules",
        f"+{len(extra):,}",
        "none of " + ", ".join(NEVER_ON_RECEIVE),
        not forbidden,
        ("loaded: " + ", ".join(forbidden) if forbidden else "none of them loaded")
        + "; beyond the floor, by package: "
        + ", ".join(f"{package} {count}" for package, count in largest),
    )


def import_profile(function: Function) -> dict[str, float]:
    """`-X importtime`: self time (seconds) of `import main` by top-level package."""
    result = subprocess.run(
        _import_command(function, "-X", "importtime"),
        env={**function.env, "FUNCTION_TARGET": function.target},
        capture_output=True,
        check=True,
    )
    # One line per finished import, nested ones first, indented two spaces a level: the
    # subtree of `main` is the run of indented lines just before its own, unindented one.
    entries: list[tuple[int, str, float]] = []
    for line in result.stderr.decode().splitlines():
        fields = line.removeprefix("import time:").split("|")
        if (
            not line.startswith("import time:")
            or len(fields) != 3
            or not fields[0].strip().isdigit()
        ):
            continue
        name = fields[2].rstrip()[1:]
        depth = (len(name) - len(name.lstrip())) // 2
        entries.append((depth, name.strip(), int(fields[0]) / 1e6))
    end = max(
        index for index, (depth, name, _) in enumerate(entries) if (depth, name) == (0, "main")
    )
    begin = end
    while begin > 0 and entries[begin - 1][0] > 0:
        begin -= 1
    by_package: dict[str, float] = defaultdict(float)
    for _, name, seconds in entries[begin : end + 1]:
        by_package[name.split(".")[0]] += seconds
    return dict(by_package)


def run(
    ours: Function,
    floor: Function,
    hello: Function,
    delivery: list[Signed],
    starts: int,
    imports: int,
) -> list[Row]:
    """ABC ABC: ours, the floor, hello, ours, … for both measurements."""
    functions = {"ours": ours, "floor": floor, "hello": hello}
    started: dict[str, list[Start]] = {name: [] for name in functions}
    imported: dict[str, list[Imported]] = {name: [] for name in functions}
    for index in range(starts):
        for name, function in functions.items():
            started[name].append(cold_start(function, delivery[index] if name == "ours" else None))
    for _ in range(imports):
        for name, function in functions.items():
            imported[name].append(import_main(function))
    profile = import_profile(ours)
    floor_profile = import_profile(floor)

    first_200 = {name: [one.first_200 for one in runs] for name, runs in started.items()}
    seconds = {name: [one.seconds for one in runs] for name, runs in imported.items()}
    firsts = [start.first_delivery or 0.0 for start in started["ours"]]
    start_ratio = ratio_of_rounds(first_200["ours"], first_200["floor"])
    import_ratio = ratio_of_rounds(seconds["ours"], seconds["floor"])
    hello_start = Spread.of(first_200["hello"]).show(" s", digits=2)
    hello_import = Spread.of(seconds["hello"]).show(" ms", scale=1000)
    extra = {package: spent - floor_profile.get(package, 0.0) for package, spent in profile.items()}
    largest = sorted(extra.items(), key=lambda item: item[1], reverse=True)[:6]
    breakdown = ", ".join(f"{package} {spent * 1000:.0f} ms" for package, spent in largest)
    extra_total = sum(profile.values()) - sum(floor_profile.values())
    return [
        Row(
            "4",
            "cold start: process start to first 200 (GET), vs the floor",
            Spread.of(first_200["ours"]).show(" s", digits=2),
            Spread.of(first_200["floor"]).show(" s", digits=2),
            times(start_ratio, 2) + " (lower is better)",
            "≤ 1.5" + TIMES,
            start_ratio <= 1.5,
            f"{starts} starts each; `functions-framework` (gunicorn, 1 worker, THREADS "
            f"{ours.env.get('THREADS', 'unset')}) serving functions/main.py vs bench/floor/"
            "main.py (imports functions_framework, cryptography's ed25519, jwt, "
            "google.cloud.firestore and pubsub_v1, and does nothing); polled every 10 ms. "
            f"A hello-world function (bench/hello) starts in {hello_start}",
        ),
        Row(
            "4",
            "cold start: process start to first delivery accepted (POST)",
            Spread.of(firsts).show(" s", digits=2),
            Spread.of(first_200["floor"]).show(" s", digits=2),
            times(ratio_of_rounds(firsts, first_200["floor"]), 2),
            "—",
            None,
            "ours: the first POST also makes the Firestore and Pub/Sub clients (lazily, "
            f"median {statistics.median(firsts) - statistics.median(first_200['ours']):.2f} s "
            "after the first 200); reference: the floor's first 200",
        ),
        Row(
            "4",
            "import time of main.py (fresh interpreter), vs the floor",
            Spread.of(seconds["ours"]).show(" ms", scale=1000),
            Spread.of(seconds["floor"]).show(" ms", scale=1000),
            times(import_ratio, 2) + " (lower is better)",
            "≤ 1.5" + TIMES,
            import_ratio <= 1.5,
            f"{imports} imports each, `import main` timed in a new interpreter with "
            "FUNCTION_TARGET=receive_webhook (the receive path). `-X importtime`: ours "
            f"imports {extra_total * 1000:.0f} ms more (self time) than the floor; largest "
            f"by package: {breakdown}. Hello-world: {hello_import}",
        ),
        modules_row(imported["ours"][0], imported["floor"][0]),
    ]
