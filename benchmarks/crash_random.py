"""SIGKILL `cdlib release` at random moments, then `cdlib rollback`: how often is the world restored exactly?

    .venv/bin/python benchmarks/crash_random.py [--trials 40] [--stores sqlite,etcd] [--seed 1129]

For each store, one service on the real dockerd with a private nginx: release v1, then v2 (its
duration bounds the random delays), then TRIALS times: start `cdlib release` of the other version,
SIGKILL it after a seeded random delay in [0, duration), run `cdlib rollback`, compare the world with
before (see tests/support/crash.py). Prints trials, restored exactly, closed before the kill (the new
release, nothing left over), broken (with what differed), and the longest rollback. Needs dockerd,
nginx and, for etcd, the etcd on 127.0.0.1:2379 (scripts/setup); uses its own names (cdlibb-crash-*)
and removes what it started, keys included.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.crash import CrashWorld, build_images  # noqa: E402

IMAGE = "cdlibb-crash-web"


def run(store: str, trials: int, seed: int, client) -> int:
    with tempfile.TemporaryDirectory(prefix="cdlibb-crash-") as tmp:
        world = CrashWorld(Path(tmp), client, IMAGE, store=store, prefix="cdlibb")
        try:
            world.release("v1")
            duration = max(world.release("v2"), world.release("v3"))  # the one that sets aside is slower
            rng = random.Random(f"{seed}-{store}")
            results = []
            for i in range(trials):
                t = world.trial(rng, duration)
                results.append(t)
                print(f"  {store} trial {i + 1:3}: kill after {t.delay:5.2f}s (exit {t.exit_code:3}) -> {t.outcome}, "
                      f"rollback {t.rollback_seconds:.2f}s  [{t.where}]", flush=True)
                for d in t.differences:
                    print(f"      {d[:400]}", flush=True)
        finally:
            world.teardown()
    broken = sum(t.outcome == "broken" for t in results)
    print(f"{store}: release {duration:.2f}s; trials {len(results)}, restored exactly "
          f"{sum(t.outcome == 'restored' for t in results)}, closed before the kill "
          f"{sum(t.outcome == 'released' for t in results)}, broken {broken}; max rollback "
          f"{max(t.rollback_seconds for t in results):.2f}s", flush=True)
    return broken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--stores", default="sqlite,etcd")
    parser.add_argument("--seed", type=int, default=1129)
    args = parser.parse_args()
    import docker

    client = docker.from_env()
    try:
        build_images(client, IMAGE)
        broken = sum(run(store, args.trials, args.seed, client) for store in args.stores.split(","))
    finally:
        for version in ("v1", "v2", "v3"):
            try:
                client.images.remove(f"{IMAGE}:{version}", force=True)
            except Exception:  # noqa: BLE001
                pass
        client.close()
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
