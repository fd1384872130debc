"""Injected time and failures: the manual clock, the lock policy, waits that follow the clock they are
given, and a memory store that fails on demand."""

from __future__ import annotations

import pytest

from cdlib import keys, locks
from cdlib.clock import REAL, Clock, ManualClock, RealClock
from cdlib.context import LockPolicy
from cdlib.errors import LockHeld, StoreError, Unhealthy
from cdlib.heartbeat import Heartbeat
from cdlib.runtime.base import StartRequest
from cdlib.runtime.memory import MemoryRuntime
from cdlib.store.base import default_holder
from cdlib.store.memory import MemoryStore
from tests.support.world import World


def elsewhere(**extra) -> dict:
    """A holder on another host: its state is unknown, so only expiry frees its lock."""
    return dict(default_holder(**extra), who="jenkins@ci-agent-7", host="ci-agent-7", pid=4242, proc=None)


# -- the clocks -----------------------------------------------------------------------------------------
def test_both_clocks_are_clocks():
    assert isinstance(REAL, Clock) and isinstance(RealClock(), Clock) and isinstance(ManualClock(), Clock)


def test_a_manual_clock_moves_only_when_told_and_sleep_moves_it_at_once():
    clock = ManualClock(start=1000.0)
    assert (clock.now(), clock.monotonic()) == (1000.0, 0.0)
    clock.sleep(150)
    clock.advance(0.5)
    assert (clock.now(), clock.monotonic()) == (1150.5, 150.5)
    assert clock.slept == [150]
    assert clock() == clock.now()  # where a wall-clock function is expected
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_the_default_lock_policy_is_the_cli_s_timing():
    policy = LockPolicy()
    assert (policy.ttl, policy.proxy_lock_ttl, policy.proxy_lock_wait, policy.heartbeat_fraction, policy.poll) == \
        (3600.0, 120.0, 150.0, 1 / 3, 0.5)
    assert locks.DEFAULT_LOCK_TTL == 3600.0


# -- the lock wait follows the store's clock -----------------------------------------------------------
def test_a_lock_wait_runs_on_the_store_clock_and_polls_as_asked():
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    store.acquire_lock("cdlib/services/x/lock", elsewhere(), ttl=3600)
    with pytest.raises(LockHeld, match="ci-agent-7"):
        store.acquire_lock("cdlib/services/x/lock", default_holder(), ttl=60, wait=30, poll=2)
    assert clock.monotonic() == 30 and clock.slept == [2] * 15


def test_a_lock_that_expires_during_the_wait_is_taken_over():
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    store.acquire_lock("cdlib/services/x/lock", elsewhere(), ttl=10)
    lock = store.acquire_lock("cdlib/services/x/lock", default_holder(), ttl=60, wait=30, poll=1)
    assert lock.taken_over["who"] == "jenkins@ci-agent-7"
    assert 10 <= clock.monotonic() <= 11


def test_the_proxy_lock_follows_the_policy_it_is_given():
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    store.acquire_lock(keys.PROXY_LOCK, elsewhere(), ttl=3600)
    policy = LockPolicy(proxy_lock_wait=7, poll=1)
    with pytest.raises(locks.ProxyBusy), locks.proxy_lock(store, purpose="test", policy=policy):
        pass
    assert clock.monotonic() == 7
    store.break_lock(keys.PROXY_LOCK, unexpired=True)
    with locks.proxy_lock(store, purpose="test", policy=LockPolicy(proxy_lock_ttl=40)):
        assert store.lock_info(keys.PROXY_LOCK)["expires"] == clock.now() + 40


def test_the_heartbeat_of_a_verb_follows_the_context_clock_and_policy(tmp_path):
    world = World(tmp_path)
    ctx = world.ctx()
    ctx.lock_policy = LockPolicy(heartbeat_fraction=0.5)
    beat = locks.heartbeat_of(ctx)
    assert beat.clock is world.clock and beat.fraction == 0.5
    lock = world.store.acquire_lock(keys.lock("shop"), default_holder(), ttl=100)
    beat.hold_lock(world.store, lock.key, lock.token, 100)
    expires = world.store.lock_info(lock.key)["expires"]
    world.clock.advance(49)
    beat.beat()
    assert world.store.lock_info(lock.key)["expires"] == expires  # not due before half the ttl
    world.clock.advance(1)
    beat.beat()
    assert world.store.lock_info(lock.key)["expires"] == expires + 50


