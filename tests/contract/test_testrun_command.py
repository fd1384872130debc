"""CommandRunner: a suite as a host command, its environment, its timeout and its report."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cdlib.config import SuiteSpec
from cdlib.errors import TestRunnerError
from cdlib.testrun.base import TestRun
from cdlib.testrun.command import CommandRunner

SERVICE = "cdlibt-cmd"


def suite(command, tmp_path: Path, type_: str = "pre-integration", **kw) -> SuiteSpec:
    return SuiteSpec(type=type_, command=command, workdir=tmp_path, **kw)


def run_of(s: SuiteSpec, url: str = "http://127.0.0.1:9/", **kw) -> TestRun:
    return TestRun(service=SERVICE, suite=s, target_url=url, **kw)


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie nobody reaped has ended too)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


@pytest.fixture
def child_pids():
    """PIDs a test's suite reported; killed at the end in case the runner under test did not."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not gone(pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


# -- pass / fail ------------------------------------------------------------------------------
def test_a_passing_command(tmp_path):
    result = CommandRunner().run(run_of(suite("echo hello; echo world", tmp_path)))
    assert (result.passed, result.exit_code, result.suite) == (True, 0, "pre-integration")
    assert result.output == "hello\nworld"
    assert result.target_url == "http://127.0.0.1:9/"
    assert result.duration >= 0 and result.junit_path is None


def test_a_failing_command_reports_its_exit_code(tmp_path):
    result = CommandRunner().run(run_of(suite("echo about to fail >&2; exit 3", tmp_path, unstable=True)))
    assert (result.passed, result.exit_code, result.unstable_ok) == (False, 3, True)
    assert "about to fail" in result.output  # stderr is kept with stdout


def test_a_list_runs_without_a_shell(tmp_path):
    result = CommandRunner().run(run_of(suite(("/bin/echo", "$TEST_TYPE", "a;b"), tmp_path)))
    assert result.passed and result.output == "$TEST_TYPE a;b"


def test_a_string_runs_with_the_shell_in_the_workdir(tmp_path):
    result = CommandRunner().run(run_of(suite('echo "$TEST_TYPE" | tr a-z A-Z; pwd', tmp_path)))
    assert result.output.splitlines() == ["PRE-INTEGRATION", str(tmp_path)]


def test_a_list_with_a_relative_program_runs_from_the_workdir(tmp_path):
    script = tmp_path / "run-tests.sh"
    script.write_text("#!/bin/sh\necho ran from $(pwd)\n")
    script.chmod(0o755)
    result = CommandRunner().run(run_of(suite(("./run-tests.sh",), tmp_path)))
    assert result.passed and result.output == f"ran from {tmp_path}"


def test_a_command_killed_by_a_signal_fails_with_128_plus_the_signal(tmp_path):
    result = CommandRunner().run(run_of(suite(("/bin/sh", "-c", "kill -9 $$"), tmp_path)))
    assert (result.passed, result.exit_code) == (False, 137)
    assert "killed by signal 9" in result.output


# -- environment --------------------------------------------------------------------------------
def test_the_environment_has_the_target_the_type_the_service_and_the_agents_basics(tmp_path, monkeypatch):
    monkeypatch.setenv("CDLIBT_FROM_AGENT", "agent")
    monkeypatch.setenv("TZ", "UTC")
    s = suite("env", tmp_path, type_="post-integration", env=(("CDLIBT_FROM_SUITE", "suite"),))
    r = TestRun(service=SERVICE, suite=s, target_url="http://proxy.example/shop/",
                env=(("CDLIBT_FROM_RUN", "run"), ("TEST_TYPE", "overridden-by-the-runner")))
    result = CommandRunner().run(r)
    env = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert env["TARGET_URL"] == "http://proxy.example/shop/"
    assert env["TEST_TYPE"] == "post-integration"
    assert env["CDLIB_SERVICE"] == SERVICE
    assert (env["CDLIBT_FROM_SUITE"], env["CDLIBT_FROM_RUN"]) == ("suite", "run")
    assert env["PATH"] == os.environ["PATH"] and env["TZ"] == "UTC"
    assert "CDLIBT_FROM_AGENT" not in env  # the agent's environment is not inherited
    assert "JUNIT_DIR" not in env


