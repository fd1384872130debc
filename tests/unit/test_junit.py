"""The JUnit report: what Jenkins' junit step reads, escaped, without characters XML 1.0 forbids."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cdlib.config import SuiteSpec
from cdlib.errors import TestRunnerError
from cdlib.model import TestResult
from cdlib.testrun import junit
from cdlib.testrun.base import TestRun


def result(passed: bool = True, exit_code: int = 0, output: str = "", skipped: bool = False,
           duration: float = 1.25, unstable_ok: bool = False) -> TestResult:
    return TestResult(suite="pre-integration", passed=passed, exit_code=exit_code, duration=duration,
                      target_url="http://127.0.0.1:9/", output=output, skipped=skipped, unstable_ok=unstable_ok)


def parse(data: bytes) -> ET.Element:
    return ET.fromstring(data)


def test_a_passing_suite_is_one_testsuite_with_one_testcase():
    root = parse(junit.render_junit(result(output="all good"), "shop", timestamp=0))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    attrs = suites[0].attrib
    assert attrs["name"] == "cdlib.shop.pre-integration"
    assert (attrs["tests"], attrs["failures"], attrs["errors"], attrs["skipped"]) == ("1", "0", "0", "0")
    assert attrs["time"] == "1.250"
    assert attrs["timestamp"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(0))
    cases = suites[0].findall("testcase")
    assert len(cases) == 1
    assert cases[0].attrib == {"classname": "cdlib.shop", "name": "pre-integration", "time": "1.250"}
    assert cases[0].find("failure") is None
    assert cases[0].find("system-out").text == "all good"
    props = {p.get("name"): p.get("value") for p in suites[0].find("properties")}
    assert props == {"target_url": "http://127.0.0.1:9/", "exit_code": "0", "unstable_ok": "false"}


def test_the_timestamp_defaults_to_the_start_of_the_run():
    before = time.time() - 1.25
    attrs = parse(junit.render_junit(result(), "shop")).find("testsuite").attrib
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", attrs["timestamp"])
    stamp = time.mktime(time.strptime(attrs["timestamp"], "%Y-%m-%dT%H:%M:%S"))
    assert before - 2 <= stamp <= before + 2


def test_a_failure_carries_the_exit_code_and_the_tail_of_the_output():
    output = "\n".join(f"line {i}" for i in range(1, 121))
    root = parse(junit.render_junit(result(False, 3, output), "shop"))
    suite = root.find("testsuite")
    assert (suite.get("failures"), suite.get("errors")) == ("1", "0")
    assert root.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure.get("message") == "exit code 3"
    assert failure.get("type") == "exit-code"
    quoted = failure.text.splitlines()
    assert quoted == [f"line {i}" for i in range(71, 121)]
    assert suite.find("testcase/system-out").text == output


def test_a_timeout_is_a_failure_of_its_own_type():
    failure = parse(junit.render_junit(result(False, 124, "x"), "shop")).find("testsuite/testcase/failure")
    assert (failure.get("message"), failure.get("type")) == ("exit code 124", "timeout")


def test_a_skipped_suite_is_neither_failed_nor_passed():
    suite = parse(junit.render_junit(result(False, 0, skipped=True), "shop")).find("testsuite")
    assert (suite.get("skipped"), suite.get("failures")) == ("1", "0")
    assert suite.find("testcase/skipped") is not None
    assert suite.find("testcase/failure") is None


def test_markup_in_the_output_is_escaped_and_survives_a_round_trip():
    output = 'a <b>&amp; "q" \'s\' ]]> </system-out><x/>'
    data = junit.render_junit(result(False, 1, output), "shop")
    assert b"<x/>" not in data
    case = parse(data).find("testsuite/testcase")
    assert case.find("system-out").text == output
    assert case.find("failure").text == output


def test_characters_xml_forbids_are_removed():
    output = "nul\x00 bell\x07 \x1b[31mred\x1b[0m vt\x0b ff\x0c lone\ud800 fffe\ufffe ok\ttab é ✓ 😀"
    data = junit.render_junit(result(False, 1, output), "shop")
    text = parse(data).find("testsuite/testcase/system-out").text
    assert text == "nul bell red vt ff lone fffe ok\ttab é ✓ 😀"


def test_the_target_url_property_is_cleaned_too():
    r = TestResult(suite="post-integration", passed=True, exit_code=0, duration=0, target_url="http://x/\x01")
    props = parse(junit.render_junit(r, "shop")).find("testsuite/properties")
    assert {p.get("name"): p.get("value") for p in props}["target_url"] == "http://x/"


def test_a_huge_output_is_cut_from_the_front():
    output = "start\n" + ("x" * 1000 + "\n") * 600 + "the end"
    text = parse(junit.render_junit(result(output=output), "shop")).find("testsuite/testcase/system-out").text
    assert len(text) <= junit.MAX_CHARS + 100
    assert text.endswith("the end") and "start" not in text.splitlines()[1:]
    assert text.startswith("[... output cut ...]")


def test_no_output_means_no_system_out():
    case = parse(junit.render_junit(result(output=""), "shop")).find("testsuite/testcase")
    assert case.find("system-out") is None


def test_write_junit_writes_atomically_and_creates_directories(tmp_path):
    target = tmp_path / "reports" / "deep" / "out.xml"
    written = junit.write_junit(target, result(False, 2, "boom"), "shop", "explicit output")
    assert written == target
    root = ET.parse(target).getroot()
    assert root.find("testsuite/testcase/system-out").text == "explicit output"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.xml"]  # no temporary left over
    assert target.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")


def test_write_junit_into_an_unwritable_place_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TestRunnerError, match="cannot write the JUnit report"):
        junit.write_junit(blocker / "out.xml", result(), "shop")


def test_summary_path_for_a_directory_or_a_file(tmp_path):
    assert junit.summary_path(tmp_path, "shop", "post-integration") == tmp_path / "cdlib-shop-post-integration.xml"
    assert junit.report_dir(tmp_path) == tmp_path
    given = tmp_path / "sub" / "report.xml"
    assert junit.summary_path(given, "shop", "post-integration") == given
    assert junit.report_dir(given) == tmp_path / "sub"
    odd_dir = tmp_path / "looks.xml"
    odd_dir.mkdir()
    assert junit.summary_path(odd_dir, "shop", "pre-deployment") == odd_dir / "cdlib-shop-pre-deployment.xml"


def test_tail_keeps_the_last_lines():
    assert junit.tail(["a", "b", "c"], 2) == "b\nc"
    assert junit.tail(["a"], 5) == "a"
    assert junit.tail(["a"], 0) == ""


def _run(junit_path: Path | None, unstable: bool = False) -> TestRun:
    return TestRun(service="shop", suite=SuiteSpec(type="post-integration", command="true", unstable=unstable),
                   target_url="http://proxy/", junit_path=junit_path)


def test_conclude_builds_the_result_and_writes_the_summary(tmp_path):
    res = junit.conclude(_run(tmp_path, unstable=True), 4, "out", started=time.time(), duration=0.5)
    assert (res.suite, res.passed, res.exit_code, res.unstable_ok) == ("post-integration", False, 4, True)
    assert (res.target_url, res.output, res.duration) == ("http://proxy/", "out", 0.5)
    assert res.junit_path == str(tmp_path / "cdlib-shop-post-integration.xml")
    assert ET.parse(res.junit_path).getroot().find("testsuite").get("failures") == "1"


def test_conclude_without_a_junit_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = junit.conclude(_run(None), 0, "", started=time.time(), duration=0.1)
    assert res.passed and res.junit_path is None
    assert list(tmp_path.iterdir()) == []


def test_prepare_dir_creates_the_directory_the_suite_writes_into(tmp_path):
    assert junit.prepare_dir(_run(None)) is None
    assert junit.prepare_dir(_run(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert junit.prepare_dir(_run(tmp_path / "c" / "report.xml")) == tmp_path / "c"
    (tmp_path / "blocker").write_text("")
    with pytest.raises(TestRunnerError, match="cannot create the JUnit directory"):
        junit.prepare_dir(_run(tmp_path / "blocker" / "d"))


def test_secrets_never_reach_the_report_and_are_masked_before_the_tail_is_cut(tmp_path, monkeypatch):
    from cdlib import secrets

    secret = "cdlibt-junit-s3cret-" + "x" * 40
    monkeypatch.setenv("CDLIBT_JUNIT_TOKEN", secret)
    monkeypatch.setenv("CDLIBT_URL_PASSWORD", "cdlibt-url-pw")
    # the secret straddles the point where the output is cut to its last MAX_CHARS characters
    output = "a" * 10 + secret + "b" * (junit.MAX_CHARS - 30)
    data = junit.render_junit(result(passed=False, exit_code=1, output=output + "\nfailed with " + secret),
                              "shop", timestamp=0)
    text = data.decode()
    assert "s3cret" not in text and "xxxxxxxxxx" not in text
    assert "failed with ***" in text
    run = TestRun("shop", SuiteSpec(type="pre-integration", command="x"),
                  "http://user:cdlibt-target-pw@127.0.0.1:9/", junit_path=tmp_path)
    got = junit.conclude(run, 1, f"token {secret}\nurl pw cdlibt-target-pw", time.time(), 0.1)
    assert got.output == "token ***\nurl pw ***" and got.target_url == "http://user:***@127.0.0.1:9/"
    written = Path(got.junit_path).read_text()
    assert secret not in written and "cdlibt-target-pw" not in written
    secrets.reset()
