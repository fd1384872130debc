"""The context one verb runs in: the descriptor, the ports, the open release, the progress reporter.

The core knows the adapters only by their ports (``cdlib.*.base``); the bundle that builds them
(``cdlib.wiring.Ports``) is one implementation of the Ports protocol below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .clock import REAL, Clock
from .config import ServiceSpec, SuiteSpec
from .heartbeat import Heartbeat
from .journal import Journal
from .model import StepReport
from .proxy.base import Proxy
from .record import ReleaseRecord
from .runtime.base import Runtime
from .store.base import Store
from .testrun.base import TestRunner

Reporter = Callable[[StepReport], None]


class Ports(Protocol):
    """The adapters one verb works with."""

    spec: ServiceSpec
    junit_dir: Path | None

    @property
    def store(self) -> Store: ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def proxy(self) -> Proxy: ...

    def runner(self, suite: SuiteSpec) -> TestRunner: ...

    def close(self) -> None: ...


def _quiet(_: StepReport) -> None:
    pass


@dataclass(frozen=True)
class LockPolicy:
    """How long the locks last and how their waits go (seconds)."""

    ttl: float = 3600.0  # the service lock, unless the verb is given --lock-ttl
    proxy_lock_ttl: float = 120.0  # refreshed while held; a holder killed mid-switch is taken over at once
    proxy_lock_wait: float = 150.0  # how long a proxy change waits for another one to finish
    heartbeat_fraction: float = 1 / 3  # a held lock is refreshed every ttl x this
    poll: float = 0.5  # how often a wait for a lock tries again


@dataclass
class Ctx:
    spec: ServiceSpec
    ports: Ports
    report: Reporter = _quiet
    journal: Journal | None = None
    steps: list[StepReport] = field(default_factory=list)
    heartbeat: Heartbeat | None = None  # refreshes the locks and registration TTLs while a verb works
    closed: bool = False  # the journal of ctx.journal was closed by this process
    lock_token: str | None = None  # the service lock this verb works under
    clock: Clock = REAL  # the time the verb's locks, heartbeat and polls follow
    lock_policy: LockPolicy = LockPolicy()

    def check(self) -> None:
        """Before acting again: fail when a lock this verb works under was lost."""
        if self.heartbeat is not None:
            self.heartbeat.check()

    def emit(self, step: StepReport) -> None:
        self.steps.append(step)
        self.report(step)

    @property
    def service(self) -> str:
        return self.spec.name

    @property
    def rec(self) -> ReleaseRecord:
        assert self.journal is not None
        return self.journal.record

    @property
    def open_journal(self) -> Journal:
        """The journal of the open release (a verb's body runs after open_release or require_open)."""
        assert self.journal is not None
        return self.journal
