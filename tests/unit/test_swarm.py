"""The Swarm runtime without a swarm: the service specs it builds (both network modes), how it reads
services and tasks into instances (one node or several, dnsrr or the routing mesh), how a start that
fails says why, and target.swarm in the descriptor. The runtime talks to a fake of the SDK's
low-level client here; tests/contract and tests/integration run it on a real single-node swarm."""

from __future__ import annotations

import copy

import pytest

from cdlib import config
from cdlib.clock import ManualClock
from cdlib.errors import ConfigError, RuntimeBackendError
from cdlib.runtime.base import StartRequest
from cdlib.runtime.swarm import (
    LABEL_REPLICAS,
    MAX_CONFIG_NAME,
    SwarmRuntime,
    aside_config_name,
    service_spec,
)
from cdlib.steps import swarm_options


def request(**kw) -> StartRequest:
    base = dict(service="shop", color="blue", release="r1", image="reg:5000/shop:v1", port=8080, replicas=2,
                env=(("GREETING", "hi"),), labels=(("team", "web"),), stop_timeout=7)
    base.update(kw)
    return StartRequest(**base)


# -- the spec ---------------------------------------------------------------------------------------------
def test_dnsrr_spec_publishes_each_task_on_a_host_port_of_its_own():
    spec = service_spec(request(constraints=("node.role==worker",), restart_delay=0.5, limit_cpus=0.5,
                                limit_memory=64 << 20, reserve_memory=16 << 20, health_path="/health"), uid="u1")
    assert spec["Name"] == "shop-blue"
    assert spec["EndpointSpec"] == {"Mode": "dnsrr", "Ports": [{"Protocol": "tcp", "TargetPort": 8080,
                                                                "PublishMode": "host"}]}
    assert spec["Mode"] == {"Replicated": {"Replicas": 2}}
    labels = spec["Labels"]
    assert {k: labels[k] for k in ("cdlib.service", "cdlib.color", "cdlib.release", "team", LABEL_REPLICAS,
                                   "cdlib.health-path")} == {
        "cdlib.service": "shop", "cdlib.color": "blue", "cdlib.release": "r1", "team": "web", LABEL_REPLICAS: "2",
        "cdlib.health-path": "/health"}
    task = spec["TaskTemplate"]
    container = task["ContainerSpec"]
    assert container["Image"] == "reg:5000/shop:v1" and container["Init"] is True
    assert container["StopGracePeriod"] == 7_000_000_000
    assert container["Labels"] == {"team": "web", "cdlib.service": "shop", "cdlib.color": "blue",
                                   "cdlib.release": "r1"}
    assert container["Env"] == ["GREETING=hi", "CDLIB_SERVICE=shop", "CDLIB_COLOR=blue", "CDLIB_RELEASE=r1"]
    assert task["RestartPolicy"] == {"Condition": "any", "Delay": 500_000_000, "MaxAttempts": 0}
    assert task["Placement"] == {"Constraints": ["node.role==worker"]}
    assert task["Resources"] == {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20},
                                 "Reservations": {"MemoryBytes": 16 << 20}}
    assert "Networks" not in task


def test_vip_spec_publishes_one_ingress_port_for_the_service():
    spec = service_spec(request(endpoint_mode="vip", network="shop-net"), uid="u1", published_port=28080)
    assert spec["EndpointSpec"] == {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 8080,
                                                              "PublishedPort": 28080, "PublishMode": "ingress"}]}
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "shop-net"}]
    assert "Placement" not in spec["TaskTemplate"] and "Resources" not in spec["TaskTemplate"]
    with pytest.raises(RuntimeBackendError, match="needs a published port"):
        service_spec(request(endpoint_mode="vip"), uid="u1")
    with pytest.raises(RuntimeBackendError, match="endpoint_mode"):
        service_spec(request(endpoint_mode="mesh"), uid="u1")


def test_the_set_aside_spec_name_fits_swarms_limit():
    assert aside_config_name("shop", "blue", "20261129-090000-ab12") == "shop-blue.aside-20261129-090000-ab12"
    long = aside_config_name("s" * 40, "green", "20261129-090000-ab12")
    assert len(long) <= MAX_CONFIG_NAME and long.startswith("cdlib.aside-")
    assert long == aside_config_name("s" * 40, "green", "20261129-090000-ab12")
    assert long != aside_config_name("s" * 40, "green", "20261129-090000-ab13")


