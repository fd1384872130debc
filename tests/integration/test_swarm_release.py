"""Whole blue-green releases on Docker Swarm (target.kind swarm), through the CLI as Jenkins runs it.

The swarm is a single node on loopback (tests.support.swarm starts one when the engine is not in a
swarm, and leaves it at the end only when it started it). Services use endpoint_mode dnsrr with
host-mode published ports (this kernel has no IPVS for the routing mesh), so each task has a host
port of its own and the proxy points at the tasks. A test's state is its Swarm services' specs
(name, labels, image, replicas, everything in Spec), the set-aside specs kept as Swarm configs, the
host ports of the tasks that run, every store key of the service but history, and the proxy
configuration's bytes.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from cdlib.runtime.swarm import LABEL_ASIDE
from tests.integration.conftest import Service
from tests.support.images import SWARM_HEALTH, build_busybox_web_image
from tests.support.load import Load
from tests.support.swarm import remove_swarm_objects, swarm_manager  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration


# images of this module's own (tests elsewhere build and remove the shared cdlibt-flow-web tags)
IMAGE = f"cdlibsw-web-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def swarm_images(docker_client):
    tags = {v: f"{IMAGE}:{v}" for v in ("v1", "v2", "v3", "sick")}
    for version, tag in tags.items():
        build_busybox_web_image(docker_client, tag, version, health=version != "sick", health_interval=SWARM_HEALTH)
    yield tags
    for tag in tags.values():
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:
            pass


class SwarmService(Service):
    """A test service released on the single-node swarm (its name starts with cdlibsw)."""

    def __init__(self, directory, docker_client, proxy_kind: str = "nginx"):
        super().__init__(directory, docker_client, proxy_kind)
        self.name = f"cdlibsw-{secrets.token_hex(3)}"
        self.write()

    def write(self, replicas: int = 2, health_timeout: int = 30, store: str | None = None,
              pre_integration: list[str] | None = None):
        super().write(replicas, health_timeout, store, pre_integration)
        descriptor = json.loads(self.file.read_text())
        descriptor["image"]["repository"] = IMAGE
        descriptor["target"] = {"kind": "swarm", "stop_timeout": 5, "swarm": {"endpoint_mode": "dnsrr",
                                                                            "restart_delay": 0.5}}
        self.file.write_text(json.dumps(descriptor, indent=2))

    # -- state ----------------------------------------------------------------------------------
    def services(self) -> list[tuple[str, dict, list[tuple[int, int]]]]:
        """(name, spec, [(slot, IPv4 host port) of each running task]) of the service's colors."""
        api = self.docker.api
        out = []
        for svc in api.services(filters={"label": f"cdlib.service={self.name}"}):
            tasks = api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
            ports = []
            for t in tasks:
                if t["Status"]["State"] != "running":
                    continue
                bound = api.inspect_container(t["Status"]["ContainerStatus"]["ContainerID"])["NetworkSettings"]["Ports"]
                # a task Swarm is (re)starting may have no binding yet: it has no port to count
                ports += [(t["Slot"], int(b["HostPort"])) for b in (bound or {}).get("8080/tcp") or []
                          if b["HostIp"] == "0.0.0.0"]
            out.append((svc["Spec"]["Name"], svc["Spec"], sorted(ports)))
        return sorted(out, key=lambda s: s[0])

    def aside_specs(self) -> list[str]:
        return sorted(c["Spec"]["Name"] for c in self.docker.api.configs(filters={"label": LABEL_ASIDE})
                      if (c["Spec"].get("Labels") or {}).get("cdlib.service") == self.name)

    def snapshot(self):
        return self.services(), self.aside_specs(), self.store_state(), self.nginx_conf()

    def replicas(self) -> dict[str, tuple[int, str]]:
        """color service -> (replicas in its spec, its image)."""
        return {name: (spec["Mode"]["Replicated"]["Replicas"], spec["TaskTemplate"]["ContainerSpec"]["Image"])
                for name, spec, _ in self.services()}

    def teardown(self):
        from cdlib.proxy.nginx import NginxProxy

        try:
            remove_swarm_objects(self.name)
        finally:  # the proxy stops even when the engine is away
            NginxProxy(self.proxy_dir, listen=f"127.0.0.1:{self.port}").stop()


