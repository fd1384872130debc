"""The context one verb runs in: the descriptor, the ports, the open release, the progress reporter.

The core knows the adapters only by their ports (``cdlib.*.base``); the bundle that builds them
(``cdlib.wiring.Ports``) is one implementation of the Ports protocol below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .config import ServiceSpec, SuiteSpec
from .heartbeat import Heartbeat
from .journal import Journal
from .model import StepReport
from .proxy.base import Proxy
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
    def rec(self) -> dict:
        assert self.journal is not None
        return self.journal.record
