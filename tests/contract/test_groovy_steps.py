"""The Jenkins shared library (src/ classes, vars/ steps) and the Jenkinsfile, checked with Groovy 2.4.

tests/groovy/StepHarness.groovy compiles the library and the Jenkinsfile and runs them against recorded
pipeline steps (exact argument lists, credentials, exit-code mapping, stage order, rollbacks). It starts
once per test session (tests/groovy/harness.py), planted-bug variants included; these tests assert on
its report, then run every command line the steps produced through a real /bin/sh, the way Jenkins'
``sh`` step does, to prove that the quoting gives the CLI exactly the intended arguments.

The results the harness feeds to the steps for a held lock, an unknown failure and bad input are
written by the real CLI (cdlib.cli.main) first, so the steps and the CLI cannot drift apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.groovy import harness as groovy_harness
from tests.groovy.harness import LOCK_HOLDER, ROOT, VARIANTS, Report, session_report


@pytest.fixture(scope="session")
def harness() -> Report:
    """The one harness run of the session, shared with test_steps_match_cli.py."""
    return session_report()


def test_every_harness_check_passes(harness):
    failures = harness.failures()
    assert harness.returncode == 0 and not failures, "\n".join(failures) or harness.tail()
    summary = harness.lines[-1]
    passed = int(summary.split()[0])
    assert summary == f"{passed} passed, 0 failed"
    assert passed > 300  # the harness really ran its cases


def test_the_harness_starts_once_for_the_library_and_every_planted_bug(harness):
    assert groovy_harness.starts == 1
    assert session_report() is harness


def test_the_harness_loads_the_src_classes(harness):
    compiled = [line for line in harness.lines if line.startswith("ok - compiles src class io.cdlib.")]
    assert len(compiled) == len(list((ROOT / "src").rglob("*.groovy"))) >= 5, harness.tail()


def test_the_results_the_harness_uses_come_from_the_cli(harness):
    """The CLI side of the contract the harness checks: the lock holder sits under error.holder."""
    locked = json.loads((harness.cli_results / "lock-held.json").read_text())
    assert locked["exit_code"] == 3 and locked["service"] == "shop" and "holder" not in locked
    assert locked["error"]["type"] == "LockHeld"
    assert {k: locked["error"]["holder"][k] for k in LOCK_HOLDER} == LOCK_HOLDER
    unknown = json.loads((harness.cli_results / "unknown.json").read_text())
    assert unknown["exit_code"] == 5 and unknown["error"]["type"] == "RuntimeError"
    checked = [line for line in harness.lines if line.startswith("ok - CLI ")]
    assert len(checked) >= 12, harness.tail()


def test_the_harness_covers_every_step_and_verb(harness):
    from cdlib.api import VERBS

    verbs = {c["argv"][0] for c in harness.commands}
    assert verbs == set(VERBS)  # one step per verb of the Python API and the CLI: three doors, one house
    for verb in VERBS:
        assert (ROOT / "vars" / f"cdlib{verb.capitalize()}.groovy").exists(), verb
    assert {c["argv"][1] for c in harness.commands if c["argv"][0] == "test"} >= {
        "pre-deployment", "pre-integration", "post-integration"}


ARGV_DUMP = """import json, os, sys
with open(os.environ["ARGV_OUT"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _run_script(script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    # Jenkins runs an sh step without an interpreter line as: sh -xe SCRIPT
    path = cwd / "script.sh"
    path.write_text(script + "\n")
    return subprocess.run(["/bin/sh", "-xe", str(path)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=30)


def test_a_real_shell_passes_exactly_the_intended_arguments(harness, tmp_path):
    commands = harness.commands
    assert commands
    dump = tmp_path / "dump.py"
    dump.write_text(ARGV_DUMP)
    for i, command in enumerate(commands):
        work = tmp_path / f"w{i}"
        work.mkdir()
        out = work / "argv.jsonl"
        env = {"PATH": os.environ["PATH"], "CDLIB_CLI": f"{sys.executable} {dump}", "ARGV_OUT": str(out)}
        proc = _run_script(command["script"], work, env)
        assert proc.returncode == 0, (command["case"], proc.stderr)
        assert json.loads(out.read_text()) == command["argv"], command["case"]
        assert not (work / "pwned").exists(), f"{command['case']}: a value was executed by the shell"


def test_stale_result_files_are_removed_before_the_cli_runs(harness, tmp_path):
    command = next(c for c in harness.commands if c["argv"][:1] == ["release"] and "reports" in c["argv"])
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "old.xml").write_text("<testsuite/>")
    (tmp_path / "reports" / "keep.txt").write_text("not a report")
    (tmp_path / "cdlib-result-release.json").write_text("{}")
    probe = tmp_path / "probe.py"
    probe.write_text("import os, sys\nsys.exit(0 if not os.path.exists('cdlib-result-release.json') "
                     "and not os.path.exists('reports/old.xml') else 9)\n")
    proc = _run_script(command["script"], tmp_path, {"PATH": os.environ["PATH"],
                                                      "CDLIB_CLI": f"{sys.executable} {probe}"})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "reports" / "keep.txt").exists()


def test_without_cdlib_cli_the_shell_runs_python3_m_cdlib(harness, tmp_path):
    command = next(c for c in harness.commands if c["argv"][0] == "status")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f"#!{sys.executable}\n" + ARGV_DUMP)
    fake.chmod(0o755)
    out = tmp_path / "argv.jsonl"
    proc = _run_script(command["script"], tmp_path, {"PATH": f"{bin_dir}:/usr/bin:/bin", "ARGV_OUT": str(out)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == ["-m", "cdlib", *command["argv"]]


def test_every_planted_bug_runs_in_the_same_harness_start(harness):
    assert set(harness.variants) == set(VARIANTS), harness.tail()
    for label, lines in harness.variants.items():
        summary = lines[-1]
        assert summary.endswith(" failed") and not summary.endswith(" 0 failed"), (label, summary)
        assert int(summary.split()[0]) > 300, (label, summary)  # the variant ran every check too


def test_the_harness_fails_a_library_that_quotes_wrongly(harness):
    """The harness is not a rubber stamp: a library whose quote() forgets embedded quotes fails it."""
    assert any(line.startswith("not ok - quoting") for line in harness.failures("quoting")), harness.tail()


def test_the_harness_fails_a_pipeline_without_rollback(harness):
    failures = harness.failures("no-rollback")
    assert any(f.startswith("not ok - cdlibPipeline, switch exits 2: stops there and rolls back") for f in failures), failures
    assert any(f.startswith("not ok - Jenkinsfile (library), switch exits 2: rolls back") for f in failures), failures
