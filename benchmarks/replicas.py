"""What starting and stopping a color of N replicas costs with the Docker runtime, against the same
number of concurrent plain Docker calls on the same engine in the same run.

    .venv/bin/python benchmarks/replicas.py [--replicas 1,4,8,16] [--runs 3] [--parallel 4,16] [--json FILE]

For each replica count, alternately (the order flips every round):
- cdlib: ``DockerRuntime.start`` of one color of a busybox FROM-scratch web service, then
  ``wait_healthy`` on /health (what a release's ``start`` and ``health`` steps do), timed until every
  instance answers; then ``DockerRuntime.stop`` of that color (the ``stop-old`` step), timed;
- docker: N concurrent ``docker run -d --init -p 127.0.0.1:PORT:8080`` (one docker CLI process
  each), every one polling its /health with the same back-off as ``wait_healthy`` until it answers,
  timed until the last answers; then N concurrent ``docker stop``, timed.
Containers are named ``cdlibrp-*`` and removed after every round (not timed), the image at the end.

Prints the median of each figure and the ratio (cdlib start + stop) / (docker start + stop) of
each round, median of the rounds; the target for 16 replicas is at most 1.3. --parallel lists the
runtime bounds to compare (how many replicas it starts and stops at a time; default: the runtime's
own), each measured in every round next to the same plain Docker calls, so that a noisy machine
weighs on every column alike. Needs dockerd; uses host ports 30000-31999.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdlib.runtime.base import FIRST_RETRY, StartRequest, http_ok  # noqa: E402
from cdlib.runtime.docker import MAX_PARALLEL, DockerRuntime  # noqa: E402
from tests.support.images import PORT, build_busybox_web_image  # noqa: E402

PREFIX = "cdlibrp"
IMAGE = f"{PREFIX}-web:bench"
INTERVAL = 0.2  # health.interval's default
HEALTH_TIMEOUT = 60
PLAIN_PORTS = (30000, 30999)
CDLIB_PORTS = (31000, 31999)
_port_lock = threading.Lock()
_taken: set[int] = set()


def free_port(low: int, high: int) -> int:
    """A loopback port of the range that nothing listens on (and this run did not hand out)."""
    import random

    with _port_lock:
        for _ in range(200):
            port = random.randint(low, high)
            if port in _taken:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _taken.add(port)
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def wait_url(url: str) -> None:
    """Poll url as Runtime.wait_healthy does (FIRST_RETRY, doubling up to INTERVAL)."""
    pause, deadline = FIRST_RETRY, time.monotonic() + HEALTH_TIMEOUT
    while not http_ok(url, timeout=2.0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {HEALTH_TIMEOUT}s")
        time.sleep(pause)
        pause = min(INTERVAL, pause * 2)


def docker(*argv: str) -> None:
    proc = subprocess.run(["docker", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(argv)}: {proc.stderr.strip()}")


def remove_leftovers() -> None:
    names = subprocess.run(["docker", "ps", "-aq", "--filter", f"name=^{PREFIX}"],
                           capture_output=True, text=True).stdout.split()
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)


def plain_round(n: int) -> tuple[float, float]:
    """N concurrent docker run (until /health answers), then N concurrent docker stop."""
    tag = secrets.token_hex(3)
    names = [f"{PREFIX}-plain-{tag}-{i}" for i in range(1, n + 1)]
    ports = [free_port(*PLAIN_PORTS) for _ in names]

    def up(item: tuple[str, int]) -> None:
        name, port = item
        docker("run", "-d", "--init", "--name", name, "-p", f"127.0.0.1:{port}:{PORT}", IMAGE)
        wait_url(f"http://127.0.0.1:{port}/health")

    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            t0 = time.perf_counter()
            list(pool.map(up, zip(names, ports, strict=True)))
            start = time.perf_counter() - t0
            t0 = time.perf_counter()
            list(pool.map(lambda name: docker("stop", name), names))
            stop = time.perf_counter() - t0
    finally:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
        with _port_lock:
            _taken.difference_update(ports)
    return start, stop


def cdlib_round(runtime: DockerRuntime, n: int) -> tuple[float, float]:
    """The runtime's start + wait_healthy of one color of n replicas, then its stop."""
    service = f"{PREFIX}-{secrets.token_hex(3)}"
    req = StartRequest(service=service, color="blue", release="r1", image=IMAGE, port=PORT, replicas=n,
                       host_ports=CDLIB_PORTS, health_path="/health")
    try:
        t0 = time.perf_counter()
        instances = runtime.start(req)
        runtime.wait_healthy(instances, "/health", HEALTH_TIMEOUT, INTERVAL)
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        stopped = runtime.stop(service, "blue")
        stop = time.perf_counter() - t0
        if len(stopped) != n:
            raise RuntimeError(f"stopped {len(stopped)} of {n} instances")
    finally:
        runtime.remove(service, "blue")
    return start, stop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,4,8,16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parallel", default=str(MAX_PARALLEL), help="runtime bounds to compare, e.g. 4,16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(c) for c in args.replicas.split(",")]
    bounds = [int(b) for b in args.parallel.split(",")]
    runtimes = {b: DockerRuntime(parallel=b) for b in bounds}
    sides: list[str | int] = ["docker", *bounds]

    runtimes[bounds[0]].ping()
    remove_leftovers()
    build_busybox_web_image(runtimes[bounds[0]], IMAGE, "bench")
    rows = []
    try:
        for n in counts:
            got: dict = {side: [] for side in sides}
            cdlib_round(runtimes[bounds[-1]], n)  # warm-up: first calls, page cache
            for r in range(args.runs):
                for side in sides[r % len(sides):] + sides[:r % len(sides)]:  # each side first in turn
                    got[side].append(plain_round(n) if side == "docker" else cdlib_round(runtimes[int(side)], n))
            plain = got["docker"]
            for b in bounds:
                row = {
                    "replicas": n, "parallel": b,
                    "cdlib_start": statistics.median(s for s, _ in got[b]),
                    "cdlib_stop": statistics.median(s for _, s in got[b]),
                    "docker_start": statistics.median(s for s, _ in plain),
                    "docker_stop": statistics.median(s for _, s in plain),
                    "ratio": statistics.median((a + c) / (d + e) for (a, c), (d, e) in zip(got[b], plain, strict=True)),
                }
                rows.append(row)
                print(f"  {n:>2} replicas, {b:>2} at a time: cdlib {row['cdlib_start']:.2f} + {row['cdlib_stop']:.2f} s, "
                      f"docker {row['docker_start']:.2f} + {row['docker_stop']:.2f} s", file=sys.stderr)
    finally:
        remove_leftovers()
        subprocess.run(["docker", "rmi", "-f", IMAGE], capture_output=True)
        for runtime in runtimes.values():
            runtime.close()

    print(f"start (until healthy) and stop of N replicas, median of {args.runs} runs")
    print(f"{'replicas':>8}  {'at a time':>9}  {'cdlib start':>11}  {'docker run':>10}  {'cdlib stop':>10}  "
          f"{'docker stop':>11}  {'ratio':>5}")
    for row in rows:
        print(f"{row['replicas']:>8}  {row['parallel']:>9}  {row['cdlib_start']:>10.2f}s  {row['docker_start']:>9.2f}s  "
              f"{row['cdlib_stop']:>9.2f}s  {row['docker_stop']:>10.2f}s  {row['ratio']:>5.2f}")
    print("ratio: (cdlib start + stop) / (docker start + stop), median of the rounds' ratios; target for 16: <= 1.3")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
