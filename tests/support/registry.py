"""A private Docker registry for tests: ``docker-registry serve`` on a free loopback port.

Debian's packaged configuration turns on htpasswd auth and listens on every interface, so the
registry gets its own configuration: filesystem storage in a temporary directory, deletes on.
Docker needs no --insecure-registry flag for 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BINARY = "docker-registry"

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


# Ports for what the tests listen on: below the kernel's ephemeral range (32768-60999 on Linux), from
# which every outgoing connection takes its source port, and below cdlib's default host_ports
# (20000-29999). A port the kernel handed out by bind(0) is an ephemeral one: between the test's pick
# and the proxy's bind, a client connection could take it as its source port ("address already in use").
TEST_PORTS = (12000, 19999)


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1, from TEST_PORTS."""
    pick = random.SystemRandom()
    for _ in range(500):
        port = pick.randint(*TEST_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {TEST_PORTS[0]}-{TEST_PORTS[1]}")


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{BINARY} exited with {proc.returncode} before answering on {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{BINARY} did not answer on {url} within {timeout:g}s")


@contextlib.contextmanager
def private_registry(timeout: float = 10.0) -> Iterator[str]:
    """Run a throw-away registry; yield its address "127.0.0.1:PORT"; stop it and delete its data."""
    tmp = Path(tempfile.mkdtemp(prefix="cdlibt-registry-"))
    port = free_port()
    config = tmp / "config.yml"
    config.write_text(CONFIG.format(root=tmp / "data", port=port))
    try:
        with open(tmp / "registry.log", "wb") as log:
            proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v2/", proc, timeout)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
