"""A plan is a list of named steps, each with an undo; it runs in order and undoes in reverse.

Undo functions are looked up by step name in a table, not kept as closures, so a process that
never ran the step (``rollback`` in a later Jenkins stage, after a SIGKILL) can undo it from the
journal alone. Every undo must be idempotent: a step whose intent was written may have acted in
full, in part or not at all.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CdlibError
from .journal import DONE, FAILED, INTENT, NEEDS_UNDO, UNDO_FAILED, UNDONE, Journal, JournalConflict
from .model import StepReport
from .record import StepName, StepRecord


@dataclass(frozen=True)
class Step:
    name: StepName  # a plain string is taken when it names a StepName
    do: Callable[[Any, dict[str, Any]], dict[str, Any] | None]  # (ctx, intent data) -> result data
    intent: Callable[[Any], dict[str, Any]] | None = None  # (ctx) -> data recorded before acting
    describe: Callable[[dict[str, Any]], str] | None = None  # result data -> one line for humans

    def __post_init__(self) -> None:
        if self.name not in FAILPOINT_STEPS:
            raise ValueError(f"plan step {self.name!r} is not a cdlib.record.StepName: add it there first")
        object.__setattr__(self, "name", StepName(self.name))


class Interrupted(BaseException):
    """SIGTERM/SIGINT arrived (Jenkins aborted the build): roll back like any failure."""


# every step a plan can run (a failpoint fires before or after one of them)
FAILPOINT_STEPS = frozenset(s.value for s in StepName)
FAILPOINT_WHEN = ("before", "after")
FAILPOINT_ACTIONS = ("kill", "fail")


def check_failpoints(spec: str | None = None) -> None:
    """Refuse a CDLIB_FAILPOINTS value (default: the environment's) with an item that would never
    fire: ConfigError (exit code 2) naming the variable and the item. Empty or unset: nothing to check."""
    from .errors import ConfigError

    spec = os.environ.get("CDLIB_FAILPOINTS") if spec is None else spec
    if not spec:
        return
    for item in spec.split(","):
        if not item.strip():
            continue
        where, _, action = item.strip().partition("=")
        step, _, when = where.partition(":")
        if step in FAILPOINT_STEPS and when in FAILPOINT_WHEN and action in FAILPOINT_ACTIONS:
            continue
        shown = item.strip()
        shown = repr(shown if len(shown) <= 60 else shown[:57] + "...")
        raise ConfigError(f"CDLIB_FAILPOINTS: expected STEP:before|after=kill|fail items separated by ',' "
                          f"(steps: {', '.join(sorted(FAILPOINT_STEPS))}), got {shown}", key="CDLIB_FAILPOINTS")


def failpoint(step: str, when: str) -> None:
    """Crash rehearsal: CDLIB_FAILPOINTS="proxy:after=kill,start:before=fail" makes this process
    SIGKILL itself (kill) or fail the step (fail) at that point. Used by the crash-safety tests and
    by operators who want to watch a rollback; unset, it costs one environment lookup. The value is
    checked (check_failpoints) when the descriptor is loaded, before anything runs."""
    spec = os.environ.get("CDLIB_FAILPOINTS")
    if not spec:
        return
    for item in spec.split(","):
        where, _, action = item.strip().partition("=")
        if where == f"{step}:{when}":
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if action == "fail":
                raise RuntimeError(f"failpoint {where} (CDLIB_FAILPOINTS)")


def run(ctx: Any, journal: Journal, steps: list[Step], report: Callable[[StepReport], None]) -> None:
    for step in steps:
        data = step.intent(ctx) if step.intent else {}
        record = journal.intent(step.name, data)
        t0 = time.monotonic()
        try:
            failpoint(step.name, "before")
            result = step.do(ctx, data) or {}
            failpoint(step.name, "after")
        except (Exception, Interrupted) as exc:
            try:
                journal.fail(record, _reason(exc))
            except Exception:  # noqa: S110 - the store may be what failed; the intent is on record
                pass
            report(StepReport(step.name.value, "failed", time.monotonic() - t0, _reason(exc)))
            raise
        journal.finish(record, result)
        detail = step.describe({**data, **result}) if step.describe else ""
        report(StepReport(step.name.value, "done", time.monotonic() - t0, detail))


def undo(ctx: Any, journal: Journal, undos: Mapping[StepName, Callable[[Any, dict[str, Any]], None]],
         report: Callable[[StepReport], None]) -> list[str]:
    """Undo every recorded step that may have acted, newest first. Returns the names whose undo
    failed (empty: the world is as it was before the release)."""
    failed = []
    for record in reversed(journal.steps):
        if record.state not in NEEDS_UNDO:
            continue
        name = record.name.value
        fn = undos.get(record.name)
        t0 = time.monotonic()
        try:
            if fn is not None:
                fn(ctx, record.data)
        except Exception as exc:  # an undo failing must not stop the other undos
            _mark(journal, record, UNDO_FAILED, _reason(exc))
            report(StepReport(f"undo {name}", "undo-failed", time.monotonic() - t0, _reason(exc)))
            failed.append(name)
            continue
        if not _mark(journal, record, UNDONE):
            # undone, but the journal could not say so (the store is away): a later 'rollback'
            # repeats this undo, which is idempotent, and then records it
            failed.append(f"{name} (journal not updated)")
        if fn is not None:
            report(StepReport(f"undo {name}", "undone", time.monotonic() - t0))
    return failed


def _mark(journal: Journal, record: StepRecord, state: str, error: str = "") -> bool:
    """Record an undo's outcome; False when the store cannot be written (it may be what failed).
    A lost compare-and-set is not swallowed: another process drives the release, so stop undoing."""
    try:
        journal.mark(record, state, error)
        return True
    except JournalConflict:
        raise
    except Exception:
        record.state = state
        return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CdlibError):
        return str(exc)
    if isinstance(exc, Interrupted):
        return "interrupted (SIGTERM/SIGINT)"
    return f"{type(exc).__name__}: {exc}"


__all__ = ["Step", "Interrupted", "run", "undo", "check_failpoints", "INTENT", "DONE", "FAILED"]
