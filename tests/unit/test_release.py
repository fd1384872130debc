"""The release core with the memory adapters: every step, every failure, every crash point.

"Exactly the prior state" is checked on all three sides: the store (every key but history and the
lock), the runtime (every container's name, state, release and image) and the proxy (config bytes).
"""

from __future__ import annotations

import os

import pytest

from cdlib import keys, transaction
from cdlib import verbs as rel
from cdlib.context import LockPolicy
from cdlib.errors import ConfigError, LockHeld, RuntimeBackendError, StoreError, UndoIncomplete, UsageError
from cdlib.journal import Journal
from tests.support.world import World


class Killed(BaseException):
    """Stands for SIGKILL: nothing in cdlib catches it, so the process 'dies' where it is raised."""


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def released(world, tag):
    out = rel.release(world.ctx(tag))
    assert out.ok, out.message
    return out


def test_first_release_goes_blue_and_serves(world):
    out = released(world, "v1")
    assert out.exit_code == 0 and out.data["color"] == "blue"
    assert world.live()["color"] == "blue" and world.live()["image"].endswith(":v1")
    running = [i.name for i in world.runtime.instances("shop") if i.running]
    assert running == ["shop-blue-1", "shop-blue-2"]
    assert world.proxy.served == {"shop": "blue"}
    assert [e.key.rsplit("/", 1)[1] for e in world.store.list(keys.instances("shop", "blue"))] == \
        ["shop-blue-1", "shop-blue-2"]
    assert world.store.get(keys.release("shop")) is None  # closed
    assert world.store.get(keys.lock("shop")) is None  # released
    [entry] = rel.history(world.ctx()).data["history"]
    assert entry["outcome"] == "released"
    names = [s.name for s in out.steps]
    assert names == ["open", "set-aside", "start", "health", "register", "test pre-integration", "proxy", "live",
                     "test post-integration", "persist", "stop-old", "close"]


def test_second_release_goes_green_and_stops_blue(world):
    released(world, "v1")
    released(world, "v2")
    assert world.live()["color"] == "green"
    states = {i.name: i.state for i in world.runtime.instances("shop")}
    assert states == {"shop-blue-1": "exited", "shop-blue-2": "exited",
                      "shop-green-1": "running", "shop-green-2": "running"}
    assert world.store.list(keys.instances("shop", "blue")) == []
    assert world.proxy.served == {"shop": "green"}
    # pre-integration saw the new color directly, post-integration the proxy
    pre = world.runner.runs_of("pre-integration")[-1]
    post = world.runner.runs_of("post-integration")[-1]
    green = {i.url for i in world.runtime.instances("shop", "green")}
    assert pre.target_url in green
    assert post.target_url == world.proxy.url() + "/shop/"


def test_third_release_sets_aside_and_then_removes_the_old_stopped_color(world):
    for tag in ("v1", "v2", "v3"):
        released(world, tag)
    assert world.live()["color"] == "blue"
    names = sorted(c for c in world.runtime.containers)
    assert names == ["shop-blue-1", "shop-blue-2", "shop-green-1", "shop-green-2"]
    assert {i.image.rsplit(":", 1)[1] for i in world.runtime.instances("shop", "blue")} == {"v3"}


# -- failures at every step end in exactly the prior state ------------------------------------------
FAILURES = {
    "set-aside": lambda w: w.runtime.fail_next.__setitem__("set_aside", RuntimeBackendError("boom")),
    "start": lambda w: w.runtime.fail_next.__setitem__("start", RuntimeBackendError("boom")),
    "health": lambda w: [w.runtime.healthy.__setitem__(n, False) for n in ("shop-green-1", "shop-blue-1")],
    "pre-integration": lambda w: w.runner.results.__setitem__("pre-integration", False),
    "proxy": lambda w: setattr(w.proxy, "fail_next_apply", True),
    "probe": lambda w: setattr(w.proxy, "answer_from_old", True),
    "post-integration": lambda w: w.runner.results.__setitem__("post-integration", 3),
}


