"""The Jenkins shared library (vars/) and the Jenkinsfile, checked with Groovy 2.4.

tests/groovy/StepHarness.groovy compiles every step and the Jenkinsfile and runs them against recorded
pipeline steps (exact argument lists, credentials, exit-code mapping, stage order, rollbacks). These
tests run it, then run every command line the steps produced through a real /bin/sh, the way Jenkins'
``sh`` step does, to prove that the quoting gives the CLI exactly the intended arguments.

The results the harness feeds to the steps for a held lock, an unknown failure and bad input are
written by the real CLI (cdlib.cli.main) first, so the steps and the CLI cannot drift apart.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


LOCK_HOLDER = {"release": "r-9", "image": "127.0.0.1:5000/shop:v8", "build": "jenkins-shop-41",
               "build_url": "http://ci.example/job/shop/41/"}  # StepHarness.groovy section 10 expects these
UNKNOWN_FAILURE = ("import sys\n"
                   "from cdlib import cli\n"
                   "def dispatch(args, printer):\n"
                   "    raise RuntimeError('a bug')\n"
                   "cli._dispatch = dispatch\n"
                   "sys.exit(cli.main(sys.argv[1:]))\n")
_results: Path | None = None


def _cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CDLIB_HOME=str(work / ".cdlib"))
    env.pop("CDLIB_STORE", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=work, timeout=120)


def cli_results() -> Path:
    """lock-held.json, unknown.json and bad-input.json, each written by cdlib.cli.main (made once)."""
    global _results
    if _results is not None:
        return _results
    from cdlib import keys
    from cdlib.store.base import default_holder
    from cdlib.store.sqlite import SqliteStore

    out = Path(tempfile.mkdtemp(prefix="cdlib-cli-results-"))
    atexit.register(shutil.rmtree, out, True)
    work = out / "work"
    work.mkdir()
    (work / "cdlib.yml").write_text(f"service: shop\nport: 80\nimage: r/shop:1\nstore: sqlite:///{work / 's.db'}\n")
    # held by this (live) process, so no expiry or dead-holder rule takes it over
    store = SqliteStore(work / "s.db")
    store.acquire_lock(keys.lock("shop"), default_holder(**LOCK_HOLDER), ttl=600)
    store.close()
    proc = _cli(work, "-m", "cdlib", "deploy", "--result-file", str(out / "lock-held.json"))
    assert proc.returncode == 3, proc.stderr
    proc = _cli(work, "-c", UNKNOWN_FAILURE, "switch", "--result-file", str(out / "unknown.json"))
    assert proc.returncode == 5, proc.stderr
    (work / "bad.yml").write_text("service: shop\nport: 80\nimage: r/shop:1\nroutes: {paths: ['/x;}']}\n")
    proc = _cli(work, "-m", "cdlib", "deploy", "-f", "bad.yml", "--result-file", str(out / "bad-input.json"))
    assert proc.returncode == 2, proc.stderr
    _results = out
    return out


def run_harness(root: Path, emit: Path | None = None) -> subprocess.CompletedProcess:
    groovy = shutil.which("groovy")
    assert groovy, "groovy is not installed (scripts/setup installs the Debian package)"
    cmd = [groovy, str(HARNESS), "--root", str(root), "--cli-results", str(cli_results())]
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


def test_the_results_the_harness_uses_come_from_the_cli(harness):
    """The CLI side of the contract the harness checks: the lock holder sits under error.holder."""
    proc, _ = harness
    locked = json.loads((cli_results() / "lock-held.json").read_text())
    assert locked["exit_code"] == 3 and locked["service"] == "shop" and "holder" not in locked
    assert locked["error"]["type"] == "LockHeld"
    assert {k: locked["error"]["holder"][k] for k in LOCK_HOLDER} == LOCK_HOLDER
    unknown = json.loads((cli_results() / "unknown.json").read_text())
    assert unknown["exit_code"] == 5 and unknown["error"]["type"] == "RuntimeError"
    checked = [line for line in proc.stdout.splitlines() if line.startswith("ok - CLI ")]
    assert len(checked) >= 12, proc.stdout[-3000:]


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
