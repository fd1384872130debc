"""What a release costs with cdlib, against a shell script that takes the same steps by hand.

    .venv/bin/python benchmarks/release_vs_shell.py [--runs 7] [--root DIR] [--json FILE]

Two worlds, each with its own service name (cdlibb-rvs-*), nginx (own prefix directory and free
port) and host ports; each has one release live before the timing starts. Then, alternately (the
order flips every round):
- cdlib: `cdlib release --tag vN` (2 replicas, SQLite store, nginx, curl suites for
  pre- and post-integration: /health and /version of the new color, then through nginx);
- shell: benchmarks/release_vs_shell.sh, the same steps with the same waits: docker rename (set
  aside), docker run x2 on pinned ports, health polling with curl, the pre-integration suite,
  nginx config written + nginx -t + nginx -s reload + wait for the old workers to exit, a probe
  through nginx until the new color answered 3 times in a row, the post-integration suite,
  docker stop of the old color, docker rm of the set-aside instances.
Each release replaces the other color, so every round is a full blue-green release. A second
scenario fails the post-integration suite: cdlib rolls the release back, the script does the same
by hand (previous nginx config back + reload + drain, new containers removed, set-aside renamed
back).

Prints the median wall time and the median CPU time of the controlling process tree (the process
and every child it waited for: python, sh, curl, the docker CLI, nginx -t; not dockerd or nginx
workers) of each, and the ratio. cdlib's modules are compiled once into a private bytecode cache
(an installed package's are compiled at install time; --no-bytecode compiles them on every run,
which costs about 0.1 s more per run here). --root runs cdlib from another source tree (e.g. an older
checkout) to compare versions. Needs dockerd, nginx, curl; removes everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.images import build_busybox_web_image  # noqa: E402
from tests.support.registry import free_port  # noqa: E402

SCRIPT = Path(__file__).resolve().with_name("release_vs_shell.sh")
IMAGE = "cdlibb-rvs-web"
INTERVAL = 0.1  # health polling interval, both sides
HEALTH_TIMEOUT = 30
# one suite for both types and both sides: the new color directly (pre), then through nginx (post)
SUITE = ('if [ "${BENCH_FAIL:-}" = "$TEST_TYPE" ]; then echo "$TEST_TYPE: failing on purpose"; exit 3; fi; '
         'curl -fsS -o /dev/null --max-time 5 "${TARGET_URL%/}/health" && '
         'curl -fsS --max-time 5 "${TARGET_URL%/}/version"')


def timed(argv: list[str], env: dict, cwd: Path) -> tuple[int, float, float, str]:
    """Run argv to its end: (exit code, wall s, CPU s of it and its waited-for children, output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, wall, cpu, proc.stdout + proc.stderr


class CdlibWorld:
    kind = "cdlib"

    def __init__(self, workdir: Path, root: Path, python: str, bytecode: bool = True):
        self.dir = workdir / "cdlib"
        self.dir.mkdir()
        self.bytecode = bytecode
        self.name = f"cdlibb-rvs-{secrets.token_hex(3)}"
        self.listen = free_port()
        self.root, self.python = root, python
        descriptor = {
            "service": self.name,
            "image": {"repository": IMAGE, "tag": "v1"},
            "port": 8080,
            "health": {"path": "/health", "timeout": HEALTH_TIMEOUT, "interval": INTERVAL},
            "probe": {"path": "/version", "timeout": 10},
            "replicas": 2,
            "routes": {"paths": [f"/{self.name}/"]},
            "tests": {t: {"command": SUITE, "pass_env": ["BENCH_FAIL"], "timeout": 60}
                      for t in ("pre-integration", "post-integration")},
            "target": {"bind": "127.0.0.1", "stop_timeout": 5},
            "proxy": {"kind": "nginx", "listen": f"127.0.0.1:{self.listen}", "dir": str(self.dir / "nginx")},
            "store": f"sqlite:///{self.dir / 'state.db'}",
        }
        self.file = self.dir / "cdlib.yml"
        self.file.write_text(json.dumps(descriptor, indent=2))  # JSON is YAML

    def release(self, tag: str, fail: str | None = None) -> tuple[int, float, float, str]:
        env = dict(os.environ, PYTHONPATH=str(self.root))
        if self.bytecode:
            # as installed (pip compiles the modules): compiled once, into a cache of our own, so
            # that nothing is written into the source tree
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.dir / "pycache")
        env.pop("CDLIB_STORE", None)
        env.pop("BENCH_FAIL", None)
        if fail:
            env["BENCH_FAIL"] = fail
        return timed([self.python, "-m", "cdlib", "release", "--tag", tag, "-f", str(self.file)], env, self.dir)

    def cleanup(self, client) -> None:
        for c in client.containers.list(all=True, filters={"label": f"cdlib.service={self.name}"}):
            c.remove(force=True, v=True)
        _stop_nginx(self.dir / "nginx")