@pytest.fixture
def swarm_service(tmp_path, docker_client, swarm_images, swarm_manager):  # noqa: F811 - the fixture
    svc = SwarmService(tmp_path, docker_client)
    yield svc
    svc.teardown()


@pytest.fixture(scope="module")
def swarm_two_releases(tmp_path_factory, docker_client, swarm_images, swarm_manager):  # noqa: F811
    svc = SwarmService(tmp_path_factory.mktemp("swarm-flow"), docker_client)
    try:
        svc.cli("release", "--tag", "v1", check=True)
        svc.cli("release", "--tag", "v2", check=True)
        yield svc
    finally:
        svc.teardown()


def test_release_on_swarm_under_load_drops_no_request(swarm_service):
    service = swarm_service
    code, out = service.cli_json("release", "--tag", "v1")
    assert code == 0, out
    assert out["color"] == "blue"
    assert service.get() == (200, "v1")
    n = service.name
    assert service.replicas() == {f"{n}-blue": (2, f"{IMAGE}:v1")}

    with Load(service.url + "version") as load:
        time.sleep(0.5)
        code, out = service.cli_json("release", "--tag", "v2")
        time.sleep(0.5)
    assert code == 0, out
    assert load.sent > 50
    assert load.failed == [], f"{len(load.failed)} of {load.sent} requests failed: {load.failed[:5]}"
    assert "v1" in load.bodies and load.bodies[-1] == "v2"
    assert service.get() == (200, "v2")
    # the old color is scaled to 0 and kept, its count in a label for a quick rollback
    assert service.replicas() == {f"{n}-blue": (0, f"{IMAGE}:v1"), f"{n}-green": (2, f"{IMAGE}:v2")}
    blue = dict((name, spec) for name, spec, _ in service.services())[f"{n}-blue"]
    assert blue["Labels"]["cdlib.replicas"] == "2"
    steps = [s["name"] for s in out["steps"]]
    assert steps == ["open", "set-aside", "start", "health", "register", "test pre-integration", "proxy", "live",
                     "test post-integration", "persist", "stop-old", "close"]
    # what the proxy points at is the tasks of the live color, by their host ports
    store = service._store()
    try:
        regs = store.registrations(n, "green")
    finally:
        store.close()
    green_ports = {p for _, p in dict((name, ports) for name, _, ports in service.services())[f"{n}-green"]}
    assert {r["port"] for r in regs} == green_ports and len(green_ports) == 2, (
        regs, service.services())

    # the third release sets the stopped blue service aside (its spec kept) and removes it at close
    code, out = service.cli_json("release", "--tag", "v3")
    assert code == 0, out
    assert service.get() == (200, "v3")
    assert service.replicas() == {f"{n}-blue": (2, f"{IMAGE}:v3"), f"{n}-green": (0, f"{IMAGE}:v2")}
    assert service.aside_specs() == []

    code, out = service.cli_json("rollback", "--previous")  # the stopped green comes back
    assert code == 0, out
    assert "resume" in [s["name"] for s in out["steps"]]
    assert service.get() == (200, "v2")


@pytest.mark.parametrize("suite", ["pre-integration", "post-integration"])
def test_failing_suite_on_swarm_restores_exactly_the_prior_state(swarm_service, suite):
    service = swarm_service
    service.cli("release", "--tag", "v1", check=True)
    service.cli("release", "--tag", "v2", check=True)  # blue (v1) stopped, green (v2) live
    before = service.snapshot()
    code, out = service.cli_json("release", "--tag", "v3", env={"FAIL_TEST_TYPE": suite})
    assert code == 1, out
    assert "rolled back" in out["message"]
    # blue was set aside (spec saved, service removed) for v3, then created again from its spec
    assert "set-aside" in [s["name"] for s in out["steps"]]
    assert service.snapshot() == before
    assert service.get() == (200, "v2")


def test_unhealthy_new_color_on_swarm_is_discarded(swarm_service):
    service = swarm_service
    service.cli("release", "--tag", "v1", check=True)
    service.write(health_timeout=3)
    before = service.snapshot()
    code, out = service.cli_json("release", "--tag", "sick")
    assert code == 1, out
    assert "not healthy" in out["message"]
    assert service.snapshot() == before


