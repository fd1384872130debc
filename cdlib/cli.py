"""argv -> one library call -> exit code. The only place that prints for humans.

Exit codes: 0 done, 1 failed and rolled back, 2 bad usage or input (nothing changed), 3 lock held
by another release, 4 failed and the undo is incomplete (a person is needed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import EXIT_USAGE, CdlibError
from .model import Outcome, StepReport

SECRET_ENV = ("CDLIB_REGISTRY_PASSWORD", "CONSUL_HTTP_TOKEN", "JENKINS_API_TOKEN", "ETCDCTL_PASSWORD",
              "ETCDCTL_USER", "DOCKER_AUTH_CONFIG")
TEST_TYPES = ("pre-deployment", "pre-integration", "post-integration")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(EXIT_USAGE, f"cdlib: error: {message} (see 'cdlib {self.prog.split()[-1]} --help')\n"
                  if " " in self.prog else f"cdlib: error: {message} (see 'cdlib --help')\n")


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the verb (after: defaults suppressed so they don't reset)."""
    p = argparse.ArgumentParser(add_help=False)
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("-f", "--file", default=d(None), help="the service descriptor (default: cdlib.yml or $CDLIB_FILE)")
    p.add_argument("--store", default=d(None), help="sqlite:///path, etcd://host:port or consul://host:port")
    p.add_argument("--json", action="store_true", default=d(False), help="print the result as JSON")
    p.add_argument("--result-file", default=d(None), metavar="PATH", help="also write the JSON result to PATH")
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="print only errors")
    return p


def _release_opts(p: argparse.ArgumentParser, image: bool = True) -> None:
    p.add_argument("--tag", help="the image tag to release (default: the descriptor's, or $CDLIB_TAG)")
    if image:
        p.add_argument("--image", help="a full image reference to release instead of repository:tag")


def _lock_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for another release of the service to finish (default: fail at once)")
    p.add_argument("--lock-ttl", type=float, default=3600.0, metavar="SECONDS",
                   help="the release lock expires after SECONDS without progress (default 3600)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cdlib", parents=[_common(False)],
                     description="Blue-green releases of containerized microservices, driven from Jenkins.",
                     epilog="exit codes: 0 done, 1 failed and rolled back, 2 bad input, 3 lock held, "
                            "4 undo incomplete (a person is needed)")
    parser.add_argument("--version", action="version", version=f"cdlib {__version__}")
    common = _common(True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    def verb(name, help_text):
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text)

    verb("status", "live color, instances and their health, open release, lock holder")
    p = verb("color", "print the live color (or, with --next, the color the next release goes to)")
    p.add_argument("--next", action="store_true", help="the color the next release goes to")
    p = verb("history", "past releases of the service, newest first")
    p.add_argument("--limit", type=int, default=20)
    p = verb("build", "build the service image and the test images, tagged")
    _release_opts(p, image=False)
    p.add_argument("--only", choices=("service", "tests"), help="build only the service image or only the test images")
    p = verb("push", "push the service image and the test images to their registry")
    _release_opts(p, image=False)
    p.add_argument("--only", choices=("service", "tests"), help="push only the service image or only the test images")
    p = verb("test", "run a test suite: pre-deployment, pre-integration (the new color directly) or "
                     "post-integration (through the proxy)")
    p.add_argument("type", metavar="TYPE", choices=TEST_TYPES, help=" | ".join(TEST_TYPES))
    _release_opts(p, image=False)
    p.add_argument("--target-url", help="run against this URL instead of the default target")
    p.add_argument("--junit", metavar="PATH", help="write the JUnit XML report to PATH")
    p.add_argument("--junit-dir", metavar="DIR", default=os.environ.get("CDLIB_JUNIT_DIR", "cdlib-reports"),
                   help="write JUnit XML reports into DIR (default: cdlib-reports)")
    p.add_argument("--no-rollback", action="store_true",
                   help="leave the release open when the suite fails (default: roll it back)")
    p = verb("deploy", "open a release: start the next color beside the live one, wait until healthy, register it")
    _release_opts(p)
    _lock_opts(p)
    verb("switch", "point the proxy at the new color, verify through the proxy, store the new live color")
    verb("cleanup", "stop and de-register the old color (kept stopped for a quick rollback); close the release")
    p = verb("rollback", "undo the open release; without one, return to the previous release")
    p.add_argument("--to", metavar="RELEASE_ID", help="return to this release from history")
    _lock_opts(p)
    p = verb("release", "deploy, pre-integration tests, switch, post-integration tests, cleanup; "
                        "roll back on any failure")
    _release_opts(p)
    _lock_opts(p)
    p.add_argument("--junit-dir", metavar="DIR", default=os.environ.get("CDLIB_JUNIT_DIR", "cdlib-reports"),
                   help="write JUnit XML reports into DIR (default: cdlib-reports)")
    p = verb("proxy", "the proxy configuration from the registry: render it, apply it, or keep it in line")
    psub = p.add_subparsers(dest="proxy_verb", metavar="ACTION", parser_class=_Parser)
    psub.required = True
    psub.add_parser("render", parents=[common], help="print the configuration for every service in the registry")
    pa = psub.add_parser("apply", parents=[common], help="render, validate, swap, reload; refuses a live service "
                                                         "without a healthy backend")
    pa.add_argument("--force", action="store_true", help="reload even when the rendered text did not change")
    pw = psub.add_parser("watch", parents=[common], help="apply whenever the registry changes or an instance's "
                                                         "health does; until stopped")
    pw.add_argument("--debounce", type=float, default=1.0, metavar="SECONDS",
                    help="collect a burst of registry changes into one reload (default 1)")
    pw.add_argument("--interval", type=float, default=10.0, metavar="SECONDS",
                    help="re-check instance health at least this often (default 10)")
    pw.add_argument("--max-seconds", type=float, default=None, metavar="SECONDS", help="stop after SECONDS")
    pw.add_argument("--once", action="store_true", help="one pass, then exit")
    from .jobs import cli as jobs_cli  # light: builds its parser only

    jobs_cli.add_parser(sub, [common])
    return parser


