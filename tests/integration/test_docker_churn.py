"""A release on a busy engine: while it runs, containers labelled like cdlib's (this service's test
suites, another service's instances) are created and removed all the time. Listing them and acting
on what was listed must not fail the release, and none of them is taken for an instance."""

from __future__ import annotations

import pytest

from tests.support.churn import Churn

pytestmark = pytest.mark.integration


def test_release_and_rollback_succeed_while_labelled_containers_come_and_go(service, web_images):
    n = service.name
    with Churn(web_images["v1"], n) as churn:
        code, out = service.cli_json("release", "--tag", "v1")
        assert code == 0, out
        assert service.get() == (200, "v1")

        code, out = service.cli_json("release", "--tag", "v2")
        assert code == 0, out
        assert service.get() == (200, "v2")
        steps = [s["name"] for s in out["steps"]]
        assert steps == ["open", "set-aside", "start", "health", "register", "test pre-integration", "proxy",
                         "live", "test post-integration", "persist", "stop-old", "close"]

        code, out = service.cli_json("release", "--tag", "v3", env={"FAIL_TEST_TYPE": "post-integration"})
        assert code == 1, out
        assert "rolled back" in out["message"]
        assert service.get() == (200, "v2")

        code, out = service.cli_json("status")
        assert code == 0, out
    assert churn.done > churn.warm_up and churn.errors == []
    instances = {(i["name"], i["state"]) for i in out["instances"]}
    assert instances == {(f"{n}-blue-1", "exited"), (f"{n}-blue-2", "exited"),
                         (f"{n}-green-1", "running"), (f"{n}-green-2", "running")}
    states = {name: status for name, status, _, _ in service.containers()}
    assert states == {f"{n}-blue-1": "exited", f"{n}-blue-2": "exited",
                      f"{n}-green-1": "running", f"{n}-green-2": "running"}