def test_a_suite_sees_only_the_minimal_environment_and_its_pass_env(tmp_path, monkeypatch):
    from cdlib.testrun.base import HOST_ENV

    monkeypatch.setenv("CDLIBT_DB_PASS", "cdlibt-hunter2-pass")
    monkeypatch.setenv("CDLIBT_NOT_PASSED", "cdlibt-stays-home")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "cdlibt-consul-token-1")
    monkeypatch.setenv("CDLIB_STORE", "etcd://root:cdlibt-store-pw@127.0.0.1:1")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    s = suite("env", tmp_path, pass_env=("CDLIBT_DB_PASS", "CDLIBT_UNSET"), env=(("CDLIBT_OWN", "own"),))
    r = TestRun(service=SERVICE, suite=s, target_url="http://127.0.0.1:9/",
                env=(("TARGET_URLS", "http://127.0.0.1:9/"), ("CDLIB_COLOR", "green")))
    result = CommandRunner().run(r)
    names = {line.split("=", 1)[0] for line in result.output.splitlines() if "=" in line}
    allowed = set(HOST_ENV) | {"LC_ALL", "CDLIBT_OWN", "CDLIBT_DB_PASS", "TARGET_URL", "TARGET_URLS",
                               "CDLIB_COLOR", "TEST_TYPE", "CDLIB_SERVICE", "PWD", "SHLVL", "_", "OLDPWD"}
    assert names <= allowed, names - allowed
    assert {"CDLIBT_OWN", "CDLIBT_DB_PASS", "TARGET_URL", "TARGET_URLS", "CDLIB_COLOR", "LC_ALL"} <= names
    assert "CDLIBT_NOT_PASSED" not in names and "CONSUL_HTTP_TOKEN" not in names and "CDLIB_STORE" not in names
    # the suite saw the pass_env value, and printed it: the kept output has it masked
    assert "CDLIBT_DB_PASS=***" in result.output.splitlines()
    assert "cdlibt-hunter2-pass" not in result.output


def test_a_host_env_variable_reaches_the_suite_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("CDLIBT_BUILD_NUMBER", "cdlibt-build-4711")
    monkeypatch.setenv("CDLIBT_OTHER", "cdlibt-other-value")
    s = suite("env", tmp_path, host_env=("CDLIBT_BUILD_NUMBER", "CDLIBT_UNSET_TOO"))
    result = CommandRunner().run(run_of(s))
    lines = result.output.splitlines()
    assert "CDLIBT_BUILD_NUMBER=cdlibt-build-4711" in lines  # not a secret: not masked
    assert not any(line.startswith(("CDLIBT_OTHER=", "CDLIBT_UNSET_TOO=")) for line in lines)


def test_secrets_the_suite_prints_are_masked_when_streamed_and_kept(tmp_path, monkeypatch):
    from cdlib import secrets

    monkeypatch.setenv("CDLIBT_API_TOKEN", "cdlibt-t0k3n/with space")
    monkeypatch.setenv("CDLIBT_PLAIN", "cdlibt-plain-value")
    streamed: list[str] = []
    s = suite('echo "raw $CDLIBT_PLAIN"; echo "token cdlibt-t0k3n/with space"; '
              'echo "quoted cdlibt-t0k3n%2Fwith%20space"', tmp_path, pass_env=("CDLIBT_PLAIN",))
    reports = tmp_path / "reports"
    result = CommandRunner(on_output=streamed.append).run(run_of(s, junit_path=reports))
    assert streamed == ["raw ***", "token ***", "quoted ***"]
    assert result.output == "raw ***\ntoken ***\nquoted ***"
    xml = (reports / f"cdlib-{SERVICE}-pre-integration.xml").read_text()
    assert "cdlibt-plain-value" not in xml and "t0k3n" not in xml and "raw ***" in xml
    secrets.reset()


def test_a_secret_cut_by_a_long_line_leaves_no_long_piece(tmp_path, monkeypatch):
    from cdlib import secrets
    from cdlib.testrun import command

    secret = "cdlibt-LONGSECRET-0123456789abcdef"
    monkeypatch.setenv("CDLIBT_SECRET", secret)
    monkeypatch.setattr(command, "READ_LIMIT", 64)
    # the secret starts 50 characters into a line that is read in pieces of 64 bytes
    s = suite(f"printf '%050d{secret}%050d\\n' 0 0", tmp_path)
    result = CommandRunner().run(run_of(s))
    assert result.passed, result.output
    text = result.output.replace("\n", "")
    for n in range(secrets.MIN_LENGTH, len(secret) + 1):
        for i in range(len(secret) - n + 1):
            assert secret[i:i + n] not in text, (secret[i:i + n], result.output)


