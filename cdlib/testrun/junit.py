"""JUnit XML for Jenkins' ``junit`` step, and the bookkeeping every runner shares.

One suite run becomes one ``<testsuite>`` with one ``<testcase>``: Jenkins shows the suite as
``cdlib.<service>.<suite>`` with its exit code as the failure message and the tail of its output,
so a red build links straight to what the suite printed.

``TestRun.junit_path`` names either a directory (the usual case: ``release --junit-dir DIR``) or,
when it ends with ``.xml``, the summary file itself (``test --junit PATH``). Either way the directory
is handed to the suite as ``JUNIT_DIR``; a suite that writes its own JUnit files there keeps them
(nothing here deletes anything), and Jenkins publishes them beside the summary.

Every text a result or a summary holds is masked (:mod:`cdlib.secrets`) before it is cut to its
tail, so neither a secret nor a long part of one reaches the report, the journal or the history.
The suite's own JUnit files are its own: cdlib copies them, it does not rewrite them.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from .. import secrets
from ..errors import TestRunnerError
from ..model import TestResult
from .base import TestRun

TAIL_LINES = 200  # lines of output a result keeps
FAILURE_LINES = 50  # lines quoted in the <failure> element; the full tail goes to <system-out>
MAX_CHARS = 256 * 1024  # a 200-line tail of minified JSON must not become a 50 MB report
TIMEOUT_EXIT = 124  # what timeout(1) returns: scripts and Jenkins users already know it

# terminal colour/cursor sequences, then everything XML 1.0 forbids (C0 controls but TAB/LF/CR,
# lone surrogates, U+FFFE/U+FFFF); ElementTree escapes markup but writes these through unchanged
_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_XML_FORBIDDEN_RE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean_text(text: str) -> str:
    """Text safe to put in an XML 1.0 document: escape sequences and forbidden characters removed."""
    return _XML_FORBIDDEN_RE.sub("", _ANSI_RE.sub("", text))


def tail(lines: Iterable[str], count: int = TAIL_LINES) -> str:
    """The last ``count`` lines, joined; what a result carries instead of the whole output."""
    kept = list(lines)[-count:] if count > 0 else []
    return "\n".join(kept)


def _last_chars(text: str, limit: int = MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    return "[... output cut ...]\n" + text[-limit:]


def summary_name(service: str, suite: str) -> str:
    return f"cdlib-{service}-{suite}.xml"


def is_file_path(junit_path: Path) -> bool:
    return junit_path.suffix.lower() == ".xml" and not junit_path.is_dir()


def report_dir(junit_path: Path) -> Path:
    """The directory the suite gets as ``JUNIT_DIR``."""
    return junit_path.parent if is_file_path(junit_path) else junit_path


def summary_path(junit_path: Path, service: str, suite: str) -> Path:
    """Where the runner's own summary goes: the given file, or ``cdlib-<service>-<suite>.xml`` in the dir."""
    if is_file_path(junit_path):
        return junit_path
    return junit_path / summary_name(service, suite)


def prepare_dir(run: TestRun) -> Path | None:
    """Create the report directory before the suite starts, so the suite can write into it."""
    if run.junit_path is None:
        return None
    directory = Path(report_dir(Path(run.junit_path))).absolute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TestRunnerError(
            f"suite {run.suite.type} of {run.service}: cannot create the JUnit directory {directory}: "
            f"{exc.strerror or exc}; check the path and its permissions",
            suite=run.suite.type, path=str(directory)) from exc
    return directory


def _iso(ts: float) -> str:
    # the JUnit schema's timestamp has no zone; local time is what Ant and Jenkins show
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))


def render_junit(result: TestResult, service: str, output: str | None = None,
                 timestamp: float | None = None) -> bytes:
    """The report as bytes (UTF-8, with declaration): one testsuite holding one testcase."""
    import xml.etree.ElementTree as ET  # noqa: N817 - the conventional alias

    text = _last_chars(clean_text(secrets.mask(result.output if output is None else output)))
    started = timestamp if timestamp is not None else time.time() - result.duration
    failed = not result.passed and not result.skipped
    seconds = f"{max(result.duration, 0.0):.3f}"

    root = ET.Element("testsuites", {"name": f"cdlib.{service}", "tests": "1",
                                     "failures": "1" if failed else "0", "errors": "0", "time": seconds})
    suite_el = ET.SubElement(root, "testsuite", {
        "name": f"cdlib.{service}.{result.suite}", "tests": "1", "failures": "1" if failed else "0",
        "errors": "0", "skipped": "1" if result.skipped else "0", "time": seconds,
        "timestamp": _iso(started),
    })
    props = ET.SubElement(suite_el, "properties")
    for name, value in (("target_url", result.target_url), ("exit_code", str(result.exit_code)),
                        ("unstable_ok", "true" if result.unstable_ok else "false")):
        ET.SubElement(props, "property", {"name": name, "value": clean_text(secrets.mask(value))})
    case = ET.SubElement(suite_el, "testcase", {"classname": f"cdlib.{service}", "name": result.suite,
                                                "time": seconds})
    if result.skipped:
        ET.SubElement(case, "skipped", {"message": "suite skipped"})
    elif failed:
        kind = "timeout" if result.exit_code == TIMEOUT_EXIT else "exit-code"
        failure = ET.SubElement(case, "failure", {"message": f"exit code {result.exit_code}", "type": kind})
        failure.text = tail(text.splitlines(), FAILURE_LINES)
    if text:
        ET.SubElement(case, "system-out").text = text
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(path: str | os.PathLike, result: TestResult, service: str, output: str | None = None,
                timestamp: float | None = None) -> Path:
    """Write the report to ``path`` atomically (a reader never sees half a file); return the path."""
    target = Path(path)
    data = render_junit(result, service, output, timestamp)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise TestRunnerError(f"cannot write the JUnit report {target}: {exc.strerror or exc}; "
                              "check the path and its permissions", path=str(target)) from exc
    return target


def conclude(run: TestRun, exit_code: int, output: str, started: float, duration: float) -> TestResult:
    """The result every runner returns, with the summary report written when one was asked for.
    Its output is masked here whatever the runner did (a password in the target URL included)."""
    secrets.register_url(run.target_url)
    result = TestResult(suite=run.suite.type, passed=exit_code == 0, exit_code=exit_code,
                        duration=duration, target_url=secrets.mask(run.target_url), output=secrets.mask(output),
                        unstable_ok=run.suite.unstable)
    if run.junit_path is None:
        return result
    where = summary_path(Path(run.junit_path), run.service, run.suite.type).absolute()
    write_junit(where, result, run.service, output, timestamp=started)
    return TestResult(**{**result.to_dict(), "junit_path": str(where)})
