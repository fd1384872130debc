"""heal and scale against the real dockerd and nginx, through the CLI, under steady load.

What is promised and asserted here:
- scaling 1 -> 3 -> 1 drops no request (new instances are healthy before the proxy has them; removed
  ones are taken out of the proxy and drained before they stop);
- a SIGKILLed instance fails at most the requests that were in flight at the kill (nginx retries a
  connection failure on another server); ``heal`` starts it again under its name on its pinned port,
  so the registrations and the proxy configuration stay byte for byte what they were;
- a scale killed half way is undone by ``rollback`` to exactly the prior state.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from tests.integration.conftest import Service
from tests.support.images import build_busybox_web_image
from tests.support.load import Load

pytestmark = pytest.mark.integration

HOST_PORTS = "31400-31599"  # this file's own range of pinned host ports
IMAGE = "cdlibhs-web"  # this file's own images: other sessions remove theirs when they end


class HealService(Service):
    def __init__(self, directory, docker_client, proxy_kind: str = "nginx"):
        super().__init__(directory, docker_client, proxy_kind=proxy_kind)
        self.name = f"cdlibhs-{secrets.token_hex(3)}"
        self.write(replicas=1)

    def write(self, replicas: int = 2, **kw):
        super().write(replicas=replicas, **kw)
        descriptor = json.loads(self.file.read_text())
        descriptor["target"]["host_ports"] = HOST_PORTS
        descriptor["image"]["repository"] = IMAGE
        self.file.write_text(json.dumps(descriptor, indent=2))

    def ports(self) -> dict[str, str]:
        """Running instance -> its published host port."""
        out = {}
        for c in self.docker.containers.list(filters={"label": f"cdlib.service={self.name}"}):
            bindings = c.attrs["NetworkSettings"]["Ports"].get("8080/tcp") or []
            out[c.name] = bindings[0]["HostPort"] if bindings else ""
        return out


@pytest.fixture(scope="module")
def hs_images(docker_client):
    tags = [f"{IMAGE}:v1", f"{IMAGE}:v2"]
    for tag in tags:
        build_busybox_web_image(docker_client, tag, tag.rsplit(":", 1)[1], health=True)
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:  # noqa: S110 - in use by a container another test still tears down
            pass


@pytest.fixture
def hs(tmp_path, docker_client, hs_images):
    svc = HealService(tmp_path, docker_client)
    yield svc
    svc.teardown()


@pytest.fixture(params=["nginx", "haproxy"])
def any_hs(request, tmp_path, docker_client, hs_images):
    svc = HealService(tmp_path, docker_client, proxy_kind=request.param)
    yield svc
    svc.teardown()


def test_scale_up_and_down_under_load_drops_no_request(any_hs):
    hs = any_hs
    hs.cli("release", "--tag", "v1", check=True)
    with Load(hs.url + "version") as load:
        time.sleep(0.3)
        up_code, up = hs.cli_json("scale", "3")
        time.sleep(0.5)
        middle = dict(hs.ports())
        down_code, down = hs.cli_json("scale", "-2")
        time.sleep(0.3)
    assert up_code == 0 and down_code == 0, (up["message"], up["steps"], down["message"])
    assert load.sent > 50
    assert load.failed == [], f"{len(load.failed)} of {load.sent} requests failed: {load.failed[:5]}"
    n = hs.name
    assert sorted(middle) == [f"{n}-blue-1", f"{n}-blue-2", f"{n}-blue-3"]
    assert [s["name"] for s in up["steps"]] == ["open", "scale", "health", "register", "proxy", "replicas"]
    assert [s["name"] for s in down["steps"]] == ["open", "register", "proxy", "scale", "replicas", "discard"]
    assert down["discarded"] == [f"{n}-blue-2", f"{n}-blue-3"]
    assert [c[0] for c in hs.containers()] == [f"{n}-blue-1"]
    conf = hs.nginx_conf().decode()  # nginx.conf or haproxy.cfg
    assert conf.count(f"127.0.0.1:{middle[f'{n}-blue-1']}") == 1
    assert all(f"127.0.0.1:{middle[f'{n}-blue-{i}']}" not in conf for i in (2, 3))
    status = hs.cli_json("status")[1]
    assert status["replicas"] == {"count": 1, "source": "stored"}


def test_a_killed_instance_is_healed_on_its_port_with_the_proxy_config_identical(hs):
    hs.cli("release", "--tag", "v1", check=True)
    hs.cli("scale", "2", check=True)
    before, ports = hs.snapshot(), hs.ports()
    victim = f"{hs.name}-blue-1"
    with Load(hs.url + "version") as load:
        time.sleep(0.3)
        t0 = time.monotonic()
        hs.docker.containers.get(victim).kill()  # SIGKILL: docker keeps it exited
        t1 = time.monotonic()
        time.sleep(0.5)
        code, out = hs.cli_json("heal")
        time.sleep(0.3)
    assert code == 0, out
    assert out["replaced"] == [victim] and out["proxy_changed"] is False
    assert hs.ports() == ports  # same names, same pinned host ports
    assert hs.snapshot() == before  # containers, store keys and the nginx.conf bytes as they were
    # only requests already in flight when the instance died may fail
    assert all(r.started <= t1 for r in load.failed_requests()), load.failed_requests()[:5]
    assert len(load.failed_requests()) <= len(load.in_flight_at(t0)) + len(load.in_flight_at(t1))
    assert load.sent > 50 and hs.get() == (200, "v1")
    code, again = hs.cli_json("heal")  # nothing left to repair
    assert code == 0 and again["replaced"] == [] and again["registered"] == []


def test_heal_starts_a_proxy_that_stopped_again_on_the_same_configuration(any_hs):
    """A proxy that is not running serves nothing, whatever its file says: heal (like 'proxy apply')
    starts it again, with the same bytes, and the service answers through it."""
    hs = any_hs
    hs.cli("release", "--tag", "v1", check=True)
    before = hs.snapshot()
    if hs.proxy_kind == "nginx":
        from cdlib.proxy.nginx import NginxProxy as proxy_class
    else:
        from cdlib.proxy.haproxy import HaproxyProxy as proxy_class
    proxy = proxy_class(hs.proxy_dir, listen=f"127.0.0.1:{hs.port}")
    assert proxy.stop() and proxy.master_pid() is None
    with pytest.raises(OSError):  # nothing listens any more
        hs.get(timeout=2)
    code, status = hs.cli_json("status")
    assert status["proxy"]["next_change"] == {"mode": "reload", "for": "an apply",
                                              "why": f"{hs.proxy_kind} is not running: apply starts it"}
    code, out = hs.cli_json("heal")
    assert code == 0 and out["proxy_changed"] is True and out["replaced"] == [], out
    assert proxy.master_pid() is not None
    assert hs.snapshot() == before  # the same containers, store keys and configuration bytes
    assert hs.get() == (200, "v1")
    code, again = hs.cli_json("heal")  # nothing left to repair
    assert code == 0 and again["proxy_changed"] is False, again


def test_heal_brings_back_a_removed_instance_on_the_port_its_registration_names(hs):
    hs.cli("release", "--tag", "v1", check=True)
    hs.cli("scale", "2", check=True)
    conf, ports = hs.nginx_conf(), hs.ports()
    victim = f"{hs.name}-blue-2"
    hs.docker.containers.get(victim).remove(force=True)
    code, out = hs.cli_json("heal")
    assert code == 0 and out["replaced"] == [victim], out
    assert hs.ports() == ports and hs.nginx_conf() == conf


def test_heal_watch_through_the_cli_heals_in_its_rounds(hs):
    hs.cli("release", "--tag", "v1", check=True)
    hs.docker.containers.get(f"{hs.name}-blue-1").kill()
    code, out = hs.cli_json("heal", "--watch", "--interval", "0.2", "--max-rounds", "2")
    assert code == 0, out
    assert out["replaced"] == [f"{hs.name}-blue-1"] and out["rounds"] == 2 and out["failures"] == 0
    assert hs.get() == (200, "v1")


def test_heal_leaves_an_open_release_alone(hs):
    hs.cli("release", "--tag", "v1", check=True)
    hs.cli("deploy", "--tag", "v2", check=True)
    hs.docker.containers.get(f"{hs.name}-blue-1").kill()
    before = hs.snapshot()
    code, out = hs.cli_json("heal")
    assert code == 0 and "is open (deployed)" in out["skipped"], out
    assert hs.snapshot() == before
    hs.cli("rollback", check=True)


@pytest.mark.parametrize("point", ["scale:after", "proxy:after", "replicas:after"])
def test_a_scale_killed_half_way_is_undone_by_rollback(hs, point):
    hs.cli("release", "--tag", "v1", check=True)
    before = hs.snapshot()
    proc = hs.cli("scale", "+2", env={"CDLIB_FAILPOINTS": f"{point}=kill"})
    assert proc.returncode == -9, (proc.stdout, proc.stderr)
    code, out = hs.cli_json("rollback")
    assert code == 0, out
    assert hs.snapshot() == before
    assert hs.get() == (200, "v1")


def test_bad_scale_input_is_one_line_and_exit_2(hs):
    hs.cli("release", "--tag", "v1", check=True)
    before = hs.snapshot()
    for value in ("0", "101", "+x", "-1"):
        proc = hs.cli("scale", value)
        assert proc.returncode == 2, (value, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "REPLICAS" in proc.stderr
    assert hs.snapshot() == before
