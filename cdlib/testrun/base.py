"""The test runner port: run one suite (a host command or a test image) against a target URL.

The suite sees ``TARGET_URL`` (the new color directly for pre-integration, the proxy for
post-integration, empty for pre-deployment), ``TEST_TYPE`` and ``CDLIB_SERVICE``; it passes or fails
on its exit code. The runner writes a JUnit XML report for Jenkins' ``junit`` step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from ..config import SuiteSpec
from ..model import TestResult


@dataclass(frozen=True)
class TestRun:
    __test__ = False

    service: str
    suite: SuiteSpec
    target_url: str
    env: tuple[tuple[str, str], ...] = ()  # added to the suite's own env
    junit_path: Path | None = None
    image: str | None = None  # the test image reference to run (suite.image with the release tag)

    def environment(self) -> dict[str, str]:
        env = dict(self.suite.env)
        env.update(self.env)
        env.update({"TARGET_URL": self.target_url, "TEST_TYPE": self.suite.type,
                    "CDLIB_SERVICE": self.service})
        return env


class TestRunner(ABC):
    __test__ = False
    kind = "testrun"

    @abstractmethod
    def run(self, run: TestRun) -> TestResult:
        """Run the suite to completion (or its timeout, which fails it). Raise TestRunnerError
        only when the suite could not be started at all."""
