"""Traffic through the proxy while a service is replaced: naive replacement versus `cdlib release`,
with new-connection clients and keep-alive clients, for nginx and HAProxy, in reload and runtime modes.

    .venv/bin/python benchmarks/switch_under_load.py [--proxies nginx,haproxy] [--modes reload,runtime]
        [--releases 3] [--threads 2] [--runs 1] [--no-naive]

Every case sends two kinds of steady traffic at once (THREADS clients of each) through a private proxy
to a busybox web service (2 replicas) and releases new versions in the middle:
- new connection: one new connection per request (urllib);
- keep-alive: one persistent http.client connection per client; a failed request is counted once and
  the client reconnects; a server's `Connection: close` is a reconnect, not a failure.
Cases:
- naive: `docker stop` + `docker rm` the v1 container, `docker run` v2 on the same host port (nginx);
- cdlib release, PROXY, MODE: RELEASES releases (v2, v1, v2, ...) of a service, one after another.
  MODE reload: every switch reloads the proxy (nginx without its Lua module, HAProxy without the
  runtime API); MODE runtime: a switch goes without a reload (nginx's Lua balancer, HAProxy's runtime
  API). A mode the installed proxy or this cdlib does not support prints "not available" and why.
  The mode is forced on the proxy adapter (the keyword argument of NginxProxy / HaproxyProxy) in the
  cdlib process; the "reloads" column counts the releases after which the proxy ran other workers,
  which shows the way each switch really went.
It prints, per case: releases, requests sent and failed for each kind of client, the failures by
kind, and the longest time without a successful answer. Needs dockerd, nginx and HAProxy
(scripts/setup); uses its own names (cdlibb-*) and free ports; removes what it started.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdlib.model import Backend, Routes  # noqa: E402
from cdlib.proxy.haproxy import HaproxyProxy  # noqa: E402
from cdlib.proxy.managed import children  # noqa: E402
from cdlib.proxy.nginx import NginxProxy  # noqa: E402
from tests.support.images import build_busybox_web_image  # noqa: E402
from tests.support.load import KeepAliveLoad, Load  # noqa: E402
from tests.support.registry import free_port  # noqa: E402

IMAGE = "cdlibb-web"
MODES = ("reload", "runtime")
PROXIES = {"nginx": NginxProxy, "haproxy": HaproxyProxy}
# the keyword argument that turns each adapter's switch without a reload on or off
MODE_FLAG = {"nginx": "dynamic", "haproxy": "runtime_api"}

# `cdlib` with the proxy adapter built in the requested mode: argv = kind mode cdlib-arguments...
LAUNCHER = r"""
import sys
import cdlib.wiring as wiring
kind, mode, flag = sys.argv[1:4]
def open_proxy(spec):
    p = spec.proxy
    if kind == "nginx":
        from cdlib.proxy.nginx import NginxProxy as cls
    else:
        from cdlib.proxy.haproxy import HaproxyProxy as cls
    proxy = cls(p.dir, listen=p.listen, binary=p.binary, template=p.template, drain_timeout=p.drain_timeout,
                **({flag: mode == "runtime"} if flag != "-" else {}))
    proxy.tls_listen = p.tls_listen
    return proxy
