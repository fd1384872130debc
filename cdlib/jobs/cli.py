"""``cdlib jobs render|diff|apply``: the Jenkins jobs of the job catalog.

    cdlib jobs render --out DIR [--catalog PATH]
    cdlib jobs diff  [--catalog PATH] [--prune] [--recreate] [--workers N] [--timeout SECONDS]
    cdlib jobs apply [--catalog PATH] [--prune] [--recreate] [--dry-run] [--workers N] [--timeout SECONDS]

The CLI imports this module at start-up to build its parser, so it imports nothing heavy: the
catalog, the renderer and the client are imported by ``run``.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from ..errors import ConfigError
from ..model import Outcome

DEFAULT_WORKERS = 4


def add_parser(subparsers, parents=()) -> argparse.ArgumentParser:
    """Register ``jobs`` and its actions; ``run`` is set as the handler."""
    parents = list(parents)
    catalog = argparse.ArgumentParser(add_help=False)
    catalog.add_argument("--catalog", metavar="PATH", default=argparse.SUPPRESS,
                         help="the job catalog (default: $CDLIB_JOBS_CATALOG or jenkins/catalog.yml)")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--workers", type=int, default=argparse.SUPPRESS, metavar="N",
                        help=f"read and write up to N items at a time (default {DEFAULT_WORKERS})")
    remote.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                        help="timeout of each request to Jenkins (default 30)")
    remote.add_argument("--prune", action="store_true", default=argparse.SUPPRESS,
                        help="delete the jobs cdlib manages that are no longer in the catalog")
    remote.add_argument("--recreate", action="store_true", default=argparse.SUPPRESS,
                        help="delete and create again an item whose type changed (its build history is lost)")

    jobs = subparsers.add_parser(
        "jobs", parents=[*parents, catalog], help="render, diff or apply the Jenkins jobs of the job catalog",
        description="The Jenkins jobs of the microservices (jenkins/catalog.yml). diff and apply read "
                    "JENKINS_URL, JENKINS_USER and JENKINS_API_TOKEN.")
    actions = jobs.add_subparsers(dest="jobs_verb", metavar="ACTION", parser_class=type(jobs))
    actions.required = True
    render = actions.add_parser("render", parents=[*parents, catalog], help="write the config.xml files",
                                description="Write DIR/<folder path>/<job>/config.xml and the folders' "
                                            "DIR/<folder path>/config.xml; needs no Jenkins.")
    render.add_argument("--out", metavar="DIR", required=True, help="the directory to write into")
    actions.add_parser("diff", parents=[*parents, catalog, remote], help="what apply would change",
                       description="Compare the catalog with the server; writes nothing.")
    apply = actions.add_parser("apply", parents=[*parents, catalog, remote], help="upload the differences",
                               description="Create the missing folders and jobs and update the ones that "
                                           "differ; a second run with nothing changed writes nothing.")
    apply.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                       help="only say what would change (the same as diff)")
    jobs.set_defaults(handler=run)
    return jobs


def run(args) -> Outcome:
    """Carry out ``cdlib jobs ACTION``; errors are raised (the CLI turns them into its result)."""
    action = getattr(args, "jobs_verb", None) or "render"
    path = getattr(args, "catalog", None) or os.environ.get("CDLIB_JOBS_CATALOG") or None
    from . import catalog as cat

    catalog = cat.load(path)
    if action == "render":
        return _render(catalog, args.out)
    from . import sync
    from .jenkins import JenkinsClient

    workers = getattr(args, "workers", DEFAULT_WORKERS)
    timeout = getattr(args, "timeout", 30.0)
    if not 1 <= workers <= 64:
        raise ConfigError(f"--workers: expected a whole number from 1 to 64, got {workers!r}", key="--workers")
    if not math.isfinite(timeout) or not 0 < timeout <= 3600:
        raise ConfigError(f"--timeout: expected a number of seconds above 0 and at most 3600, got {timeout!r}",
                          key="--timeout")
    client = JenkinsClient.from_env(timeout=float(timeout))
    options: dict[str, Any] = {"prune": bool(getattr(args, "prune", False)),
                               "recreate": bool(getattr(args, "recreate", False)), "workers": workers}
    try:
        if action == "diff":
            return sync.diff(catalog, client, **options)
        return sync.apply(catalog, client, dry_run=bool(getattr(args, "dry_run", False)), **options)
    finally:
        client.close()


def _render(catalog, out: str) -> Outcome:
    from pathlib import Path

    from .render import render_catalog, write_tree

    items = render_catalog(catalog)
    paths = write_tree(items, Path(out))
    folders = sum(1 for i in items if i.kind == "folder")
    return Outcome("jobs", "", True, 0,
                   f"jobs render: {len(items) - folders} jobs and {folders} folders from {catalog.source} "
                   f"written to {out}",
                   data={"action": "render", "catalog": catalog.source, "out": str(out),
                         "files": [str(p) for p in paths],
                         "items": [{"name": i.fullname, "kind": i.kind, "rev": i.rev} for i in items]})
