"""Row 4: process start to first 200, and the import time of the function's source, ours
vs a hello-world function under the same server (functions-framework with gunicorn)."""

from __future__ import annotations

import http.client
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
        "import sys, time\n"
        f"sys.path.insert(0, {str(function.source.parent)!r})\n"
        "started = time.perf_counter()\n"
        "import main\n"
        f"print({IMPORT_MARK!r}, time.perf_counter() - started)\n"
    )
    return [sys.executable, *flags, "-c", code]


def import_seconds(function: Function) -> float:
    """`import main` in a fresh interpreter (its own start-up not counted)."""
    result = subprocess.run(
        _import_command(function), env=dict(function.env), capture_output=True, check=True
    )
    for line in result.stdout.decode().splitlines():
        if line.startswith(IMPORT_MARK):
            return float(line.split()[1])
    raise RuntimeError(f"no import time from {function.source}")


def import_profile(function: Function) -> dict[str, float]:
    """`-X importtime`: self time (seconds) of `import main` by top-level package."""
    result = subprocess.run(
        _import_command(function, "-X", "importtime"),
        env=dict(function.env),
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
    ours: Function, hello: Function, delivery: list[Signed], starts: int, imports: int
) -> list[Row]:
    """ABAB: ours, hello, ours, hello, … for both measurements."""
    our_starts: list[Start] = []
    hello_starts: list[Start] = []
    for index in range(starts):
        our_starts.append(cold_start(ours, delivery[index]))
        hello_starts.append(cold_start(hello))
    our_imports: list[float] = []
    hello_imports: list[float] = []
    for _ in range(imports):
        our_imports.append(import_seconds(ours))
        hello_imports.append(import_seconds(hello))
    profile = import_profile(ours)
    hello_profile = import_profile(hello)

    ours_200 = [start.first_200 for start in our_starts]
    hello_200 = [start.first_200 for start in hello_starts]
    firsts = [start.first_delivery or 0.0 for start in our_starts]
    start_ratio = ratio_of_rounds(ours_200, hello_200)
    import_ratio = ratio_of_rounds(our_imports, hello_imports)
    extra = {
        package: seconds - hello_profile.get(package, 0.0) for package, seconds in profile.items()
    }
    largest = sorted(extra.items(), key=lambda item: item[1], reverse=True)[:6]
    breakdown = ", ".join(f"{package} {seconds * 1000:.0f} ms" for package, seconds in largest)
    extra_total = sum(profile.values()) - sum(hello_profile.values())
    return [
        Row(
            "4",
            "cold start: process start to first 200 (GET)",
            Spread.of(ours_200).show(" s", digits=2),
            Spread.of(hello_200).show(" s", digits=2),
            times(start_ratio, 2) + " (lower is better)",
            "≤ 1.5" + TIMES,
            start_ratio <= 1.5,
            f"{starts} starts each; `functions-framework` (gunicorn, 1 worker) serving "
            "functions/main.py vs bench/hello/main.py; polled every 10 ms",
        ),
        Row(
            "4",
            "cold start: process start to first delivery accepted (POST)",
            Spread.of(firsts).show(" s", digits=2),
            Spread.of(hello_200).show(" s", digits=2),
            times(ratio_of_rounds(firsts, hello_200), 2),
            "—",
            None,
            "ours: the first POST also makes the Firestore and Pub/Sub clients (lazily, "
            f"median {statistics.median(firsts) - statistics.median(ours_200):.2f} s after "
            "the first 200); reference: hello's first 200",
        ),
        Row(
            "4",
            "import time of main.py (fresh interpreter)",
            Spread.of(our_imports).show(" ms", scale=1000),
            Spread.of(hello_imports).show(" ms", scale=1000),
            times(import_ratio, 2) + " (lower is better)",
            "≤ 1.5" + TIMES,
            import_ratio <= 1.5,
            f"{imports} imports each, `import main` timed in a new interpreter. `-X "
            f"importtime`: ours imports {extra_total * 1000:.0f} ms more (self time) than "
            f"hello; largest by package: {breakdown}",
        ),
    ]
