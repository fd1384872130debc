"""Jobs for 500 microservices: render time, and the HTTP requests and writes of `cdlib jobs apply`.

    .venv/bin/python benchmarks/jobs_sync.py [--services 500] [--workers 4] [--folders 10]

Generates a catalog of N services spread over team folders, renders it, then applies it three
times against the Jenkins double (tests/doubles/jenkins_double.py):
- first apply: creates every folder and job, reads each back;
- second apply with nothing changed: the target is zero writes (one listing plus one config read
  per item, compared after normalisation);
- third apply after one job was changed in the "UI": exactly one write.
Against a real controller the request counts are the same; the times then include the network
and Jenkins' own work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdlib.jobs import catalog as cat  # noqa: E402
from cdlib.jobs import sync  # noqa: E402
from cdlib.jobs.jenkins import JenkinsClient  # noqa: E402
from cdlib.jobs.render import Renderer, render_catalog  # noqa: E402
from tests.doubles.jenkins_double import JenkinsDouble  # noqa: E402

USER, TOKEN = "cdlibb-admin", "cdlibb-token-0123456789abcdef"


def generate(services: int, folders: int) -> cat.Catalog:
    entries = []
    for i in range(services):
        team = f"team-{i % folders:02d}"
        entry = {"name": f"svc-{i:04d}", "repository": f"https://git.example.com/{team}/svc-{i:04d}.git",
                 "folder": f"cdlibb/{team}/services", "description": f"Service {i} of {team}"}
        if i % 3 == 0:
            entry["parameters"] = [{"name": "LOCK_WAIT", "default": "300"}, {"name": "FAST", "type": "boolean"}]
        if i % 5 == 0:
            entry["triggers"] = {"scm_poll": "H/5 * * * *"}
        entries.append(entry)
    return cat.parse({"defaults": {"keep_builds": 30, "credentials": "git-ci", "triggers": {"github_push": True}},
                      "services": entries}, "generated.yml")


def run_apply(double: JenkinsDouble, catalog: cat.Catalog, workers: int) -> dict:
    client = JenkinsClient(double.url, USER, TOKEN, timeout=30, retries=0)
    before_requests, before_writes = len(double.requests), double.writes
    t0 = time.perf_counter()
    outcome = sync.apply(catalog, client, workers=workers)
    seconds = time.perf_counter() - t0
    if not outcome.ok:
        raise SystemExit(f"apply failed: {outcome.message.splitlines()[0]}")
    counts = {k: v for k, v in outcome.data["counts"].items() if v}
    return {"seconds": seconds, "requests": len(double.requests) - before_requests,
            "writes": double.writes - before_writes, "counts": counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--folders", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    catalog = generate(args.services, args.folders)
    t0 = time.perf_counter()
    items = render_catalog(catalog, Renderer())
    render_seconds = time.perf_counter() - t0

    rows = []
    with JenkinsDouble(users={USER: TOKEN}) as double:
        rows.append(("first apply (empty Jenkins)", run_apply(double, catalog, args.workers)))
        rows.append(("second apply (nothing changed)", run_apply(double, catalog, args.workers)))
        victim = catalog.jobs[len(catalog.jobs) // 2].fullname
        double.ui_edit(victim, "definition/scriptPath", "Jenkinsfile.edited-in-the-ui")
        rows.append(("third apply (one job edited in the UI)", run_apply(double, catalog, args.workers)))

    jobs = len(catalog.jobs)
    print(f"{jobs} services, {len(items) - jobs} folders, {args.workers} workers, against the Jenkins double")
    print(f"render: {render_seconds:.3f} s ({render_seconds / len(items) * 1000:.2f} ms per item)")
    print()
    print(f"{'run':<40} {'seconds':>8} {'requests':>9} {'writes':>7}  actions")
    for name, r in rows:
        actions = ", ".join(f"{v} {k}" for k, v in r["counts"].items())
        print(f"{name:<40} {r['seconds']:>8.2f} {r['requests']:>9} {r['writes']:>7}  {actions}")
    second = rows[1][1]
    ok = second["writes"] == 0 and rows[2][1]["writes"] == 1
    print()
    print("second apply wrote nothing, the UI edit cost one write: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
