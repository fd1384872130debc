"""argv -> one library call -> exit code. The only place that prints for humans.

Exit codes: 0 done, 1 failed and rolled back, 2 bad usage or input (nothing changed), 3 lock held
by another release, 4 failed and the undo is incomplete (a person is needed), 5 failed and the state
is unknown (run 'cdlib status', then 'cdlib rollback').

Exit 1 is given only when the verb itself says it rolled back (or, for a verb that opens no release,
that it failed). Everything else that can go wrong ends with 5 and a result file whose error.type
names it: an exception outside the CdlibError tree, an error a release verb raised instead of rolling
back, a signal that stopped a release verb before it returned, a result file that cannot be written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import cast

from . import __version__
from .errors import EXIT_ROLLED_BACK, EXIT_UNKNOWN, EXIT_USAGE, UNKNOWN_HINT, CdlibError
from .model import TEST_TYPES, Outcome, StepReport

# the credential variables masked by value everywhere (cdlib.secrets holds the rules); a bare
# ETCDCTL_USER is a user name, not a secret: only the password of ETCDCTL_USER=user:password is masked
SECRET_ENV = ("CDLIB_REGISTRY_PASSWORD", "CONSUL_HTTP_TOKEN", "JENKINS_API_TOKEN", "ETCDCTL_PASSWORD",
              "DOCKER_AUTH_CONFIG")


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


def _dry_run_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (colors, containers, ports, the proxy configuration diff, the store keys "
                        "to write) and change nothing: no lock, no journal, no container, no proxy file")


def _lock_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for another release of the service to finish (default: fail at once)")
    p.add_argument("--lock-ttl", type=float, default=3600.0, metavar="SECONDS",
                   help="the release lock expires after SECONDS without progress (default 3600)")


EPILOG = ("exit codes: 0 done, 1 failed and rolled back, 2 bad input (nothing changed), 3 lock held, "
          "4 undo incomplete (a person is needed), 5 failed and the state is unknown (run 'cdlib status', "
          "then 'cdlib rollback')")


def _limit(text: str) -> int:
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(digits)


def _positive(text: str) -> int:
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(digits)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cdlib", parents=[_common(False)],
                     description="Blue-green releases of containerized microservices, driven from Jenkins.",
                     epilog=EPILOG)
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
    p.add_argument("--limit", type=_limit, default=20, metavar="N", help="at most N releases (default 20)")
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
    _dry_run_opt(p)
    _dry_run_opt(verb("switch", "point the proxy at the new color, verify through the proxy, store the new live "
                                "color"))
    _dry_run_opt(verb("cleanup", "stop and de-register the old color (kept stopped for a quick rollback); close the "
                                 "release"))
    p = verb("rollback", "undo the open release; without one, change nothing (exit 0) unless --previous or "
                         "--to asks to return to an earlier release")
    back = p.add_mutually_exclusive_group()
    back.add_argument("--to", metavar="RELEASE_ID", help="return to this release from history")
    back.add_argument("--previous", action="store_true",
                      help="return to the release before the live one (when no release is open)")
    _lock_opts(p)
    _dry_run_opt(p)
    p = verb("release", "deploy, pre-integration tests, switch, post-integration tests, cleanup; "
                        "roll back on any failure")
    _release_opts(p)
    _lock_opts(p)
    _dry_run_opt(p)
    p.add_argument("--junit-dir", metavar="DIR", default=os.environ.get("CDLIB_JUNIT_DIR", "cdlib-reports"),
                   help="write JUnit XML reports into DIR (default: cdlib-reports)")
    p = verb("heal", "bring the live color back to its replica count: dead instances started again on their "
                     "ports, registrations and the proxy repaired; an open release is left alone")
    p.add_argument("--watch", action="store_true", help="keep healing, a round every --interval seconds, until stopped")
    p.add_argument("--interval", type=float, default=30.0, metavar="SECONDS",
                   help="with --watch: seconds between rounds (default 30)")
    p.add_argument("--max-rounds", type=_positive, default=None, metavar="N", help="with --watch: stop after N rounds")
    p.add_argument("--max-seconds", type=float, default=None, metavar="SECONDS",
                   help="with --watch: stop after SECONDS")
    p = verb("scale", "run N instances of the live color (or +N / -N more or fewer); the count is stored and "
                      "inherited by the next release")
    p.add_argument("replicas", metavar="REPLICAS", help="N (1 to 100), +N or -N")
    _lock_opts(p)
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
    pi = psub.add_parser("image", parents=[common], help="build the proxy image (nginx or HAProxy from this "
                                                         "machine's binaries) unless it exists; for proxy.run "
                                                         "container or service")
    pi.add_argument("--kind", choices=("nginx", "haproxy"), default=None,
                    help="which proxy (default: the descriptor's proxy.kind)")
    from .jobs import cli as jobs_cli  # light: builds its parser only

    jobs_cli.add_parser(sub, [common])
    return parser


def _verb_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def misplaced(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The one-line complaint about an option of the verb written before it (`cdlib --tag v2
    release`), with the command line that works, or None. argparse alone would report the option's
    value as an unknown verb ("invalid choice: 'v2'")."""
    verbs = _verb_parsers(parser)
    top = parser._option_string_actions
    stray: list[int] = []  # positions of options the top level does not know
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return None
        if word in verbs:
            break
        if word.startswith("-") and len(word) > 1:
            name = word.split("=", 1)[0]
            action = top.get(name)
            if action is None:
                stray.append(i)
            elif action.nargs != 0 and "=" not in word:
                i += 1  # its value, whatever it looks like
        i += 1
    else:
        return None
    verb = argv[i]
    accepted = verbs[verb]._option_string_actions
    moved: list[int] = []
    for at in stray:
        action = accepted.get(argv[at].split("=", 1)[0])
        if action is None:
            return None  # unknown everywhere: argparse says so
        moved.append(at)
        if action.nargs is None and "=" not in argv[at] and at + 1 < i and at + 1 not in stray:
            moved.append(at + 1)  # the option's value
    if not moved:
        return None
    import shlex

    fixed = [w for n, w in enumerate(argv) if n not in moved] + [argv[n] for n in moved]
    names = ", ".join(argv[at].split("=", 1)[0] for at in stray)
    return _redact(f"{names} {'goes' if len(stray) == 1 else 'go'} after the verb: cdlib {shlex.join(fixed)}")