# -- reading services and tasks -----------------------------------------------------------------------------
class FakeApi:
    """Just enough of docker.APIClient for the runtime's reads, and a create that records."""

    def __init__(self, nodes=None):
        self.svcs: dict[str, dict] = {}
        self.task_list: list[dict] = []
        self.node_list = nodes or [{"ID": "n1", "Status": {"Addr": "127.0.0.1"}}]
        self.created: list[dict] = []

    def add(self, spec: dict, endpoint_ports=None) -> dict:
        svc = {"ID": f"id-{spec['Name']}", "Version": {"Index": 1}, "Spec": copy.deepcopy(spec),
               "Endpoint": {"Ports": endpoint_ports or []}}
        self.svcs[spec["Name"]] = svc
        return svc

    def task(self, svc: dict, slot: int, state: str, port: int = 0, node: str = "n1", err: str = "",
             desired: str = "running", tid: str = "") -> None:
        ports = [{"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": port, "PublishMode": "host"}] if port else []
        self.task_list.append({"ID": tid or f"t{len(self.task_list)}", "ServiceID": svc["ID"], "Slot": slot,
                               "NodeID": node, "DesiredState": desired, "Version": {"Index": len(self.task_list)},
                               "Status": {"State": state, "Err": err, "PortStatus": {"Ports": ports}}})

    def services(self, filters=None):
        want = dict(f.split("=", 1) for f in (filters or {}).get("label", []) if "=" in f)
        return [copy.deepcopy(s) for s in self.svcs.values()
                if all(s["Spec"]["Labels"].get(k) == v for k, v in want.items())]

    def inspect_service(self, ref):
        for s in self.svcs.values():
            if ref in (s["ID"], s["Spec"]["Name"]):
                return copy.deepcopy(s)
        raise _NotFound()

    def tasks(self, filters=None):
        return [copy.deepcopy(t) for t in self.task_list if t["ServiceID"] == filters["service"]]

    def nodes(self):
        return copy.deepcopy(self.node_list)

    def configs(self, filters=None):
        return []

    def create_service(self, task_template, name=None, labels=None, mode=None, endpoint_spec=None, **kw):
        spec = {"Name": name, "Labels": labels, "TaskTemplate": task_template, "Mode": mode,
                "EndpointSpec": endpoint_spec}
        self.created.append(spec)
        self.add(spec)
        return {"ID": f"id-{name}"}


class _NotFound(Exception):
    status_code = 404


def runtime_over(api: FakeApi, clock=None) -> SwarmRuntime:
    rt = SwarmRuntime(start_timeout=5)
    rt.clock = clock or ManualClock()

    class Client:
        pass

    client = Client()
    client.api = api
    rt._docker_client = client
    return rt


def test_dnsrr_instances_are_the_tasks_on_their_host_ports():
    api = FakeApi()
    svc = api.add(service_spec(request(address="10.0.0.9"), uid="u1"))
    api.task(svc, 1, "running", 32770)
    api.task(svc, 2, "running", 32771)
    api.task(svc, 2, "failed", 32760, desired="shutdown")  # an older task of slot 2: history
    got = runtime_over(api).instances("shop")
    assert [(i.name, i.address, i.port, i.state, i.id, i.release) for i in got] == [
        ("shop-blue-1", "10.0.0.9", 32770, "running", "u1.1", "r1"),
        ("shop-blue-2", "10.0.0.9", 32771, "running", "u1.2", "r1")]


def test_an_engine_with_ipv6_publishes_a_second_port_which_ipv4_addresses_do_not_use():
    api = FakeApi()
    svc = api.add(service_spec(request(address="10.0.0.9", replicas=1), uid="u1"))
    api.task(svc, 1, "running", 32770)
    api.task_list[-1]["Status"]["PortStatus"]["Ports"].append(
        {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 32790, "PublishMode": "host"})  # the :: binding
    assert [i.port for i in runtime_over(api).instances("shop")] == [32770]
    api.svcs["shop-blue"]["Spec"]["Labels"]["cdlib.address"] = "fd00::9"
    assert [(i.address, i.port) for i in runtime_over(api).instances("shop")] == [("fd00::9", 32790)]


