"""cdlib.swarmremoval: a service is removed only once none of its tasks is in motion (Docker 20.10's
manager crashes when a task it is about to mark for removal is deleted meanwhile).

The fake API plays Swarm's part: an update that stops the tasks makes each running task go
running -> shutdown (desired remove) -> deleted by the reaper, one step per look at the tasks."""

from __future__ import annotations

import copy

import pytest

from cdlib import swarmremoval
from cdlib.clock import ManualClock


class NotFound(Exception):
    status_code = 404


class OutOfSequence(Exception):
    status_code = 500

    def __str__(self) -> str:
        return "update out of sequence"


def task(tid: str, service: str, desired: str = "running", state: str = "running") -> dict:
    return {"ID": tid, "ServiceID": service, "DesiredState": desired, "Status": {"State": state}}


class FakeSwarm:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.services: dict[str, dict] = {}
        self.tasks_by_service: dict[str, list[dict]] = {}
        self.calls: list[tuple] = []
        self.conflicts = 0  # updates to refuse as out of sequence
        self.at_rest_when_removed: dict[str, list[dict]] = {}

    def add(self, sid: str, mode: dict, tasks: list[dict], grace_ns: int | None = None) -> None:
        spec = {"Name": f"svc-{sid}", "Mode": mode, "TaskTemplate": {"ContainerSpec": {}}, "Labels": {"k": "v"}}
        if grace_ns is not None:
            spec["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] = grace_ns
        self.services[sid] = {"ID": sid, "Version": {"Index": 1}, "Spec": spec}
        self.tasks_by_service[sid] = tasks

    def _find(self, ref: str) -> dict:
        for svc in self.services.values():
            if ref in (svc["ID"], svc["Spec"]["Name"]):
                return svc
        raise NotFound(ref)

    def inspect_service(self, ref: str) -> dict:
        self.calls.append(("inspect", ref))
        return copy.deepcopy(self._find(ref))

    def update_service(self, sid, version, task_template=None, name=None, labels=None, mode=None, **kw):
        self.calls.append(("update", sid, version))
        svc = self._find(sid)
        if self.conflicts:
            self.conflicts -= 1
            svc["Version"]["Index"] += 1  # someone else wrote meanwhile
            raise OutOfSequence()
        assert version == svc["Version"]["Index"], "an update must carry the version it read"
        svc["Version"]["Index"] += 1
        svc["Spec"].update({"TaskTemplate": task_template, "Name": name, "Labels": labels, "Mode": mode})
        stops = mode.get("Replicated", {}).get("Replicas") == 0 or \
            swarmremoval.NO_NODE in (task_template.get("Placement") or {}).get("Constraints", [])
        if stops:
            desired = "shutdown" if "Global" in mode else "remove"
            for t in self.tasks_by_service[sid]:
                if t["DesiredState"] == "running":
                    t["DesiredState"] = desired

    def tasks(self, filters: dict) -> list[dict]:
        sid = filters["service"]
        self.calls.append(("tasks", sid))
        out = copy.deepcopy(self.tasks_by_service.get(sid, []))
        # one step of Swarm's work per look: stopping tasks stop, stopped tasks marked remove are reaped
        left = []
        for t in self.tasks_by_service.get(sid, []):
            if t["DesiredState"] in ("remove", "shutdown") and t["Status"]["State"] == "running":
                t["Status"]["State"] = "shutdown"
            elif t["DesiredState"] == "remove":
                continue
            left.append(t)
        self.tasks_by_service[sid] = left
        return out + [task("other", "another-service")]  # a filter the engine did not apply

    def remove_service(self, sid: str) -> None:
        self.calls.append(("remove", sid))
        svc = self._find(sid)
        self.at_rest_when_removed[sid] = copy.deepcopy(self.tasks_by_service[sid])
        del self.services[svc["ID"]]


@pytest.fixture
def swarm():
    return FakeSwarm(ManualClock())


def test_a_running_replicated_service_is_scaled_to_0_and_removed_only_once_its_tasks_are_reaped(swarm):
    swarm.add("s1", {"Replicated": {"Replicas": 2}}, [task("t1", "s1"), task("t2", "s1"),
                                                      task("t0", "s1", "shutdown", "failed")])
    assert swarmremoval.remove_service(swarm, "svc-s1", swarm.clock) is True
    kinds = [c[0] for c in swarm.calls]
    assert kinds.index("update") < kinds.index("remove")
    assert swarm.calls[kinds.index("update")] == ("update", "s1", 1)
    # what was left when it went: only history at rest (the failed task), nothing the reaper deletes
    assert swarm.at_rest_when_removed["s1"] == [task("t0", "s1", "shutdown", "failed")]
    assert "s1" not in swarm.services
    assert swarm.clock.monotonic() == pytest.approx(2 * swarmremoval.POLL)


def test_a_global_service_gets_a_constraint_no_node_matches_then_goes(swarm):
    swarm.add("g1", {"Global": {}}, [task("t1", "g1")])
    assert swarmremoval.remove_service(swarm, "g1", swarm.clock) is True
    update = next(c for c in swarm.calls if c[0] == "update")
    assert update == ("update", "g1", 1)
    assert swarm.at_rest_when_removed["g1"] == [task("t1", "g1", "shutdown", "shutdown")]


def test_a_service_with_nothing_running_is_not_updated(swarm):
    swarm.add("s0", {"Replicated": {"Replicas": 0}}, [])
    assert swarmremoval.remove_service(swarm, "s0", swarm.clock) is True
    assert [c[0] for c in swarm.calls] == ["inspect", "tasks", "remove"]


def test_a_missing_service_is_no_error_and_nothing_is_removed(swarm):
    assert swarmremoval.remove_service(swarm, "nope", swarm.clock) is False
    assert [c[0] for c in swarm.calls] == ["inspect"]


def test_an_update_out_of_sequence_is_done_again_on_the_service_as_it_is_now(swarm):
    swarm.add("s1", {"Replicated": {"Replicas": 1}}, [task("t1", "s1")])
    swarm.conflicts = 1
    assert swarmremoval.remove_service(swarm, "s1", swarm.clock) is True
    assert [c for c in swarm.calls if c[0] == "update"] == [("update", "s1", 1), ("update", "s1", 2)]
    assert swarm.at_rest_when_removed["s1"] == []


def test_a_task_that_never_stops_holds_the_removal_for_its_grace_period_plus_the_settle_wait(swarm):
    swarm.add("s1", {"Replicated": {"Replicas": 0}}, [task("stuck", "s1", "running", "running")], grace_ns=3 * 10 ** 9)
    swarm.tasks_by_service["s1"][0]["DesiredState"] = "running"  # a task Swarm never stops
    before = swarm.clock.monotonic()
    assert swarmremoval.remove_services(swarm, ["s1"], swarm.clock, extra=5.0) == ["s1"]
    assert swarm.clock.monotonic() - before == pytest.approx(8.0, abs=swarmremoval.POLL)


def test_several_services_are_all_stopped_before_the_first_wait(swarm):
    swarm.add("a", {"Replicated": {"Replicas": 1}}, [task("ta", "a")])
    swarm.add("b", {"Replicated": {"Replicas": 1}}, [task("tb", "b")])
    assert swarmremoval.remove_services(swarm, ["a", "b"], swarm.clock) == ["a", "b"]
    kinds = [c[0] for c in swarm.calls]
    last_update = max(i for i, k in enumerate(kinds) if k == "update")
    assert last_update < kinds.index("tasks")


@pytest.mark.parametrize("tasks,expected", [
    ([], True),
    ([task("t", "s", "shutdown", "complete")], True),
    ([task("t", "s", "shutdown", "running")], False),  # told to stop, not stopped yet
    ([task("t", "s", "remove", "shutdown")], False),  # stopped, about to be deleted by the reaper
    ([task("t", "s", "running", "running")], False),
])
def test_at_rest(tasks, expected):
    assert swarmremoval.at_rest(tasks) is expected


@pytest.mark.parametrize("spec,expected", [
    ({"Mode": {"Replicated": {"Replicas": 2}}}, False),
    ({"Mode": {"Replicated": {"Replicas": 0}}}, True),
    ({"Mode": {"Global": {}}}, False),
    ({"Mode": {"Global": {}}, "TaskTemplate": {"Placement": {"Constraints": [swarmremoval.NO_NODE]}}}, True),
])
def test_left_stopped(spec, expected):
    assert swarmremoval.left_stopped(spec) is expected
