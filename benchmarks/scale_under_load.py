"""Traffic through the proxy while the live color is scaled and while an instance is killed and healed.

    .venv/bin/python benchmarks/scale_under_load.py [--proxies nginx,haproxy] [--runs 3] [--threads 4]

For each proxy, RUNS times, a busybox web service (released with 1 replica) gets steady traffic of
THREADS new-connection clients (urllib, one request after another) through a private proxy, and:
- scale up: `cdlib scale 3` (start, wait healthy, register, apply the proxy with the new instances);
- scale down: `cdlib scale 1` (de-register, apply the proxy without them and drain, stop, remove);
- kill + heal: with 2 replicas, `docker kill` (SIGKILL) of one instance, then `cdlib heal` (it starts the
  instance again under its name on its pinned port: the proxy configuration stays byte for byte).
It prints, per case: requests sent and failed, the failures by kind, the longest time without a
successful answer, the verb's own seconds (the CLI process, start-up included), and for kill + heal
whether the proxy configuration bytes were identical afterwards and how many of the failed requests
were sent after the instance was dead (the others were in flight on it when it died). Needs dockerd, nginx and HAProxy (scripts/setup); uses its own names
(cdlibhb-*), image and free ports; removes what it started.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.images import build_busybox_web_image  # noqa: E402
from tests.support.load import Load  # noqa: E402
from tests.support.registry import free_port  # noqa: E402

IMAGE = "cdlibhb-web:v1"
HOST_PORTS = "31600-31799"


class Bench:
    def __init__(self, directory: Path, proxy: str, docker):
        self.dir, self.proxy, self.docker = directory, proxy, docker
        self.name = f"cdlibhb-{secrets.token_hex(3)}"
        self.port = free_port()
        self.proxy_dir = directory / proxy
        self.file = directory / "cdlib.yml"
        self.file.write_text(json.dumps({
            "service": self.name, "image": {"repository": IMAGE.split(":")[0], "tag": "v1"}, "port": 8080,
            "health": {"path": "/health", "timeout": 20, "interval": 0.1}, "probe": {"path": "/version"},
            "replicas": 1, "routes": {"paths": [f"/{self.name}/"]},
            "target": {"bind": "127.0.0.1", "stop_timeout": 5, "host_ports": HOST_PORTS},
            "proxy": {"kind": proxy, "listen": f"127.0.0.1:{self.port}", "dir": str(self.proxy_dir)},
            "store": f"sqlite:///{directory / 'state.db'}",
        }))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.name}/version"

    def cli(self, *args: str) -> tuple[float, dict]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("CDLIB_STORE", None)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "cdlib", *args, "-f", str(self.file), "--json"],
                              capture_output=True, text=True, env=env, cwd=self.dir, timeout=300)
        seconds = time.monotonic() - t0
        out = json.loads(proc.stdout or "{}")
        if proc.returncode != 0:
            raise SystemExit(f"cdlib {' '.join(args)} exited {proc.returncode}: {out.get('message') or proc.stderr}")
        return seconds, out

    def config(self) -> bytes:
        name = "nginx.conf" if self.proxy == "nginx" else "haproxy.cfg"
        return (self.proxy_dir / name).read_bytes()

    def teardown(self) -> None:
        for c in self.docker.containers.list(all=True, filters={"label": f"cdlib.service={self.name}"}):
            c.remove(force=True, v=True)
        if self.proxy == "nginx":
            from cdlib.proxy.nginx import NginxProxy as cls
        else:
            from cdlib.proxy.haproxy import HaproxyProxy as cls
        cls(self.proxy_dir, listen=f"127.0.0.1:{self.port}").stop()


def under_load(bench: Bench, threads: int, action) -> dict:
    with Load(bench.url, threads=threads) as load:
        time.sleep(0.5)
        seconds, extra = action(load)
        time.sleep(0.5)
    killed = extra.pop("killed", None)
    if killed is not None:  # failures of requests sent after the instance was dead
        extra["failed_later"] = len(load.failed_after(killed))
    return {"sent": load.sent, "failed": len(load.failed), "kinds": load.failures_by_kind,
            "gap": load.longest_gap, "seconds": seconds, **extra}


def one_run(proxy: str, threads: int, docker) -> list[tuple[str, dict]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cdlibhb-") as tmp:
        bench = Bench(Path(tmp), proxy, docker)
        try:
            bench.cli("release")
            rows.append(("scale 1 -> 3", under_load(bench, threads, lambda load: (bench.cli("scale", "3")[0], {}))))
            rows.append(("scale 3 -> 1", under_load(bench, threads, lambda load: (bench.cli("scale", "1")[0], {}))))
            bench.cli("scale", "2")
            before = bench.config()

            def kill_and_heal(load):
                docker.containers.get(f"{bench.name}-blue-1").kill()
                killed = time.monotonic()
                time.sleep(0.5)
                seconds, out = bench.cli("heal")
                return seconds, {"replaced": out.get("replaced"), "same_bytes": bench.config() == before,
                                 "killed": killed}

            rows.append(("kill + heal (2 replicas)", under_load(bench, threads, kill_and_heal)))
        finally:
            bench.teardown()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxies", default="nginx,haproxy")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    import docker as docker_sdk

    docker = docker_sdk.from_env()
    build_busybox_web_image(docker, IMAGE, "v1", health=True)
    try:
        results: dict[tuple[str, str], list[dict]] = {}
        for proxy in args.proxies.split(","):
            for _ in range(args.runs):
                for case, row in one_run(proxy, args.threads, docker):
                    results.setdefault((proxy, case), []).append(row)
        print(f"{'proxy':<8} {'case':<26} {'failed / sent (each run)':<34} {'longest gap s':<16} {'verb s':<16} notes")
        for (proxy, case), rows in results.items():
            failed = ", ".join(f"{r['failed']}/{r['sent']}" for r in rows)
            gaps = "/".join(f"{r['gap']:.2f}" for r in rows)
            secs = "/".join(f"{r['seconds']:.2f}" for r in rows)
            kinds: dict[str, int] = {}
            for r in rows:
                for k, n in r["kinds"].items():
                    kinds[k] = kinds.get(k, 0) + n
            notes = []
            if kinds:
                notes.append("failures: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
            if any("same_bytes" in r for r in rows):
                notes.append("config identical: " + "/".join(str(r.get("same_bytes")) for r in rows))
                notes.append("failed when sent after the kill: " + "/".join(str(r.get("failed_later")) for r in rows))
            print(f"{proxy:<8} {case:<26} {failed:<34} {gaps:<16} {secs:<16} {'; '.join(notes)}")
    finally:
        try:
            docker.images.remove(IMAGE, force=True)
        except Exception:  # noqa: S110 - best effort
            pass
        docker.close()


if __name__ == "__main__":
    main()