@pytest.mark.parametrize("first", [True, False], ids=["first-release", "over-v1"])
@pytest.mark.parametrize("where", sorted(FAILURES))
def test_a_failure_at_any_step_rolls_back_to_exactly_the_prior_state(world, where, first):
    if not first:
        released(world, "v1")
        released(world, "v2")  # blue is stopped, so set-aside has something to move
    before = world.snapshot()
    FAILURES[where](world)
    out = rel.release(world.ctx("v9"))
    assert not out.ok and out.exit_code == 1, out.message
    assert "rolled back" in out.message
    assert world.snapshot() == before
    assert world.store.get(keys.lock("shop")) is None
    assert rel.history(world.ctx()).data["history"][0]["outcome"] == "rolled-back"
    # and the next release works
    world.runner.results.clear()
    world.runtime.healthy.clear()
    world.proxy.answer_from_old = False
    released(world, "v10")


def test_store_failure_when_writing_the_live_color_is_undone(world):
    released(world, "v1")
    before = world.snapshot()
    ctx = world.ctx("v2")
    # fails once, like a store that hiccups
    world.store.inject("put", StoreError("sqlite store: disk full"), when=lambda key, *a, **kw: key == keys.live("shop"))
    out = rel.release(ctx)
    assert out.exit_code == 1
    assert world.snapshot() == before


# -- the process is killed at any point: 'rollback' in a new process restores everything ------------
KILL_POINTS = [("runtime", "set_aside", "after"), ("runtime", "start", "before"), ("runtime", "start", "after"),
               ("store", "register", "after"), ("proxy", "apply", "before"), ("proxy", "apply", "after"),
               ("store", "live", "after"), ("runtime", "stop", "after")]


def _kill_at(world, side, method, when):
    target = getattr(world, side)
    if side == "store":  # kill around the write of a particular key
        key_part = "/instances/" if method == "register" else "/live"
        return world.store.inject("put", Killed, when=lambda key, *a, **kw: key_part in key, times=None,
                                  after=when == "after")
    original = getattr(target, method)

    def wrapped(*a, **kw):
        if when == "after":
            original(*a, **kw)
        raise Killed()

    setattr(target, method, wrapped)
    return lambda: setattr(target, method, original)


@pytest.mark.parametrize("side,method,when", KILL_POINTS, ids=["-".join(p) for p in KILL_POINTS])
def test_sigkill_at_any_step_then_rollback_restores_the_prior_state(world, side, method, when):
    released(world, "v1")
    released(world, "v2")
    before = world.snapshot()
    restore = _kill_at(world, side, method, when)
    with pytest.raises(Killed):
        rel.release(world.ctx("v3"))
    restore()
    assert world.store.get(keys.release("shop")) is not None  # the journal survived the crash
    assert world.store.lock_info(keys.lock("shop"))["state"] == "gone"  # its holder is known to be dead
    out = rel.rollback(world.ctx())  # a new process
    assert out.ok and out.exit_code == 0, out.message
    assert world.snapshot() == before
    released(world, "v5")


