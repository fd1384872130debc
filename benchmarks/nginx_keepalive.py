"""Keep-alive clients through a private nginx while the upstream switches color: the Lua balancer's
live switch against a reload, and what nginx's own settings change for a reload.

    .venv/bin/python benchmarks/nginx_keepalive.py [--switches 20] [--threads 4] [--runs 3]

Two sets of two keep-alive HTTP/1.1 servers (threads of this process) stand for the colors; THREADS
clients each hold one persistent http.client connection (tests/support/load.py's KeepAliveLoad: a
failure is counted once and the client reconnects; a server's Connection: close is a reconnect) and
send requests one after another while the proxy switches SWITCHES times. Cases:
- live: dynamic upstreams (Debian's Lua module), every switch through the admin socket;
- reload: static upstreams, every switch a reload (SIGHUP, then the drain of the old workers),
  with the packaged settings, then with one setting changed at a time: keepalive_timeout,
  lingering_close, worker_shutdown_timeout (from proxy.drain_timeout).
Prints, per case and run: requests sent, failed, failures by kind, reloads seen. Uses free ports and
temporary directories; stops what it started.

Measured here (2 cores, nginx 1.22.1, lua module 0.10.23; failed requests per run, 3 runs, 20 switches):
    4 clients  live (Lua balancer)                     0/0/0 of ~1,150
               reload, packaged settings               75/75/77 of ~1,550 (RemoteDisconnected)
               reload, keepalive_timeout 2s / 75s      73/75/77, 68/71/76
               reload, lingering_close always / off    72/78/79, 75/77/79
               reload, worker_shutdown_timeout 1s      71/73/76
               reload, keepalive_timeout 0             0/0/0 (every answer closes its connection)
    1 client   live 0/0/0 of ~350; reload 15/18/20 of ~450
A reload costs about one request per keep-alive connection that is idle at that moment (the old
worker closes it while the client sends); none of keepalive_timeout, lingering_close and
worker_shutdown_timeout changes that, only turning keep-alive off does. The packaged settings stay.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdlib.model import Backend, Routes  # noqa: E402
from cdlib.proxy.nginx import NginxProxy  # noqa: E402
from tests.support.load import KeepAliveLoad  # noqa: E402
from tests.support.registry import free_port  # noqa: E402

NAME = "cdlibnxb"


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - the http.server API
        body = f"{self.server.label}\n".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def servers(label: str) -> list[ThreadingHTTPServer]:
    out = []
    for _ in range(2):
        srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _Answer)
        srv.label = label  # type: ignore[attr-defined]
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        out.append(srv)
    return out


# case -> (dynamic, drain_timeout, replacements in the rendered text)
CASES = {
    "live (Lua balancer)": (True, 15.0, {}),
    "reload, packaged settings": (False, 15.0, {}),
    "reload, keepalive_timeout 2s": (False, 15.0, {"keepalive_timeout 15s;": "keepalive_timeout 2s;"}),
    "reload, keepalive_timeout 75s": (False, 15.0, {"keepalive_timeout 15s;": "keepalive_timeout 75s;"}),
    "reload, lingering_close always": (False, 15.0, {"keepalive_timeout 15s;":
                                                     "keepalive_timeout 15s;\n    lingering_close always;"}),
    "reload, lingering_close off": (False, 15.0, {"keepalive_timeout 15s;":
                                                  "keepalive_timeout 15s;\n    lingering_close off;"}),
    "reload, worker_shutdown_timeout 1s": (False, 1.5, {}),
    "reload, keep-alive off (keepalive_timeout 0)": (False, 15.0, {"keepalive_timeout 15s;": "keepalive_timeout 0;"}),
}


def run_case(dynamic: bool, drain: float, replace: dict[str, str], switches: int, threads: int) -> dict:
    colors = {"blue": servers("blue"), "green": servers("green")}
    tmp = Path(tempfile.mkdtemp(prefix="cdlibnxb-"))
    proxy = NginxProxy(tmp / "nginx", listen=f"127.0.0.1:{free_port()}", drain_timeout=drain, dynamic=dynamic)

    def text(color: str) -> str:
        addrs = tuple(("127.0.0.1", s.server_address[1]) for s in colors[color])
        out = proxy.render([Backend(NAME, color, "r", Routes(paths=(f"/{NAME}/",)), addrs)])
        for old, new in replace.items():
            out = out.replace(old, new)
        return out

    try:
        proxy.apply(text("blue"))
        reloads = 0
        with KeepAliveLoad(f"{proxy.url()}/{NAME}/", threads=threads, pause=0.002) as load:
            time.sleep(0.5)
            for i in range(switches):
                workers = proxy.workers()
                proxy.apply(text("green" if i % 2 == 0 else "blue"))
                reloads += proxy.workers() != workers
                time.sleep(0.25)
            time.sleep(0.3)
        return {"sent": load.sent, "failed": len(load.failed), "kinds": load.failures_by_kind,
                "reloads": reloads, "reconnects": load.reconnects}
    finally:
        proxy.stop()
        for group in colors.values():
            for s in group:
                s.shutdown()
                s.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--switches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default="", help="prefixes of case names separated by '+' (default: all)")
    args = ap.parse_args()
    wanted = [c for c in CASES if not args.cases or any(c.startswith(p) for p in args.cases.split("+"))]
    print(f"{args.switches} switches, {args.threads} keep-alive clients, {args.runs} runs per case")
    for case in wanted:
        dynamic, drain, replace = CASES[case]
        results = [run_case(dynamic, drain, replace, args.switches, args.threads) for _ in range(args.runs)]
        failed = sorted(r["failed"] for r in results)
        print(f"{case:48} failed {'/'.join(map(str, failed))} of ~{results[0]['sent']} "
              f"(reloads {results[0]['reloads']}, reconnects {[r['reconnects'] for r in results]}) "
              f"{[r['kinds'] for r in results if r['kinds']]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
