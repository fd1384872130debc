"""The release record: the typed, versioned form of what the journal keeps in the store.

One release is driven by several processes (the Jenkins stages ``deploy``, ``test``, ``switch``,
``cleanup``, a later ``rollback``), possibly on agents that run different cdlib versions. Every
record says which layout it has (``format``) and which cdlib wrote it (``written_by``); a process
reads only the formats it knows. A record this cdlib cannot read (a newer format, an unknown format,
a step it does not know) is refused with exit 2 naming both versions, before anything is changed:
acting on a record half understood could undo the wrong thing.

A record without ``format`` was written by the cdlib before formats existed: it has format 1's
layout and loads as format 1.

Step payloads (``StepRecord.data``) stay plain dicts: each step owns its own (see ``cdlib.steps``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from . import __version__
from .errors import ConfigError

#: the layout of the release record this cdlib writes
FORMAT = 1
#: the layouts it reads (a record without a format field is format 1)
READS = frozenset({1})


class StepName(StrEnum):
    """Every step a plan can record. A new step is added here first: a record naming a step that is
    not here was written by another cdlib and is refused."""

    SET_ASIDE = "set-aside"
    START = "start"
    RESUME = "resume"
    HEALTH = "health"
    REGISTER = "register"
    PROXY = "proxy"
    LIVE = "live"
    PERSIST = "persist"
    STOP_OLD = "stop-old"
    SCALE = "scale"  # 'scale': the live color's instances started or stopped (cdlib.healing)
    REPLICAS = "replicas"  # 'scale': the stored replica count written


# step states
INTENT = "intent"  # written before acting: the action may or may not have happened
DONE = "done"
FAILED = "failed"  # the action raised; it may have happened in part, so it is undone like INTENT
UNDONE = "undone"
UNDO_FAILED = "undo-failed"
STEP_STATES = (INTENT, DONE, FAILED, UNDONE, UNDO_FAILED)
NEEDS_UNDO = (INTENT, DONE, FAILED, UNDO_FAILED)


_STEP_NAMES = frozenset(s.value for s in StepName)


class RecordFormatError(ConfigError):
    """A release record this cdlib cannot read: written by another (newer) cdlib, or not a release
    record at all. Exit 2: nothing was changed."""


class _ReadByKey:
    """Read access by key (``record["color"]``, ``record.get("previous")``) for code written against
    the plain dict the record used to be. ``get`` returns the default for an absent or empty (None)
    field; enum values come back as plain strings."""

    def _value(self, key: str) -> Any:
        if key in _names(type(self)):
            value = getattr(self, key)
            return value.value if isinstance(value, StrEnum) else value
        extra = getattr(self, "extra", None) or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def __getitem__(self, key: str) -> Any:
        return self._value(key)

    def __contains__(self, key: object) -> bool:
        try:
            return isinstance(key, str) and self._value(key) is not None
        except KeyError:
            return False

    def get(self, key: str, default: Any = None) -> Any:
        try:
            value = self._value(key)
        except KeyError:
            return default
        return default if value is None else value


_FIELDS: dict[type, frozenset[str]] = {}


def _names(cls: type) -> frozenset[str]:
    if cls not in _FIELDS:
        _FIELDS[cls] = frozenset(f.name for f in fields(cls) if f.name != "extra")
    return _FIELDS[cls]


@dataclass(eq=False)
class StepRecord(_ReadByKey):
    """One step of a release: its intent (``data``, with everything its undo needs), then its result."""

    name: StepName
    state: str = INTENT
    data: dict[str, Any] = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None
    error: str | None = None  # why the step failed (masked)
    undo_error: str | None = None  # why its undo failed (masked)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name.value, "state": self.state, "data": self.data,
                               "started": self.started}
        for key in ("ended", "error", "undo_error"):  # written once they happened, as before formats
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Any, where: _Where) -> StepRecord:
        if not isinstance(data, dict):
            raise where.malformed("a step that is not an object")
        name = data.get("name")
        if not isinstance(name, str) or name not in _STEP_NAMES:
            raise where.refuse(f"has a step {_shown(name)} this cdlib does not know{where.by(' (written by cdlib {})')}")
        state = data.get("state")
        if state not in STEP_STATES:
            raise where.refuse(f"has step {name} in a state {_shown(state)} this cdlib does not know"
                               f"{where.by(' (written by cdlib {})')}")
        payload = data.get("data")
        if payload is not None and not isinstance(payload, dict):
            raise where.malformed(f"step {name} has data that is not an object")
        return cls(StepName(name), state, payload or {}, data.get("started"), data.get("ended"),
                   data.get("error"), data.get("undo_error"))


@dataclass(eq=False)
class ReleaseRecord(_ReadByKey):
    """The open release of one service (store key ``keys.release(service)``)."""

    id: str
    service: str
    image: str  # the image reference the release deploys
    color: str  # the color it deploys to
    previous: dict[str, Any] | None = None  # the live record when the release opened (None: first release)
    holder: dict[str, Any] | None = None  # who opened it (masked)
    lock_token: str | None = None  # the service lock the release works under
    lock_ttl: float | None = None
    revert_of: str | None = None  # the release a 'rollback --to/--previous' returns to
    prior: dict[str, Any] = field(default_factory=dict)  # {"live": the exact live value when it opened}
    phase: str = "deploying"
    steps: list[StepRecord] = field(default_factory=list)
    tests: list[dict[str, Any]] = field(default_factory=list)  # suite results (masked)
    created: float | None = None
    format: int = FORMAT
    written_by: str | None = __version__  # the cdlib version that wrote it last (None: before formats)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of the same format this cdlib does not use: kept

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "service": self.service, "image": self.image, "color": self.color,
            "previous": self.previous, "holder": self.holder, "lock_token": self.lock_token,
            "lock_ttl": self.lock_ttl, "revert_of": self.revert_of, "prior": self.prior,
            "steps": [s.to_dict() for s in self.steps], "tests": self.tests, "phase": self.phase,
            "created": self.created, "format": self.format, "written_by": self.written_by,
        }
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: Any, service: str | None = None) -> ReleaseRecord:
        """Read a stored record. RecordFormatError (exit 2) for a format this cdlib does not read, an
        unknown step or state, or something that is not a release record."""
        where = _Where(service or (data.get("service") if isinstance(data, dict) else None) or "?", data)
        if not isinstance(data, dict):
            raise where.malformed("not an object")
        fmt = data.get("format", 1)  # before formats: the same layout as format 1
        if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt not in READS:
            if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
                raise where.refuse(f"is format {fmt}, written by a newer cdlib{where.by(' (version {})')}")
            raise where.refuse(f"is format {_shown(fmt)}, which no cdlib writes{where.by(' (written by cdlib {})')}")
        for key in ("id", "service", "image", "color"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise where.malformed(f"field {key!r} is missing")
        steps = data.get("steps") or []
        if not isinstance(steps, list):
            raise where.malformed("field 'steps' is not a list")
        tests = data.get("tests") or []
        if not isinstance(tests, list):
            raise where.malformed("field 'tests' is not a list")
        known = _names(cls)
        return cls(
            id=data["id"], service=data["service"], image=data["image"], color=data["color"],
            previous=data.get("previous"), holder=data.get("holder"), lock_token=data.get("lock_token"),
            lock_ttl=data.get("lock_ttl"), revert_of=data.get("revert_of"), prior=data.get("prior") or {},
            phase=data.get("phase") or "deploying", steps=[StepRecord.from_dict(s, where) for s in steps],
            tests=tests, created=data.get("created"), format=fmt,
            written_by=data.get("written_by") if isinstance(data.get("written_by"), str) else None,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def step(self, name: str) -> StepRecord | None:
        """The newest record of step ``name``."""
        for step in reversed(self.steps):
            if step.name == name:
                return step
        return None


@dataclass(frozen=True)
class _Where:
    """The record being read, for the one-line refusals."""

    service: str
    data: Any

    def by(self, template: str) -> str:
        """The version that wrote the record, in template; empty when the record does not say."""
        by = self.data.get("written_by") if isinstance(self.data, dict) else None
        return template.format(_shown(by)[1:-1]) if isinstance(by, str) and by else ""

    def refuse(self, what: str) -> RecordFormatError:
        return RecordFormatError(
            f"release record of {self.service} {what}; this cdlib (version {__version__}) reads "
            f"format {', '.join(str(f) for f in sorted(READS))}: run the same cdlib version on every agent of a "
            "release", key="format", service=self.service)

    def malformed(self, what: str) -> RecordFormatError:
        return RecordFormatError(
            f"release record of {self.service} is not a cdlib release record ({what}); this cdlib (version "
            f"{__version__}) reads format {', '.join(str(f) for f in sorted(READS))}", key="format",
            service=self.service)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["FORMAT", "READS", "StepName", "StepRecord", "ReleaseRecord", "RecordFormatError", "NEEDS_UNDO",
           "INTENT", "DONE", "FAILED", "UNDONE", "UNDO_FAILED", "STEP_STATES"]
