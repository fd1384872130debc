"""heal and scale of the live color with the memory adapters on a manual clock.

"Exactly the prior state" is the release tests' snapshot: every store key but history and the lock,
every container's name, state, release and image, and the proxy's configuration bytes.
"""

from __future__ import annotations

import re

import pytest

from cdlib import keys
from cdlib import verbs as rel
from cdlib.errors import ConfigError, LockHeld, RuntimeBackendError, UsageError
from cdlib.healing import inherited_replicas, live_replicas
from cdlib.store.base import default_holder
from tests.support.world import World


class Killed(BaseException):
    """Stands for SIGKILL: nothing in cdlib catches it, so the process 'dies' where it is raised."""


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    out = rel.release(w.ctx("v1"))
    assert out.ok, out.message
    return w


def unset(world, tag="v1"):
    """A context whose descriptor sets no replicas."""
    import tests.support.world as w

    saved = dict(w.DESCRIPTOR)
    w.DESCRIPTOR.pop("replicas")
    try:
        return world.ctx(tag)
    finally:
        w.DESCRIPTOR.clear()
        w.DESCRIPTOR.update(saved)


def ports(world, color="blue"):
    return {i.name: i.port for i in world.runtime.instances("shop", color) if i.running}


def registered(world, color="blue"):
    return {r["name"]: r["port"] for r in world.store.registrations("shop", color)}


def served(world):
    """The ports the memory proxy's configuration routes shop to."""
    import json

    doc = json.loads(world.proxy.read_config())
    return sorted(p for b in doc["backends"] if b["service"] == "shop" for _, p in b["servers"])


def state(world):
    """The snapshot plus each container's port binding: a healed instance must come back on its port."""
    return world.snapshot(), {n: c.host_port for n, c in world.runtime.containers.items()}


# -- the stored count ---------------------------------------------------------------------------------
def test_a_release_stores_the_count_its_live_color_runs_and_status_shows_it(world):
    assert world.store.get_json(keys.replicas("shop"))["replicas"] == 2
    assert world.store.get_json(keys.replicas("shop"))["color"] == "blue"
    out = rel.status(world.ctx())
    assert out.result.replicas == {"count": 2, "source": "stored"}


def test_a_descriptor_without_replicas_inherits_the_live_count(world):
    assert rel.scale(world.ctx(), "3").ok
    ctx = unset(world, "v2")
    assert ctx.spec.replicas is None and inherited_replicas(ctx) == 3
    assert inherited_replicas(world.ctx("v2")) == 2  # the descriptor's own count wins when it has one
    out = rel.release(unset(world, "v2"))
    assert out.ok, out.message
    assert sorted(ports(world, "green")) == ["shop-green-1", "shop-green-2", "shop-green-3"]
    assert world.store.get_json(keys.replicas("shop"))["color"] == "green"
    assert live_replicas(world.store, "shop") == (3, "stored")


def test_with_neither_a_stored_nor_a_descriptor_count_a_release_runs_one(tmp_path):
    w = World(tmp_path)
    assert rel.release(unset(w)).ok
    assert sorted(ports(w)) == ["shop-blue-1"]


def test_a_rolled_back_release_restores_the_stored_count(world):
    before = state(world)
    world.runner.results["post-integration"] = False  # fails after the live step wrote the new count
    out = rel.release(world.ctx("v2", replicas=4))
    assert not out.ok and out.exit_code == 1
    assert state(world) == before


# -- heal ---------------------------------------------------------------------------------------------
def test_heal_with_nothing_wrong_changes_nothing(world):
    before, applies = state(world), len(world.proxy.applies)
    out = rel.heal(world.ctx())
    assert out.ok and out.exit_code == 0, out.message
    r = out.result
    assert (r.replaced, r.registered, r.discarded, r.proxy_changed) == ([], [], [], False)
    assert (r.wanted, r.running, r.color) == (2, 2, "blue")
    assert state(world) == before and len(world.proxy.applies) == applies
    assert world.store.get(keys.lock("shop")) is None