def test_junit_dir_is_given_only_with_a_junit_path(tmp_path):
    reports = tmp_path / "reports"
    result = CommandRunner().run(run_of(suite('echo "dir=$JUNIT_DIR"', tmp_path), junit_path=reports))
    assert result.output == f"dir={reports}"
    assert reports.is_dir()


# -- output --------------------------------------------------------------------------------------
def test_output_is_streamed_and_only_the_tail_is_kept(tmp_path):
    streamed: list[str] = []
    runner = CommandRunner(on_output=streamed.append)
    result = runner.run(run_of(suite("i=1; while [ $i -le 500 ]; do echo line $i; i=$((i+1)); done", tmp_path)))
    assert streamed == [f"line {i}" for i in range(1, 501)]
    assert result.output.splitlines() == [f"line {i}" for i in range(301, 501)]


def test_tail_length_is_configurable(tmp_path):
    result = CommandRunner(tail_lines=3).run(run_of(suite("seq 1 10", tmp_path)))
    assert result.output == "8\n9\n10"


def test_a_broken_output_callback_does_not_break_the_run(tmp_path):
    calls: list[str] = []

    def broken(line: str) -> None:
        calls.append(line)
        raise BrokenPipeError("console gone")

    result = CommandRunner(on_output=broken).run(run_of(suite("seq 1 5000; exit 4", tmp_path)))
    assert calls == ["1"]
    assert (result.exit_code, result.output.splitlines()[-1]) == (4, "5000")


def test_undecodable_output_is_replaced_not_fatal(tmp_path):
    result = CommandRunner().run(run_of(suite(r"printf 'caf\351\n'", tmp_path)))
    assert result.passed and result.output == "caf\ufffd"


# -- timeout -------------------------------------------------------------------------------------
def test_timeout_kills_the_whole_process_group(tmp_path, child_pids):
    pidfile = tmp_path / "child.pid"
    command = f"sleep 300 & echo $! > {pidfile}; echo started; sleep 300"
    started = time.monotonic()
    result = CommandRunner().run(run_of(suite(command, tmp_path, timeout=1)))
    elapsed = time.monotonic() - started
    child = int(wait_for_file(pidfile))
    child_pids.append(child)
    assert (result.passed, result.exit_code) == (False, 124)
    assert result.output.splitlines()[0] == "started"
    assert "timed out after 1s" in result.output
    assert elapsed < 4  # SIGTERM was enough: no 5 s grace spent
    assert gone(child)


def test_timeout_escalates_to_sigkill_for_processes_ignoring_sigterm(tmp_path, child_pids):
    pidfile = tmp_path / "child.pid"
    command = f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait; wait"
    started = time.monotonic()
    result = CommandRunner(kill_grace=0.5).run(run_of(suite(command, tmp_path, timeout=1)))
    elapsed = time.monotonic() - started
    child = int(wait_for_file(pidfile))
    child_pids.append(child)
    assert result.exit_code == 124
    assert 1.4 <= elapsed < 5
    assert gone(child)


def test_children_left_running_after_the_suite_ends_are_killed(tmp_path, child_pids):
    pidfile = tmp_path / "child.pid"
    command = f"sleep 300 & echo $! > {pidfile}; echo done"
    started = time.monotonic()
    result = CommandRunner(leftover_grace=0.3).run(run_of(suite(command, tmp_path, timeout=30)))
    child = int(wait_for_file(pidfile))
    child_pids.append(child)
    assert (result.passed, result.exit_code) == (True, 0)
    assert result.output.splitlines() == ["done", "cdlib: processes the suite left running were killed"]
    assert time.monotonic() - started < 5
    assert gone(child)


def test_children_that_left_the_process_group_are_killed_too(tmp_path, child_pids):
    """setsid (or a server a fixture starts in a session of its own) leaves the group but keeps the
    output pipe: it must not outlive the suite, nor keep the runner waiting for its output."""
    pidfile = tmp_path / "child.pid"
    command = f"setsid sleep 300 & echo $! > {pidfile}; echo done"
    started = time.monotonic()
    result = CommandRunner(leftover_grace=0.3).run(run_of(suite(command, tmp_path, timeout=30)))
    child = int(wait_for_file(pidfile))
    child_pids.append(child)
    assert (result.passed, result.exit_code) == (True, 0)
    assert result.output.splitlines() == ["done", "cdlib: processes the suite left running were killed"]
    assert gone(child)
    assert time.monotonic() - started < 4  # not the 5 s the runner gives a blocked reader