def test_on_several_nodes_an_instance_is_its_nodes_address():
    api = FakeApi(nodes=[{"ID": "n1", "Status": {"Addr": "192.168.5.1"}},
                         {"ID": "n2", "Status": {"Addr": "192.168.5.2"}}])
    svc = api.add(service_spec(request(), uid="u1"))
    api.task(svc, 1, "running", 32770, node="n1")
    api.task(svc, 2, "running", 32770, node="n2")
    got = runtime_over(api).instances("shop", "blue")
    assert [(i.address, i.port) for i in got] == [("192.168.5.1", 32770), ("192.168.5.2", 32770)]


def test_vip_instances_all_point_at_the_ingress_port():
    api = FakeApi()
    spec = service_spec(request(endpoint_mode="vip"), uid="u1", published_port=28080)
    svc = api.add(spec, endpoint_ports=spec["EndpointSpec"]["Ports"])
    api.task(svc, 1, "running")
    api.task(svc, 2, "starting")
    got = runtime_over(api).instances("shop")
    assert [(i.name, i.address, i.port, i.state) for i in got] == [
        ("shop-blue-1", "127.0.0.1", 28080, "running"), ("shop-blue-2", "127.0.0.1", 0, "starting")]


def test_a_color_scaled_to_zero_shows_the_count_it_comes_back_with():
    api = FakeApi()
    spec = service_spec(request(replicas=3, first_index=1), uid="u1")
    spec["Mode"] = {"Replicated": {"Replicas": 0}}
    api.add(spec)
    got = runtime_over(api).instances("shop", "blue")
    assert [(i.name, i.state, i.port) for i in got] == [
        ("shop-blue-1", "exited", 0), ("shop-blue-2", "exited", 0), ("shop-blue-3", "exited", 0)]


def test_a_slot_without_a_task_yet_is_pending():
    api = FakeApi()
    svc = api.add(service_spec(request(), uid="u1"))
    api.task(svc, 2, "running", 32771)
    got = runtime_over(api).instances("shop")
    assert [(i.name, i.state) for i in got] == [("shop-blue-1", "pending"), ("shop-blue-2", "running")]


def test_start_names_the_error_of_a_task_that_fails():
    api = FakeApi()
    real_create = api.create_service

    def create(*args, **kw):
        got = real_create(*args, **kw)
        svc = api.svcs[kw["name"]]
        api.task(svc, 1, "running", 32770)
        api.task(svc, 2, "rejected", err="No such image: reg:5000/shop:v1")
        return got
    api.create_service = create
    with pytest.raises(RuntimeBackendError) as err:
        runtime_over(api).start(request())
    assert str(err.value) == ("swarm runtime: task shop-blue.2 rejected: No such image: reg:5000/shop:v1; "
                              "check `docker service ps --no-trunc shop-blue`")
    assert api.created[0]["Name"] == "shop-blue"


def test_start_gives_up_after_its_timeout_and_says_what_waits():
    api = FakeApi()
    real_create = api.create_service

    def create(*args, **kw):
        got = real_create(*args, **kw)
        svc = api.svcs[kw["name"]]
        api.task(svc, 1, "running", 32770)
        api.task(svc, 2, "pending", err="no suitable node (insufficient resources on 1 node)")
        return got
    api.create_service = create
    clock = ManualClock()
    with pytest.raises(RuntimeBackendError, match=r"1 of 2 tasks of shop-blue running after 5s: shop-blue.2 "
                                                  r"pending \(no suitable node"):
        runtime_over(api, clock).start(request())
    assert clock.monotonic() >= 5


def test_start_refuses_a_service_of_another_release():
    api = FakeApi()
    api.add(service_spec(request(release="r0"), uid="u0"))
    with pytest.raises(RuntimeBackendError, match="shop-blue already exists for release r0; it must be set aside"):
        runtime_over(api).start(request())