def test_heal_starts_a_killed_instance_again_on_its_port_with_the_proxy_bytes_identical(world):
    before, config, applies = state(world), world.proxy.read_config(), len(world.proxy.applies)
    port = ports(world)["shop-blue-1"]
    world.runtime.kill("shop-blue-1")
    out = rel.heal(world.ctx())
    assert out.ok, out.message
    assert out.result.replaced == ["shop-blue-1"] and not out.result.proxy_changed
    assert ports(world)["shop-blue-1"] == port
    assert world.proxy.read_config() == config and len(world.proxy.applies) == applies
    assert state(world) == before
    assert "replaced shop-blue-1" in out.message


def test_heal_creates_a_vanished_instance_again_on_the_port_its_registration_names(world):
    before, config = state(world), world.proxy.read_config()
    port = registered(world)["shop-blue-2"]
    del world.runtime.containers["shop-blue-2"]
    out = rel.heal(world.ctx())
    assert out.result.replaced == ["shop-blue-2"] and not out.result.proxy_changed
    assert ports(world)["shop-blue-2"] == port
    assert world.proxy.read_config() == config
    assert state(world) == before


def test_heal_writes_a_lost_registration_again(world):
    before = state(world)
    world.store.deregister("shop", "blue", "shop-blue-1")
    out = rel.heal(world.ctx())
    assert out.result.registered == ["shop-blue-1"] and out.result.replaced == []
    assert state(world) == before


def test_heal_applies_the_proxy_when_its_text_differs_from_the_registry(world):
    config = world.proxy.read_config()
    world.proxy.apply(world.proxy.render([]))  # e.g. 'proxy watch' left out servers that were down
    out = rel.heal(world.ctx())
    assert out.result.proxy_changed
    assert world.proxy.read_config() == config


def test_heal_removes_stopped_instances_above_the_count(world):
    assert rel.scale(world.ctx(), "4").ok
    # a scale down killed after its record closed, before the stopped instances were removed
    world.store.put_json(keys.replicas("shop"), {"replicas": 2, "color": "blue", "since": 0, "via": "x"})
    for name in ("shop-blue-3", "shop-blue-4"):
        world.store.deregister("shop", "blue", name)
        world.runtime.kill(name)
    out = rel.heal(world.ctx())
    assert out.result.discarded == ["shop-blue-3", "shop-blue-4"]
    assert sorted(world.runtime.containers) == ["shop-blue-1", "shop-blue-2"]


def test_heal_never_stops_a_registered_instance_above_the_count(world):
    world.store.put_json(keys.replicas("shop"), {"replicas": 1, "color": "blue", "since": 0, "via": "x"})
    before = state(world)
    out = rel.heal(world.ctx())
    assert out.ok and out.result.replaced == [] and "scale" in out.result.note
    assert state(world) == before


def test_heal_leaves_an_open_release_alone_and_says_so(world):
    assert rel.deploy(world.ctx("v2")).ok  # open, its lock parked between stages
    world.runtime.kill("shop-blue-1")
    before = state(world)
    out = rel.heal(world.ctx())
    assert out.ok and out.exit_code == 0
    assert "is open (deployed)" in out.result.skipped and "nothing changed" in out.message
    assert state(world) == before


def test_one_heal_refuses_with_exit_3_while_a_live_process_holds_the_lock(world):
    lock = world.store.acquire_lock(keys.lock("shop"), default_holder(purpose="scale"), 60)
    world.runtime.kill("shop-blue-1")
    with pytest.raises(LockHeld) as info:
        rel.heal(world.ctx())
    assert info.value.exit_code == 3
    assert not world.runtime.containers["shop-blue-1"].instance.running
    world.store.release_lock(keys.lock("shop"), lock.token)


def test_heal_watch_waits_for_a_busy_lock_and_heals_in_a_later_round(world):
    lock = world.store.acquire_lock(keys.lock("shop"), default_holder(purpose="scale"), 60)
    world.runtime.kill("shop-blue-2")
    lines = []

    def log(line):
        lines.append(line)
        if "busy" in line:
            world.store.release_lock(keys.lock("shop"), lock.token)

    out = rel.heal(world.ctx(), watch=True, interval=5, max_rounds=3, log=log)
    assert out.ok and out.result.rounds == 3 and out.result.failures == 0
    assert out.result.replaced == ["shop-blue-2"]
    assert "busy" in lines[0] and "replaced shop-blue-2" in lines[1]
    assert world.clock.slept == [5, 5]  # no real wait: the manual clock moved
    assert world.runtime.containers["shop-blue-2"].instance.running


