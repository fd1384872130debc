"""The release transaction on a bad day: locks left by dead processes, locks kept alive while their
holder works, bad input found after the release opened, rollback without an open release, kills
inside close and while a suite runs, and two releases at once.

Deterministic: a killed process is an exception nothing in cdlib catches (its lock then names a
process that no longer works under it, like a SIGKILLed one) or a record naming a dead pid; expiry is
a moved store clock; the heartbeat is driven by calling beat().
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from cdlib import keys
from cdlib import verbs as rel
from cdlib.clock import REAL, ManualClock
from cdlib.errors import ConfigError, LockHeld
from cdlib.heartbeat import Heartbeat, LockLost
from cdlib.journal import Journal
from cdlib.store.base import default_holder
from cdlib.store.memory import MemoryStore
from cdlib.testrun.memory import MemoryRunner
from tests.support.world import World


class Killed(BaseException):
    """Stands for SIGKILL: nothing in cdlib catches it."""


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def released(world, tag, **descriptor):
    out = rel.release(world.ctx(tag, **descriptor))
    assert out.ok, out.message
    return out


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def elsewhere(**extra) -> dict:
    return dict(default_holder(**extra), who="jenkins@ci-agent-7", host="ci-agent-7", pid=4242, proc=None)


def rewrite_lock(world, key, **fields):
    entry = world.store.get(key)
    world.store.put_json(key, dict(entry.json(), **fields), expect=entry.version)


def kill_once(obj, method, when="before", only=lambda *a, **kw: True):
    original = getattr(obj, method)

    def wrapped(*a, **kw):
        if not only(*a, **kw):
            return original(*a, **kw)
        setattr(obj, method, original)
        if when == "after":
            original(*a, **kw)
        raise Killed()

    setattr(obj, method, wrapped)


# -- A: bad input after the release opened is a failure that rolls back ----------------------------------
def test_bad_input_found_after_the_release_opened_rolls_back_exit_1(world):
    released(world, "v1")
    before = world.snapshot()
    original = world.proxy.render

    def render(backends):
        raise ConfigError("proxy.listen: expected host:port, got 'abc'", key="proxy.listen")

    world.proxy.render = render
    out = rel.release(world.ctx("v2"))
    world.proxy.render = original
    assert out.exit_code == 1 and "proxy.listen" in out.message, out.message
    assert world.snapshot() == before
    assert world.store.get(keys.lock("shop")) is None and world.store.get(keys.release("shop")) is None


def test_proxy_preflight_runs_before_the_lock_and_bad_proxy_input_changes_nothing(world):
    released(world, "v1")
    before = world.snapshot()
    world.proxy.fail_preflight = ConfigError("proxy.binary: /usr/sbin/nginx is not executable", key="proxy.binary")
    with pytest.raises(ConfigError, match="proxy.binary"):
        rel.release(world.ctx("v2"))
    assert world.snapshot() == before and world.store.get(keys.lock("shop")) is None
    preflights = world.proxy.preflights
    assert rel.rollback(world.ctx()).ok  # nothing open: no switch, so no preflight
    assert world.proxy.preflights == preflights


@pytest.mark.parametrize("ttl", [9.99, 1e-9, 0, -1, float("nan"), True])
@pytest.mark.parametrize("verb", ["deploy", "release", "rollback"])
def test_a_lock_ttl_below_10_seconds_is_bad_input_naming_the_option(world, verb, ttl):
    released(world, "v1")
    before = world.snapshot()
    with pytest.raises(ConfigError, match="--lock-ttl") as info:
        getattr(rel, verb)(world.ctx("v2"), lock_ttl=ttl)
    assert info.value.exit_code == 2 and info.value.key == "--lock-ttl"
    assert world.snapshot() == before and world.store.get(keys.lock("shop")) is None


# -- B(a): a kill between taking the proxy lock and writing the proxy intent ------------------------------
def test_rollback_releases_the_proxy_lock_a_killed_switch_took_before_its_intent(world, monkeypatch):
    released(world, "v1")
    released(world, "v1", service="cart", routes={"paths": ["/cart/"]})
    before = world.snapshot()
    assert rel.deploy(world.ctx("v2")).ok
    kill_once(world.proxy, "read_config")  # the proxy step's intent reads the prior configuration first
    with pytest.raises(Killed):
        rel.switch(world.ctx())
    j = world.store.get_json(keys.release("shop"))
    assert [s["name"] for s in j["steps"]][-1] == "register"  # no proxy intent on record
    assert world.store.lock_info(keys.PROXY_LOCK)["release"] == j["id"]
    assert world.store.lock_info(keys.PROXY_LOCK)["state"] == "gone"
    out = rel.rollback(world.ctx())
    assert out.ok, out.message
    assert world.store.get(keys.PROXY_LOCK) is None and world.store.get(keys.lock("shop")) is None
    assert world.snapshot() == before


def test_a_proxy_lock_of_a_dead_process_does_not_make_other_services_wait(world):
    released(world, "v1")
    released(world, "v1", service="cart", routes={"paths": ["/cart/"]})
    world.store.acquire_lock(keys.PROXY_LOCK, dict(default_holder(release="r-dead"), pid=dead_pid()), ttl=120)
    world.clock.slept.clear()
    released(world, "v2", service="cart", routes={"paths": ["/cart/"]})
    assert world.proxy.served == {"shop": "blue", "cart": "green"}
    assert world.clock.slept == []  # no waiting at all: taken over at once


# -- B(b): a dead holder's lock is taken over at once, the abandoned release rolled back first -----------
@pytest.mark.parametrize("how", ["killed-in-process", "dead-pid"])
def test_the_next_release_takes_a_dead_holders_lock_over_at_once(world, how):
    released(world, "v1")
    before = world.snapshot()
    kill_once(world.runtime, "start", "after")
    with pytest.raises(Killed):
        rel.release(world.ctx("v2"))  # default --lock-ttl: 3600 s, far from expired
    if how == "dead-pid":
        rewrite_lock(world, keys.lock("shop"), pid=dead_pid(), proc=None)
    assert world.store.lock_info(keys.lock("shop"))["expired"] is False
    out = rel.deploy(world.ctx("v3"))
    assert out.ok, out.message
    assert out.steps[0].name == "take-over" and "is gone" in out.steps[0].detail
    assert rel.history(world.ctx()).data["history"][0]["outcome"] == "rolled-back"
    assert {i.image.rsplit(":", 1)[1] for i in world.runtime.instances("shop", "green")} == {"v3"}
    assert rel.rollback(world.ctx()).ok
    assert world.snapshot() == before


def test_a_release_that_rolled_an_abandoned_one_back_keeps_refreshing_its_own_lock(world):
    kill_once(world.runtime, "start", "after")
    with pytest.raises(Killed):
        rel.deploy(world.ctx("v1"))
    ctx, held = world.ctx("v2"), []
    original = world.runtime.start

    def start(req):
        held.append(ctx.heartbeat.holds(f"lock {keys.lock('shop')}"))
        return original(req)

    world.runtime.start = start
    out = rel.deploy(ctx)
    assert out.ok and out.steps[0].name == "take-over" and held == [True]


def test_a_live_holders_lock_is_never_taken_over_even_expired(world):
    assert rel.deploy(world.ctx("v1")).ok
    live = os.getppid()  # a live process on this host, not this one
    rewrite_lock(world, keys.lock("shop"), pid=live, proc=None, parked=False)
    world.clock.advance(7200)  # long expired
    with pytest.raises(LockHeld, match=f"pid {live}, running on this host"):
        rel.deploy(world.ctx("v2"))
    with pytest.raises(LockHeld, match="still running"):
        rel.rollback(world.ctx())


def test_a_lock_parked_between_stages_is_not_taken_over_before_it_expires(world):
    released(world, "v1")
    assert rel.deploy(world.ctx("v2")).ok  # the stage ended: its process is gone, the release goes on
    info = world.store.lock_info(keys.lock("shop"))
    assert info["parked"] is True and info["state"] == "unknown"
    with pytest.raises(LockHeld, match="between stages"):
        rel.deploy(world.ctx("v3"))
    assert rel.switch(world.ctx()).ok  # the next stage adopts it
    assert world.store.lock_info(keys.lock("shop"))["pid"] == os.getpid()


# -- B(c): locks and registration TTLs refreshed while the holder works ---------------------------------
def test_heartbeat_refreshes_a_lock_every_third_of_its_ttl_and_reports_it_lost():
    clock = ManualClock(start=1000.0)
    store = MemoryStore(clock=clock)
    beat = Heartbeat(clock=clock)
    lock = store.acquire_lock("cdlib/services/x/lock", default_holder(), ttl=30)
    beat.hold_lock(store, lock.key, lock.token, 30)
    clock.advance(9)
    beat.beat()
    assert store.lock_info(lock.key)["expires"] == 1000 + 30  # not due yet
    clock.advance(1)
    beat.beat()
    assert store.lock_info(lock.key)["expires"] == 1010 + 30
    beat.check()
    store.delete(lock.key)  # someone removed it (an operator, or a take-over after an outage)
    store.acquire_lock(lock.key, elsewhere(), ttl=30)
    clock.advance(10)
    beat.beat()
    with pytest.raises(LockLost, match="lost"):
        beat.check()
    assert store.lock_info(lock.key)["who"] == "jenkins@ci-agent-7"  # never written over


def test_heartbeat_thread_refreshes_until_stopped_and_never_after():
    calls, called = [], threading.Event()

    def refresh():
        calls.append(1)
        called.set()

    beat = Heartbeat().start()
    beat.add("item", refresh, 0.05)
    assert called.wait(10)
    beat.stop()
    count = len(calls)
    assert not beat.running
    beat.beat(now=time.monotonic() + 3600)  # stopped: nothing is held any more
    assert len(calls) == count


def test_a_suite_running_longer_than_the_lock_ttl_keeps_the_lock_and_registrations(world):
    released(world, "v1")
    ctx = world.ctx("v2")
    seen = {}

    class LongSuite(MemoryRunner):
        def run(self, run):
            if run.suite.type == "pre-integration":
                for _ in range(24):  # a day against a one-hour lock, refreshed as it goes
                    world.clock.advance(3600)
                    ctx.heartbeat.beat()
                seen["lock"] = world.store.lock_info(keys.lock("shop"))
                seen["registered"] = [r["name"] for r in world.store.registrations("shop", "green")]
                with pytest.raises(LockHeld):  # an expired lock, but its holder works: kept
                    rel.deploy(world.ctx("v3"))
            return super().run(run)

    ctx.ports.runners.update({t: LongSuite() for t in ctx.spec.tests})
    out = rel.release(ctx)
    assert out.ok, out.message
    assert seen["lock"]["expired"] is False and seen["lock"]["state"] == "alive"
    assert seen["registered"] == ["shop-green-1", "shop-green-2"]
    # the release closed: its registrations are permanent, not left with the TTL the heartbeat wrote
    assert all(world.store._data[e.key][2] is None for e in world.store.list(keys.instances("shop")))


def test_a_heartbeat_right_after_persist_does_not_give_the_registrations_their_ttl_back(world):
    ctx = world.ctx("v1")
    original = world.store.register

    def register(service, color, name, record, ttl=None):
        original(service, color, name, record, ttl=ttl)
        if ttl is None and ctx.heartbeat is not None:  # persist: the heartbeat fires right now
            world.clock.advance(10 * 3600)
            ctx.heartbeat.beat()

    world.store.register = register
    assert rel.release(ctx).ok
    regs = world.store.list(keys.instances("shop"))
    assert len(regs) == 2 and all(world.store._data[e.key][2] is None for e in regs)


def test_a_lock_lost_while_the_suite_runs_stops_the_release_before_its_next_step(world):
    released(world, "v1")
    before = world.snapshot()
    ctx = world.ctx("v2")

    class TakenOver(MemoryRunner):
        def run(self, run):
            if run.suite.type == "pre-integration":  # the store was away; another agent took the lock
                world.store.delete(keys.lock("shop"))
                world.store.acquire_lock(keys.lock("shop"), elsewhere(release="r-other"), ttl=3600)
                ctx.heartbeat.beat(now=world.clock.monotonic() + 3600)
            return super().run(run)

    ctx.ports.runners.update({t: TakenOver() for t in ctx.spec.tests})
    out = rel.release(ctx)
    assert out.exit_code == 1 and "was lost" in out.message, out.message
    assert world.proxy.served == {"shop": "blue"}  # never switched
    assert world.snapshot() == before
    assert world.store.lock_info(keys.lock("shop"))["release"] == "r-other"  # not released by the loser


# -- C: who holds a lock --------------------------------------------------------------------------------
def test_the_holder_is_named_by_uid_without_USER_and_the_message_shows_the_pid(world, monkeypatch):
    import pwd
    import socket

    monkeypatch.delenv("USER", raising=False)
    monkeypatch.delenv("LOGNAME", raising=False)
    assert default_holder()["who"] == f"{pwd.getpwuid(os.getuid()).pw_name}@{socket.gethostname()}"
    assert rel.deploy(world.ctx("v1")).ok
    with pytest.raises(LockHeld) as info:
        rel.deploy(world.ctx("v2"))
    message = str(info.value)
    assert "unknown@" not in message and f"(pid {os.getpid()}, between stages)" in message


# -- D: rollback without an open release changes no release ---------------------------------------------
def test_rollback_without_an_open_release_changes_nothing(world):
    released(world, "v1")
    released(world, "v2")
    before = world.snapshot()
    out = rel.rollback(world.ctx())
    assert out.ok and out.exit_code == 0 and "nothing to roll back" in out.message
    assert "--previous" in out.message
    assert world.snapshot() == before and world.live()["image"].endswith(":v2")


def test_rollback_after_a_kill_before_the_release_opened_only_frees_the_lock(world, monkeypatch):
    released(world, "v1")
    released(world, "v2")
    before = world.snapshot()
    original = Journal.create

    def create(*a, **kw):
        raise Killed()

    monkeypatch.setattr(Journal, "create", create)
    with pytest.raises(Killed):
        rel.release(world.ctx("v3"))
    monkeypatch.setattr(Journal, "create", original)
    assert world.store.get(keys.release("shop")) is None and world.store.get(keys.lock("shop")) is not None
    out = rel.rollback(world.ctx())
    assert out.ok and "nothing to roll back" in out.message and "the lock of release" in out.message
    assert world.store.get(keys.lock("shop")) is None
    assert world.snapshot() == before and world.live()["image"].endswith(":v2")  # production untouched


# -- E: leftovers of a kill inside close, and of a kill while a suite ran --------------------------------
@pytest.mark.parametrize("where", ["removing-set-aside", "after-the-record-closed"])
@pytest.mark.parametrize("finisher", ["rollback", "next-deploy"])
def test_a_kill_inside_close_leaves_nothing_behind_once_rollback_or_the_next_deploy_ran(world, where, finisher):
    for tag in ("v1", "v2"):
        released(world, tag)
    if where == "removing-set-aside":
        kill_once(world.runtime, "remove", only=lambda *a, **kw: kw.get("aside"))
    else:
        kill_once(world.store, "delete", "after", only=lambda key, **kw: key == keys.release("shop"))
    with pytest.raises(Killed):
        rel.release(world.ctx("v3"))
    assert world.store.get(keys.release("shop")) is None  # the release closed...
    aside = [i.name for i in world.runtime.instances("shop", include_aside=True) if ".aside-" in i.name]
    assert len(aside) == 2  # ...but the old stopped color it set aside is still there, with its ports
    if finisher == "rollback":
        out = rel.rollback(world.ctx())
        assert out.ok and "nothing to roll back" in out.message
        assert world.live()["image"].endswith(":v3")  # the release that closed stays live
    else:
        assert rel.deploy(world.ctx("v4")).ok
    assert not [i for i in world.runtime.instances("shop", include_aside=True) if i.name in aside]
    if finisher == "rollback":
        assert world.store.get(keys.lock("shop")) is None


class LeftoverRunner(MemoryRunner):
    """A runner whose test containers outlived their process: owners are host/pid records."""

    def __init__(self, leftovers):
        super().__init__()
        self.leftovers = dict(leftovers)

    def remove_leftovers(self, service, gone):
        removed = [name for name, owner in self.leftovers.items() if owner["service"] == service and gone(owner)]
        for name in removed:
            del self.leftovers[name]
        return removed


def test_rollback_removes_test_containers_whose_process_is_gone(world):
    import socket

    host = socket.gethostname()
    runner = LeftoverRunner({
        "cdlib-test-shop-pre-integration-dead": {"service": "shop", "host": host, "pid": dead_pid(), "proc": None},
        "cdlib-test-shop-pre-integration-live": {"service": "shop", "host": host, "pid": os.getppid(),
                                                 "proc": None},
        "cdlib-test-shop-post-integration-far": {"service": "shop", "host": "ci-agent-7", "pid": 4242,
                                                 "proc": None},
        "cdlib-test-cart-pre-integration-dead": {"service": "cart", "host": host, "pid": dead_pid(), "proc": None},
    })
    world.runner = runner
    out = rel.rollback(world.ctx())
    assert out.ok and "cdlib-test-shop-pre-integration-dead" in out.message
    assert set(runner.leftovers) == {"cdlib-test-shop-pre-integration-live", "cdlib-test-shop-post-integration-far",
                                     "cdlib-test-cart-pre-integration-dead"}


def test_suites_learn_their_release_so_their_containers_can_be_traced_to_it(world):
    released(world, "v1")
    env = world.runner.environments
    opened = rel.history(world.ctx()).data["history"][0]["id"]
    assert [e.get("CDLIB_RELEASE") for e in env if e["TEST_TYPE"] != "pre-deployment"] == [opened, opened]


# -- F: concurrency -------------------------------------------------------------------------------------
def test_two_releases_of_one_service_at_once_exactly_one_wins(world):
    released(world, "v1")
    before = world.snapshot()
    barrier = threading.Barrier(2)
    outcomes = {}

    def deploy(tag):
        ctx = world.ctx(tag)
        barrier.wait()
        try:
            outcomes[tag] = rel.deploy(ctx)
        except LockHeld as exc:
            outcomes[tag] = exc

    threads = [threading.Thread(target=deploy, args=(t,)) for t in ("v2", "v3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    losers = [o for o in outcomes.values() if isinstance(o, LockHeld)]
    winners = [o for o in outcomes.values() if not isinstance(o, LockHeld)]
    assert len(losers) == 1 and losers[0].exit_code == 3
    assert len(winners) == 1 and winners[0].ok
    tag = winners[0].data["image"].rsplit(":", 1)[1]
    assert {i.image.rsplit(":", 1)[1] for i in world.runtime.instances("shop", "green")} == {tag}
    assert rel.rollback(world.ctx()).ok
    assert world.snapshot() == before


def test_services_switching_at_once_on_one_proxy_take_turns(world):
    cart = {"service": "cart", "routes": {"paths": ["/cart/"]}}
    released(world, "v1")
    released(world, "v1", **cart)
    assert rel.deploy(world.ctx("v2")).ok and rel.deploy(world.ctx("v2", **cart)).ok
    in_apply, go = threading.Event(), threading.Event()
    original = world.proxy.apply

    def apply(text):
        if not in_apply.is_set():
            in_apply.set()
            assert go.wait(30)
        return original(text)

    world.proxy.apply = apply
    world.store.clock = REAL  # cart waits for shop's thread to let go of the lock: a wait on real time
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("shop", rel.switch(world.ctx())))
    first.start()
    assert in_apply.wait(30)  # shop holds the proxy lock, mid-switch
    second = threading.Thread(target=lambda: results.setdefault("cart", rel.switch(world.ctx(**cart))))
    second.start()
    go.set()
    first.join(30)
    second.join(30)
    assert results["shop"].ok and results["cart"].ok
    # cart rendered after shop's live write: shop's switch is not undone by cart's configuration
    assert world.proxy.served == {"shop": "green", "cart": "green"}