wiring.open_proxy = open_proxy
from cdlib.cli import main
sys.exit(main(sys.argv[4:]))
"""


@dataclass
class Row:
    case: str
    run: int
    releases: int = 0
    reloads: int | None = None
    loads: dict[str, Load] = field(default_factory=dict)
    why_not: str = ""  # "not available" and why, or why the case failed
    failed: bool = False


class ReleaseFailed(Exception):
    """A cdlib command of a case failed: the case is reported as failed, the others go on."""


def mode_problem(kind: str, mode: str, binary: str | None = None) -> str | None:
    """Why ``mode`` cannot run on this machine with this cdlib, or None."""
    cls = PROXIES[kind]
    has_flag = MODE_FLAG[kind] in inspect.signature(cls.__init__).parameters
    if mode == "reload":
        return None  # with no flag the adapter has one way only: a reload
    if not has_flag:
        return f"this cdlib's {cls.__name__} has no {MODE_FLAG[kind]} switch"
    if kind == "nginx":
        from cdlib.proxy import nginx

        if not nginx.lua_available(binary or "nginx"):
            return "the nginx Lua module (libnginx-mod-http-lua) is not installed for this nginx binary"
    return None


def _workers(proxy) -> frozenset[int]:
    pid = proxy.master_pid()
    return frozenset(children(pid)) if pid else frozenset()


def naive(client, workdir: Path, seconds: float, threads: int) -> Row:
    port, listen = free_port(), free_port()
    proxy = NginxProxy(workdir / "naive-nginx", listen=f"127.0.0.1:{listen}")
    name = f"cdlibb-naive-{secrets.token_hex(3)}"

    def run(tag):
        return client.containers.run(f"{IMAGE}:{tag}", name=name, detach=True, init=True,
                                     ports={"8080/tcp": ("127.0.0.1", port)})

    container = run("v1")
    row = Row("naive stop + run on the same port, nginx", 0, releases=1)
    try:
        time.sleep(0.5)
        proxy.apply(proxy.render([Backend("naive", "blue", "v1", Routes(paths=("/naive/",)),
                                          (("127.0.0.1", port),))]))
        url = f"http://127.0.0.1:{listen}/naive/version"
        with Load(url, threads=threads) as new, KeepAliveLoad(url, threads=threads) as kept:
            time.sleep(seconds / 2)
            container.stop(timeout=10)
            container.remove()
            container = run("v2")
            time.sleep(seconds / 2)
        row.loads = {"new connection": new, "keep-alive": kept}
        return row
    finally:
        container.remove(force=True)
        proxy.stop()


def cdlib_release(workdir: Path, threads: int, kind: str, mode: str, releases: int, run: int) -> Row:
    label = f"cdlib release, {'nginx' if kind == 'nginx' else 'HAProxy'}, {mode}"
    row = Row(label, run)
    problem = mode_problem(kind, mode)
    if problem:
        row.why_not = problem
        return row
    service = f"cdlibb-{secrets.token_hex(3)}"
    listen = free_port()
    proxy_dir = workdir / f"cdlib-{kind}-{mode}-{run}"
    descriptor = {
        "service": service, "image": {"repository": IMAGE, "tag": "v1"}, "port": 8080,
        "health": {"path": "/health", "timeout": 30, "interval": 0.1}, "probe": {"path": "/version"},
        "replicas": 2, "routes": {"paths": ["/bench/"]}, "target": {"stop_timeout": 10},
        "proxy": {"kind": kind, "listen": f"127.0.0.1:{listen}", "dir": str(proxy_dir)},
        "store": f"sqlite:///{workdir / f'{service}.db'}",
    }
    file = workdir / f"{service}.yml"
    file.write_text(json.dumps(descriptor))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CDLIB_STORE", None)
    has_flag = MODE_FLAG[kind] in inspect.signature(PROXIES[kind].__init__).parameters
    flag = MODE_FLAG[kind] if has_flag else "-"

    def cli(*args):
        proc = subprocess.run([sys.executable, "-c", LAUNCHER, kind, mode, flag, *args, "-f", str(file), "-q"],
                              env=env, cwd=workdir, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ReleaseFailed(f"cdlib {' '.join(args)} exited {proc.returncode}: "
                                f"{(proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]}")

    adapter = PROXIES[kind](proxy_dir, listen=f"127.0.0.1:{listen}")
    try:
        cli("release", "--tag", "v1")
        url = f"http://127.0.0.1:{listen}/bench/version"
        row.reloads = 0
        with Load(url, threads=threads) as new, KeepAliveLoad(url, threads=threads) as kept:
            time.sleep(1.0)
            for i in range(releases):
                before = _workers(adapter)
                cli("release", "--tag", "v2" if i % 2 == 0 else "v1")
                row.releases += 1
                row.reloads += _workers(adapter) != before
                time.sleep(0.5)
            time.sleep(0.5)
        row.loads = {"new connection": new, "keep-alive": kept}
        return row
    except ReleaseFailed as exc:
        row.why_not = str(exc)
        row.failed = True
        return row
    finally:
        import docker

        client = docker.from_env()
        for c in client.containers.list(all=True, filters={"label": f"cdlib.service={service}"}):
            c.remove(force=True)
        adapter.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxies", default="nginx,haproxy", help="nginx, haproxy or both (default both)")
    ap.add_argument("--modes", default="reload,runtime", help="reload, runtime or both (default both)")
    ap.add_argument("--releases", type=int, default=3, help="releases per case (default 3)")
    ap.add_argument("--seconds", type=float, default=12.0, help="traffic of the naive case (default 12)")
    ap.add_argument("--threads", type=int, default=2, help="clients of each kind (default 2)")
    ap.add_argument("--runs", type=int, default=1, help="repeat each case (default 1)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive case")
    args = ap.parse_args()
    proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for p in proxies:
        if p not in PROXIES:
            ap.error(f"--proxies: unknown proxy {p!r} (nginx, haproxy)")
    for m in modes:
        if m not in MODES:
            ap.error(f"--modes: unknown mode {m!r} (reload, runtime)")

    import docker

    client = docker.from_env()
    for tag in ("v1", "v2"):
        build_busybox_web_image(client, f"{IMAGE}:{tag}", tag)
    rows: list[Row] = []
    try:
        for run in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory(prefix="cdlibb-") as tmp:
                if not args.no_naive:
                    row = naive(client, Path(tmp), args.seconds, args.threads)
                    row.run = run
                    rows.append(row)
                for kind in proxies:
                    for mode in modes:
                        rows.append(cdlib_release(Path(tmp), args.threads, kind, mode, args.releases, run))
                        _print_row(rows[-1])
    finally:
        for tag in ("v1", "v2"):
            client.images.remove(f"{IMAGE}:{tag}", force=True)
    print()
    print(f"{'case':<40} {'run':>3} {'rel':>3} {'reloads':>7} {'client':<15} {'sent':>6} {'failed':>6} "
          f"{'longest gap':>11}  failures by kind")
    for row in rows:
        _print_row(row)


def _print_row(row: Row) -> None:
    head = f"{row.case:<40} {row.run:>3}"
    if row.why_not:
        print(f"{head}   {'FAILED' if row.failed else 'not available'}: {row.why_not}", flush=True)
        return
    reloads = "-" if row.reloads is None else str(row.reloads)
    for client_kind, load in row.loads.items():
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(load.failures_by_kind.items())) or "-"
        print(f"{head} {row.releases:>3} {reloads:>7} {client_kind:<15} {load.sent:>6} {len(load.failed):>6} "
              f"{load.longest_gap:>10.3f}s  {kinds}", flush=True)


if __name__ == "__main__":
    main()
