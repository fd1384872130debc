"""No secret in anything cdlib writes: a real release with the real dockerd, nginx and SQLite.

Distinct secret values are planted in every credential channel: a pass_env variable with an innocent
name (DB_PASS), the known credential variables, a user:password in ETCDCTL_USER. The suites print
every one of them, as is and URL-quoted. A passing and a failing release run through the CLI, with
and without --json, then every byte cdlib wrote is searched: stdout, stderr, result files, JUnit
files, the store's database files (free pages and the write-ahead log included), the proxy's
directory. The store URL carries no password here because no store accepts one (etcd and Consul
refuse credentials in the URL, SQLite has none); a URL password in the environment is covered by
the ETCDCTL_USER channel and the unit tests of cdlib.secrets.
"""

from __future__ import annotations

import json
import secrets as random
import sys
import textwrap
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

pytestmark = pytest.mark.integration

SUITE = textwrap.dedent('''\
    """Prints every secret it got, as is and URL-quoted, then passes or fails as asked."""
    import os, sys, urllib.parse, urllib.request
    kind = os.environ["TEST_TYPE"]
    for name in sys.argv[2:]:
        value = os.environ.get(name, "")
        print(f"{kind} {name}={value} quoted={urllib.parse.quote(value, safe='')}")
    print(f"{kind} host-only-seen={'yes' if 'CDLIBT_HOST_ONLY_SECRET' in os.environ else 'no'}")
    with urllib.request.urlopen(os.environ["TARGET_URL"].rstrip("/") + "/version", timeout=5) as r:
        print(kind, "version", r.read().decode().strip())
    if sys.argv[1] == kind:
        print(f"{kind}: failing on purpose after printing {os.environ.get('DB_PASS')}")
        sys.exit(3)
''')


def _secret(label: str) -> str:
    # characters that JSON, URLs and XML each escape differently
    return f"cdlibt-{label}-{random.token_hex(6)}/p@ss w0rd\"&<x>"


@pytest.fixture
def planted(service):
    values = {
        "DB_PASS": _secret("db"),
        "CDLIB_REGISTRY_PASSWORD": _secret("registry"),
        "CONSUL_HTTP_TOKEN": _secret("consul"),
        "JENKINS_API_TOKEN": _secret("jenkins"),
        "ETCDCTL_PASSWORD": _secret("etcd"),
    }
    etcd_user_password = f"cdlibt-etcduser-{random.token_hex(6)}"
    host_only = _secret("hostonly")
    env = dict(values, ETCDCTL_USER=f"cdlibt-user:{etcd_user_password}", CDLIBT_HOST_ONLY_SECRET=host_only)
    everything = [*values.values(), etcd_user_password, host_only]
    (service.dir / "suite.py").write_text(SUITE)
    return env, everything, sorted(values) + ["ETCDCTL_USER"]


def _descriptor(service, fail: str, names: list[str]) -> None:
    service.write(replicas=1, health_timeout=20)
    doc = json.loads(service.file.read_text())
    suite = {"command": [sys.executable, str(service.dir / "suite.py"), fail, *names], "pass_env": names,
             "timeout": 60}
    doc["tests"] = {"pre-integration": suite, "post-integration": suite}
    service.file.write_text(json.dumps(doc, indent=2))


def _forms(value: str) -> set[str]:
    """The secret as written anywhere: raw, URL-quoted, JSON- and XML-escaped; and its long
    distinctive middle part, so a half-masked value is caught too."""
    core = value.split("/")[0]  # cdlibt-<label>-<hex>
    return {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1],
            value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"),
            core}


def _written_files(service) -> list[Path]:
    files = [p for p in service.dir.rglob("*") if p.is_file() and p.name not in ("suite.py", "check.py")]
    assert any(p.suffix == ".xml" for p in files), "no JUnit file was written"
    assert any(p.name.startswith("state.db") for p in files), "no store file"
    assert any(p.name == "nginx.conf" for p in files) or any(p.name == "error.log" for p in files)
    return files


def test_no_secret_in_anything_cdlib_writes(service, planted):
    env, everything, names = planted
    outputs: list[str] = []

    def cli(*args, fail="none", result_file=None):
        _descriptor(service, fail, names)
        extra = ["--result-file", str(service.dir / "results" / result_file)] if result_file else []
        proc = service.cli(*args, *extra, env=env)
        outputs.extend([proc.stdout, proc.stderr])
        return proc

    ok = cli("release", "--tag", "v1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "pre-integration DB_PASS=***" in ok.stdout  # streamed, masked
    assert "host-only-seen=no" in ok.stdout  # the suite never got what pass_env did not name
    ok_json = cli("release", "--tag", "v2", "--json", result_file="v2.json")
    assert ok_json.returncode == 0, ok_json.stdout + ok_json.stderr
    assert json.loads(ok_json.stdout)["ok"] is True
    failed = cli("release", "--tag", "v3", fail="post-integration", result_file="v3.json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    failed_json = cli("release", "--tag", "v3", "--json", fail="pre-integration", result_file="v3b.json")
    assert failed_json.returncode == 1, failed_json.stdout + failed_json.stderr
    doc = json.loads(failed_json.stdout)
    assert doc["ok"] is False and any("***" in t.get("output", "") for t in doc["tests"])
    for args in (("status", "--json"), ("history", "--json"), ("history",)):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert service.get() == (200, "v2")

    haystacks = {f"output {i}": text.encode() for i, text in enumerate(outputs)}
    haystacks.update({str(p.relative_to(service.dir)): p.read_bytes() for p in _written_files(service)})
    hits = [(where, form) for value in everything for form in _forms(value) for where, data in haystacks.items()
            if form.encode() in data]
    assert hits == [], hits