def test_a_heartbeat_without_a_clock_runs_on_real_time():
    assert Heartbeat().clock is REAL


# -- health and probe waits follow the clock -----------------------------------------------------------
def test_the_wait_for_health_runs_on_the_runtime_clock():
    clock = ManualClock()
    runtime = MemoryRuntime(clock=clock)
    instances = runtime.start(StartRequest("shop", "blue", "r1", "shop:v1", 8080, 2))
    runtime.healthy[instances[0].name] = False
    with pytest.raises(Unhealthy, match=instances[0].name) as info:
        runtime.wait_healthy(instances, "/health", timeout=120, interval=5)
    assert info.value.data["instances"] == [instances[0].name]
    assert 120 <= clock.monotonic() <= 125 and max(clock.slept) == 5


def test_a_probe_that_never_passes_times_out_on_the_context_clock(tmp_path):
    from cdlib import verbs as rel

    world = World(tmp_path)
    assert rel.release(world.ctx("v1")).ok
    before = world.snapshot()
    world.proxy.answer_from_old = True  # the proxy keeps serving the old color
    world.clock.slept.clear()
    out = rel.release(world.ctx("v2"))
    assert out.exit_code == 1 and "probe through the proxy failed" in out.message, out.message
    assert world.snapshot() == before
    assert sum(world.clock.slept) >= 1  # the probe timeout of the descriptor, on the manual clock


# -- a memory store that fails on demand -----------------------------------------------------------------
def test_an_injected_failure_before_the_call_changes_nothing_and_happens_once():
    store = MemoryStore()
    store.inject("put", StoreError("memory store: disk full"), when=lambda key, *a, **kw: key == "a")
    store.put("b", "1")
    with pytest.raises(StoreError, match="disk full"):
        store.put("a", "1")
    assert store.get("a") is None
    store.put("a", "2")  # once
    assert store.get("a").value == "2"


def test_an_injected_failure_after_the_call_leaves_the_write_done():
    class Killed(BaseException):
        pass

    store = MemoryStore()
    remove = store.inject("delete", Killed, after=True, times=None)
    store.put("a", "1")
    store.put("b", "1")
    for key in ("a", "b"):
        with pytest.raises(Killed):
            store.delete(key)
    assert store.snapshot() == {}
    remove()
    assert store.delete("c") is False


@pytest.mark.parametrize("method,call", [("get", lambda s: s.get("k")), ("list", lambda s: s.list("")),
                                         ("watch", lambda s: s.watch("", 0, 0))])
def test_every_primitive_can_fail(method, call):
    store = MemoryStore()
    store.inject(method, StoreError(f"memory store: {method} failed"))
    with pytest.raises(StoreError, match=method):
        call(store)
    call(store)


def test_only_a_primitive_can_fail():
    with pytest.raises(ValueError, match="register"):
        MemoryStore().inject("register", StoreError("x"))


def test_scheduled_calls_run_in_time_order_when_the_clock_passes_them():
    clock = ManualClock(start=1000.0)
    seen = []
    clock.schedule(0.5, lambda: seen.append(("b", clock.monotonic())))
    clock.schedule(0.2, lambda: (seen.append(("a", clock.monotonic())),
                                 clock.schedule(0.1, lambda: seen.append(("a2", clock.monotonic())))))
    assert clock.next_due() == pytest.approx(0.2)
    clock.advance(0.25)
    assert seen == [("a", pytest.approx(0.2))] and clock.monotonic() == pytest.approx(0.25)
    clock.sleep(1.0)
    assert [name for name, _ in seen] == ["a", "a2", "b"]
    assert [t for _, t in seen][1:] == [pytest.approx(0.3), pytest.approx(0.5)]
    assert clock.now() == pytest.approx(1001.25) and clock.next_due() is None
    with pytest.raises(ValueError):
        clock.schedule(-1, lambda: None)


def test_a_memory_store_watch_on_a_manual_clock_ends_at_the_scheduled_write():
    from cdlib.store.memory import MemoryStore

    clock = ManualClock()
    store = MemoryStore(clock=clock)
    rev = store.put("cdlib/a", "1")
    clock.schedule(4.0, lambda: store.put("cdlib/b", "2"))
    assert store.watch("cdlib/", rev, 10.0) == rev + 1
    assert clock.monotonic() == pytest.approx(4.0)
    assert store.watch("cdlib/", rev + 1, 10.0) is None  # nothing more: the whole timeout passes
    assert clock.monotonic() == pytest.approx(14.0)
