"""The release journal: the record of one open release, kept in the store.

Separate processes (the Jenkins stages ``deploy``, ``test``, ``switch``, ``cleanup``) share one
release through this record. Before a step acts, its intent (with everything its undo needs) is
written; after it acted, its result. ``rollback`` undoes every step whose intent was written, in
reverse, whichever process died and wherever it died. Every write is a compare-and-set against the
version this process last saw, so two processes can never both think they drive the release.

The record is typed and versioned (:mod:`cdlib.record`): a record another cdlib wrote in a format
this one does not read is refused (exit 2) before anything acts on it.

Closed releases move to ``history/<release-id>`` with their outcome.

Secrets never reach the store: before every write the free-text fields of the record (test results
with their output tails, step errors, undo errors, the closing message, the holder's build strings)
are masked by value (:mod:`cdlib.secrets`). The structural fields (ids, colors, images, the data a
step's undo needs, such as the prior proxy configuration) are written as they are: masking them
could corrupt an undo, and they hold nothing a suite or an error message put there.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from . import __version__, keys
from . import secrets as secret_values
from .errors import ConflictError, LockHeld, StoreError, UsageError
from .record import (
    DONE,
    FAILED,
    FORMAT,
    INTENT,
    NEEDS_UNDO,
    UNDO_FAILED,
    UNDONE,
    RecordFormatError,
    ReleaseRecord,
    StepName,
    StepRecord,
)
from .store.base import Store

# release phases
DEPLOYING, DEPLOYED, SWITCHING, SWITCHED, CLEANING = "deploying", "deployed", "switching", "switched", "cleaning"
ROLLING_BACK, STUCK = "rolling-back", "undo-incomplete"


class JournalConflict(LockHeld, ConflictError):
    """Another process wrote the record since this one read it: that process drives the release now.
    This one must stop, and above all not undo anything from its stale copy (exit 3, like a held lock)."""


# free text that a record may hold: masked by value before every write
_STEP_TEXT = ("error", "undo_error")


def mask_free_text(record: dict[str, Any]) -> dict[str, Any]:
    """Mask the free-text fields of a journal record or history entry (as stored), in place; returns it."""
    for step in record.get("steps") or ():
        if isinstance(step, dict):
            for field in _STEP_TEXT:
                if isinstance(step.get(field), str):
                    step[field] = secret_values.mask(step[field])
    if isinstance(record.get("tests"), list):
        record["tests"] = secret_values.mask_data(record["tests"])
    if isinstance(record.get("message"), str):
        record["message"] = secret_values.mask(record["message"])
    if isinstance(record.get("holder"), dict):
        record["holder"] = secret_values.mask_data(record["holder"])
    return record


def mask_record(record: ReleaseRecord) -> ReleaseRecord:
    """mask_free_text for the typed record, in place; returns it."""
    for step in record.steps:
        if isinstance(step.error, str):
            step.error = secret_values.mask(step.error)
        if isinstance(step.undo_error, str):
            step.undo_error = secret_values.mask(step.undo_error)
    tests = secret_values.mask_data(record.tests)
    if isinstance(tests, list):
        record.tests = tests
    holder = secret_values.mask_data(record.holder)
    if isinstance(holder, dict):
        record.holder = holder
    return record


def new_release_id(now: float | None = None) -> str:
    """Sortable, unique, and valid in container names, labels and store keys."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time()))
    return f"{stamp}-{secrets.token_hex(2)}"


