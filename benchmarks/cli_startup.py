"""How long the CLI takes to start, and which client libraries each command imports.

    .venv/bin/python benchmarks/cli_startup.py [--runs 20]

`--help` must import none of docker, jinja2, yaml, requests or the registry clients (the CLI is
called for every Jenkins stage); `color` reads the store only (yaml for the descriptor, sqlite).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ("docker", "jinja2", "yaml", "requests", "etcd3gw", "consul", "jenkins")


ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def median_ms(cmd: list[str], cwd: str, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, check=False)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def imported_clients(argv: list[str], cwd: str) -> list[str]:
    probe = (f"import sys, runpy; sys.argv=['cdlib', *{argv!r}]\n"
             "try:\n    runpy.run_module('cdlib', run_name='__main__')\nexcept SystemExit: pass\n"
             f"print(__import__('json').dumps([m for m in {CLIENTS!r} if m in sys.modules]), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=ENV, capture_output=True, text=True)
    return json.loads(out.stderr.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "cdlib.yml").write_text(f"service: bench\nport: 80\nimage: r/bench:1\nstore: sqlite:///{tmp}/s.db\n")
        print(f"{'command':<24} {'median ms':>10}  client libraries imported")
        print(f"{'python -c pass':<24} {median_ms([sys.executable, '-c', 'pass'], tmp, args.runs):>10.1f}")
        for argv in (["--help"], ["color"]):
            ms = median_ms([sys.executable, "-m", "cdlib", *argv], tmp, args.runs)
            print(f"{'cdlib ' + ' '.join(argv):<24} {ms:>10.1f}  {', '.join(imported_clients(argv, tmp)) or 'none'}")


if __name__ == "__main__":
    main()
