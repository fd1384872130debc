"""A whole release (deploy, probe, switch, cleanup) under keep-alive load, through each proxy, in the
mode that switches without a reload: HAProxy through its runtime API, nginx through its Lua balancer
(Debian's libnginx-mod-http-lua, installed by scripts/setup). Clients holding one connection open
lose no request, and neither do clients opening one per request: 0 failed requests of either kind,
and the proxy's master and workers after the release are those before it (no reload happened).

nginx without its Lua module switches by a reload, which closes idle keep-alive connections while
a client may be sending on them: that mode is measured (benchmarks/switch_under_load.py, figures in
the README), not asserted here.

Each case has its own service (cdlibt-…), proxy on a free port in a short temporary directory (the
nginx admin socket's path must fit a unix socket) and SQLite store; everything is removed after.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdlib.proxy.haproxy import HaproxyProxy
from cdlib.proxy.nginx import NginxProxy
from tests.integration.conftest import Service
from tests.support.images import build_busybox_web_image
from tests.support.load import KeepAliveLoad, Load

pytestmark = pytest.mark.integration

ADAPTERS = {"nginx": NginxProxy, "haproxy": HaproxyProxy}
IMAGE = "cdlibt-ka-web"  # images of this module's own (other sessions remove the shared ones when they end)


@pytest.fixture(scope="module")
def ka_images(docker_client) -> Iterator[str]:
    for version in ("v1", "v2", "v3"):
        build_busybox_web_image(docker_client, f"{IMAGE}:{version}", version)
    yield IMAGE
    for version in ("v1", "v2", "v3"):
        try:
            docker_client.images.remove(f"{IMAGE}:{version}", force=True)
        except Exception:
            pass


@pytest.fixture(params=["nginx", "haproxy"])
def runtime_service(request, docker_client, ka_images) -> Iterator[Service]:
    short = Path(tempfile.mkdtemp(prefix="cdlibka-"))
    svc = Service(short, docker_client, proxy_kind=request.param)
    descriptor = json.loads(svc.file.read_text())
    descriptor["image"]["repository"] = ka_images
    svc.file.write_text(json.dumps(descriptor, indent=2))
    try:
        yield svc
    finally:
        svc.teardown()
        shutil.rmtree(short, ignore_errors=True)


def _processes(proxy) -> tuple[int | None, frozenset[int]]:
    return proxy.master_pid(), frozenset(proxy.workers())


def _wait_for(loads, count: int) -> None:
    """Until every load has sent ``count`` more requests than when called (bounded: a load stops by
    itself after its limit, and a load that stopped fails the wait)."""
    targets = [(load, load.sent + count) for load in loads]
    pause = threading.Event()
    while not all(load.sent >= target for load, target in targets):
        if not all(any(t.is_alive() for t in load.threads) for load, _ in targets):
            raise AssertionError(f"a load stopped: {[load.failures_by_kind for load in loads]}")
        pause.wait(0.02)


def test_a_release_under_keep_alive_load_drops_nothing_without_a_reload(runtime_service):
    svc = runtime_service
    svc.cli("release", "--tag", "v1", check=True)
    proxy = ADAPTERS[svc.proxy_kind](svc.proxy_dir, listen=f"127.0.0.1:{svc.port}")
    if svc.proxy_kind == "nginx":
        assert proxy.dynamic, "the nginx Lua module is installed by scripts/setup: the Lua balancer must be on"
    before = _processes(proxy)
    assert before[0] is not None and before[1]
    with KeepAliveLoad(svc.url + "version", threads=3) as kept, Load(svc.url + "version", threads=1) as new:
        _wait_for([kept, new], 50)
        svc.cli("release", "--tag", "v2", check=True)
        _wait_for([kept, new], 50)
        svc.cli("release", "--tag", "v3", check=True)
        _wait_for([kept, new], 50)
    assert kept.failed == [] and new.failed == [], (kept.failures_by_kind, new.failures_by_kind, kept.failed[:3],
                                                    new.failed[:3])
    # both switches went through the runtime path: the same master, the same workers
    assert _processes(proxy) == before
    # the persistent connections lived through the switches: far fewer connections than requests
    assert kept.connections < kept.sent / 10
    assert {"v1", "v2", "v3"} <= set(kept.bodies) and kept.bodies[-1] == "v3" and new.bodies[-1] == "v3"
    assert svc.get() == (200, "v3")