# ------------------------------------------------------------------------------------------------
SECRET_NAME_RE = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)


def _redact(text: str) -> str:
    """Mask every secret by value (cdlib.secrets): credential variables, the values of a suite's
    pass_env variables, passwords of URLs; as is, URL-quoted or JSON-escaped."""
    from . import secrets  # light: no client library

    return secrets.mask(text)


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
        self._print(_redact(line))

    def _print(self, line: str) -> None:
        # a closed stdout (a pipe whose reader went away) must not fail a release step and roll
        # it back: the progress lines are for humans, the result is the contract
        try:
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError):
            self.quiet = True

    def output(self, line: str) -> None:
        """A line a test suite printed (called from the runner's reader thread)."""
        if not self.quiet:
            self._print(_redact(f"      | {line.rstrip()}"))


def _print_status(out: Outcome) -> None:
    d = out.data
    live = d.get("live")
    print(f"service   {out.service}")
    print("live      " + (f"{live['color']}  {live.get('image')}  release {live.get('release')}" if live else "none"))
    print(f"next      {d.get('next_color')}")
    reps = d.get("replicas")
    if reps:
        print(f"replicas  {reps.get('count')} ({reps.get('source')})")
    rel = d.get("open_release")
    print("release   " + (f"{rel['id']} {rel['phase']} -> {rel['color']} {rel['image']}" if rel else "none open"))
    lock = d.get("lock")
    if lock:
        pid = f" pid {lock['pid']}" if lock.get("pid") else ""
        state = f", holder {lock['state']}" if lock.get("state") else ""
        print(f"lock      held by {lock.get('who')}{pid} build {lock.get('build') or '-'}"
              + (" (expired" + state + ")" if lock.get("expired") else (f" ({state[2:]})" if state else "")))
    else:
        print("lock      free")
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
    px = d.get("proxy") or {}
    if px.get("error"):
        print(f"proxy     {px.get('kind')}: {px['error']}")
    elif px:
        nxt = px.get("next_change") or {}
        print(f"proxy     {px.get('kind')} {px.get('url', '')}  next change ({nxt.get('for', '-')}): "
              f"{nxt.get('mode', '-')}, {nxt.get('why', '')}")
        for replica in px.get("replicas") or []:
            print(f"  {replica.get('name', '?'):<32} config {str(replica.get('digest', '-'))[:19]}")


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
                          lock_ttl=args.lock_ttl, report=report, dry_run=args.dry_run)
    if v == "switch":
        return api.switch(file, store=store, report=report, dry_run=args.dry_run)
    if v == "cleanup":
        return api.cleanup(file, store=store, report=report, dry_run=args.dry_run)
    if v == "rollback":
        return api.rollback(file, to=args.to, previous=args.previous, store=store, lock_wait=args.lock_wait,
                            lock_ttl=args.lock_ttl, report=report, dry_run=args.dry_run)
    if v == "heal":
        return _heal(args, printer)
    if v == "scale":
        return api.scale(args.replicas, file, store=store, lock_wait=args.lock_wait, lock_ttl=args.lock_ttl,
                         report=report)
    if v == "release":
        return api.release(file, tag=args.tag, image=args.image, store=store, lock_wait=args.lock_wait,
                           lock_ttl=args.lock_ttl, junit_dir=args.junit_dir, report=report, output=printer.output,
                           dry_run=args.dry_run)
    raise AssertionError(v)


