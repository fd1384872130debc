"""A scripted test runner for unit tests of the release logic: no process, no container.

``MemoryRunner(results={"pre-integration": False})`` makes the pre-integration suite fail and every
other suite pass. A scripted value may be ``True``/``False``, an exit code, ``"timeout"`` (exit 124,
as the real runners report a timeout) or an exception instance to raise (for a suite that cannot
start). Every run is recorded, with the environment the suite would have seen, so a test can
assert that pre-integration targeted the new color and post-integration the proxy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from ..model import TestResult
from . import junit
from .base import TestRun, TestRunner

TIMEOUT = "timeout"
Script = bool | int | str | BaseException


class MemoryRunner(TestRunner):
    kind = "memory"

    def __init__(self, results: Mapping[str, Script] | None = None, *, default: Script = True,
                 outputs: Mapping[str, str] | None = None, duration: float = 0.0):
        self.results: dict[str, Script] = dict(results or {})
        self.default = default
        self.outputs: dict[str, str] = dict(outputs or {})
        self.duration = duration
        self.runs: list[TestRun] = []
        self._mutex = threading.Lock()

    # what the recorded runs saw, for assertions
    @property
    def target_urls(self) -> list[str]:
        return [r.target_url for r in self.runs]

    @property
    def environments(self) -> list[dict[str, str]]:
        return [r.environment() for r in self.runs]

    def runs_of(self, suite_type: str) -> list[TestRun]:
        return [r for r in self.runs if r.suite.type == suite_type]

    def run(self, run: TestRun) -> TestResult:
        with self._mutex:
            self.runs.append(run)
        run.passed_env()  # its values are secrets from now on, as with the real runners
        script = self.results.get(run.suite.type, self.default)
        if isinstance(script, BaseException):
            raise script
        exit_code, note = self._exit_code(script, run)
        junit.prepare_dir(run)
        lines = [f"memory runner: {run.suite.type} suite of {run.service} against {run.target_url or '-'}"]
        if run.suite.type in self.outputs:
            lines.extend(self.outputs[run.suite.type].splitlines())
        if note:
            lines.append(note)
        return junit.conclude(run, exit_code, junit.tail(lines), started=time.time() - self.duration,
                              duration=self.duration)

    @staticmethod
    def _exit_code(script: Script, run: TestRun) -> tuple[int, str]:
        if script == TIMEOUT:
            return junit.TIMEOUT_EXIT, (f"cdlib: the suite timed out after {run.suite.timeout:g}s; "
                                        f"its process group was killed (exit code {junit.TIMEOUT_EXIT})")
        if isinstance(script, bool):
            return (0 if script else 1), ""
        if isinstance(script, int):
            return script, ""
        raise ValueError(f"MemoryRunner: cannot script a suite with {script!r}")
