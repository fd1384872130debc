"""The test runner port: run one suite (a host command or a test image) against a target URL.

The suite sees ``TARGET_URL`` (the new color directly for pre-integration, the proxy for
post-integration, empty for pre-deployment), ``TEST_TYPE`` and ``CDLIB_SERVICE``; it passes or fails
on its exit code. The runner writes a JUnit XML report for Jenkins' ``junit`` step.

The suite's environment is built, never inherited whole. A command suite gets:

- from the agent, only :data:`HOST_ENV` (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``,
  ``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``, ``TMPDIR``, when set): what a program needs to run
  and to print text, and no credential;
- the suite's own ``env`` from the descriptor;
- what cdlib sets for the run (``TARGET_URL``, ``TARGET_URLS``, ``TARGET_HOST``, ``PROXY_URL``,
  ``CDLIB_COLOR``, ``TEST_TYPE``, ``CDLIB_SERVICE``, ``JUNIT_DIR``);
- the variables the suite names in ``host_env``, with the agent's values, as they are (settings
  such as ``BUILD_NUMBER``; a name that looks like a credential is refused there);
- the variables the suite names in ``pass_env``, with the agent's values. Those values are secrets
  from then on (:mod:`cdlib.secrets`): masked by value in the output cdlib keeps and shows.

A container suite gets the same without the agent's variables (the image has its own ``PATH``).
Anything else the suite needs from the agent goes in ``host_env`` (``JAVA_HOME``, ``BUILD_NUMBER``)
or, when it is a credential, in ``pass_env``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import secrets
from ..config import SuiteSpec
from ..model import TestResult

# what a command suite gets from the agent's environment besides pass_env (see the module docstring)
HOST_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR")
HOST_ENV_PREFIXES = ("LC_",)


def host_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of the agent's environment every command suite gets: HOST_ENV and LC_*."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items()
            if k in HOST_ENV or (k.startswith(HOST_ENV_PREFIXES) and not secrets.is_secret_name(k))}


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
        """What the suite sees besides the agent's HOST_ENV: its own env, the run's (the target
        variables and the pass_env values the caller resolved), the pass_env variables still
        missing (taken from the agent), TARGET_URL, TEST_TYPE, CDLIB_SERVICE."""
        env = dict(self.suite.env)
        env.update({n: os.environ[n] for n in self.suite.host_env if n in os.environ})
        env.update(self.env)
        env.update(self.passed_env())
        env.update({"TARGET_URL": self.target_url, "TEST_TYPE": self.suite.type,
                    "CDLIB_SERVICE": self.service})
        return env

    def passed_env(self, host: Mapping[str, str] | None = None) -> dict[str, str]:
        """The pass_env variables with their values: the run's when it carries one, else the
        agent's. Each value is registered as a secret (masked by value from now on)."""
        host = os.environ if host is None else host
        given = dict(self.env)
        out = {}
        for name in self.suite.pass_env:
            value = given.get(name, host.get(name))
            if value is not None:
                out[name] = value
        secrets.register(*out.values())
        return out


class TestRunner(ABC):
    __test__ = False
    kind = "testrun"

    @abstractmethod
    def run(self, run: TestRun) -> TestResult:
        """Run the suite to completion (or its timeout, which fails it). Raise TestRunnerError
        only when the suite could not be started at all."""