# ------------------------------------------------------------------------------------------------
SECRET_NAME_RE = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)


def _redact(text: str) -> str:
    """Mask the values of secret environment variables: the known ones, and any whose name says it
    holds a secret (a test suite's pass_env token, say, which the suite might print)."""
    names = set(SECRET_ENV) | {n for n in os.environ if SECRET_NAME_RE.search(n)}
    for name in names:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
            if ":" in value:  # user:password
                text = text.replace(value.split(":", 1)[1], "***")
    return text


class _Printer:
    def __init__(self, args):
        self.quiet = args.quiet or args.json
        self.stream = sys.stdout

    def step(self, step: StepReport) -> None:
        if self.quiet:
            return
        mark = {"done": "ok", "failed": "FAILED", "undone": "undone", "undo-failed": "UNDO FAILED",
                "skipped": "skipped"}.get(step.status, step.status)
        line = f"  {step.name:<22} {mark:<11} {step.seconds:6.2f}s"
        if step.detail:
            line += f"  {step.detail}"
        print(_redact(line), file=self.stream, flush=True)

    def output(self, line: str) -> None:
        """A line a test suite printed (called from the runner's reader thread)."""
        if not self.quiet:
            print(_redact(f"      | {line.rstrip()}"), file=self.stream, flush=True)


def _print_status(out: Outcome) -> None:
    d = out.data
    live = d.get("live")
    print(f"service   {out.service}")
    print("live      " + (f"{live['color']}  {live.get('image')}  release {live.get('release')}" if live else "none"))
    print(f"next      {d.get('next_color')}")
    rel = d.get("open_release")
    print("release   " + (f"{rel['id']} {rel['phase']} -> {rel['color']} {rel['image']}" if rel else "none open"))
    lock = d.get("lock")
    print("lock      " + (f"held by {lock.get('who')} build {lock.get('build') or '-'}"
                          + (" (expired)" if lock.get("expired") else "") if lock else "free"))
    print("instances")
    for i in d.get("instances", []):
        health = {True: "healthy", False: "UNHEALTHY", None: "-"}[i.get("healthy")]
        reg = "registered" if i.get("registered") else "-"
        if i.get("registry"):
            reg += f" ({i['registry']})"
        where = f"{i['address']}:{i['port']}" if i.get("port") else "-"
        print(f"  {i['name']:<32} {i['state']:<9} {health:<9} {reg:<10} {where:<21} {i['image']}")
    drift = d.get("drift") or {}
    for kind, names in drift.items():
        if names:
            print(f"drift     {kind.replace('_', ' ')}: {', '.join(names)}")