def _heal(args, printer: _Printer) -> Outcome:
    from . import api
    from .plan import Interrupted

    log = (lambda line: None) if printer.quiet else (lambda line: print(_redact(line), flush=True))
    try:
        return api.heal(args.file, watch=args.watch, interval=args.interval, max_rounds=args.max_rounds,
                        max_seconds=args.max_seconds, store=args.store, log=log, report=printer.step)
    except (Interrupted, KeyboardInterrupt):
        if not args.watch:
            raise
        return Outcome("heal", _service_name(args), True, 0, "heal watch stopped")


def _proxy(args, printer: _Printer) -> Outcome:
    from . import api
    from .plan import Interrupted

    if args.proxy_verb == "render":
        return api.proxy_render(args.file, store=args.store)
    if args.proxy_verb == "apply":
        return api.proxy_apply(args.file, force=args.force, store=args.store, report=printer.step)
    if args.proxy_verb == "image":
        return api.proxy_image(args.file, kind=args.kind)
    log = (lambda line: None) if printer.quiet else (lambda line: print(_redact(line), flush=True))
    try:
        return api.proxy_watch(args.file, debounce=args.debounce, interval=args.interval,
                               max_seconds=args.max_seconds, once=args.once, store=args.store, log=log,
                               report=printer.step)
    except (Interrupted, KeyboardInterrupt):
        return Outcome("proxy", _service_name(args), True, 0, "watch stopped")


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


# verbs that open, drive or undo a release: a failure they did not roll back themselves leaves the
# release in a state this process cannot vouch for
RELEASE_VERBS = ("deploy", "switch", "cleanup", "test", "rollback", "release", "scale")
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_received: list[int] = []  # signals this process got, newest last


def _acts_on_release(args) -> bool:
    if getattr(args, "dry_run", False):
        return False  # a dry run changes nothing: its failure leaves no state to doubt
    if args.verb == "test":
        return args.type != "pre-deployment"  # the only suite that runs outside a release
    return args.verb in RELEASE_VERBS