def test_heal_watch_stops_after_max_seconds(world):
    out = rel.heal(world.ctx(), watch=True, interval=10, max_seconds=25)
    assert out.result.rounds == 4 and world.clock.slept == [10, 10, 5]


def test_heal_watch_keeps_going_after_a_failed_round(world):
    world.runtime.kill("shop-blue-1")
    world.runtime.fail_next["scale"] = RuntimeBackendError("engine away")
    lines = []
    out = rel.heal(world.ctx(), watch=True, interval=1, max_rounds=2, log=lines.append)
    assert out.ok and out.result.failures == 1 and out.result.replaced == ["shop-blue-1"]
    assert "failed: engine away" in lines[0]


def test_one_heal_that_cannot_repair_fails(world):
    world.runtime.kill("shop-blue-1")
    world.runtime.healthy["shop-blue-1"] = False
    with pytest.raises(Exception) as info:
        rel.heal(world.ctx())
    assert info.value.exit_code == 1
    assert world.store.get(keys.lock("shop")) is None


@pytest.mark.parametrize("kwargs,key", [
    ({"interval": 0}, "--interval"), ({"interval": float("nan")}, "--interval"),
    ({"watch": True, "max_rounds": 0}, "--max-rounds"), ({"watch": True, "max_seconds": -1}, "--max-seconds"),
    ({"max_rounds": 2}, "--watch"),
])
def test_bad_heal_options_are_exit_2(world, kwargs, key):
    with pytest.raises(ConfigError) as info:
        rel.heal(world.ctx(), **kwargs)
    assert info.value.exit_code == 2 and info.value.key == key


def test_heal_with_nothing_live_changes_nothing(tmp_path):
    w = World(tmp_path)
    out = rel.heal(w.ctx())
    assert out.ok and "nothing of shop is live" in out.result.skipped


# -- scale --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-2", "101", "+99", "+x", "x", "", "1.5", "2+", "--1", True, None, 0])
def test_bad_scale_input_is_one_line_exit_2_and_changes_nothing(world, value):
    before = state(world)
    with pytest.raises(ConfigError) as info:
        rel.scale(world.ctx(), value)
    assert info.value.exit_code == 2 and info.value.key == "REPLICAS"
    assert "\n" not in str(info.value) and str(info.value).startswith("scale REPLICAS:")
    assert state(world) == before and world.store.get(keys.lock("shop")) is None


def test_scale_without_a_live_color_is_exit_2(tmp_path):
    w = World(tmp_path)
    with pytest.raises(UsageError) as info:
        rel.scale(w.ctx(), "3")
    assert info.value.exit_code == 2 and "nothing of shop is live" in str(info.value)
    assert w.store.snapshot() == {}


def test_scale_with_an_open_release_is_exit_2(world):
    assert rel.deploy(world.ctx("v2")).ok
    before = state(world)
    with pytest.raises(UsageError):
        rel.scale(world.ctx(), "+1")
    assert state(world) == before


def test_scale_while_a_live_process_holds_the_lock_is_exit_3(world):
    world.store.acquire_lock(keys.lock("shop"), default_holder(purpose="heal"), 60)
    before = state(world)
    with pytest.raises(LockHeld):
        rel.scale(world.ctx(), "3")
    assert state(world) == before


def test_scale_to_the_same_count_changes_nothing(world):
    before = state(world)
    for value in ("2", "+0", "-0", 2):
        out = rel.scale(world.ctx(), value)
        assert out.ok and "already" in out.message
    assert state(world) == before


def test_scale_up_starts_registers_and_serves_the_new_instances(world):
    old = ports(world)
    out = rel.scale(world.ctx(), "+2")
    assert out.ok and out.exit_code == 0, out.message
    assert (out.result.previous, out.result.replicas, out.result.color) == (2, 4, "blue")
    now = ports(world)
    assert sorted(now) == ["shop-blue-1", "shop-blue-2", "shop-blue-3", "shop-blue-4"]
    assert {n: now[n] for n in old} == old  # the running ones were not touched
    assert registered(world) == now
    assert served(world) == sorted(now.values())
    assert world.store.get_json(keys.replicas("shop"))["replicas"] == 4
    assert world.store.get(keys.release("shop")) is None and world.store.get(keys.lock("shop")) is None
    [entry] = [h for h in rel.history(world.ctx()).data["history"] if h["id"] == out.result.scale]
    assert entry["outcome"] == "scaled"
    assert [s.name for s in out.steps] == ["open", "scale", "health", "register", "proxy", "replicas"]


