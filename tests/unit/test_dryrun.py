"""Dry runs against the memory adapters: the plan names the colors, the containers, the ports, the
proxy diff and the store keys, and nothing changes (no lock, no journal, no container, no proxy file)."""

from __future__ import annotations

import pytest

from cdlib import dryrun, keys
from cdlib import verbs as rel
from cdlib.errors import ConfigError, NothingToRollBack, UsageError
from cdlib.results import PlanOutcome, PlanResult
from tests.support.world import World


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def unchanged(world, before, proxy_calls):
    assert world.snapshot() == before
    assert (world.store.get(keys.lock("shop")), world.store.get(keys.PROXY_LOCK)) == proxy_calls[0]
    assert (world.proxy.reloads, len(world.proxy.applies), len(world.proxy.restores),
            len(world.runner.runs)) == proxy_calls[1:]  # no reload, no suite run


def added(diff: str) -> set[str]:
    return {line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")}


def removed(diff: str) -> set[str]:
    return {line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")}


def proxy_calls(world):
    """The locks as they are (the snapshot leaves them out), the proxy's reloads and the suites run."""
    return ((world.store.get(keys.lock("shop")), world.store.get(keys.PROXY_LOCK)), world.proxy.reloads,
            len(world.proxy.applies), len(world.proxy.restores), len(world.runner.runs))


def test_a_first_release_dry_run_plans_blue_and_changes_nothing(world):
    before, calls = world.snapshot(), proxy_calls(world)
    out = dryrun.release(world.ctx("v1"))
    unchanged(world, before, calls)
    assert world.store.get(keys.lock("shop")) is None and world.store.get(keys.release("shop")) is None
    assert isinstance(out, PlanOutcome) and out.ok and out.exit_code == 0
    plan = out.result.plan
    assert isinstance(out.result, PlanResult) and out.result.dry_run and out.to_dict()["dry_run"] is True
    assert (plan["color"], plan["live_color"], plan["release"]) == ("blue", None, "chosen at open")
    assert [c["name"] for c in plan["containers"]["start"]] == ["shop-blue-1", "shop-blue-2"]
    assert all(c["host_port"] == "chosen at start from 20000-29999" for c in plan["containers"]["start"])
    assert plan["steps"] == ["open", "set-aside", "start", "health", "register", "test pre-integration", "proxy",
                             "live", "test post-integration", "persist", "stop-old", "close"]
    write = plan["store_keys"]["write"]
    assert {keys.lock("shop"), keys.release("shop"), keys.spec("shop"), keys.live("shop"),
            keys.instance("shop", "blue", "shop-blue-1"), keys.instance("shop", "blue", "shop-blue-2"),
            keys.history("shop", "<release chosen at open>")} <= set(write)
    diff = plan["proxy"]["diff"]
    assert plan["proxy"]["changed"] and diff.startswith("---") and '"color": "blue",' in added(diff)
    assert "<port of shop-blue-1 chosen at start>" in diff
    assert "release of shop" in out.message and "as blue (first release)" in out.message
    assert diff.rstrip("\n") in out.message


def test_a_second_release_dry_run_plans_green_beside_blue_with_the_exact_diff(world):
    assert rel.release(world.ctx("v1")).ok
    before, calls = world.snapshot(), proxy_calls(world)
    out = rel.status(world.ctx())  # the live instances, to name them in the plan
    blue = sorted(i["name"] for i in out.data["instances"])
    plan = dryrun.release(world.ctx("v2")).result.plan
    unchanged(world, before, calls)
    assert (plan["color"], plan["live_color"]) == ("green", "blue")
    assert plan["image"].endswith(":v2") and plan["live_image"].endswith(":v1")
    assert plan["containers"]["stop"] == blue
    assert set(plan["store_keys"]["delete"]) >= {keys.instance("shop", "blue", n) for n in blue}
    diff = plan["proxy"]["diff"]
    assert '"color": "blue",' in removed(diff) and '"color": "green",' in added(diff)


def test_deploy_dry_run_neither_switches_nor_closes(world):
    assert rel.release(world.ctx("v1")).ok
    before, calls = world.snapshot(), proxy_calls(world)
    plan = dryrun.deploy(world.ctx("v2")).result.plan
    unchanged(world, before, calls)
    assert plan["steps"] == ["open", "set-aside", "start", "health", "register"]
    assert "proxy" not in plan and keys.live("shop") not in plan["store_keys"]["write"]


def test_switch_and_cleanup_dry_runs_read_the_open_release(world):
    assert rel.release(world.ctx("v1")).ok
    deployed = rel.deploy(world.ctx("v2"))
    assert deployed.ok
    before, calls = world.snapshot(), proxy_calls(world)
    journal = world.store.get(keys.release("shop"))
    out = dryrun.switch(world.ctx())
    assert world.store.get(keys.release("shop")) == journal  # not even the version moved
    unchanged(world, before, calls)
    plan = out.result.plan
    assert (plan["release"], plan["color"]) == (deployed.result.release, "green")
    ports = {f'{i["address"]}", {i["port"]}' for i in deployed.result.instances}
    assert all(p.split('", ')[1] in plan["proxy"]["diff"] for p in ports)  # the real ports, known by now
    with pytest.raises(UsageError, match="cleanup needs it to be"):
        dryrun.cleanup(world.ctx())
    assert rel.switch(world.ctx()).ok
    before, calls = world.snapshot(), proxy_calls(world)
    plan = dryrun.cleanup(world.ctx()).result.plan
    unchanged(world, before, calls)
    assert plan["steps"] == ["persist", "stop-old", "close"]
    assert plan["containers"]["stop"] == ["shop-blue-1", "shop-blue-2"]
    assert keys.history("shop", deployed.result.release) in plan["store_keys"]["write"]


def test_rollback_dry_runs(world):
    assert rel.release(world.ctx("v1")).ok
    assert rel.release(world.ctx("v2")).ok
    before, calls = world.snapshot(), proxy_calls(world)
    plan = dryrun.rollback(world.ctx(), previous=True).result.plan
    unchanged(world, before, calls)
    assert plan["image"].endswith(":v1") and plan["color"] == "blue"
    assert plan["steps"][:4] == ["open", "resume", "health", "register"]  # the stopped blue comes back
    assert [c["name"] for c in plan["containers"]["resume"]] == ["shop-blue-1", "shop-blue-2"]
    assert '"color": "blue",' in added(plan["proxy"]["diff"])
    nothing = dryrun.rollback(world.ctx())
    assert "nothing to roll back" in nothing.message
    assert rel.deploy(world.ctx("v3")).ok
    before, calls = world.snapshot(), proxy_calls(world)
    undo = dryrun.rollback(world.ctx()).result.plan
    unchanged(world, before, calls)
    assert undo["steps"] == ["undo register", "undo start", "undo set-aside", "close"]
    assert undo["containers"]["remove"] == ["shop-blue-1", "shop-blue-2"]
    with pytest.raises(UsageError):
        dryrun.rollback(world.ctx(), previous=True)


def test_bad_input_is_refused_as_by_the_verb(world):
    before = world.snapshot()
    with pytest.raises(ConfigError, match="--lock-ttl"):
        dryrun.release(world.ctx("v1"), lock_ttl=5)
    with pytest.raises(UsageError, match="no open release"):
        dryrun.switch(world.ctx())
    with pytest.raises(NothingToRollBack):
        dryrun.rollback(world.ctx(), to="nope")
    assert world.snapshot() == before


def test_the_api_takes_dry_run(world):
    import cdlib

    ctx = world.ctx("v1")
    before = world.snapshot()
    out = cdlib.release(ports=ctx.ports, dry_run=True)
    assert isinstance(out, PlanOutcome) and out.result.plan["color"] == "blue"
    assert world.snapshot() == before