class ShellWorld:
    kind = "shell"

    def __init__(self, workdir: Path):
        self.dir = workdir / "shell"
        self.dir.mkdir()
        self.name = f"cdlibb-rvsh-{secrets.token_hex(3)}"
        self.listen = free_port()
        self.ports = {c: f"{free_port()} {free_port()}" for c in ("blue", "green")}

    def release(self, tag: str, fail: str | None = None) -> tuple[int, float, float, str]:
        env = dict(os.environ, SVC=self.name, IMAGE=f"{IMAGE}:{tag}", DIR=str(self.dir / "nginx"),
                   LISTEN=str(self.listen), PORTS_BLUE=self.ports["blue"], PORTS_GREEN=self.ports["green"],
                   SUITE=SUITE, INTERVAL=f"{INTERVAL:g}", HEALTH_TRIES=str(int(HEALTH_TIMEOUT / INTERVAL)))
        env.pop("BENCH_FAIL", None)
        if fail:
            env["BENCH_FAIL"] = fail
        return timed(["/bin/sh", str(SCRIPT)], env, self.dir)

    def cleanup(self, client) -> None:
        for c in client.containers.list(all=True, filters={"label": f"cdlib.bench={self.name}"}):
            c.remove(force=True, v=True)
        _stop_nginx(self.dir / "nginx")


def _stop_nginx(prefix: Path) -> None:
    """Stop the nginx whose prefix is this directory (its master's pid is in nginx.pid)."""
    try:
        master = int((prefix / "nginx.pid").read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{master}/cmdline").read_bytes()
    except OSError:
        return
    if b"nginx" not in cmdline or str(prefix).encode() not in cmdline:
        return  # the pid was reused by something else
    os.kill(master, signal.SIGQUIT)
    for _ in range(500):
        if not Path(f"/proc/{master}").exists():
            return
        time.sleep(0.01)
    os.kill(master, signal.SIGKILL)


def scenario(worlds, runs: int, fail: str | None, tags: list[str]) -> dict[str, list[tuple[float, float]]]:
    """runs rounds; each world's release alternates between the tags; the order flips every round."""
    samples: dict[str, list[tuple[float, float]]] = {w.kind: [] for w in worlds}
    expected = 1 if fail else 0
    for n in range(runs):
        tag = tags[n % len(tags)]
        for world in (worlds if n % 2 == 0 else worlds[::-1]):
            code, wall, cpu, out = world.release(tag, fail)
            if code != expected:
                raise SystemExit(f"{world.kind} release of {tag} exited {code}, expected {expected}:\n{out}")
            samples[world.kind].append((wall, cpu))
    return samples


def table(results: dict[str, dict[str, list[tuple[float, float]]]], runs: int) -> str:
    lines = [f"median of {runs} alternating runs (wall s / CPU s of the controlling process tree)", "",
             "| scenario | cdlib wall | cdlib CPU | shell wall | shell CPU | wall ratio | CPU ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, samples in results.items():
        cw = statistics.median(s[0] for s in samples["cdlib"])
        cc = statistics.median(s[1] for s in samples["cdlib"])
        sw = statistics.median(s[0] for s in samples["shell"])
        sc = statistics.median(s[1] for s in samples["shell"])
        lines.append(f"| {name} | {cw:.2f} | {cc:.2f} | {sw:.2f} | {sc:.2f} | {cw / sw:.2f}x | {cc / sc:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed rounds per scenario (default 7)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the cdlib source tree to run")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs cdlib")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="compile cdlib's modules on every run (as with PYTHONDONTWRITEBYTECODE=1 and "
                             "a source checkout); by default they are compiled once, as an installed "
                             "package's are")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: expected 1 or more")
    for tool in ("docker", "nginx", "curl", "pgrep"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH")

    import docker

    client = docker.from_env()
    tags = ["v2", "v1"]
    for tag in tags:
        build_busybox_web_image(client, f"{IMAGE}:{tag}", tag)
    workdir = Path(tempfile.mkdtemp(prefix="cdlibb-rvs-"))
    worlds = [CdlibWorld(workdir, args.root.resolve(), args.python, not args.no_bytecode), ShellWorld(workdir)]
    try:
        for world in worlds:  # the first release (nothing to replace yet) is not timed
            code, _, _, out = world.release("v1")
            if code != 0:
                raise SystemExit(f"{world.kind}: first release failed ({code}):\n{out}")
        results = {
            "release (2 replicas, suites, nginx switch, stop old)": scenario(worlds, args.runs, None, tags),
            # every round fails the same way and leaves v2 live: the rollback restores it each time
            "failed post-integration suite + rollback": scenario(worlds, args.runs, "post-integration", ["v1"]),
        }
    finally:
        for world in worlds:
            world.cleanup(client)
        shutil.rmtree(workdir, ignore_errors=True)
        for tag in tags:
            try:
                client.images.remove(f"{IMAGE}:{tag}", force=True)
            except docker.errors.APIError:
                pass
        client.close()
    print(table(results, args.runs))
    print(f"\ncdlib from {args.root}, bytecode {'compiled on every run' if args.no_bytecode else 'cached'}")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "root": str(args.root), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