# stop-old:after has a test of its own (below): a stopped color started again comes back on new host
# ports in dnsrr mode, so only those ports differ from the snapshot
SWARM_KILL_POINTS = ["set-aside:after", "start:after", "health:after", "register:after", "proxy:after",
                     "live:after", "persist:after", "stop-old:before"]


@pytest.mark.parametrize("point", SWARM_KILL_POINTS)
def test_sigkill_on_swarm_then_rollback_restores_the_exact_prior_state(swarm_two_releases, point):
    svc = swarm_two_releases
    before = svc.snapshot()
    proc = svc.cli("release", "--tag", "v3", env={"CDLIB_FAILPOINTS": f"{point}=kill"})
    assert proc.returncode == -9, (proc.stdout, proc.stderr)
    journal = svc.journal()
    assert journal is not None and journal["steps"][-1]["name"] == point.split(":")[0]
    code, out = svc.cli_json("rollback")
    assert code == 0, out
    assert svc.snapshot() == before
    assert svc.get() == (200, "v2")


def test_sigkill_after_stop_old_on_swarm_then_rollback_routes_to_where_the_old_color_runs_now(swarm_two_releases):
    """dnsrr host ports are the engine's choice: the old color, stopped and then resumed by the undo,
    runs on new ports. Everything but those ports comes back exactly; the registrations and the proxy
    follow the tasks to their new ports, and the service answers with the prior version."""
    svc = swarm_two_releases
    specs_before = [(name, spec) for name, spec, _ in svc.services()]
    keys_before = set(svc.store_state())
    proc = svc.cli("release", "--tag", "v3", env={"CDLIB_FAILPOINTS": "stop-old:after=kill"})
    assert proc.returncode == -9, (proc.stdout, proc.stderr)
    code, out = svc.cli_json("rollback")
    assert code == 0, out
    assert [(name, spec) for name, spec, _ in svc.services()] == specs_before
    assert set(svc.store_state()) == keys_before and svc.aside_specs() == []
    live = json.loads(svc.store_state()[f"cdlib/services/{svc.name}/live"])
    running = {port for name, _, tasks in svc.services() if name.endswith(live["color"]) for _, port in tasks}
    registered = {json.loads(v)["port"] for k, v in svc.store_state().items()
                  if f"/instances/{live['color']}/" in k}
    assert running and registered == running
    conf = svc.nginx_conf()
    assert all(f"127.0.0.1:{port}".encode() in conf for port in running)
    assert svc.get() == (200, "v2")


def _running_ports(service, color: str) -> set[int]:
    return {port for name, _, tasks in service.services() if name == f"{service.name}-{color}" for _, port in tasks}


def test_heal_on_swarm_follows_a_task_that_swarm_replaced_to_its_new_port(swarm_service):
    """Swarm restarts a killed task itself, on a host port of its choosing; heal registers it there
    and points the proxy at it, and then has nothing left to do."""
    service = swarm_service
    service.cli("release", "--tag", "v1", check=True)
    before = _running_ports(service, "blue")
    api = service.docker.api
    [svc] = api.services(filters={"name": f"{service.name}-blue"})
    task = next(t for t in api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
                if t["Status"]["State"] == "running")
    api.kill(task["Status"]["ContainerStatus"]["ContainerID"])
    deadline = time.monotonic() + 90  # Swarm's restart (restart_delay 0.5 s) is what is waited for here
    while len(ports := _running_ports(service, "blue")) != 2 or ports == before:
        assert time.monotonic() < deadline, f"Swarm did not replace the killed task: {service.services()}"
        time.sleep(0.2)

    code, out = service.cli_json("heal")
    assert code == 0, out
    assert out["registered"] and out["proxy_changed"] is True, out
    store = service._store()
    try:
        registered = {r["port"] for r in store.registrations(service.name, "blue")}
    finally:
        store.close()
    assert registered == ports
    assert all(f"127.0.0.1:{port}".encode() in service.nginx_conf() for port in ports)
    assert {service.get() for _ in range(4)} == {(200, "v1")}
    code, again = service.cli_json("heal")
    assert code == 0 and again["registered"] == [] and again["proxy_changed"] is False, again
