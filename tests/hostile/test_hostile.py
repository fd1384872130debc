"""Hostile input is refused cleanly: exit 2, one line on stderr naming the field, nothing changed.

The inputs are in corpus.py; the world they are thrown at and the runner in conftest.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.hostile.conftest import prepare, run_inprocess, run_subprocess
from tests.hostile.corpus import CASES

pytestmark = pytest.mark.integration

SHADOW = Path("/etc/shadow")
MAX_LINE = 2000  # one line a person reads in a Jenkins log, whatever the size of the bad value
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _content_lines(case, case_dir: Path) -> list[str]:
    """The lines of the files whose content must never be echoed (templates, /etc/shadow)."""
    lines = []
    for name in case.secret_files:
        path = SHADOW if name == "/etc/shadow" else case_dir / name
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        lines += [ln.strip() for ln in text.splitlines() if len(ln.strip()) >= 6]
    return lines


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_cleanly(world, case, tmp_path, request):
    case_dir = tmp_path / "case"
    argv, env, fields = prepare(world, case, case_dir)
    result_file = tmp_path / "result.json"
    if case.result_file:
        argv += ["--result-file", str(result_file)]
    before = world.snapshot(case_dir)
    run = run_subprocess if case.subprocess else run_inprocess
    result = run(argv, env, case_dir)
    after = world.snapshot(case_dir)
    if result_file.exists():
        result.result_file = result_file.read_text(errors="replace")

    problems = []
    first = result.stderr.splitlines()[0] if result.stderr.strip() else "(no stderr)"
    # what each case got, for a report (pytest --junitxml writes user properties)
    request.node.user_properties += [("exit", result.code), ("stderr", first[:500])]
    if result.code != 2:
        problems.append(f"exit {result.code}")
    if not (result.stderr.endswith("\n") and result.stderr.count("\n") == 1):
        lines = result.stderr.splitlines()
        last = lines[-1] if lines else ""
        problems.append(f"stderr has {len(lines)} lines" + (f" (last: {last[:200]})" if len(lines) > 1 else ""))
    else:
        if not any(f in result.stderr for f in fields):
            problems.append("the line does not name " + " or ".join(repr(f) for f in fields))
        if len(result.stderr) > MAX_LINE:
            problems.append(f"the line has {len(result.stderr)} characters")
        if CONTROL.search(result.stderr[:-1]):
            problems.append("the line holds control characters (a terminal would interpret them)")
    for secret in case.secrets:
        if secret in result.stdout + result.stderr + result.result_file:
            problems.append(f"{secret!r} appears in the output")
    for line in _content_lines(case, case_dir):
        if line in result.stdout + result.stderr + result.result_file:
            problems.append(f"a line of a file is echoed: {line[:60]!r}")
            break
    if case.result_file and result.result_file:
        try:
            error_type = json.loads(result.result_file).get("error", {}).get("type")
        except ValueError:
            error_type = None
        if not error_type:
            problems.append("the result file has no error.type")
    changed = [k for k in ("containers", "store", "proxy", "proxy_files", "files") if before[k] != after[k]]
    if changed:
        problems.append("world changed: " + ", ".join(changed) + _diff(before, after))
        world.repair()
    assert not problems, f"{'; '.join(problems)} | stderr: {first[:300]}"


def _diff(before: dict, after: dict) -> str:
    out = []
    b, a = before["store"], after["store"]
    added = sorted(set(a) - set(b))
    removed = sorted(set(b) - set(a))
    modified = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    for label, keys in (("+", added), ("-", removed), ("~", modified)):
        out += [f"{label}{k.rsplit('/', 2)[-2]}/{k.rsplit('/', 1)[-1]}" for k in keys[:3]]
    for key in ("proxy_files", "files"):
        new = sorted(set(map(tuple, after[key])) - set(map(tuple, before[key])))
        out += [f"+{key[:-1]} {n}" for n, _ in new[:3]]
    return f" ({', '.join(out)})" if out else ""
