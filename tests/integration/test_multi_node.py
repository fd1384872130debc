"""More than one node: the Swarm runtime on a two-node swarm made on this machine by
scripts/swarm-lab (two extra dockerds, each in its own network namespace; the host's engine and
any swarm it runs are never touched). A color of two replicas runs a task on each node; every
instance is reported at its own node's address and answers there, through stop and resume."""

from __future__ import annotations

import secrets
import subprocess
import urllib.request
from pathlib import Path

import pytest

from cdlib.runtime.base import StartRequest
from cdlib.runtime.swarm import SwarmRuntime
from tests.support.images import PORT, SWARM_HEALTH, build_busybox_web_image

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "scripts" / "swarm-lab"
MANAGER = "unix:///run/cdlib-swarm-lab/a/docker.sock"
NODES = {"10.231.0.2", "10.231.0.3"}  # the manager's and the worker's addresses in the lab
REGISTRY = "127.0.0.1:5000"  # the host's registry (scripts/setup), forwarded into both nodes


def lab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def manager():
    """The lab's manager; the lab is taken down afterwards unless it was up before."""
    was_up = lab("status").returncode == 0
    up = lab("up")
    try:
        assert up.returncode == 0, up.stderr
        yield MANAGER
    finally:
        if not was_up:
            down = lab("down")
            assert down.returncode == 0, down.stderr


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode().strip()


def forget_image(repository: str, digest: str) -> None:
    """Delete the test image's manifest from the host's registry (the registry allows deletes)."""
    req = urllib.request.Request(f"http://{REGISTRY}/v2/{repository}/manifests/{digest}", method="DELETE")
    try:
        urllib.request.urlopen(req, timeout=5).close()
    except OSError:
        pass


def test_a_color_runs_one_task_on_each_node_and_each_answers_at_its_node_address(manager):
    runtime = SwarmRuntime(manager)
    runtime.ping()
    nodes = runtime._client.api.nodes()
    assert sorted(n["Description"]["Hostname"] for n in nodes) == ["cdlsl-a", "cdlsl-b"]
    assert {n["Status"]["State"] for n in nodes} == {"ready"}

    token = secrets.token_hex(3)
    repository = f"cdlibml-web-{token}"
    image = f"{REGISTRY}/{repository}:v1"
    service = f"cdlibml-{token}"
    build_busybox_web_image(runtime, image, "v1", health_interval=SWARM_HEALTH)  # on the manager; the worker pulls it from the registry
    digest = runtime.push_image(image)
    req = StartRequest(service=service, color="blue", release="r1", image=image, port=PORT, replicas=2,
                       stop_timeout=2, health_path="/health")
    try:
        started = runtime.start(req)
        runtime.wait_healthy(started, "/health", 60)
        assert {i.address for i in started} == NODES
        assert [i.name for i in started] == [f"{service}-blue-1", f"{service}-blue-2"]
        for instance in started:
            assert get(f"{instance.url}/version") == "v1"
        assert {(i.address, i.port) for i in runtime.instances(service, "blue")} == \
            {(i.address, i.port) for i in started}

        assert sorted(runtime.stop(service, "blue")) == [f"{service}-blue-1", f"{service}-blue-2"]
        assert {i.state for i in runtime.instances(service, "blue")} == {"exited"}

        resumed = runtime.resume(service, "blue")
        runtime.wait_healthy(resumed, "/health", 60)
        assert {i.address for i in resumed} == NODES
        for instance in resumed:
            assert get(f"{instance.url}/version") == "v1"
    finally:
        removed = runtime.remove(service, "blue")
        runtime.close()
        for node in ("a", "b"):
            subprocess.run(["docker", "-H", MANAGER.replace("/a/", f"/{node}/"), "rmi", "-f", image],
                           capture_output=True, timeout=60)
        forget_image(repository, digest)
    assert sorted(removed) == [f"{service}-blue-1", f"{service}-blue-2"]
    assert SwarmRuntime(manager).instances(service, include_aside=True) == []