def _dispatch(args, printer: _Printer) -> Outcome:
    from . import api

    if args.verb == "jobs":
        return args.handler(args)
    if args.verb == "proxy":
        return _proxy(args, printer)
    report = printer.step
    file, store = args.file, args.store
    v = args.verb
    if v == "status":
        return api.status(file, store=store)
    if v == "color":
        return api.color(file, next=args.next, store=store)
    if v == "history":
        return api.history(file, limit=args.limit, store=store)
    if v == "build":
        return api.build(file, tag=args.tag, only=args.only, report=report)
    if v == "push":
        return api.push(file, tag=args.tag, only=args.only, report=report)
    if v == "test":
        return api.test(args.type, file, tag=args.tag, store=store, target_url=args.target_url, junit=args.junit,
                        junit_dir=args.junit_dir, rollback_on_failure=not args.no_rollback, report=report,
                        output=printer.output)
    if v == "deploy":
        return api.deploy(file, tag=args.tag, image=args.image, store=store, lock_wait=args.lock_wait,
                          lock_ttl=args.lock_ttl, report=report)
    if v == "switch":
        return api.switch(file, store=store, report=report)
    if v == "cleanup":
        return api.cleanup(file, store=store, report=report)
    if v == "rollback":
        return api.rollback(file, to=args.to, store=store, lock_wait=args.lock_wait, lock_ttl=args.lock_ttl,
                            report=report)
    if v == "release":
        return api.release(file, tag=args.tag, image=args.image, store=store, lock_wait=args.lock_wait,
                           lock_ttl=args.lock_ttl, junit_dir=args.junit_dir, report=report, output=printer.output)
    raise AssertionError(v)


def _proxy(args, printer: _Printer) -> Outcome:
    from . import api, proxyctl
    from .plan import Interrupted
    from .verbs import Ctx
    from .wiring import ports_for

    spec = api.load_spec(args.file, store=args.store)
    ports = ports_for(spec)
    ctx = Ctx(spec, ports, printer.step)
    try:
        if args.proxy_verb == "render":
            return proxyctl.render(ctx)
        if args.proxy_verb == "apply":
            return proxyctl.apply(ctx, force=args.force)
        log = (lambda line: None) if printer.quiet else (lambda line: print(_redact(line), flush=True))
        try:
            return proxyctl.watch(ctx, debounce=args.debounce, interval=args.interval,
                                  max_seconds=args.max_seconds, once=args.once, log=log)
        except (Interrupted, KeyboardInterrupt):
            return Outcome("proxy", spec.name, True, 0, "watch stopped")
    finally:
        ports.close()


def _service_name(args) -> str:
    """The service named by the descriptor, for error results (best effort: the descriptor may be
    what is wrong)."""
    try:
        from .config import load

        return load(args.file).name
    except Exception:
        return ""


def _json_safe(data: dict) -> dict:
    out = {}
    for key, value in data.items():
        try:
            json.dumps(value)
            out[key] = value
        except (TypeError, ValueError):
            out[key] = str(value)
    return out


def _interrupt(signum, frame):
    from .plan import Interrupted

    raise Interrupted()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    printer = _Printer(args)
    # SIGINT too: a KeyboardInterrupt is no Exception, so it would skip the rollback and leave the
    # release open behind an exit code that says "rolled back"
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _interrupt)
    try:
        outcome = _dispatch(args, printer)
    except CdlibError as exc:
        outcome = Outcome(args.verb, _service_name(args), False, exc.exit_code, str(exc),
                          data={"error": {"type": type(exc).__name__, **_json_safe(exc.data)}})
    except KeyboardInterrupt:
        outcome = Outcome(args.verb, "", False, 1, "interrupted")
    except BaseException as exc:
        from .plan import Interrupted

        if not isinstance(exc, Interrupted):
            raise
        outcome = Outcome(args.verb, "", False, 1, "interrupted (SIGTERM)")
    doc = json.loads(_redact(json.dumps(outcome.to_dict(), default=str)))
    if args.result_file:
        path = Path(args.result_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif outcome.ok:
        if args.verb == "status":
            _print_status(outcome)
        elif args.verb == "history":
            for h in outcome.data.get("history", []):
                print(f"{h['id']}  {h.get('outcome', '?'):<12} {h.get('color') or '-':<6} {h.get('image')}"
                      + (f"  (rollback to {h['revert_of']})" if h.get("revert_of") else ""))
        elif args.verb == "proxy" and args.proxy_verb == "render":
            sys.stdout.write(outcome.data["config"])
        elif not args.quiet:
            print(_redact(outcome.message))
    else:
        print(_redact(f"cdlib: error: {outcome.message}"), file=sys.stderr)
    return outcome.exit_code
