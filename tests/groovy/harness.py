"""Runs tests/groovy/StepHarness.groovy once per test session and parses its report.

The harness compiles the shared library (src/ classes, vars/ steps) and the Jenkinsfile with
Groovy 2.4 and runs them against recorded pipeline steps. A JVM start and the compilation cost
seconds, so every test that needs the harness shares one run (``session_report()``), which also
checks the planted-bug variants (``VARIANTS``) in the same JVM.

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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "groovy" / "StepHarness.groovy"
LIBRARY = ("vars", "src", "Jenkinsfile")  # what a copy of the library holds

LOCK_HOLDER = {"release": "r-9", "image": "127.0.0.1:5000/shop:v8", "build": "jenkins-shop-41",
               "build_url": "http://ci.example/job/shop/41/"}  # StepHarness.groovy section 10 expects these
UNKNOWN_FAILURE = ("import sys\n"
                   "from cdlib import cli\n"
                   "def dispatch(args, printer):\n"
                   "    raise RuntimeError('a bug')\n"
                   "cli._dispatch = dispatch\n"
                   "sys.exit(cli.main(sys.argv[1:]))\n")

# planted bugs the harness must catch: label -> (file of the library, text, replacement)
VARIANTS = {
    # quote() forgets embedded single quotes
    "quoting": ("src/io/cdlib/Shell.groovy", """.replace("'", "'\\\\''")""", ""),
    # the pipeline no longer rolls back after a failure
    "no-rollback": ("vars/cdlibPipeline.groovy", "cdlibRollback(", "echo("),
}


def groovy_env() -> dict:
    """Debian's groovy launcher looks for /usr/lib/jvm/default-java unless JAVA_HOME is set."""
    env = dict(os.environ)
    if not env.get("JAVA_HOME") and not Path("/usr/lib/jvm/default-java").is_dir():
        for candidate in ("/usr/lib/jvm/java-17-openjdk-amd64", "/usr/lib/jvm/java-21-openjdk-amd64"):
            if Path(candidate).is_dir():
                env["JAVA_HOME"] = candidate
                break
    return env


def _tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def _cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CDLIB_HOME=str(work / ".cdlib"))
    env.pop("CDLIB_STORE", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=work, timeout=120)


def make_cli_results() -> Path:
    """lock-held.json, unknown.json and bad-input.json, each written by cdlib.cli.main."""
    from cdlib import keys
    from cdlib.store.base import default_holder
    from cdlib.store.sqlite import SqliteStore

    out = _tempdir("cdlib-cli-results-")
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
    return out


def copy_library(dest: Path) -> Path:
    for name in LIBRARY:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name)
        else:
            shutil.copy(source, dest / name)
    return dest


def plant(root: Path, label: str) -> None:
    """Plants the bug of VARIANTS[label] into the copy of the library at root."""
    path, text, replacement = VARIANTS[label]
    source = (root / path).read_text()
    assert text in source, f"{path} no longer contains {text!r}: update VARIANTS in {__file__}"
    (root / path).write_text(source.replace(text, replacement))


@dataclass
class Report:
    """One harness run: its exit code and output, split into the main run and the variants."""

    returncode: int
    stdout: str
    stderr: str
    commands: list[dict]
    cli_results: Path
    lines: list[str] = field(default_factory=list)  # the main run's lines
    variants: dict[str, list[str]] = field(default_factory=dict)  # label -> its lines (prefix removed)

    @classmethod
    def parse(cls, proc: subprocess.CompletedProcess, commands: list[dict], cli_results: Path) -> Report:
        report = cls(proc.returncode, proc.stdout, proc.stderr, commands, cli_results)
        for line in proc.stdout.splitlines():
            if line.startswith("variant "):
                label, _, rest = line[len("variant "):].partition(": ")
                report.variants.setdefault(label, []).append(rest)
            else:
                report.lines.append(line)
        return report

    def failures(self, variant: str | None = None) -> list[str]:
        lines = self.variants.get(variant, []) if variant else self.lines
        return [line for line in lines if line.startswith("not ok")]

    def tail(self) -> str:
        return self.stdout[-3000:] + self.stderr[-3000:]


starts = 0  # harness (JVM) starts in this process


def run_harness(root: Path, cli_results: Path, emit: Path | None = None,
                variants: dict[str, Path] | None = None) -> subprocess.CompletedProcess:
    groovy = shutil.which("groovy")
    assert groovy, "groovy is not installed (scripts/setup installs the Debian package)"
    global starts
    starts += 1
    cmd = [groovy, str(HARNESS), "--root", str(root), "--cli-results", str(cli_results)]
    if emit is not None:
        cmd += ["--emit", str(emit)]
    for label, path in (variants or {}).items():
        cmd += ["--variant", f"{label}={path}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=groovy_env(), timeout=600)


_report: Report | None = None


def session_report() -> Report:
    """The one harness run of this test session (started by the first test that asks for it)."""
    global _report
    if _report is None:
        results = make_cli_results()
        work = _tempdir("cdlib-groovy-")
        variants = {}
        for label in VARIANTS:
            variants[label] = copy_library(work / label)
            plant(variants[label], label)
        emit = work / "commands.json"
        proc = run_harness(ROOT, results, emit, variants)
        commands = json.loads(emit.read_text()) if emit.exists() else []
        _report = Report.parse(proc, commands, results)
    return _report