def test_scale_down_drains_before_it_stops_and_removes_the_instances(world):
    assert rel.scale(world.ctx(), "4").ok
    calls_before = len(world.runtime.calls)
    out = rel.scale(world.ctx(), "-3")
    assert out.ok, out.message
    assert out.result.replicas == 1 and out.result.discarded == ["shop-blue-2", "shop-blue-3", "shop-blue-4"]
    assert sorted(world.runtime.containers) == ["shop-blue-1"]
    assert list(registered(world)) == ["shop-blue-1"]
    assert served(world) == [ports(world)["shop-blue-1"]]
    methods = [m for m, _ in world.runtime.calls[calls_before:]]
    assert methods.index("doomed") < methods.index("scale") < methods.index("discard")
    assert [s.name for s in out.steps] == ["open", "register", "proxy", "scale", "replicas", "discard"]
    assert world.store.get_json(keys.replicas("shop"))["replicas"] == 1


def _store_fails(method, part):
    return lambda w: w.store.inject(method, RuntimeBackendError("boom"), when=lambda key, *a, **k: part in key,
                                    after=True)


SCALE_FAILURES = {
    ("scale", "up"): lambda w: w.runtime.fail_next.__setitem__("scale", RuntimeBackendError("boom")),
    ("scale", "down"): lambda w: w.runtime.fail_next.__setitem__("scale", RuntimeBackendError("boom")),
    ("health", "up"): lambda w: [w.runtime.healthy.__setitem__(f"shop-blue-{n}", False) for n in (3, 4)],
    ("register", "up"): _store_fails("put", "/instances/"),
    ("register", "down"): _store_fails("delete", "/instances/"),
    ("proxy", "up"): lambda w: setattr(w.proxy, "fail_next_apply", True),
    ("proxy", "down"): lambda w: setattr(w.proxy, "fail_next_apply", True),
    ("replicas", "up"): _store_fails("put", "/replicas"),
    ("replicas", "down"): _store_fails("put", "/replicas"),
}


