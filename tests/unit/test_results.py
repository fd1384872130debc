"""Each verb returns its own result type; the JSON the CLI writes (to_dict) keeps its shape."""

from __future__ import annotations

import pytest

from cdlib import proxyctl
from cdlib import verbs as rel
from cdlib.results import (
    ColorResult,
    HistoryResult,
    ProxyResult,
    ReleaseOutcome,
    ReleaseResult,
    StatusResult,
)
from tests.support.world import World


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def test_a_release_returns_a_typed_release_result_and_the_same_json(world):
    first = rel.release(world.ctx("v1"))
    out = rel.release(world.ctx("v2"))
    assert isinstance(out, ReleaseOutcome) and isinstance(out.result, ReleaseResult)
    r = out.result
    assert (r.color, r.previous_color, r.image) == ("green", "blue", "127.0.0.1:5000/shop:v2")
    assert r.release == out.data["release"] and r.release != first.result.release
    assert [t["suite"] for t in r.tests] == ["pre-integration", "post-integration"]
    doc = out.to_dict()
    assert set(doc) == {"verb", "service", "ok", "exit_code", "message", "steps", "release", "color", "image",
                        "previous_color", "tests"}
    assert doc["verb"] == "release" and doc["tests"] == r.tests


def test_deploy_carries_its_instances_and_a_failed_release_its_tests(world):
    out = rel.deploy(world.ctx("v1"))
    assert [i["name"] for i in out.result.instances] == ["shop-blue-1", "shop-blue-2"]
    assert rel.rollback(world.ctx()).ok
    world.runner.results["post-integration"] = False
    failed = rel.release(world.ctx("v2"))
    assert failed.exit_code == 1 and [t["passed"] for t in failed.result.tests] == [True, False]
    assert failed.data["tests"] == failed.result.tests  # outcome.data still works


def test_status_color_history_and_proxy_have_their_own_result_types(world):
    rel.release(world.ctx("v1"))
    status = rel.status(world.ctx())
    assert isinstance(status.result, StatusResult)
    assert status.result.live["color"] == "blue" and status.result.next_color == "green"
    assert status.result.open_release is None and len(status.result.instances) == 2
    assert set(status.to_dict()) == {"verb", "service", "ok", "exit_code", "message", "steps", "live",
                                     "next_color", "open_release", "lock", "registered", "registry_health",
                                     "instances", "drift", "proxy", "replicas"}
    # the memory proxy takes every change by reload; the registry as it is renders what it serves
    assert status.result.proxy["next_change"] == {"mode": "none", "why": "the configuration is unchanged",
                                                  "for": "an apply"}
    assert rel.color(world.ctx(), next_color=True).result == ColorResult("green", "blue")
    history = rel.history(world.ctx()).result
    assert isinstance(history, HistoryResult) and history.history[0]["outcome"] == "released"
    rendered = proxyctl.render(world.ctx()).result
    assert isinstance(rendered, ProxyResult) and "shop" in rendered.config
    assert rendered.apply == {"mode": "none", "why": "the configuration is unchanged"}


def test_rollback_without_an_open_release_says_what_it_finished(world):
    out = rel.rollback(world.ctx())
    assert out.ok and out.result == ReleaseResult() and out.to_dict()["release"] is None
    assert out.to_dict()["leftovers"] == []