def _interrupt(signum, frame):
    from .plan import Interrupted

    _received.append(signum)
    raise Interrupted()


def _late_signal(signum, frame):
    """Once the verb has returned, a signal must not interrupt the writing of its result: the
    outcome is decided, and a half-written result would be worse than a late exit."""
    _received.append(signum)


def _signal_name() -> str:
    if not _received:
        return "SIGINT"  # a KeyboardInterrupt raised before a handler was installed
    try:
        return signal.Signals(_received[-1]).name
    except ValueError:
        return f"signal {_received[-1]}"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _handle(handler) -> None:
    for sig in SIGNALS:
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (cli.main called from a library's thread)
            return


def _failure(args, exc: BaseException) -> Outcome:
    """The outcome for an exception that escaped the verb."""
    from .plan import Interrupted

    service = _service_name(args)
    if isinstance(exc, CdlibError):
        error = {"type": type(exc).__name__, **_json_safe(exc.data)}
        code, message = exc.exit_code, str(exc)
        if code == EXIT_ROLLED_BACK and _acts_on_release(args):
            # raised, not returned: the verb rolled nothing back (a returned outcome says when it did)
            code, message = EXIT_UNKNOWN, f"{message}; nothing was rolled back and {UNKNOWN_HINT}"
        return Outcome(args.verb, service, False, code, message, data={"error": error})
    if isinstance(exc, (Interrupted, KeyboardInterrupt)):
        name = _signal_name()
        error = {"type": "Interrupted", "signal": name}
        if _acts_on_release(args):
            return Outcome(args.verb, service, False, EXIT_UNKNOWN,
                           f"{args.verb} was interrupted ({name}) before it finished or rolled back: {UNKNOWN_HINT}",
                           data={"error": error})
        return Outcome(args.verb, service, False, EXIT_ROLLED_BACK, f"{args.verb} was interrupted ({name})",
                       data={"error": error})
    detail = _one_line(exc) or "(no message)"
    return Outcome(args.verb, service, False, EXIT_UNKNOWN,
                   f"{args.verb} failed with an unexpected {type(exc).__name__}: {detail}; {UNKNOWN_HINT}",
                   data={"error": {"type": type(exc).__name__, "unexpected": True}})


def _run_verb(args, printer: _Printer) -> tuple[Outcome, BaseException | None]:
    # SIGINT too: a KeyboardInterrupt is no Exception, so it would skip the rollback and leave the
    # release open behind an exit code that says "rolled back"
    _handle(_interrupt)
    try:
        try:
            from . import extras

            extras.check("yaml")  # every verb reads a descriptor or a catalog: say so before anything
            return _dispatch(args, printer), None
        finally:
            _handle(_late_signal)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: B036 - SIGTERM/SIGINT arrive as plan.Interrupted
        return _failure(args, exc), exc


def _write_result(path: Path, doc: dict) -> None:
    """Whole or not at all: a reader never sees half a result (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def _result_file_failed(doc: dict, path: str, exc: OSError) -> tuple[dict, str]:
    """The result and the stderr line when the result file cannot be written: exit 5, because the
    result file is part of the contract (a Jenkins step without it cannot know what happened); the
    verb's own exit code and message stay in the result and the line, never lost silently."""
    reason = _one_line(exc.strerror or exc) if isinstance(exc, OSError) else _one_line(exc)
    verb_code = doc.get("exit_code")
    doc = dict(doc, ok=False, exit_code=EXIT_UNKNOWN, verb_exit_code=verb_code,
               error={"type": "ResultFileError", "path": path, "reason": reason, "verb_error": doc.get("error")})
    line = (f"cannot write the result file {path} ({reason}); {doc.get('verb')} itself ended with exit "
            f"{verb_code} ({doc.get('message')}); exit 5 because the result file is part of the contract: "
            f"{UNKNOWN_HINT}")
    return doc, line


def _masked_doc(doc: dict) -> dict:
    """The result as JSON holds it (what JSON cannot hold, as text), every string masked: masking
    the values, not the JSON text, so no secret can break the document's syntax."""
    from . import secrets

    return cast(dict, secrets.mask_data(json.loads(json.dumps(doc, default=str))))  # a dict in, a dict out


def _report(args, outcome: Outcome) -> int:
    doc = _masked_doc(outcome.to_dict())
    code = outcome.exit_code
    problem = None
    if args.result_file:
        try:
            _write_result(Path(args.result_file), doc)
        except OSError as exc:
            doc, problem = _result_file_failed(doc, args.result_file, exc)
            code = EXIT_UNKNOWN
    if args.json:
        try:
            print(json.dumps(doc, indent=2, sort_keys=True), flush=True)
        except OSError as exc:  # stdout is the result when --json is all there is
            if not args.result_file and problem is None:
                problem = f"cannot print the result ({_one_line(exc.strerror or exc)}): {UNKNOWN_HINT}"
                code = EXIT_UNKNOWN
    elif outcome.ok:
        try:
            _print_human(args, outcome)
        except OSError:
            pass  # the result (file) is the contract; a closed stdout only loses the human summary
    else:
        _error_line(outcome.message)
    if problem:
        _error_line(problem)
    return code


def _error_line(message: str) -> None:
    try:
        print(_redact(f"cdlib: error: {_one_line(message)}"), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr is gone: the exit code and the result still say it


def _print_human(args, outcome: Outcome) -> None:
    if args.verb == "status":
        _print_status(outcome)
    elif args.verb == "history":
        for h in outcome.data.get("history", []):
            print(f"{h['id']}  {h.get('outcome', '?'):<12} {h.get('color') or '-':<6} {h.get('image')}"
                  + (f"  (rollback to {h['revert_of']})" if h.get("revert_of") else ""))
    elif args.verb == "proxy" and args.proxy_verb == "render":
        sys.stdout.write(outcome.data["config"])
        how = outcome.data.get("apply") or {}
        if how and not args.quiet:  # on stderr: stdout stays exactly the configuration
            print(f"cdlib: applying this would go by {how.get('mode')}: {how.get('why')}", file=sys.stderr)
    elif not args.quiet:
        print(_redact(outcome.message))
    sys.stdout.flush()


def _traceback(exc: BaseException) -> None:
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    print(_redact(text.rstrip()), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    wrong = misplaced(parser, argv)
    if wrong:
        parser.exit(EXIT_USAGE, f"cdlib: error: {wrong}\n")
    args = parser.parse_args(argv)
    printer = _Printer(args)
    debug = os.environ.get("CDLIB_DEBUG") == "1"
    _received.clear()
    try:
        outcome, exc = _run_verb(args, printer)
        code = _report(args, outcome)
        if exc is not None and debug:
            _traceback(exc)
        return code
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: B036 - the last resort: one line and exit 5, never a traceback
        return _last_resort(args, exc, debug)


def _last_resort(args, exc: BaseException, debug: bool) -> int:
    """Something failed while the outcome was being reported (or a signal slipped in between): the
    caller must not read a rollback into it."""
    _handle(_late_signal)
    message = (f"{args.verb} ended with an error while reporting its outcome ({type(exc).__name__}: "
               f"{_one_line(exc) or 'no message'}); {UNKNOWN_HINT}")
    if getattr(args, "result_file", None):
        doc = {"verb": args.verb, "service": "", "ok": False, "exit_code": EXIT_UNKNOWN, "message": message,
               "steps": [], "error": {"type": type(exc).__name__, "unexpected": True}}
        try:
            _write_result(Path(args.result_file), _masked_doc(doc))
        except Exception:  # noqa: S110 - the line below and the exit code still say it
            pass
    _error_line(message)
    if debug:
        try:
            _traceback(exc)
        except (OSError, ValueError):
            pass
    return EXIT_UNKNOWN