def test_timeout_kills_children_that_left_the_process_group(tmp_path, child_pids):
    pidfile = tmp_path / "child.pid"
    command = f"setsid sleep 300 & echo $! > {pidfile}; sleep 300"
    result = CommandRunner().run(run_of(suite(command, tmp_path, timeout=1)))
    child = int(wait_for_file(pidfile))
    child_pids.append(child)
    assert result.exit_code == 124
    assert gone(child)


def test_an_interrupted_caller_takes_the_suite_with_it(tmp_path, child_pids, monkeypatch):
    pidfile = tmp_path / "child.pid"
    runner = CommandRunner()

    def interrupted(proc, reader, timeout):
        wait_for_file(pidfile)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run(run_of(suite(f"sleep 300 & echo $! > {pidfile}; sleep 300", tmp_path)))
    child = int(pidfile.read_text())
    child_pids.append(child)
    assert gone(child)


# -- cannot start ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [("cdlibt-no-such-program", "-x"), "cdlibt-no-such-program -x"])
def test_a_missing_program_raises_naming_the_suite_and_the_command(tmp_path, command):
    with pytest.raises(TestRunnerError, match=r"suite pre-integration of cdlibt-cmd: command 'cdlibt-no-such-program'"):
        CommandRunner().run(run_of(suite(command, tmp_path)))


@pytest.mark.parametrize("form", ["list", "string"])
def test_a_program_that_is_not_executable_raises(tmp_path, form):
    script = tmp_path / "tests.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    command = ("./tests.sh",) if form == "list" else "./tests.sh --all"
    with pytest.raises(TestRunnerError, match=r"'\./tests\.sh' not (found or not )?executable"):
        CommandRunner().run(run_of(suite(command, tmp_path)))


def test_shell_syntax_is_left_to_the_shell(tmp_path):
    result = CommandRunner().run(run_of(suite("CDLIBT_X=1 sh -c 'exit $CDLIBT_X'; exit 7", tmp_path)))
    assert result.exit_code == 7


def test_a_missing_workdir_raises(tmp_path):
    with pytest.raises(TestRunnerError, match="working directory .*cdlibt-nowhere does not exist"):
        CommandRunner().run(run_of(suite("true", tmp_path / "cdlibt-nowhere")))


def test_a_suite_without_a_command_raises(tmp_path):
    with pytest.raises(TestRunnerError, match="has no command"):
        CommandRunner().run(run_of(suite(None, tmp_path)))


# -- junit ----------------------------------------------------------------------------------------
def test_a_failed_run_writes_a_junit_report_next_to_the_suites_own(tmp_path):
    reports = tmp_path / "reports"
    command = ('echo "<testsuite name=\\"own\\" tests=\\"1\\"><testcase name=\\"t\\"/></testsuite>" '
               '> "$JUNIT_DIR/own.xml"; echo "<checking> & failing"; exit 2')
    result = CommandRunner().run(run_of(suite(command, tmp_path), junit_path=reports))
    summary = reports / f"cdlib-{SERVICE}-pre-integration.xml"
    assert result.junit_path == str(summary)
    root = ET.parse(summary).getroot()
    suite_el = root.find("testsuite")
    assert suite_el.get("name") == f"cdlib.{SERVICE}.pre-integration"
    assert (suite_el.get("tests"), suite_el.get("failures")) == ("1", "1")
    failure = suite_el.find("testcase/failure")
    assert failure.get("message") == "exit code 2"
    assert "<checking> & failing" in failure.text
    assert suite_el.find("testcase/system-out").text == "<checking> & failing"
    assert ET.parse(reports / "own.xml").getroot().get("name") == "own"


def test_a_junit_file_path_is_used_as_given(tmp_path):
    target = tmp_path / "out" / "pre.xml"
    result = CommandRunner().run(run_of(suite('echo "$JUNIT_DIR"', tmp_path), junit_path=target))
    assert result.junit_path == str(target)
    assert result.output == str(target.parent)
    assert ET.parse(target).getroot().find("testsuite").get("failures") == "0"


def test_a_timeout_is_in_the_junit_report(tmp_path):
    result = CommandRunner().run(run_of(suite("echo slow; sleep 30", tmp_path, timeout=1), junit_path=tmp_path))
    failure = ET.parse(result.junit_path).getroot().find("testsuite/testcase/failure")
    assert failure.get("message") == "exit code 124"
    assert "timed out" in failure.text and "slow" in failure.text
