"""What each verb returns, typed: an Outcome (verb, service, ok, exit_code, message, steps) whose
``result`` is the verb's own result type.

``Outcome.data`` stays the one record of a result (``to_dict()``, the CLI's JSON that the Jenkins
steps read, is built from it, unchanged), so ``outcome.data[...]`` keeps working; ``result`` reads it
as a typed value. Absent keys read as None (or empty), as the JSON has them absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import Outcome


@dataclass(frozen=True)
class ReleaseResult:
    """deploy, test, switch, cleanup, rollback, release: the release the verb worked on."""

    release: str | None = None
    color: str | None = None
    image: str | None = None
    previous_color: str | None = None
    tests: list[dict[str, Any]] = field(default_factory=list)  # the suites run, as TestResult.to_dict()
    instances: list[dict[str, Any]] = field(default_factory=list)  # deploy: the started instances
    leftovers: list[str] = field(default_factory=list)  # rollback without an open release: what it finished

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleaseResult:
        return cls(data.get("release"), data.get("color"), data.get("image"), data.get("previous_color"),
                   list(data.get("tests") or []), list(data.get("instances") or []),
                   list(data.get("leftovers") or []))


@dataclass(frozen=True)
class StatusResult:
    live: dict[str, Any] | None = None
    next_color: str | None = None
    open_release: dict[str, Any] | None = None  # id, phase, color, image, steps
    lock: dict[str, Any] | None = None  # the service lock's holder record
    registered: list[dict[str, Any]] = field(default_factory=list)
    registry_health: dict[str, Any] | None = None  # the registry's own checks (Consul), else None
    instances: list[dict[str, Any]] = field(default_factory=list)
    drift: dict[str, Any] = field(default_factory=dict)
    # the proxy's view (kind, url, replicas with their config digests) and next_change: mode, why
    proxy: dict[str, Any] = field(default_factory=dict)
    # how many instances of the live color should run: {"count", "source": stored | registered | default}
    replicas: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatusResult:
        return cls(data.get("live"), data.get("next_color"), data.get("open_release"), data.get("lock"),
                   list(data.get("registered") or []), data.get("registry_health"),
                   list(data.get("instances") or []), dict(data.get("drift") or {}), dict(data.get("proxy") or {}),
                   data.get("replicas"))


@dataclass(frozen=True)
class ColorResult:
    color: str | None = None  # the color asked for (live, or the next one)
    live: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColorResult:
        return cls(data.get("color"), data.get("live"))


@dataclass(frozen=True)
class HistoryResult:
    history: list[dict[str, Any]] = field(default_factory=list)  # closed releases, newest first

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryResult:
        return cls(list(data.get("history") or []))


@dataclass(frozen=True)
class ProxyResult:
    """proxy render (config), apply (changed, dropped, timings), watch (applied, failures)."""

    config: str | None = None
    changed: bool | None = None
    dropped: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] | None = None
    applied: int | None = None
    failures: int | None = None
    apply: dict[str, Any] | None = None  # render: which way applying it would go (mode, why)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxyResult:
        return cls(data.get("config"), data.get("changed"), dict(data.get("dropped") or {}), data.get("timings"),
                   data.get("applied"), data.get("failures"), data.get("apply"))


@dataclass(frozen=True)
class HealResult:
    """heal: the live color against its replica count; what was repaired (watch: over every round)."""

    color: str | None = None
    wanted: int | None = None  # the count that should run
    replicas_source: str | None = None  # stored | registered | default
    running: int | None = None
    replaced: list[str] = field(default_factory=list)  # dead instances started again (same name and port)
    registered: list[str] = field(default_factory=list)  # registrations written again
    discarded: list[str] = field(default_factory=list)  # stopped instances above the count, removed
    proxy_changed: bool = False  # the proxy was applied (its rendered text had changed)
    skipped: str | None = None  # why nothing was checked (an open release, nothing live)
    note: str | None = None
    rounds: int = 1
    failures: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealResult:
        return cls(data.get("color"), data.get("wanted"), data.get("replicas_source"), data.get("running"),
                   list(data.get("replaced") or []), list(data.get("registered") or []),
                   list(data.get("discarded") or []), bool(data.get("proxy_changed")), data.get("skipped"),
                   data.get("note"), int(data.get("rounds") or 1), int(data.get("failures") or 0))


@dataclass(frozen=True)
class ScaleResult:
    """scale: the live color's count before and after (after a rollback: as before)."""

    color: str | None = None
    release: str | None = None  # the live release (unchanged by a scale)
    image: str | None = None
    previous: int | None = None  # the count before
    replicas: int | None = None  # the count now
    scale: str | None = None  # the scale's journal id (in history)
    instances: list[dict[str, Any]] = field(default_factory=list)  # the running instances after a scale up
    discarded: list[str] = field(default_factory=list)  # removed after a scale down

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScaleResult:
        return cls(data.get("color"), data.get("release"), data.get("image"), data.get("previous"),
                   data.get("replicas"), data.get("scale"), list(data.get("instances") or []),
                   list(data.get("discarded") or []))


@dataclass(frozen=True)
class PlanResult:
    """A dry run: what the verb would do; nothing was changed."""

    dry_run: bool = True
    plan: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanResult:
        return cls(bool(data.get("dry_run", True)), dict(data.get("plan") or {}))


@dataclass
class ReleaseOutcome(Outcome):
    @property
    def result(self) -> ReleaseResult:
        return ReleaseResult.from_dict(self.data)


@dataclass
class HealOutcome(Outcome):
    @property
    def result(self) -> HealResult:
        return HealResult.from_dict(self.data)


@dataclass
class ScaleOutcome(Outcome):
    @property
    def result(self) -> ScaleResult:
        return ScaleResult.from_dict(self.data)


@dataclass
class StatusOutcome(Outcome):
    @property
    def result(self) -> StatusResult:
        return StatusResult.from_dict(self.data)


@dataclass
class ColorOutcome(Outcome):
    @property
    def result(self) -> ColorResult:
        return ColorResult.from_dict(self.data)


@dataclass
class HistoryOutcome(Outcome):
    @property
    def result(self) -> HistoryResult:
        return HistoryResult.from_dict(self.data)


@dataclass
class ProxyOutcome(Outcome):
    @property
    def result(self) -> ProxyResult:
        return ProxyResult.from_dict(self.data)


@dataclass
class PlanOutcome(Outcome):
    @property
    def result(self) -> PlanResult:
        return PlanResult.from_dict(self.data)