def test_separate_stages_share_one_release_through_the_store(world):
    released(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok
    assert world.live()["color"] == "blue"  # nothing switched yet
    assert rel.run_tests(world.ctx("v2"), "pre-integration").ok
    with pytest.raises(UsageError, match="cleanup needs"):
        rel.cleanup(world.ctx())
    assert rel.switch(world.ctx()).ok
    assert world.live()["color"] == "green" and world.proxy.served == {"shop": "green"}
    assert rel.run_tests(world.ctx(), "post-integration").ok
    assert rel.cleanup(world.ctx()).ok
    assert world.store.get(keys.release("shop")) is None


def test_failed_stage_test_rolls_back_the_open_release(world):
    released(world, "v1")
    before = world.snapshot()
    assert rel.deploy(world.ctx("v2")).ok
    world.runner.results["pre-integration"] = False
    out = rel.run_tests(world.ctx("v2"), "pre-integration")
    assert out.exit_code == 1 and out.data["tests"][0]["passed"] is False
    assert world.snapshot() == before


def test_unstable_suite_failure_does_not_stop_the_release(world):
    released(world, "v1")
    world.runner.results["post-integration"] = False
    ctx = world.ctx("v2", tests={"post-integration": {"command": "false", "unstable": True}})
    out = rel.release(ctx)
    assert out.ok and world.live()["color"] == "green"
    [t] = [t for t in out.data["tests"] if t["suite"] == "post-integration"]
    assert t["passed"] is False and t["unstable_ok"] is True


def test_second_release_while_one_is_open_fails_with_the_holder(world):
    assert rel.deploy(world.ctx("v1")).ok
    with pytest.raises(LockHeld) as info:
        rel.deploy(world.ctx("v2"), lock_wait=0.2)
    assert info.value.exit_code == 3
    assert "another release of shop is running" in str(info.value)
    assert ":v1" in str(info.value) and "token" not in str(info.value.holder)


def _as_if_on_another_host(world, key):
    """Rewrite the lock record as if a process on another agent held it: its liveness is unknown here."""
    entry = world.store.get(key)
    world.store.put_json(key, dict(entry.json(), host="ci-agent-7", who="jenkins@ci-agent-7", pid=4242),
                         expect=entry.version)


def test_expired_lock_is_taken_over_and_the_abandoned_release_rolled_back(world):
    before = world.snapshot()
    restore = _kill_at(world, "runtime", "start", "after")
    with pytest.raises(Killed):
        rel.deploy(world.ctx("v1"), lock_ttl=60)
    restore()
    _as_if_on_another_host(world, keys.lock("shop"))
    with pytest.raises(LockHeld):  # not expired, holder unknown: kept
        rel.deploy(world.ctx("v2"))
    world.clock.advance(61)  # the lock expires
    out = rel.deploy(world.ctx("v2"))
    assert out.ok
    assert out.steps[0].name == "take-over"
    assert [i.image.rsplit(":", 1)[1] for i in world.runtime.instances("shop")] == ["v2", "v2"]
    assert rel.history(world.ctx()).data["history"][0]["outcome"] == "rolled-back"
    assert rel.rollback(world.ctx()).ok
    assert world.snapshot() == before


def test_cleanup_failure_keeps_the_release_open_and_the_new_color_live(world):
    released(world, "v1")
    world.runtime.fail_next["stop"] = RuntimeBackendError("docker: timeout")
    out = rel.release(world.ctx("v2"))
    assert out.exit_code == 4 and "run 'cdlib cleanup' again" in out.message
    assert world.live()["color"] == "green"
    assert world.store.get(keys.release("shop")) is not None
    assert rel.cleanup(world.ctx()).ok
    assert world.store.get(keys.release("shop")) is None


def test_failed_undo_exits_4_and_a_later_rollback_completes(world):
    released(world, "v1")
    before = world.snapshot()
    world.runner.results["pre-integration"] = False
    world.runtime.fail_next["remove"] = RuntimeBackendError("docker: cannot remove")
    out = rel.release(world.ctx("v2"))
    assert out.exit_code == 4 and "a person is needed" in out.message
    assert rel.status(world.ctx()).data["open_release"]["phase"] == "undo-incomplete"
    out = rel.rollback(world.ctx())
    assert out.ok, out.message
    assert world.snapshot() == before


def test_rollback_previous_without_an_open_release_returns_to_the_previous_release(world):
    released(world, "v1")
    released(world, "v2")
    out = rel.rollback(world.ctx(), previous=True)
    assert out.ok, out.message
    assert world.live()["color"] == "blue" and world.live()["image"].endswith(":v1")
    # the stopped blue containers were resumed, not recreated
    assert "resume" in [s.name for s in out.steps] and "start" not in [s.name for s in out.steps]
    states = {i.name: i.state for i in world.runtime.instances("shop")}
    assert states["shop-blue-1"] == "running" and states["shop-green-1"] == "exited"
    hist = rel.history(world.ctx()).data["history"]
    assert hist[0]["revert_of"] and hist[0]["outcome"] == "released"


def test_rollback_to_a_release_from_history_redeploys_its_image(world):
    first = released(world, "v1").data["release"]
    released(world, "v2")
    released(world, "v3")
    with pytest.raises(ConfigError, match="--to and --previous"):
        rel.rollback(world.ctx(), to=first, previous=True)
    out = rel.rollback(world.ctx(), to=first)
    assert out.ok, out.message
    assert world.live()["image"].endswith(":v1")
    assert "start" in [s.name for s in out.steps]


def test_nothing_to_roll_back(world):
    from cdlib.errors import NothingToRollBack

    with pytest.raises(NothingToRollBack):
        rel.rollback(world.ctx(), previous=True)
    released(world, "v1")
    with pytest.raises(NothingToRollBack):
        rel.rollback(world.ctx(), previous=True)
    with pytest.raises(NothingToRollBack):
        rel.rollback(world.ctx(), to="no-such-release")


def test_switch_without_deploy_is_a_usage_error(world):
    with pytest.raises(UsageError, match="no open release"):
        rel.switch(world.ctx())


def test_status_reports_live_open_release_lock_and_drift(world):
    released(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok
    world.store.put_json(keys.instance("shop", "blue", "shop-blue-9"), {"name": "shop-blue-9"})
    st = rel.status(world.ctx()).data
    assert st["live"]["color"] == "blue"
    assert st["open_release"]["phase"] == "deployed" and st["lock"]["who"]
    assert "blue/shop-blue-9" in st["drift"]["registered_not_running"]
    assert {i["name"] for i in st["instances"] if i["healthy"]} == {"shop-blue-1", "shop-blue-2",
                                                                   "shop-green-1", "shop-green-2"}
    # the registration without an address cannot be routed: status says so and still answers
    assert st["proxy"]["error"] == "cannot render from the registry: KeyError 'address'"


def test_status_says_how_the_open_release_would_switch(world):
    released(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok
    st = rel.status(world.ctx()).data
    assert st["proxy"]["kind"] == "memory"
    assert st["proxy"]["next_change"] == {"mode": "reload", "why": "memory applies every change with a reload",
                                          "for": "the switch of the open release"}


def test_color_verb(world):
    assert rel.color(world.ctx()).data == {"color": None, "live": None}
    released(world, "v1")
    assert rel.color(world.ctx()).data["color"] == "blue"
    assert rel.color(world.ctx(), next_color=True).data["color"] == "green"


def test_undo_incomplete_error_is_exit_4():
    assert UndoIncomplete("x").exit_code == 4


def test_registrations_carry_the_release_ttl_until_the_release_closes(world):
    calls = []
    original = world.store.register

    def register(service, color, name, record, ttl=None):
        calls.append((name, ttl))
        return original(service, color, name, record, ttl=ttl)

    world.store.register = register
    assert rel.deploy(world.ctx("v1"), lock_ttl=120).ok
    assert calls == [("shop-blue-1", 120), ("shop-blue-2", 120)]
    reg = world.store.registrations("shop", "blue")[0]
    assert reg["health_url"] == f"http://127.0.0.1:{reg['port']}/health" and reg["release"]
    calls.clear()
    assert rel.switch(world.ctx()).ok  # every stage refreshes the TTL of its registrations
    assert calls == [("shop-blue-1", 120), ("shop-blue-2", 120)]
    calls.clear()
    assert rel.cleanup(world.ctx()).ok  # closing the release makes them permanent
    assert calls[-2:] == [("shop-blue-1", None), ("shop-blue-2", None)]


def test_registrations_of_a_dead_deploy_expire_by_themselves(world):
    restore = _kill_at(world, "proxy", "apply", "before")
    with pytest.raises(Killed):
        rel.release(world.ctx("v1"), lock_ttl=30)
    restore()
    world.clock.advance(29)
    assert world.store.registrations("shop", "blue")
    world.clock.advance(2)
    assert world.store.registrations("shop", "blue") == []


def test_sigterm_during_a_release_rolls_it_back(world):
    from cdlib.plan import Interrupted

    released(world, "v1")
    before = world.snapshot()
    original = world.proxy.apply

    def apply(text):
        original(text)
        raise Interrupted()  # Jenkins aborted the build right after the reload

    world.proxy.apply = apply
    out = rel.release(world.ctx("v2"))
    world.proxy.apply = original
    assert out.exit_code == 1 and "interrupted" in out.message
    assert world.snapshot() == before


def test_unreachable_runtime_fails_before_anything_changes(world):
    released(world, "v1")
    before = world.snapshot()
    world.runtime.fail_next["ping"] = RuntimeBackendError("docker runtime: cannot reach tcp://h:1 (connection refused)")
    with pytest.raises(RuntimeBackendError):
        rel.release(world.ctx("v2"))
    assert world.snapshot() == before
    assert world.store.get(keys.lock("shop")) is None and world.store.get(keys.release("shop")) is None


def test_rollback_after_another_service_switched_keeps_that_switch(world):
    """Two services on one proxy: A switches, B switches, A's post-integration fails. Restoring A's
    prior bytes would also undo B's switch; the rollback renders from the registry instead."""
    other = {"service": "cart", "routes": {"paths": ["/cart/"]}}
    released(world, "v1")
    assert rel.release(world.ctx("v1", **other)).ok
    assert rel.deploy(world.ctx("v2")).ok and rel.switch(world.ctx()).ok
    assert rel.deploy(world.ctx("v2", **other)).ok and rel.switch(world.ctx(**other)).ok
    assert world.proxy.served == {"shop": "green", "cart": "green"}
    world.runner.results["post-integration"] = False
    out = rel.run_tests(world.ctx(), "post-integration")
    assert out.exit_code == 1
    assert world.proxy.served == {"shop": "blue", "cart": "green"}
    assert world.live()["color"] == "blue"


def test_a_switch_waits_for_the_proxy_lock_of_another_release(world):
    from cdlib.store.base import default_holder

    released(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok
    world.store.acquire_lock(keys.PROXY_LOCK, default_holder(release="someone-else"), ttl=60)
    with pytest.raises(LockHeld):
        rel.switch(world.ctx())
    assert world.proxy.served == {"shop": "blue"}
    assert sum(world.clock.slept) == pytest.approx(LockPolicy().proxy_lock_wait)  # waited, on the manual clock


def test_a_proxy_lock_left_by_the_same_dead_release_is_taken_back(world):
    released(world, "v1")
    before = world.snapshot()
    restore = _kill_at(world, "proxy", "apply", "after")
    with pytest.raises(Killed):
        rel.release(world.ctx("v2"))
    restore()
    # a SIGKILL skips every finally: the dead process still holds the proxy lock
    from cdlib.store.base import default_holder

    dead = world.store.get_json(keys.release("shop"))["id"]
    world.store.break_lock(keys.PROXY_LOCK)  # (the kill left it already; written again with a dead pid)
    world.store.acquire_lock(keys.PROXY_LOCK, dict(default_holder(release=dead), pid=dead_pid()), ttl=60)
    out = rel.rollback(world.ctx())
    assert out.ok, out.message
    assert world.snapshot() == before and world.store.get(keys.PROXY_LOCK) is None


# -- races, interruptions and half-closed records ------------------------------------------------------
@pytest.mark.parametrize("first_holds_the_proxy_lock", [True, False], ids=["mid-switch", "between-writes"])
def test_a_second_switch_of_the_same_release_neither_steals_the_proxy_lock_nor_undoes_anything(
        world, first_holds_the_proxy_lock):
    """Two processes run 'switch' for one release (a replayed Jenkins stage). The one that loses the
    journal's compare-and-set must not undo the release the other one drives, and must not take the
    proxy lock from a live holder."""
    from cdlib.store.base import default_holder

    released(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok
    opened = world.store.get_json(keys.release("shop"))
    # the first process is mid-switch: it holds the proxy lock (alive, another pid) and its journal
    # writes move the version on under a second process that loaded the record before
    second = world.ctx()
    second.journal = None
    loaded = Journal.load(world.store, "shop")
    if first_holds_the_proxy_lock:
        world.store.acquire_lock(keys.PROXY_LOCK, dict(default_holder(release=opened["id"]), pid=os.getppid(),
                                                                proc=None), ttl=60)
    first = Journal.load(world.store, "shop")
    first.phase = "switching"
    first.save()
    original_load = Journal.load
    Journal.load = classmethod(lambda cls, store, service: loaded)
    try:
        with pytest.raises(LockHeld):
            rel.switch(second)
    finally:
        Journal.load = original_load
    if first_holds_the_proxy_lock:
        assert world.store.get_json(keys.PROXY_LOCK)["pid"] == os.getppid()  # still the first one's
    else:
        assert world.store.get(keys.PROXY_LOCK) is None
    assert {i.name for i in world.runtime.instances("shop", "green") if i.running} == {"shop-green-1",
                                                                                      "shop-green-2"}
    assert world.store.get_json(keys.release("shop"))["phase"] == "switching"


def test_a_journal_taken_over_by_another_process_is_not_undone_by_the_loser(world):
    released(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok
    stale = world.ctx()
    transaction.require_open(stale, ("deployed",), "test")
    winner = Journal.load(world.store, "shop")
    winner.phase = "rolling-back"
    winner.save()  # another 'rollback' claimed the record
    with pytest.raises(LockHeld):
        transaction.rollback_open(stale, "tests failed")
    assert {i.name for i in world.runtime.instances("shop", "green")} == {"shop-green-1", "shop-green-2"}


def test_the_proxy_lock_blocking_a_one_process_release_rolls_it_back(world):
    from cdlib.store.base import default_holder

    released(world, "v1")
    before = world.snapshot()
    world.store.acquire_lock(keys.PROXY_LOCK, default_holder(release="someone-else"), ttl=60)
    out = rel.release(world.ctx("v2"))
    assert out.exit_code == 1 and not out.ok, out.message
    assert world.snapshot() == before
    assert world.store.get(keys.lock("shop")) is None and world.store.get(keys.release("shop")) is None


def test_a_second_interrupt_during_the_rollback_ends_with_exit_4_and_rollback_completes(world):
    from cdlib.plan import Interrupted

    released(world, "v1")
    before = world.snapshot()
    world.runner.results["pre-integration"] = False
    original = world.runtime.remove

    def remove(*a, **kw):
        world.runtime.remove = original
        raise Interrupted()  # Jenkins sends SIGTERM again while the undo runs

    world.runtime.remove = remove
    out = rel.release(world.ctx("v2"))
    assert out.exit_code == 4, out.message
    assert world.store.get(keys.release("shop")) is not None
    assert rel.rollback(world.ctx()).ok
    assert world.snapshot() == before


def test_a_store_failure_while_closing_a_rollback_is_exit_4_with_the_record_open(world):
    released(world, "v1")
    before = world.snapshot()
    world.runner.results["pre-integration"] = False
    world.store.inject("delete", StoreError("sqlite store: database is locked"),
                       when=lambda key, **kw: key == keys.release("shop"))
    out = rel.release(world.ctx("v2"))
    assert out.exit_code == 4 and "cdlib rollback" in out.message, out.message
    assert world.store.get(keys.release("shop")) is not None
    assert rel.rollback(world.ctx()).ok
    assert world.snapshot() == before


def test_a_store_failure_while_closing_a_cleanup_is_exit_4_and_cleanup_completes(world):
    released(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok and rel.switch(world.ctx()).ok
    world.store.inject("delete", StoreError("sqlite store: database is locked"),
                       when=lambda key, **kw: key == keys.release("shop"))
    out = rel.cleanup(world.ctx())
    assert out.exit_code == 4 and "cdlib cleanup" in out.message, out.message
    assert world.live()["color"] == "green"
    assert rel.cleanup(world.ctx()).ok
    assert world.store.get(keys.release("shop")) is None and world.store.get(keys.lock("shop")) is None


@pytest.mark.parametrize("lock_ttl", [0, -5, float("nan"), float("inf")])
def test_a_bad_lock_ttl_is_bad_input_and_changes_nothing(world, lock_ttl):
    released(world, "v1")
    before = world.snapshot()
    with pytest.raises(ConfigError, match="lock"):
        rel.deploy(world.ctx("v2"), lock_ttl=lock_ttl)
    assert world.snapshot() == before and world.store.get(keys.lock("shop")) is None


@pytest.mark.parametrize("routes", [{"paths": ["/shop/"]}, {"paths": ["/shop"]}])
def test_a_route_that_another_service_serves_is_refused_before_anything_changes(world, routes):
    released(world, "v1")
    before = world.snapshot()
    with pytest.raises(ConfigError, match="shop"):
        rel.release(world.ctx("v1", service="cart", routes=routes))
    assert world.snapshot() == before
    assert world.store.get(keys.lock("cart")) is None


def test_rollback_refuses_while_the_release_process_is_alive_on_this_host(world):
    import subprocess
    import sys

    from cdlib.store.base import default_holder

    assert rel.deploy(world.ctx("v1")).ok
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record = world.store.get(keys.lock("shop"))
        holder = dict(record.json(), pid=live.pid, who=default_holder()["who"], proc=None)
        assert holder.pop("parked") is True  # the deploy stage ended: its lock waits for the next stage
        world.store.put_json(keys.lock("shop"), holder, expect=record.version)
        with pytest.raises(LockHeld, match=f"still running in process {live.pid}"):
            rel.rollback(world.ctx())
    finally:
        live.kill()
        live.wait()
    assert rel.rollback(world.ctx()).ok  # the process is gone: rollback goes ahead


def test_a_release_without_tls_listen_on_a_proxy_that_serves_https_is_refused_before_any_change(world):
    # another service on the shared proxy registered HTTPS routes (its spec key carries them)
    world.store.put_json(keys.spec("edge"), {"routes": {"paths": ["/edge/"], "tls_cert": "/etc/edge.pem",
                                                        "tls_key": "/etc/edge.key"}, "port": 80})
    before = world.store.snapshot()
    with pytest.raises(ConfigError) as info:
        rel.deploy(world.ctx("v1"))
    assert str(info.value).endswith("proxy.tls_listen: service edge on this proxy serves HTTPS; set the proxy's "
                                    "HTTPS listen address here too")
    assert info.value.exit_code == 2
    assert world.store.snapshot() == before and world.runtime.containers == {}
