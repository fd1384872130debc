"""Run a suite as a command on the agent (``tests.<type>.command`` in cdlib.yml).

A list runs as is (no shell); a string runs with ``/bin/sh -c``. The suite gets its own process
group so that a timeout ends everything it started, not only the shell on top: a ``pytest`` that
spawned a browser must not outlive the build. Output is streamed line by line (Jenkins shows
progress) while only the last lines are kept for the result and the JUnit report.

The suite gets a built environment, not the agent's (see :mod:`cdlib.testrun.base`). Every line it
prints is masked (:mod:`cdlib.secrets`) as it is read, before it is streamed or kept, so no secret
reaches the console, the result, the journal or the JUnit report, and cutting the output to its
tail can never leave a part of a secret behind.
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import secrets
from ..errors import TestRunnerError
from ..model import TestResult
from . import junit
from .base import TestRun, TestRunner, host_environment

OutputCallback = Callable[[str], None]

READ_LIMIT = 64 * 1024  # a line longer than this is cut into pieces rather than held whole
SHELL = "/bin/sh"
# words a shell handles itself: a string command starting with one of these is not looked up on PATH
_SHELL_WORDS = frozenset(
    "! . : [ [[ { ( alias bg break case cd command continue eval exec exit export false fg for "
    "function getopts hash if jobs kill let local printf pwd read readonly return select set shift "
    "source test times trap true type ulimit umask unalias unset until wait while echo".split())


class CommandRunner(TestRunner):
    """``on_output`` is called with each line as the suite prints it, from a reader thread."""

    kind = "command"

    def __init__(self, on_output: OutputCallback | None = None, *, tail_lines: int = junit.TAIL_LINES,
                 kill_grace: float = 5.0, leftover_grace: float = 1.0):
        self.on_output = on_output
        self.tail_lines = tail_lines
        self.kill_grace = kill_grace  # SIGTERM -> SIGKILL
        self.leftover_grace = leftover_grace  # how long background children may hold the output open

    def run(self, run: TestRun) -> TestResult:
        argv = self._argv(run)
        workdir = self._workdir(run)
        env = host_environment()
        env.update(run.environment())
        report_dir = junit.prepare_dir(run)
        if report_dir is not None:
            env["JUNIT_DIR"] = str(report_dir)
        if isinstance(run.suite.command, str):
            self._check_program(run, workdir, env)

        started = time.time()
        clock = time.monotonic()
        proc = self._spawn(run, argv, workdir, env)
        lines: collections.deque[str] = collections.deque(maxlen=max(self.tail_lines, 1))
        reader = threading.Thread(target=self._pump, args=(proc, lines), daemon=True,
                                  name=f"cdlib-test-{run.suite.type}")
        reader.start()
        try:
            exit_code, notes = self._wait(proc, reader, run.suite.timeout)
        except BaseException:
            # Ctrl-C or an abort in the caller: the suite and its children go with us
            self._kill_group(proc)
            raise
        finally:
            reader.join(timeout=self.kill_grace)
            if proc.stdout is not None and not reader.is_alive():
                # a reader still blocked (a child that left the group holds the pipe) keeps the
                # buffer's lock: closing under it would hang, so the daemon thread is left behind
                proc.stdout.close()
        for note in notes:
            self._emit(note)
            lines.append(note)
        output = junit.tail(lines, self.tail_lines)
        return junit.conclude(run, exit_code, output, started, time.monotonic() - clock)

    # -- preparing ---------------------------------------------------------------------------
    @staticmethod
    def _argv(run: TestRun) -> list[str]:
        command = run.suite.command
        if command is None:
            raise TestRunnerError(f"suite {run.suite.type} of {run.service} has no command to run; "
                                  f"set tests.{run.suite.type}.command in cdlib.yml", suite=run.suite.type)
        if isinstance(command, str):
            return [SHELL, "-c", command]
        return [str(part) for part in command]

    @staticmethod
    def _workdir(run: TestRun) -> Path:
        workdir = Path(run.suite.workdir) if run.suite.workdir else Path.cwd()
        if not workdir.is_dir():
            raise TestRunnerError(f"suite {run.suite.type} of {run.service}: working directory {workdir} "
                                  f"does not exist; check tests.{run.suite.type}.workdir",
                                  suite=run.suite.type, workdir=str(workdir))
        return workdir

    @staticmethod
    def _check_program(run: TestRun, workdir: Path, env: dict[str, str]) -> None:
        """Fail early on ``pytest -q`` when pytest is not installed, instead of a red test report.

        Only a plain first word is checked; anything the shell may interpret (assignments,
        builtins, quoting it cannot split) is left to the shell.
        """
        try:
            words = shlex.split(str(run.suite.command), comments=True)
        except ValueError:
            return
        if not words:
            return
        first = words[0]
        if first in _SHELL_WORDS or "=" in first or any(c in first for c in "$`*?[]{}()<>|;&~"):
            return
        if "/" in first:
            path = first if os.path.isabs(first) else str(workdir / first)
            found = os.path.isfile(path) and os.access(path, os.X_OK)
        else:
            found = shutil.which(first, path=env.get("PATH", os.defpath)) is not None
        if not found:
            raise TestRunnerError(
                f"suite {run.suite.type} of {run.service}: command {first!r} not found or not executable "
                f"(in {workdir}, PATH of the agent); check tests.{run.suite.type}.command",
                suite=run.suite.type, command=first)

    @staticmethod
    def _spawn(run: TestRun, argv: list[str], workdir: Path, env: dict[str, str]) -> subprocess.Popen:
        try:
            return subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except (FileNotFoundError, PermissionError, OSError) as exc:
            reason = {FileNotFoundError: "not found", PermissionError: "not executable"}.get(
                type(exc), exc.strerror or str(exc))
            raise TestRunnerError(
                f"suite {run.suite.type} of {run.service}: command {argv[0]!r} {reason} "
                f"(in {workdir}); check tests.{run.suite.type}.command",
                suite=run.suite.type, command=argv[0]) from exc

    # -- running -----------------------------------------------------------------------------
    def _emit(self, line: str) -> None:
        if self.on_output is None:
            return
        try:
            self.on_output(line)
        except Exception:  # noqa: BLE001 - a broken console must not stall the suite on a full pipe
            self.on_output = None

    def _pump(self, proc: subprocess.Popen, lines: collections.deque[str]) -> None:
        assert proc.stdout is not None
        stdout = proc.stdout
        try:
            cut = False  # the previous piece was the beginning of a line longer than READ_LIMIT
            for raw in iter(lambda: stdout.readline(READ_LIMIT), b""):
                whole = raw.endswith(b"\n") or len(raw) < READ_LIMIT  # else readline cut it
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                # a piece of a long line may begin or end inside a secret
                line = secrets.mask(line, edges=cut or not whole)
                cut = not whole
                lines.append(line)
                self._emit(line)
        except (OSError, ValueError):
            pass  # the pipe was closed under us after a kill

    def _wait(self, proc: subprocess.Popen, reader: threading.Thread, timeout: float) -> tuple[int, list[str]]:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
            return junit.TIMEOUT_EXIT, [f"cdlib: the suite timed out after {timeout:g}s; "
                                        f"its process group was killed (exit code {junit.TIMEOUT_EXIT})"]
        notes = []
        reader.join(timeout=self.leftover_grace)
        if reader.is_alive():
            # background children still hold the output open: they end with the suite
            self._kill_group(proc)
            notes.append("cdlib: processes the suite left running were killed")
        if code < 0:
            notes.append(f"cdlib: the suite was killed by signal {-code}")
            code = 128 - code
        return code, notes

    def _kill_group(self, proc: subprocess.Popen) -> None:
        """SIGTERM the suite's process group and every process still holding its output, then
        SIGKILL whatever is left after the grace period.

        A child that left the group (``setsid``, a ``start_new_session`` server in a fixture) is
        not reached through the group, yet it still holds the output pipe: found through /proc, it
        ends with the suite instead of outliving the build and keeping the reader blocked.
        """
        pgid = proc.pid  # start_new_session: the suite leads its own group
        pipe = _pipe_name(proc)
        group = _signal_group(pgid, signal.SIGTERM)
        holders = _signal_pids(_pipe_holders(pipe), signal.SIGTERM)
        if not group and not holders:
            proc.poll()
            return
        deadline = time.monotonic() + self.kill_grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so it does not count as alive
            if not _group_alive(pgid) and not _pipe_holders(pipe):
                proc.poll()  # the leader may have died since the poll above
                return
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)
        _signal_pids(_pipe_holders(pipe), signal.SIGKILL)
        try:
            proc.wait(timeout=self.kill_grace)
        except subprocess.TimeoutExpired:
            pass


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member changed its user: still there, nothing more we can do


def _signal_pids(pids: set[int], sig: int) -> set[int]:
    """Send sig to each pid; the ones that were there."""
    sent = set()
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent.add(pid)
        except ProcessLookupError:
            pass
        except PermissionError:
            sent.add(pid)  # another user's process: still there, nothing more we can do
    return sent


def _pipe_name(proc: subprocess.Popen) -> str | None:
    """How /proc names the suite's output pipe (``pipe:[inode]``); None without one."""
    if proc.stdout is None:
        return None
    try:
        return f"pipe:[{os.fstat(proc.stdout.fileno()).st_ino}]"
    except (OSError, ValueError):
        return None


def _pipe_holders(pipe: str | None) -> set[int]:
    """Living processes other than this one that hold the write end of the pipe: the suite's
    descendants, wherever their process group. Empty without /proc or for processes we may not
    inspect."""
    proc_dir = Path("/proc")
    if pipe is None or not (proc_dir / "self" / "fd").is_dir():
        return set()
    me = os.getpid()
    found = set()
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == pipe and _writes(entry / "fdinfo" / fd.name):
                    found.add(int(entry.name))
                    break
            except OSError:
                continue
    return {pid for pid in found if _running(pid)}


def _writes(fdinfo: Path) -> bool:
    """Whether the descriptor was opened for writing (a process forked from this one without an
    exec would hold the read end, and must be left alone)."""
    for line in fdinfo.read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
    return True


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count: they are dead).

    Reads /proc where there is one, because orphaned zombies linger when PID 1 does not reap them
    and ``killpg(pgid, 0)`` would report them as alive until the grace period ran out.
    """
    proc_dir = Path("/proc")
    if not (proc_dir / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False
