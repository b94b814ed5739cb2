"""Loopback load test of `medsam2 serve`: N clients at once, each opening a shared CT lesion case,
scrolling through it (M slice fetches, each with a display window) and propagating one object from
its key-slice box; side by side with one client doing the same alone.

The server runs as users run it (`medsam2 serve --data ... --port P`, a separate process); clients are
threads with one keep-alive connection each. Latencies are per request, from sending it to having
read the whole answer; propagation latency includes waiting in the device's inference queue behind
other clients. Any failed request is an error; the script exits with status 1 if there was one.

    python benchmarks/server_load.py [--clients 4] [--requests 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO

import numpy as np
from common import ct_lesion_cases

from medsam2.cli.demo import key_slice_box
from medsam2.io import load_image
from medsam2.io.masks import stored_array

START_SECONDS = 300
WINDOWS = ("400,40", "1500,-600", "80,40")


@dataclass
class Tally:
    """Latencies in seconds by request kind, and the errors seen."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for kind, values in other.seconds.items():
            self.seconds.setdefault(kind, []).extend(values)
        self.errors += other.errors


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(data: str, port: int, log: IO[str]) -> subprocess.Popen:
    """`medsam2 serve`, its standard error into `log` (shown when something fails: its last line,
    "stopped by SIGTERM", when this script stops it, is no error)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "medsam2.cli", "serve", "--data", data, "--port", str(port), "--max-sessions", "64"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"medsam2 serve exited with status {server.returncode}: {server_log(log)}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/info")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    sys.exit(f"the server did not answer on port {port} within {START_SECONDS} s")


def server_log(log: IO[str], lines: int = 10) -> str:
    log.seek(0)
    return "".join(log.readlines()[-lines:]).strip() or "(nothing on its standard error)"


class Client:
    """One user: a keep-alive connection and a client id of its own (as each browser has its cookie)."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.headers = {"X-Medsam2-Client": secrets.token_urlsafe(18)}
        self.tally = Tally()

    def call(self, kind: str, method: str, path: str, body: dict | None = None):
        """The decoded answer (JSON or bytes), or None after recording an error."""
        headers = {**self.headers, **({"Content-Type": "application/json"} if body is not None else {})}
        start = time.perf_counter()
        try:
            self.connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = self.connection.getresponse()
            content = response.read()
        except OSError as error:
            self.tally.errors.append(f"{kind}: {error}")
            return None
        self.tally.seconds.setdefault(kind, []).append(time.perf_counter() - start)
        if response.status >= 400:
            self.tally.errors.append(f"{kind}: {response.status} {content[:200]!r}")
            return None
        return json.loads(content) if response.getheader("content-type", "").startswith("application/json") else content


def one_client(port: int, case_id: str, box: dict, requests: int, start: threading.Barrier) -> Tally:
    client = Client(port)
    session = client.call("open", "POST", "/api/sessions", {"case": case_id})
    start.wait()
    if session is None:
        return client.tally
    base = f"/api/sessions/{session['id']}"
    count = session["shape"][0]
    for index in range(requests):
        client.call("slice", "GET", f"{base}/slices/{index % count}?window={WINDOWS[index % len(WINDOWS)]}")
    if client.call("prompt", "POST", f"{base}/prompts", box) is not None:
        client.call("propagate", "POST", f"{base}/propagate")
    client.call("close", "DELETE", base)
    client.connection.close()
    return client.tally


def run(port: int, clients: int, requests: int, cases: list[tuple[str, dict]]) -> tuple[Tally, float]:
    tallies = [Tally() for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def work(index: int) -> None:
        case_id, box = cases[index % len(cases)]
        tallies[index] = one_client(port, case_id, box, requests, barrier)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return total, time.perf_counter() - started


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
    return f"{p50:8.0f} {p95:8.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4, help="clients at once (default 4)")
    parser.add_argument("--requests", type=int, default=50, help="slice fetches per client (default 50)")
    args = parser.parse_args()
    paths = ct_lesion_cases()
    cases = []
    for path in paths:
        prompt = key_slice_box(stored_array(load_image(path), "gts") > 0)
        cases.append((f"data/{path.name}", {"slice": prompt.slice_index, "box": [float(v) for v in prompt.box]}))
    port = free_port()
    log = tempfile.TemporaryFile("w+")
    server = start_server(str(paths[0].parent), port, log)
    try:
        alone, alone_wall = run(port, 1, args.requests, cases)
        loaded, loaded_wall = run(port, args.clients, args.requests, cases)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"medsam2 serve on loopback, {args.requests} slice fetches + 1 propagation per client (latency ms)")
    print(f"{'request':<10} {'1 client: p50':>14} {'p95':>8}   {args.clients} clients: p50 {'p95':>8}   requests")
    for kind in ("open", "slice", "prompt", "propagate"):
        print(f"{kind:<10} {percentiles(alone.seconds.get(kind, [])):>23}   {percentiles(loaded.seconds.get(kind, [])):>24}"
              f"   {len(loaded.seconds.get(kind, []))}")
    print(f"wall time: 1 client {alone_wall:.1f} s, {args.clients} clients {loaded_wall:.1f} s")
    errors = alone.errors + loaded.errors
    print(f"errors: {len(errors)}")
    for error in errors[:10]:
        print(f"  {error}")
    if errors:
        print(f"the server's standard error, last lines:\n{server_log(log)}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
