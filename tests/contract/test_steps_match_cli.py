"""Every verb and option a Groovy step can put on the command line exists in the CLI's parser.

Two sources, so that neither can hide a mismatch:
- statically, from vars/*.groovy and src/io/cdlib/StepOptions.groovy: each step's
  cdlibRun('VERB', params, [keys]) call and the option table (key -> --flag) give every flag each
  step can emit;
- dynamically, every argument list the Groovy harness recorded is parsed by cdlib.cli.build_parser().
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from cdlib.cli import build_parser
from tests.groovy.harness import session_report

ROOT = Path(__file__).resolve().parents[2]
VARS = ROOT / "vars"
OPTIONS = ROOT / "src" / "io" / "cdlib" / "StepOptions.groovy"  # the option table and the common keys

STEP_CALL = re.compile(r"cdlibRun\('(?P<verb>[a-z-]+)',\s*\w+,\s*\[(?P<keys>[^\]]*)\]\)")
OPTION_ROW = re.compile(r"\[key: '(?P<key>\w+)'(?:, alias: '[\w-]+')?, flag: (?:'(?P<flag>--[a-z-]+)'|null)")
BAD_INPUT_CASE = "exit 2 from the argument parser"  # a harness case that passes an invalid TYPE on purpose
COMMON_KEYS = re.compile(r"List commonKeys\(\) \{\s*return \[(?P<keys>[^\]]*)\]")


def _strings(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def step_table() -> dict[str, tuple[str, list[str]]]:
    """step name -> (verb, the parameter keys it takes besides the common ones)."""
    out = {}
    for path in sorted(VARS.glob("cdlib*.groovy")):
        m = STEP_CALL.search(path.read_text())
        if m:
            out[path.stem] = (m.group("verb"), _strings(m.group("keys")))
    return out


def option_table() -> dict[str, str | None]:
    source = OPTIONS.read_text()
    return {m.group("key"): m.group("flag") for m in OPTION_ROW.finditer(source)}


def common_keys() -> list[str]:
    m = COMMON_KEYS.search(OPTIONS.read_text())
    assert m, f"{OPTIONS.name}: commonKeys() not found"
    return _strings(m.group("keys"))


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the CLI parser has no verbs")


@pytest.fixture(scope="module")
def verbs():
    return subparsers(build_parser())


def test_the_sources_are_understood():
    """Guards the regular expressions: if the Groovy changes shape, this fails instead of passing vacuously."""
    steps = step_table()
    assert set(steps) == {"cdlibStatus", "cdlibColor", "cdlibHistory", "cdlibBuild", "cdlibPush", "cdlibTest",
                          "cdlibDeploy", "cdlibSwitch", "cdlibCleanup", "cdlibRollback", "cdlibRelease", "cdlibHeal",
                          "cdlibScale"}
    options = option_table()
    assert len(options) >= 12 and options["tag"] == "--tag" and options["type"] is None
    assert set(common_keys()) == {"file", "store", "credentials", "resultFile"}


def test_every_step_verb_is_a_cli_verb(verbs):
    for step, (verb, _) in step_table().items():
        assert verb in verbs, f"{step} runs 'cdlib {verb}', which the CLI does not have"
        assert step == "cdlib" + verb.capitalize()


def test_every_flag_a_step_can_emit_is_accepted_by_its_verb(verbs):
    options = option_table()
    for step, (verb, keys) in step_table().items():
        accepted = verbs[verb]._option_string_actions
        for key in keys + [k for k in common_keys() if k != "credentials"]:
            assert key in options, f"{step}: parameter {key} has no entry in the option table ({OPTIONS.name})"
            flag = options[key]
            if flag is None:  # the positional TYPE of `test`, REPLICAS of `scale`
                positional = [a for a in verbs[verb]._actions if not a.option_strings and a.dest == key]
                assert positional, f"{step}: 'cdlib {verb}' has no positional {key}"
            else:
                assert flag in accepted, f"{step}: 'cdlib {verb}' does not accept {flag}"


@pytest.fixture(scope="session")
def recorded() -> list[dict]:
    """Every command the Groovy harness recorded, from its one run of the session."""
    report = session_report()
    assert report.returncode == 0, report.tail()
    return report.commands


def test_every_recorded_argument_list_parses(recorded):
    parser = build_parser()
    seen = set()
    for command in recorded:
        argv = command["argv"]
        if command["case"].startswith(BAD_INPUT_CASE):
            continue
        try:
            ns = parser.parse_args(argv)
        except SystemExit as exc:  # argparse reports bad usage by exiting
            raise AssertionError(f"{command['case']}: the CLI rejects {argv}") from exc
        assert ns.verb == argv[0]
        for flag, dest in (("--tag", "tag"), ("--image", "image"), ("--file", "file"), ("--store", "store"),
                           ("--target-url", "target_url"), ("--junit", "junit"), ("--junit-dir", "junit_dir"),
                           ("--to", "to"), ("--only", "only"), ("--result-file", "result_file")):
            if flag in argv:
                assert getattr(ns, dest) == argv[argv.index(flag) + 1], (command["case"], flag)
                seen.add(flag)
        for flag, dest in (("--lock-wait", "lock_wait"), ("--lock-ttl", "lock_ttl"), ("--interval", "interval"),
                           ("--max-seconds", "max_seconds")):
            if flag in argv:
                assert getattr(ns, dest) == float(argv[argv.index(flag) + 1]), (command["case"], flag)
                seen.add(flag)
        for flag, dest in (("--limit", "limit"), ("--max-rounds", "max_rounds")):
            if flag in argv:
                assert getattr(ns, dest) == int(argv[argv.index(flag) + 1]), command["case"]
                seen.add(flag)
        if argv[0] == "scale":
            assert ns.replicas == argv[1], command["case"]
        for flag, dest in (("--next", "next"), ("--no-rollback", "no_rollback"), ("--previous", "previous"),
                           ("--dry-run", "dry_run"), ("--watch", "watch")):
            if flag in argv:
                assert getattr(ns, dest) is True
                seen.add(flag)
    # every flag in the option table was exercised by at least one recorded command
    assert {f for f in option_table().values() if f} <= seen


def test_the_test_types_the_steps_use_are_the_cli_choices(recorded, verbs):
    choices = next(a.choices for a in verbs["test"]._actions if a.dest == "type")
    used = {c["argv"][1] for c in recorded if c["argv"][0] == "test" and not c["case"].startswith(BAD_INPUT_CASE)}
    assert used == set(choices)


def test_the_bad_input_the_harness_simulates_is_what_the_cli_rejects(recorded, capsys):
    """The harness's "exit 2 from the argument parser" case must be a real usage error of the CLI."""
    bad = [c for c in recorded if c["case"].startswith(BAD_INPUT_CASE)]
    assert bad
    for command in bad:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(command["argv"])
        assert exc.value.code == 2


def test_rollback_previous_is_a_flag_of_both_sides(verbs):
    """cdlibRollback(previous: true) -> --previous, which the CLI takes instead of --to, never with it."""
    assert "previous" in step_table()["cdlibRollback"][1] and option_table()["previous"] == "--previous"
    assert build_parser().parse_args(["rollback", "--previous"]).previous is True
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["rollback", "--previous", "--to", "r-1"])
    assert exc.value.code == 2
