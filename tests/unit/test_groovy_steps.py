"""The Jenkins shared library (vars/) and the Jenkinsfile, checked with Groovy 2.4.

tests/groovy/StepHarness.groovy compiles every step and the Jenkinsfile and runs them against recorded
pipeline steps (exact argument lists, credentials, exit-code mapping, stage order, rollbacks). These
tests run it, then run every command line the steps produced through a real /bin/sh, the way Jenkins'
``sh`` step does, to prove that the quoting gives the CLI exactly the intended arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "groovy" / "StepHarness.groovy"


def groovy_env() -> dict:
    """Debian's groovy launcher looks for /usr/lib/jvm/default-java unless JAVA_HOME is set."""
    env = dict(os.environ)
    if not env.get("JAVA_HOME") and not Path("/usr/lib/jvm/default-java").is_dir():
        for candidate in ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/java-21-openjdk-amd64"):
            if Path(candidate).is_dir():
                env["JAVA_HOME"] = candidate
                break
    return env


def run_harness(root: Path, emit: Path | None = None) -> subprocess.CompletedProcess:
    groovy = shutil.which("groovy")
    assert groovy, "groovy is not installed (scripts/setup installs the Debian package)"
    cmd = [groovy, str(HARNESS), "--root", str(root)]
    if emit is not None:
        cmd += ["--emit", str(emit)]
    return subprocess.run(cmd, capture_output=True, text=True, env=groovy_env(), timeout=300)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    emit = tmp_path_factory.mktemp("groovy") / "commands.json"
    proc = run_harness(ROOT, emit)
    commands = json.loads(emit.read_text()) if emit.exists() else []
    return proc, commands


def test_every_harness_check_passes(harness):
    proc, _ = harness
    failures = [line for line in proc.stdout.splitlines() if line.startswith("not ok")]
    assert proc.returncode == 0 and not failures, "\n".join(failures) or proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    passed = int(summary.split()[0])
    assert summary == f"{passed} passed, 0 failed"
    assert passed > 300  # the harness really ran its cases


def test_the_harness_covers_every_step_and_verb(harness):
    _, commands = harness
    from cdlib.api import VERBS

    verbs = {c["argv"][0] for c in commands}
    assert verbs == set(VERBS)  # one step per verb of the Python API and the CLI: three doors, one house
    for verb in VERBS:
        assert (ROOT / "vars" / f"cdlib{verb.capitalize()}.groovy").exists(), verb
    assert {c["argv"][1] for c in commands if c["argv"][0] == "test"} >= {
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
    _, commands = harness
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
    _, commands = harness
    command = next(c for c in commands if c["argv"][:1] == ["release"] and "reports" in c["argv"])
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
    _, commands = harness
    command = next(c for c in commands if c["argv"][0] == "status")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f"#!{sys.executable}\n" + ARGV_DUMP)
    fake.chmod(0o755)
    out = tmp_path / "argv.jsonl"
    proc = _run_script(command["script"], tmp_path, {"PATH": f"{bin_dir}:/usr/bin:/bin", "ARGV_OUT": str(out)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == ["-m", "cdlib", *command["argv"]]


def test_the_harness_fails_a_library_that_quotes_wrongly(tmp_path):
    """The harness is not a rubber stamp: a library whose quote() forgets embedded quotes fails it."""
    shutil.copytree(ROOT / "vars", tmp_path / "vars")
    shutil.copy(ROOT / "Jenkinsfile", tmp_path / "Jenkinsfile")
    run_groovy = tmp_path / "vars" / "cdlibRun.groovy"
    source = run_groovy.read_text()
    broken = source.replace(""".replace("'", "'\\\\''")""", "")
    assert broken != source
    run_groovy.write_text(broken)
    proc = run_harness(tmp_path)
    assert proc.returncode == 1
    assert any(line.startswith("not ok - quoting") for line in proc.stdout.splitlines()), proc.stdout[-2000:]


def test_the_harness_fails_a_jenkinsfile_without_rollback(tmp_path):
    shutil.copytree(ROOT / "vars", tmp_path / "vars")
    source = (ROOT / "Jenkinsfile").read_text()
    broken = source.replace("cdlibRollback(", "echo(")
    assert broken != source
    (tmp_path / "Jenkinsfile").write_text(broken)
    proc = run_harness(tmp_path)
    assert proc.returncode == 1
    assert "not ok - Jenkinsfile: post failure calls cdlibRollback" in proc.stdout
