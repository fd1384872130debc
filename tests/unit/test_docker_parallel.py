"""How many replicas of a color the Docker runtime works on at a time (no engine needed)."""

from __future__ import annotations

import threading

import pytest

from cdlib.runtime.docker import MAX_PARALLEL, SSH_PARALLEL, DockerRuntime, _each


class Gauge:
    """Counts the calls in flight; each call waits until `together` calls are in flight at once."""

    def __init__(self, together: int):
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.barrier = threading.Barrier(together)

    def __call__(self, item: int) -> int:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            self.barrier.wait(timeout=30)  # broken (an error) unless `together` calls run at once
        finally:
            with self.lock:
                self.now -= 1
        return item * 10


def test_sixteen_replicas_are_worked_on_all_at_once_by_default():
    gauge = Gauge(16)
    assert _each(gauge, range(16), DockerRuntime().parallel) == [i * 10 for i in range(16)]
    assert gauge.most == 16


def test_more_replicas_than_the_bound_go_that_many_at_a_time_in_order():
    gauge = Gauge(4)
    assert _each(gauge, range(12), 4) == [i * 10 for i in range(12)]
    assert gauge.most == 4


def test_the_first_failure_is_raised_after_every_call_ended():
    ended = []

    def fn(item: int) -> int:
        if item in (2, 5):
            raise ValueError(f"item {item}")
        ended.append(item)
        return item

    with pytest.raises(ValueError, match="item 2"):
        _each(fn, range(8), 8)
    assert sorted(ended) == [0, 1, 3, 4, 6, 7]


@pytest.mark.parametrize(("host", "given", "bound"), [
    ("unix:///var/run/docker.sock", None, MAX_PARALLEL),
    ("unix:///var/run/docker.sock", 4, 4),
    ("tcp://10.0.0.5:2376", 32, 32),
    ("unix:///var/run/docker.sock", 0, 1),
    # sshd's MaxSessions (10 by default) caps the channels of the SDK's one SSH connection
    ("ssh://deploy@build-host", None, SSH_PARALLEL),
    ("ssh://deploy@build-host", 4, 4),
])
def test_the_bound_is_the_runtimes_own_capped_over_ssh(host, given, bound):
    runtime = DockerRuntime(host) if given is None else DockerRuntime(host, parallel=given)
    assert runtime.parallel == bound
