"""Whole blue-green flows against the real dockerd and nginx, through the CLI as Jenkins runs it."""

from __future__ import annotations

import pytest

from tests.support.load import Load

pytestmark = pytest.mark.integration


def test_release_v1_then_v2_under_load_drops_no_request(any_proxy_service):
    service = any_proxy_service
    code, out = service.cli_json("release", "--tag", "v1")
    assert code == 0, out
    assert out["color"] == "blue"
    assert service.get() == (200, "v1")

    with Load(service.url + "version") as load:
        import time

        time.sleep(0.5)
        code, out = service.cli_json("release", "--tag", "v2")
        time.sleep(0.5)
    assert code == 0, out
    assert load.sent > 50
    assert load.failed == [], f"{len(load.failed)} of {load.sent} requests failed: {load.failed[:5]}"
    assert "v1" in load.bodies and load.bodies[-1] == "v2"
    assert service.get() == (200, "v2")
    states = {name: status for name, status, _, _ in service.containers()}
    n = service.name
    assert states == {f"{n}-blue-1": "exited", f"{n}-blue-2": "exited",
                      f"{n}-green-1": "running", f"{n}-green-2": "running"}
    steps = [s["name"] for s in out["steps"]]
    assert steps == ["open", "set-aside", "start", "health", "register", "test pre-integration", "proxy", "live",
                     "test post-integration", "persist", "stop-old", "close"]
    assert all(t["passed"] for t in out["tests"])


def test_separate_stages_then_quick_rollback(service):
    service.cli("release", "--tag", "v1", check=True)
    for args in (["deploy", "--tag", "v2"], ["test", "pre-integration"], ["switch"],
                 ["test", "post-integration"], ["cleanup"]):
        proc = service.cli(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert service.get() == (200, "v2")
    status = service.cli("status", check=True).stdout
    assert "live      green" in status
    code, out = service.cli_json("rollback")  # no open release: nothing changes
    assert code == 0 and "nothing to roll back" in out["message"], out
    assert service.get() == (200, "v2")
    code, out = service.cli_json("rollback", "--previous")
    assert code == 0, out
    assert "resume" in [s["name"] for s in out["steps"]]
    assert service.get() == (200, "v1")
    assert service.cli("color", check=True).stdout.strip() == "blue"


@pytest.mark.parametrize("suite", ["pre-integration", "post-integration"])
def test_failing_suite_restores_exactly_the_prior_state(any_proxy_service, suite):
    service = any_proxy_service
    service.cli("release", "--tag", "v1", check=True)
    before = service.snapshot()
    code, out = service.cli_json("release", "--tag", "v2", env={"FAIL_TEST_TYPE": suite})
    assert code == 1, out
    assert "rolled back" in out["message"]
    assert service.snapshot() == before
    assert service.get() == (200, "v1")
    assert (service.dir / "cdlib-reports" / f"cdlib-{service.name}-{suite}.xml").exists()


def test_unhealthy_new_color_is_discarded(service):
    service.cli("release", "--tag", "v1", check=True)
    service.write(health_timeout=2)
    before = service.snapshot()
    code, out = service.cli_json("release", "--tag", "sick")
    assert code == 1, out
    assert "not healthy" in out["message"]
    assert service.snapshot() == before


def test_second_release_while_one_is_open_exits_3(service):
    service.cli("deploy", "--tag", "v1", check=True)
    proc = service.cli("deploy", "--tag", "v2")
    assert proc.returncode == 3
    assert "another release of" in proc.stderr and ":v1" in proc.stderr
    assert service.cli("rollback").returncode == 0
    assert service.containers() == []


KILL_POINTS = ["set-aside:after", "start:before", "start:after", "health:after", "register:after",
               "proxy:before", "proxy:after", "live:after", "stop-old:after"]


@pytest.fixture(scope="module")
def two_releases(module_service):
    module_service.cli("release", "--tag", "v1", check=True)
    module_service.cli("release", "--tag", "v2", check=True)
    return module_service


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_any_step_then_rollback_restores_the_prior_state(two_releases, point):
    svc = two_releases
    before = svc.snapshot()
    proc = svc.cli("release", "--tag", "v3", env={"CDLIB_FAILPOINTS": f"{point}=kill"})
    assert proc.returncode == -9, (proc.stdout, proc.stderr)
    journal = svc.journal()
    assert journal is not None and journal["steps"][-1]["name"] == point.split(":")[0]
    code, out = svc.cli_json("rollback")
    assert code == 0, out
    assert svc.snapshot() == before
    assert svc.get() == (200, "v2")


def test_failed_first_release_leaves_nothing_behind(service):
    before = service.snapshot()
    assert before == ([], {}, None)
    code, out = service.cli_json("release", "--tag", "v1", env={"FAIL_TEST_TYPE": "post-integration"})
    assert code == 1, out
    assert service.snapshot() == before  # no containers, no keys, no nginx.conf
    assert not (service.proxy_dir / "nginx.pid").exists() or service.get()[0] != 200


def test_two_services_share_one_proxy_and_store(two_services):
    a, b = two_services
    a.cli("release", "--tag", "v1", check=True)
    b.cli("release", "--tag", "v2", check=True)
    assert a.get() == (200, "v1") and b.get() == (200, "v2")
    with Load(a.url + "version", threads=2) as load:
        b.cli("release", "--tag", "v3", check=True)  # releasing b leaves a's traffic alone
    assert load.failed == [] and set(load.bodies) == {"v1"}
    assert a.get() == (200, "v1") and b.get() == (200, "v3")
