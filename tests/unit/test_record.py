"""The release record: typed, versioned, and refused (exit 2, both versions named) when another
cdlib wrote it in a format this one does not read."""

from __future__ import annotations

import json

import pytest

from cdlib import __version__, cli, keys, plan
from cdlib import verbs as rel
from cdlib.errors import EXIT_USAGE, ConfigError
from cdlib.journal import Journal, history
from cdlib.record import FORMAT, RecordFormatError, ReleaseRecord, StepName, StepRecord
from cdlib.store.memory import MemoryStore
from cdlib.store.sqlite import SqliteStore
from tests.support.world import World

# a record exactly as the cdlib before formats wrote it (no format, no written_by)
BEFORE_FORMATS = {
    "id": "20261128-101500-ab12", "service": "shop", "image": "127.0.0.1:5000/shop:v2", "color": "green",
    "previous": {"color": "blue", "release": "20261127-090000-cd34", "image": "127.0.0.1:5000/shop:v1",
                 "since": 1764237600.0, "via": "20261127-090000-cd34"},
    "holder": {"who": "jenkins@ci-agent-3", "host": "ci-agent-3", "pid": 4242, "build": "shop #17"},
    "lock_token": "0f3c9a", "lock_ttl": 3600, "revert_of": None,
    "prior": {"live": '{"color": "blue"}'},
    "steps": [
        {"name": "set-aside", "state": "done", "data": {"names": []}, "started": 1.0, "ended": 2.0},
        {"name": "start", "state": "done", "data": {"instances": [{"name": "shop-green-1"}]}, "started": 2.0,
         "ended": 3.0},
        {"name": "health", "state": "failed", "data": {}, "started": 3.0, "ended": 4.0, "error": "Unhealthy: x"},
        {"name": "register", "state": "undo-failed", "data": {"prior": {}}, "started": 4.0,
         "undo_error": "StoreError: away"},
    ],
    "tests": [{"suite": "pre-integration", "passed": True}],
    "phase": "deploying", "created": 1764324900.0,
}


def stored(**changes) -> dict:
    return json.loads(json.dumps(dict(BEFORE_FORMATS, **changes)))


def test_a_record_round_trips_through_its_dict():
    rec = ReleaseRecord.from_dict(stored(format=1, written_by="0.1.0"))
    again = ReleaseRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert again.to_dict() == rec.to_dict() == stored(format=1, written_by="0.1.0")
    assert [s.name for s in again.steps] == [StepName.SET_ASIDE, StepName.START, StepName.HEALTH, StepName.REGISTER]
    assert again.steps[2].error == "Unhealthy: x" and again.steps[3].undo_error == "StoreError: away"


def test_the_journal_writes_what_it_reads():
    store = MemoryStore()
    j = Journal.create(store, "shop", ReleaseRecord(id="r1", service="shop", image="img:1", color="blue",
                                                    lock_token="t", lock_ttl=60.0, prior={"live": None}))
    step = j.intent(StepName.START, {"at": 1})
    j.finish(step, {"instances": []})
    j.fail(j.intent("health", {}), "Unhealthy: timed out")
    j.mark(step, "undone")
    raw = store.get_json(keys.release("shop"))
    assert raw["format"] == FORMAT and raw["written_by"] == __version__
    assert [(s["name"], s["state"]) for s in raw["steps"]] == [("start", "undone"), ("health", "failed")]
    assert raw["steps"][0]["data"] == {"at": 1, "instances": []} and "undo_error" not in raw["steps"][0]
    loaded = Journal.load(store, "shop")
    assert loaded.record.to_dict() == raw and loaded.done("start") is False
    assert isinstance(loaded.steps[0], StepRecord) and loaded.step("health").error == "Unhealthy: timed out"


def test_a_record_without_a_format_is_the_format_before_and_loads():
    store = MemoryStore()
    store.put_json(keys.release("shop"), stored())
    j = Journal.load(store, "shop")
    assert j.record.format == 1 and j.record.written_by is None
    assert j.record.previous["color"] == "blue" and j.step("start").data["instances"][0]["name"] == "shop-green-1"
    j.phase = "rolling-back"
    j.save()  # written back in this cdlib's format, every field as it was
    raw = store.get_json(keys.release("shop"))
    assert raw == stored(phase="rolling-back", format=FORMAT, written_by=__version__)


def test_a_release_opened_by_the_cdlib_before_formats_is_rolled_back_by_this_one(tmp_path):
    world = World(tmp_path)
    assert rel.release(world.ctx("v1")).ok
    before = world.snapshot()
    assert rel.deploy(world.ctx("v2")).ok
    raw = world.store.get_json(keys.release("shop"))
    del raw["format"], raw["written_by"]  # as the previous cdlib wrote it
    world.store.put_json(keys.release("shop"), raw)
    out = rel.rollback(world.ctx())
    assert out.ok and world.snapshot() == before
    entry = history(world.store, "shop")[0]
    assert entry["outcome"] == "rolled-back" and entry["format"] == FORMAT and entry["written_by"] == __version__