def test_doomed_are_the_highest_slots():
    api = FakeApi()
    svc = api.add(service_spec(request(replicas=3), uid="u1"))
    for slot in (1, 2, 3):
        api.task(svc, slot, "running", 32770 + slot)
    rt = runtime_over(api)
    assert rt.doomed("shop", "blue", 1) == ["shop-blue-2", "shop-blue-3"]
    assert rt.doomed("shop", "blue", 3) == []
    assert rt.discard("shop", "blue", ["shop-blue-3"]) == []


# -- target.swarm in the descriptor ---------------------------------------------------------------------------
BASE = {"service": "shop", "image": "127.0.0.1:5000/shop:v1", "port": 8080}


def parse(target: dict):
    return config.parse(dict(BASE, target=target), "svc/cdlib.yml", env={})


def test_target_swarm_is_read_and_reaches_the_start_request():
    spec = parse({"kind": "swarm", "swarm": {"endpoint_mode": "vip", "published_port": 28080,
                                             "constraints": ["node.role==worker", "node.labels.zone != a"],
                                             "restart_delay": 0, "limits": {"cpus": 0.5, "memory": "64M"},
                                             "reservations": {"cpus": 0.25, "memory": 16777216}}})
    sw = spec.target.swarm
    assert (sw.endpoint_mode, sw.published_port, sw.constraints, sw.restart_delay) == (
        "vip", 28080, ("node.role==worker", "node.labels.zone != a"), 0.0)
    assert (sw.limit_cpus, sw.limit_memory, sw.reserve_cpus, sw.reserve_memory) == (0.5, 64 << 20, 0.25, 16 << 20)
    opts = swarm_options(sw)
    assert StartRequest("shop", "blue", "r1", "i:1", 8080, 1, **opts).published_port == 28080
    assert parse({"kind": "swarm"}).target.swarm.endpoint_mode == "dnsrr"


@pytest.mark.parametrize("target, message", [
    ({"kind": "docker", "swarm": {}}, "target.swarm: expected no swarm section unless target.kind is swarm"),
    ({"kind": "swarm", "swarm": {"endpoint_mode": "mesh"}}, "target.swarm.endpoint_mode: expected dnsrr or vip, "
                                                            "got 'mesh'"),
    ({"kind": "swarm", "swarm": {"published_port": 28080}}, "target.swarm.published_port: expected no published "
                                                            "port with endpoint_mode dnsrr"),
    ({"kind": "swarm", "swarm": {"endpoint_mode": "vip", "published_port": 80}},
     "target.swarm.published_port: expected a port from 1024 to 65535, got 80"),
    ({"kind": "swarm", "swarm": {"constraints": ["node.role=worker"]}}, "target.swarm.constraints[0]: expected "
                                                                        "placement constraints"),
    ({"kind": "swarm", "swarm": {"restart_delay": -1}}, "target.swarm.restart_delay: expected a number"),
    ({"kind": "swarm", "swarm": {"limits": {"memory": "1T"}}}, "target.swarm.limits.memory: expected a size"),
    ({"kind": "swarm", "swarm": {"limits": {"memory": "1K"}}}, "target.swarm.limits.memory: expected at least 4M"),
    ({"kind": "swarm", "swarm": {"reservations": {"gpus": 1}}}, "target.swarm.reservations.gpus: expected no such key"),
    ({"kind": "swarm", "swarm": {"mesh": True}}, "target.swarm.mesh: expected no such key"),
])
def test_a_bad_target_swarm_is_one_line_naming_the_field(target, message):
    with pytest.raises(ConfigError) as err:
        parse(target)
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    assert str(err.value).startswith(f"svc/cdlib.yml: {message}"), str(err.value)


@pytest.mark.parametrize("swarm, what", [
    ({"LocalNodeState": "inactive"}, "is not in a swarm (state: inactive)"),
    ({"LocalNodeState": "active", "ControlAvailable": False}, "is a worker, not a manager"),
])
def test_ping_refuses_an_engine_that_is_no_swarm_manager(swarm, what, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    api = FakeApi()
    api.info = lambda: {"Swarm": swarm}
    with pytest.raises(RuntimeBackendError) as err:
        runtime_over(api).ping()
    assert str(err.value).startswith(f"swarm runtime: the engine at unix:///var/run/docker.sock {what}; run "
                                     "`docker swarm init` there or point target.docker_host")
    api.info = lambda: {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True}}
    runtime_over(api).ping()