@pytest.mark.parametrize("where,direction", sorted(SCALE_FAILURES), ids=["-".join(k) for k in sorted(SCALE_FAILURES)])
def test_a_failed_scale_rolls_back_to_exactly_the_prior_state(world, where, direction):
    if direction == "down":
        assert rel.scale(world.ctx(), "4").ok
    before = state(world)
    SCALE_FAILURES[where, direction](world)
    out = rel.scale(world.ctx(), "4" if direction == "up" else "1")
    assert not out.ok and out.exit_code == 1, out.message
    assert re.match(r"scale of shop blue from \d+ to \d+ failed: .*; rolled back", out.message), out.message
    assert state(world) == before
    assert world.store.get(keys.lock("shop")) is None and world.store.get(keys.release("shop")) is None
    assert rel.history(world.ctx()).data["history"][0]["outcome"] == "rolled-back"
    world.runtime.healthy.clear()
    assert rel.scale(world.ctx(), "3").ok  # and the next scale works


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("step", ["scale", "health", "register", "proxy", "replicas"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failpoint_at_any_scale_step_is_rolled_back(world, monkeypatch, step, when, direction):
    if direction == "down":
        assert rel.scale(world.ctx(), "4").ok
    before = state(world)
    monkeypatch.setenv("CDLIB_FAILPOINTS", f"{step}:{when}=fail")
    out = rel.scale(world.ctx(), "+2" if direction == "up" else "-2")
    monkeypatch.delenv("CDLIB_FAILPOINTS")
    if direction == "down" and step == "health":
        assert out.ok  # a scale down has no health step
        return
    assert not out.ok and out.exit_code == 1, out.message
    assert state(world) == before


KILLS = [("runtime", "scale", "before"), ("runtime", "scale", "after"), ("runtime", "wait_healthy", "after"),
         ("proxy", "apply", "before"), ("proxy", "apply", "after"), ("store", "replicas", "after"),
         ("store", "instances", "after"), ("runtime", "discard", "before")]


def _kill_at(world, side, method, when):
    if side == "store":
        part = "/replicas" if method == "replicas" else "/instances/"
        return world.store.inject("put" if method == "replicas" else "delete", Killed,
                                  when=lambda key, *a, **kw: part in key, times=None, after=when == "after") \
            if method != "instances" else world.store.inject(
                "put", Killed, when=lambda key, *a, **kw: part in key and "-3" in key, times=None, after=True)
    target = getattr(world, side)
    original = getattr(target, method)

    def wrapped(*a, **kw):
        if when == "after":
            original(*a, **kw)
        raise Killed()

    setattr(target, method, wrapped)
    return lambda: setattr(target, method, original)


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("side,method,when", KILLS, ids=["-".join(k) for k in KILLS])
def test_a_scale_killed_at_any_point_is_undone_by_rollback(world, side, method, when, direction):
    if direction == "down":
        assert rel.scale(world.ctx(), "4").ok
    before = state(world)
    restore = _kill_at(world, side, method, when)
    try:
        rel.scale(world.ctx(), "3" if direction == "up" else "1")
        killed = False
    except Killed:
        killed = True
    restore()
    if not killed:  # that point is not on this direction's path: the scale finished
        return
    if world.store.get(keys.release("shop")) is None:  # killed after the record closed (discard)
        assert rel.heal(world.ctx()).ok  # heal removes the stopped instances above the count
        assert sorted(world.runtime.containers) == ["shop-blue-1"]
        return
    assert world.store.lock_info(keys.lock("shop"))["state"] == "gone"
    heal = rel.heal(world.ctx())  # heal never fights the open record
    assert heal.result.skipped and "scale" in heal.result.skipped
    scale_id = world.store.get(keys.release("shop")).json()["id"]
    out = rel.rollback(world.ctx())  # a new process
    assert out.ok and out.exit_code == 0, out.message
    assert out.message.startswith(f"scale {scale_id} of shop rolled back"), out.message  # not "release"
    assert state(world) == before
    assert rel.scale(world.ctx(), "3").ok  # and the service scales again


def test_the_next_release_rolls_an_abandoned_scale_back_first(world):
    before = state(world)
    restore = _kill_at(world, "proxy", "apply", "after")
    with pytest.raises(Killed):
        rel.scale(world.ctx(), "4")
    restore()
    assert rel.deploy(world.ctx("v2")).ok
    assert rel.rollback(world.ctx()).ok  # the release, not the scale: that one is already undone
    assert state(world) == before


def test_another_service_without_a_healthy_backend_does_not_fail_the_heal(world):
    other = world.ctx("v1", service="cart", routes={"paths": ["/cart/"]})
    assert rel.release(other).ok
    for name in ("cart-blue-1", "cart-blue-2"):
        world.runtime.healthy[name] = False
    world.runtime.kill("shop-blue-1")
    out = rel.heal(world.ctx())
    assert out.ok and out.result.replaced == ["shop-blue-1"]
    assert "proxy not applied" in out.result.note and "cart" in out.result.note


def test_an_instance_gone_with_its_registration_comes_back_on_a_new_port_and_the_proxy_follows(world):
    old = registered(world)["shop-blue-2"]
    del world.runtime.containers["shop-blue-2"]
    world.store.deregister("shop", "blue", "shop-blue-2")
    out = rel.heal(world.ctx())
    assert out.result.replaced == ["shop-blue-2"] and out.result.registered == ["shop-blue-2"]
    new = ports(world)["shop-blue-2"]
    assert new != old and out.result.proxy_changed
    assert served(world) == sorted(ports(world).values())


def test_a_heal_with_nothing_to_repair_takes_no_lock(world):
    lock = world.store.acquire_lock(keys.lock("shop"), default_holder(purpose="deploy"), 60)
    out = rel.heal(world.ctx())  # a release holding the lock right now is not in the way, nor disturbed
    assert out.ok and out.result.replaced == [] and "nothing to repair" in out.message
    assert world.store.lock_info(keys.lock("shop"))["purpose"] == "deploy"
    world.store.release_lock(keys.lock("shop"), lock.token)
