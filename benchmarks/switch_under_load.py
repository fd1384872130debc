"""Traffic through nginx while a service is replaced: naive replacement versus `cdlib release`.

    .venv/bin/python benchmarks/switch_under_load.py [--seconds 12] [--threads 4] [--runs 1]

Both cases send the same steady traffic (THREADS clients, one new connection per request) through
a private nginx to a busybox web service and replace v1 with v2 in the middle:
- naive: `docker stop` + `docker rm` the v1 container, `docker run` v2 on the same host port;
- cdlib: `cdlib release` of v2 over v1 (blue-green, switch, drain, cleanup), through nginx and
  through HAProxy.
It prints requests sent, failed, and the longest time without a successful answer. Needs dockerd,
nginx and HAProxy (scripts/setup); uses its own names (cdlibb-*) and free ports; removes what it started.
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

from cdlib.model import Backend, Routes  # noqa: E402
from cdlib.proxy.nginx import NginxProxy  # noqa: E402
from tests.support.images import build_busybox_web_image  # noqa: E402
from tests.support.load import Load  # noqa: E402
from tests.support.registry import free_port  # noqa: E402

IMAGE = "cdlibb-web"


def naive(client, workdir: Path, seconds: float, threads: int) -> Load:
    port, listen = free_port(), free_port()
    proxy = NginxProxy(workdir / "naive-nginx", listen=f"127.0.0.1:{listen}")
    name = f"cdlibb-naive-{secrets.token_hex(3)}"

    def run(tag):
        return client.containers.run(f"{IMAGE}:{tag}", name=name, detach=True, init=True,
                                     ports={"8080/tcp": ("127.0.0.1", port)})

    container = run("v1")
    try:
        time.sleep(0.5)
        proxy.apply(proxy.render([Backend("naive", "blue", "v1", Routes(paths=("/naive/",)),
                                          (("127.0.0.1", port),))]))
        with Load(f"http://127.0.0.1:{listen}/naive/version", threads=threads) as load:
            time.sleep(seconds / 2)
            container.stop(timeout=10)
            container.remove()
            container = run("v2")
            time.sleep(seconds / 2)
        return load
    finally:
        container.remove(force=True)
        proxy.stop()


def cdlib_release(workdir: Path, seconds: float, threads: int, proxy: str = "nginx") -> Load:
    service = f"cdlibb-{secrets.token_hex(3)}"
    listen = free_port()
    proxy_dir = workdir / f"cdlib-{proxy}"
    descriptor = {
        "service": service, "image": {"repository": IMAGE, "tag": "v1"}, "port": 8080,
        "health": {"path": "/health", "timeout": 30}, "probe": {"path": "/version"}, "replicas": 2,
        "routes": {"paths": ["/bench/"]}, "target": {"stop_timeout": 10},
        "proxy": {"kind": proxy, "listen": f"127.0.0.1:{listen}", "dir": str(proxy_dir)},
        "store": f"sqlite:///{workdir / f'{service}.db'}",
    }
    file = workdir / "cdlib.yml"
    file.write_text(json.dumps(descriptor))
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cli(*args):
        subprocess.run([sys.executable, "-m", "cdlib", *args, "-f", str(file), "-q"], check=True, env=env)

    try:
        cli("release", "--tag", "v1")
        with Load(f"http://127.0.0.1:{listen}/bench/version", threads=threads) as load:
            time.sleep(seconds / 2)
            t0 = time.monotonic()
            cli("release", "--tag", "v2")
            time.sleep(max(0.0, seconds / 2 - (time.monotonic() - t0)))
        return load
    finally:
        import docker

        client = docker.from_env()
        for c in client.containers.list(all=True, filters={"label": f"cdlib.service={service}"}):
            c.remove(force=True)
        if proxy == "nginx":
            NginxProxy(proxy_dir, listen=f"127.0.0.1:{listen}").stop()
        else:
            from cdlib.proxy.haproxy import HaproxyProxy

            HaproxyProxy(proxy_dir, listen=f"127.0.0.1:{listen}").stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="traffic per case (default 12)")
    ap.add_argument("--threads", type=int, default=4, help="concurrent clients (default 4)")
    ap.add_argument("--runs", type=int, default=1, help="repeat each case (default 1)")
    args = ap.parse_args()

    import docker

    client = docker.from_env()
    for tag in ("v1", "v2"):
        build_busybox_web_image(client, f"{IMAGE}:{tag}", tag)
    rows = []
    try:
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="cdlibb-") as tmp:
                for label, fn in (("naive stop + run on the same port", lambda: naive(client, Path(tmp), args.seconds,
                                                                                        args.threads)),
                                  ("cdlib release, nginx", lambda: cdlib_release(Path(tmp), args.seconds,
                                                                                  args.threads)),
                                  ("cdlib release, HAProxy", lambda: cdlib_release(Path(tmp), args.seconds,
                                                                                    args.threads, "haproxy"))):
                    load = fn()
                    rows.append((label, run + 1, load.sent, len(load.failed), load.longest_gap))
    finally:
        for tag in ("v1", "v2"):
            client.images.remove(f"{IMAGE}:{tag}", force=True)
    print(f"{'case':<36} {'run':>3} {'sent':>7} {'failed':>7} {'longest gap':>12}")
    for label, run, sent, failed, gap in rows:
        print(f"{label:<36} {run:>3} {sent:>7} {failed:>7} {gap:>11.3f}s")


if __name__ == "__main__":
    main()