def test_history_takes_entries_written_before_formats():
    store = MemoryStore()
    store.put_json(keys.history("shop", "r0"), {"id": "r0", "service": "shop", "outcome": "released", "created": 1.0,
                                                "steps": [{"name": "start", "state": "done"}]})
    store.put_json(keys.history("shop", "r1"), {"id": "r1", "service": "shop", "outcome": "released", "created": 2.0,
                                                "format": 7, "steps": [{"name": "scale", "state": "done"}]})
    assert [e["id"] for e in history(store, "shop")] == ["r1", "r0"]


def test_a_newer_format_is_refused_naming_both_versions():
    with pytest.raises(RecordFormatError) as err:
        ReleaseRecord.from_dict(stored(format=2, written_by="0.9.0"))
    msg = str(err.value)
    assert isinstance(err.value, ConfigError) and err.value.exit_code == EXIT_USAGE
    assert msg == (f"release record of shop is format 2, written by a newer cdlib (version 0.9.0); this cdlib "
                   f"(version {__version__}) reads format 1: run the same cdlib version on every agent of a release")


@pytest.mark.parametrize("fmt", [0, -1, "1", 1.0, True, None, [1]])
def test_a_format_no_cdlib_writes_is_refused(fmt):
    with pytest.raises(RecordFormatError, match=f"this cdlib \\(version {__version__}\\) reads format 1"):
        ReleaseRecord.from_dict(stored(format=fmt))


def test_an_unknown_step_is_refused():
    steps = [*BEFORE_FORMATS["steps"], {"name": "migrate", "state": "intent", "data": {}, "started": 5.0}]
    with pytest.raises(RecordFormatError) as err:
        ReleaseRecord.from_dict(stored(steps=steps, format=1, written_by="0.2.0"))
    assert "has a step 'migrate' this cdlib does not know (written by cdlib 0.2.0)" in str(err.value)
    assert f"version {__version__}" in str(err.value) and err.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize("step", [{"name": "start", "state": "paused", "data": {}}, "start",
                                  {"name": "start", "state": "done", "data": ["x"]}, {"state": "done"}])
def test_a_step_this_cdlib_cannot_read_is_refused(step):
    with pytest.raises(RecordFormatError):
        ReleaseRecord.from_dict(stored(steps=[step]))


@pytest.mark.parametrize("bad", [[], "x", {"service": "shop"}, dict(BEFORE_FORMATS, color=None),
                                 dict(BEFORE_FORMATS, steps={"a": 1}), dict(BEFORE_FORMATS, tests="x")])
def test_something_that_is_not_a_release_record_is_refused(bad):
    with pytest.raises(RecordFormatError, match="is not a cdlib release record"):
        ReleaseRecord.from_dict(bad, "shop")


def test_keys_of_the_same_format_this_cdlib_does_not_use_are_kept():
    rec = ReleaseRecord.from_dict(stored(format=1, note={"by": "ops"}))
    assert rec.to_dict()["note"] == {"by": "ops"} and rec["note"] == {"by": "ops"}


def test_the_record_still_reads_by_key():
    rec = ReleaseRecord.from_dict(stored())
    assert rec["color"] == "green" and rec.get("previous")["color"] == "blue" and rec.get("revert_of", "-") == "-"
    assert rec.steps[0]["name"] == "set-aside" and type(rec.steps[0]["name"]) is str
    assert rec.steps[0].get("error") is None and "error" in rec.steps[2] and "nosuch" not in rec
    with pytest.raises(KeyError):
        rec["nosuch"]


def test_every_step_name_is_a_failpoint_and_plans_take_only_step_names():
    assert plan.FAILPOINT_STEPS == {s.value for s in StepName}
    assert plan.Step("proxy", lambda c, d: None).name is StepName.PROXY
    with pytest.raises(ValueError, match="StepName"):
        plan.Step("migrate", lambda c, d: None)


def test_a_release_refuses_to_take_over_a_record_of_a_newer_format(tmp_path):
    world = World(tmp_path)
    assert rel.release(world.ctx("v1")).ok
    world.store.put_json(keys.release("shop"), stored(format=2, written_by="0.9.0"))
    before = world.snapshot()
    with pytest.raises(RecordFormatError, match="format 2, written by a newer cdlib"):
        rel.release(world.ctx("v2"))
    assert world.snapshot() == before and world.store.get(keys.lock("shop")) is None


def _snapshot(db) -> dict:
    store = SqliteStore(db)
    try:
        return {e.key: (e.version, e.value) for e in store.list("cdlib/")}
    finally:
        store.close()


@pytest.mark.parametrize("verb", ["status", "rollback", "switch", "cleanup"])
def test_the_cli_refuses_a_record_of_a_newer_format_with_exit_2(tmp_path, capsys, verb):
    f = tmp_path / "cdlib.yml"
    db = tmp_path / "s.db"
    f.write_text(f"service: shop\nport: 80\nimage: r/shop:1\nstore: sqlite:///{db}\n")
    store = SqliteStore(db)
    store.put_json(keys.release("shop"), stored(format=2, written_by="0.9.0"))
    store.close()
    before = _snapshot(db)
    code = cli.main([verb, "-f", str(f), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1
    assert "release record of shop is format 2, written by a newer cdlib (version 0.9.0)" in err
    assert f"this cdlib (version {__version__}) reads format 1" in err
    assert _snapshot(db) == before  # nothing changed