class Journal:
    def __init__(self, store: Store, service: str, record: ReleaseRecord, version: int):
        self.store = store
        self.service = service
        self.record = record
        self.version = version
        self.unreachable: StoreError | None = None  # once a write failed, later ones fail fast

    # -- open / load / save ------------------------------------------------------------------------
    @classmethod
    def create(cls, store: Store, service: str, record: ReleaseRecord | dict[str, Any]) -> Journal:
        if not isinstance(record, ReleaseRecord):
            record = ReleaseRecord.from_dict(dict(record, steps=[], tests=[]), service)
        record.steps, record.tests, record.phase, record.created = [], [], DEPLOYING, time.time()
        _stamp(mask_record(record))
        try:
            version = store.put_json(keys.release(service), record.to_dict(), expect=0)
        except ConflictError:
            raise UsageError(f"{service} already has an open release; run 'cdlib status' or "
                             "'cdlib rollback'", service=service) from None
        return cls(store, service, record, version)

    @classmethod
    def load(cls, store: Store, service: str) -> Journal | None:
        """The open release of service, or None. RecordFormatError (exit 2) when another cdlib wrote
        it in a format this one does not read."""
        entry = store.get(keys.release(service))
        if entry is None:
            return None
        return cls(store, service, ReleaseRecord.from_dict(entry.json(), service), entry.version)

    def save(self) -> None:
        """Compare-and-set the record. When the store failed once in this process, fail at once:
        a rollback then spends its time on the undos, not on one timeout per journal write."""
        if self.unreachable is not None:
            raise self.unreachable
        _stamp(mask_record(self.record))
        try:
            self.version = self.store.put_json(keys.release(self.service), self.record.to_dict(),
                                               expect=self.version)
        except StoreError as exc:
            self.unreachable = exc
            raise
        except ConflictError:
            raise JournalConflict(f"the journal of {self.service} release {self.id} was changed by another "
                                  "process; run 'cdlib status'", service=self.service) from None

    # -- accessors -----------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.record.id

    @property
    def phase(self) -> str:
        return self.record.phase

    @phase.setter
    def phase(self, value: str) -> None:
        self.record.phase = value

    @property
    def what(self) -> str:
        """What the record is of, for messages: "scale" for a record 'scale' opened, else "release"."""
        return "scale" if self.record.extra.get("verb") == "scale" else "release"

    @property
    def steps(self) -> list[StepRecord]:
        return self.record.steps

    def step(self, name: str) -> StepRecord | None:
        return self.record.step(name)

    def done(self, name: str) -> bool:
        step = self.step(name)
        return step is not None and step.state == DONE

    # -- step records ---------------------------------------------------------------------------------
    def intent(self, name: str, data: dict[str, Any]) -> StepRecord:
        step = StepRecord(StepName(name), INTENT, data, started=time.time())
        self.steps.append(step)
        self.save()
        return step

    def finish(self, step: StepRecord, result: dict[str, Any] | None) -> None:
        step.state = DONE
        step.ended = time.time()
        if result:
            step.data = {**step.data, **result}
        self.save()

    def fail(self, step: StepRecord, error: str) -> None:
        step.state = FAILED
        step.ended = time.time()
        step.error = error
        self.save()

    def mark(self, step: StepRecord, state: str, error: str = "") -> None:
        step.state = state
        step.undo_error = error or None
        self.save()

    def add_test(self, result: dict[str, Any]) -> None:
        self.record.tests.append(result)
        self.save()

    # -- close ----------------------------------------------------------------------------------------
    def close(self, outcome: str, message: str = "") -> dict[str, Any]:
        """Move the record to history with its outcome and delete the open record. History entries
        carry the format too; readers of history take entries of any format (older ones have none)."""
        rec = self.record
        entry = {"id": rec.id, "service": rec.service, "image": rec.image, "color": rec.color,
                 "previous": rec.previous, "created": rec.created, "holder": rec.holder, "tests": rec.tests,
                 "revert_of": rec.revert_of}
        entry.update(outcome=outcome, message=message, closed=time.time(),
                     steps=[{"name": s.name.value, "state": s.state, "started": s.started, "ended": s.ended,
                             "error": s.error} for s in rec.steps],
                     format=FORMAT, written_by=__version__)
        self.store.put_json(keys.history(self.service, self.id), mask_free_text(entry))
        try:
            self.store.delete(keys.release(self.service), expect=self.version)
        except ConflictError:
            raise JournalConflict(f"the journal of {self.service} release {self.id} was changed by another "
                                  "process while it was closed", service=self.service) from None
        return entry


def _stamp(record: ReleaseRecord) -> ReleaseRecord:
    """What this cdlib writes is its own format, whichever format it read."""
    record.format, record.written_by = FORMAT, __version__
    return record


def history(store: Store, service: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Closed releases, newest first, as stored (entries of any format: only display and the
    revert target read them, by key, and every format keeps those keys)."""
    entries = [e.json() for e in store.list(keys.history(service))]
    entries.sort(key=lambda e: (e.get("created") or 0, e.get("id", "")), reverse=True)
    return entries[:limit] if limit else entries


__all__ = ["Journal", "JournalConflict", "history", "new_release_id", "mask_free_text", "mask_record",
           "DEPLOYING", "DEPLOYED", "SWITCHING", "SWITCHED", "CLEANING", "ROLLING_BACK", "STUCK",
           "INTENT", "DONE", "FAILED", "UNDONE", "UNDO_FAILED", "NEEDS_UNDO", "FORMAT",
           "ReleaseRecord", "StepRecord", "StepName", "RecordFormatError"]
