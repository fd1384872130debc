"""The Consul double against Consul's documented HTTP behaviour, checked on the wire (plain requests).

If the double drifts from Consul, the Consul adapter's contract tests prove nothing: these tests pin the
behaviour the adapter relies on (blocking queries, CAS, sessions, lock-delay, health, ACLs, txn).
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time

import pytest
import requests

from tests.doubles.consul_double import ConsulDouble, format_duration, parse_duration


@pytest.fixture
def double():
    with ConsulDouble(wait_jitter=False, session_ttl_min=0.1, check_interval_min=0.05, tick=0.02) as d:
        yield d


def kv(double, key, method="GET", data=None, **params):
    return requests.request(method, f"{double.url}/v1/kv/{key}", params=params, data=data, timeout=30)


def index_of(resp) -> int:
    return int(resp.headers["X-Consul-Index"])


def test_durations_parse_like_go():
    assert parse_duration("10s") == 10 and parse_duration("1500ms") == 1.5 and parse_duration("5m") == 300
    assert parse_duration("1m30s") == 90 and parse_duration("0") == 0
    for bad in ("10", "s", "10x", "1.5.5s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_duration(10) == "10s" and format_duration(0.5) == "500ms" and format_duration(90) == "1m30s"


def test_kv_entry_shape_and_index_headers(double):
    missing = kv(double, "cdlibt/a")
    assert missing.status_code == 404 and missing.text == "" and index_of(missing) >= 1
    assert kv(double, "cdlibt/a", "PUT", b"hello").json() is True
    resp = kv(double, "cdlibt/a")
    [entry] = resp.json()
    assert base64.b64decode(entry["Value"]) == b"hello" and entry["Flags"] == 0 and entry["LockIndex"] == 0
    assert entry["CreateIndex"] == entry["ModifyIndex"] == index_of(resp) and "Session" not in entry
    assert resp.headers["X-Consul-Knownleader"] == "true"
    kv(double, "cdlibt/empty", "PUT", b"")
    assert kv(double, "cdlibt/empty").json()[0]["Value"] is None
    raw = kv(double, "cdlibt/a", raw="")
    assert raw.content == b"hello" and raw.headers["Content-Type"] == "text/plain"
    assert kv(double, "", recurse="").status_code == 200
    assert kv(double, "").status_code == 400
    assert kv(double, "cdlibt/a", "PUT", b"x", cas="0", acquire="s").status_code == 400


def test_identical_put_keeps_modify_index(double):
    kv(double, "cdlibt/same", "PUT", b"v")
    first = kv(double, "cdlibt/same").json()[0]["ModifyIndex"]
    kv(double, "cdlibt/same", "PUT", b"v")
    assert kv(double, "cdlibt/same").json()[0]["ModifyIndex"] == first
    kv(double, "cdlibt/same", "PUT", b"w")
    assert kv(double, "cdlibt/same").json()[0]["ModifyIndex"] > first


def test_cas_rules_for_put_and_delete(double):
    assert kv(double, "cdlibt/c", "PUT", b"1", cas="0").json() is True
    assert kv(double, "cdlibt/c", "PUT", b"2", cas="0").json() is False
    index = kv(double, "cdlibt/c").json()[0]["ModifyIndex"]
    assert kv(double, "cdlibt/c", "PUT", b"3", cas=str(index + 100)).json() is False
    assert kv(double, "cdlibt/c", "PUT", b"3", cas=str(index)).json() is True
    assert kv(double, "cdlibt/c", "DELETE", cas="0").json() is False
    assert kv(double, "cdlibt/c").status_code == 200
    assert kv(double, "cdlibt/nothing", "DELETE", cas="7").json() is True  # Consul: true for a missing key
    assert kv(double, "cdlibt/nothing", "DELETE").json() is True
    assert kv(double, "cdlibt/c", "PUT", b"x", cas="abc").status_code == 500


def test_recurse_keys_and_separator(double):
    for key in ("cdlibt/p/a", "cdlibt/p/b/c", "cdlibt/p/b/d", "cdlibt/pq"):
        kv(double, key, "PUT", b"1")
    assert [e["Key"] for e in kv(double, "cdlibt/p/", recurse="").json()] == ["cdlibt/p/a", "cdlibt/p/b/c",
                                                                               "cdlibt/p/b/d"]
    assert kv(double, "cdlibt/p/", keys="", separator="/").json() == ["cdlibt/p/a", "cdlibt/p/b/"]
    assert kv(double, "cdlibt/none/", recurse="").status_code == 404
    assert kv(double, "cdlibt/none/", keys="").status_code == 404
    before = index_of(kv(double, "cdlibt/p/", recurse=""))
    kv(double, "cdlibt/p/b/d", "DELETE")
    assert index_of(kv(double, "cdlibt/p/", recurse="")) > before  # the tombstone keeps the index moving up


def test_blocking_query_answers_at_once_when_behind(double):
    kv(double, "cdlibt/w/a", "PUT", b"1")
    current = index_of(kv(double, "cdlibt/w/", recurse=""))
    started = time.monotonic()
    resp = kv(double, "cdlibt/w/", recurse="", index=str(current - 1), wait="10s")
    assert time.monotonic() - started < 1 and index_of(resp) == current


def test_blocking_query_waits_for_a_change_or_the_wait(double):
    kv(double, "cdlibt/w/a", "PUT", b"1")
    current = index_of(kv(double, "cdlibt/w/", recurse=""))
    timer = threading.Timer(0.3, kv, args=(double, "cdlibt/w/b", "PUT", b"2"))
    timer.start()
    started = time.monotonic()
    resp = kv(double, "cdlibt/w/", recurse="", index=str(current), wait="10s")
    timer.join()
    assert 0.25 <= time.monotonic() - started < 5 and index_of(resp) > current
    assert len(resp.json()) == 2

    current = index_of(resp)
    kv(double, "cdlibt/elsewhere", "PUT", b"x")  # outside the prefix: no wake-up
    started = time.monotonic()
    resp = kv(double, "cdlibt/w/", recurse="", index=str(current), wait="1500ms")
    assert 1.4 <= time.monotonic() - started < 3 and index_of(resp) == current


def test_blocking_query_rejects_bad_wait_and_index(double):
    resp = kv(double, "cdlibt/x", index="1", wait="10x")
    assert resp.status_code == 400 and resp.text == "Invalid wait time"
    resp = kv(double, "cdlibt/x", index="abc")
    assert resp.status_code == 400 and resp.text == "Invalid index"
    started = time.monotonic()
    kv(double, "cdlibt/x", index="0", wait="5s")  # index 0 never blocks
    assert time.monotonic() - started < 1


def session(double, **spec) -> str:
    resp = requests.put(f"{double.url}/v1/session/create", json=spec, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["ID"]


def test_session_invalidation_release_versus_delete(double):
    released = session(double, Behavior="release", LockDelay="0s")
    deleted = session(double, Behavior="delete", LockDelay="0s")
    assert kv(double, "cdlibt/l/r", "PUT", b"r", acquire=released).json() is True
    assert kv(double, "cdlibt/l/d", "PUT", b"d", acquire=deleted).json() is True
    held = kv(double, "cdlibt/l/r").json()[0]
    assert held["Session"] == released and held["LockIndex"] == 1
    for sid in (released, deleted):
        assert requests.put(f"{double.url}/v1/session/destroy/{sid}", timeout=10).json() is True
    after = kv(double, "cdlibt/l/r").json()[0]
    assert "Session" not in after and after["LockIndex"] == 1 and after["ModifyIndex"] > held["ModifyIndex"]
    assert base64.b64decode(after["Value"]) == b"r"
    assert kv(double, "cdlibt/l/d").status_code == 404
    assert requests.put(f"{double.url}/v1/session/destroy/{released}", timeout=10).json() is True


def test_acquire_rules_and_lock_delay(double):
    first = session(double, LockDelay="400ms")
    second = session(double, LockDelay="0s")
    resp = kv(double, "cdlibt/lock", "PUT", b"x", acquire="no-such-session")
    assert resp.status_code == 500 and resp.text == 'invalid session "no-such-session"'
    assert kv(double, "cdlibt/lock", "PUT", b"1", acquire=first).json() is True
    assert kv(double, "cdlibt/lock", "PUT", b"2", acquire=second).json() is False
    assert kv(double, "cdlibt/lock", "PUT", b"3", acquire=first).json() is True  # same session: still held
    assert kv(double, "cdlibt/lock").json()[0]["LockIndex"] == 1
    assert kv(double, "cdlibt/lock", "PUT", b"4", release=second).json() is False
    requests.put(f"{double.url}/v1/session/destroy/{first}", timeout=10)
    assert kv(double, "cdlibt/lock", "PUT", b"5", acquire=second).json() is False  # lock-delay
    assert kv(double, "cdlibt/lock", "PUT", b"plain").json() is True  # plain writes are not delayed
    time.sleep(0.5)
    assert kv(double, "cdlibt/lock", "PUT", b"6", acquire=second).json() is True
    assert kv(double, "cdlibt/lock").json()[0]["LockIndex"] == 2


def test_session_ttl_expiry_renew_and_limits():
    with ConsulDouble(session_ttl_min=0.1, ttl_multiplier=2.0, tick=0.02) as double:
        sid = session(double, TTL="300ms", Behavior="delete", LockDelay="0s")
        info = requests.get(f"{double.url}/v1/session/info/{sid}", timeout=10)
        assert info.json()[0]["TTL"] == "300ms" and info.json()[0]["LockDelay"] == 0 and index_of(info) >= 1
        kv(double, "cdlibt/eph", "PUT", b"e", acquire=sid)
        time.sleep(0.4)  # past TTL but within 2 x TTL: still alive, as on a real server
        assert requests.put(f"{double.url}/v1/session/renew/{sid}", timeout=10).status_code == 200
        time.sleep(0.4)
        assert kv(double, "cdlibt/eph").status_code == 200
        time.sleep(0.5)
        renew = requests.put(f"{double.url}/v1/session/renew/{sid}", timeout=10)
        assert renew.status_code == 404 and renew.text == f"Session id '{sid}' not found"
        assert kv(double, "cdlibt/eph").status_code == 404
        assert requests.get(f"{double.url}/v1/session/info/{sid}", timeout=10).json() == []
        too_short = requests.put(f"{double.url}/v1/session/create", json={"TTL": "50ms"}, timeout=10)
        assert too_short.status_code == 500 and too_short.text.startswith("Invalid Session TTL '50000000'")
        bad = requests.put(f"{double.url}/v1/session/create", json={"Behavior": "keep"}, timeout=10)
        assert bad.status_code == 500 and "Invalid Behavior" in bad.text


class _Toggle(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        body = b"ok" if type(self).status == 200 else b"down"
        self.send_response(type(self).status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def health_target():
    handler = type("Toggle", (_Toggle,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/health"
    server.shutdown()
    server.server_close()


def health(double, name, **params):
    return requests.get(f"{double.url}/v1/health/service/{name}", params=params, timeout=10)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_http_check_runs_and_health_passing_filters(double, health_target):
    import consul

    handler, url = health_target
    client = consul.Consul(host="127.0.0.1", port=double.port)
    assert client.agent.service.register("cdlibt-web", service_id="cdlibt-web-1", address="127.0.0.1", port=8080,
                                         tags=["blue"], check=consul.Check.http(url, "100ms", timeout="1s"))
    resp = health(double, "cdlibt-web")
    [instance] = resp.json()
    assert index_of(resp) >= 1
    assert instance["Service"]["ID"] == "cdlibt-web-1" and instance["Service"]["Tags"] == ["blue"]
    assert instance["Node"]["Node"] == double.node
    assert {c["CheckID"] for c in instance["Checks"]} == {"serfHealth", "service:cdlibt-web-1"}
    assert wait_for(lambda: len(health(double, "cdlibt-web", passing="").json()) == 1)
    check = client.agent.checks()["service:cdlibt-web-1"]
    assert check["Status"] == "passing" and "200" in check["Output"]
    handler.status = 500
    assert wait_for(lambda: health(double, "cdlibt-web", passing="1").json() == [])
    assert len(health(double, "cdlibt-web", passing="false").json()) == 1
    assert health(double, "cdlibt-web", tag="green").json() == []
    assert requests.get(f"{double.url}/v1/catalog/services", timeout=10).json() == {"consul": [],
                                                                                      "cdlibt-web": ["blue"]}


def test_new_checks_start_critical_and_ttl_checks_update(double):
    import consul

    client = consul.Consul(host="127.0.0.1", port=double.port)
    client.agent.service.register("cdlibt-api", service_id="cdlibt-api-1", check=consul.Check.ttl("10s"))
    assert health(double, "cdlibt-api", passing="").json() == []
    assert client.agent.check.ttl_pass("service:cdlibt-api-1") is True
    assert len(health(double, "cdlibt-api", passing="").json()) == 1
    assert client.agent.check.ttl_pass("service:nope") is False  # 404 Unknown check ID


def test_reregistering_keeps_the_check_status_even_with_an_explicit_status(double):
    """Consul's agent restores a re-registered check's last Status and Output over the Status given in
    the definition: a service registered with Status passing cannot be made healthy by registering it
    again while its check fails."""
    body = {"Name": "cdlibt-re", "ID": "cdlibt-re-1", "Check": {"TTL": "10s", "Status": "passing"}}

    def status():
        return requests.get(f"{double.url}/v1/agent/checks", timeout=10).json()["service:cdlibt-re-1"]["Status"]

    assert requests.put(f"{double.url}/v1/agent/service/register", json=body, timeout=10).status_code == 200
    assert status() == "passing"
    requests.put(f"{double.url}/v1/agent/check/fail/service:cdlibt-re-1", params={"note": "down"}, timeout=10)
    assert status() == "critical"
    assert requests.put(f"{double.url}/v1/agent/service/register", json=body, timeout=10).status_code == 200
    assert status() == "critical"
    assert len(health(double, "cdlibt-re", passing="").json()) == 0


def test_blocking_health_query_wakes_on_status_change(double):
    import consul

    client = consul.Consul(host="127.0.0.1", port=double.port)
    client.agent.service.register("cdlibt-b", service_id="cdlibt-b-1", check=consul.Check.ttl("10s"))
    index = index_of(health(double, "cdlibt-b"))
    timer = threading.Timer(0.3, client.agent.check.ttl_pass, args=("service:cdlibt-b-1",))
    timer.start()
    resp = health(double, "cdlibt-b", index=str(index), wait="10s", passing="")
    timer.join()
    assert index_of(resp) > index and len(resp.json()) == 1


def test_deregister_critical_service_after():
    import consul

    with ConsulDouble(deregister_critical_min=0.2, reap_interval=0.05, check_interval_min=0.05, tick=0.02) as double:
        client = consul.Consul(host="127.0.0.1", port=double.port)
        client.agent.service.register("cdlibt-dead", service_id="cdlibt-dead-1", check=consul.Check.http(
            "http://127.0.0.1:9/", "100ms", deregister="300ms"))
        assert "cdlibt-dead-1" in client.agent.services()
        assert wait_for(lambda: "cdlibt-dead-1" not in client.agent.services(), timeout=5)
        assert health(double, "cdlibt-dead").json() == []


def test_deregister_unknown_service_is_404(double):
    resp = requests.put(f"{double.url}/v1/agent/service/deregister/nope", timeout=10)
    assert resp.status_code == 404
    assert resp.text == 'Unknown service ID "nope". Ensure that the service ID is passed, not the service name.'


def test_session_bound_to_a_check_dies_with_it(double):
    import consul

    client = consul.Consul(host="127.0.0.1", port=double.port)
    client.agent.service.register("cdlibt-s", service_id="cdlibt-s-1", check=consul.Check.ttl("10s"))
    refused = requests.put(f"{double.url}/v1/session/create",
                           json={"ServiceChecks": [{"ID": "service:cdlibt-s-1"}]}, timeout=10)
    assert refused.status_code == 500 and "critical state" in refused.text
    client.agent.check.ttl_pass("service:cdlibt-s-1")
    sid = session(double, ServiceChecks=[{"ID": "service:cdlibt-s-1"}], LockDelay="0s")
    kv(double, "cdlibt/bound", "PUT", b"1", acquire=sid)
    client.agent.check.ttl_fail("service:cdlibt-s-1")
    assert sid not in double.session_ids()
    assert "Session" not in kv(double, "cdlibt/bound").json()[0]


def test_acl_tokens():
    with ConsulDouble(acl_token="cdlibt-root", read_only_tokens=("cdlibt-ro",)) as double:
        anonymous = kv(double, "cdlibt/a")
        assert anonymous.status_code == 403 and anonymous.text == "ACL not found"
        assert anonymous.headers["X-Consul-Default-Acl-Policy"] == "deny"
        assert kv(double, "cdlibt/a", token="cdlibt-root").status_code == 404
        put = requests.put(f"{double.url}/v1/kv/cdlibt/a", data=b"1", headers={"X-Consul-Token": "cdlibt-root"},
                           timeout=10)
        assert put.json() is True
        bearer = requests.get(f"{double.url}/v1/kv/cdlibt/a", headers={"Authorization": "Bearer cdlibt-ro"},
                              timeout=10)
        assert bearer.status_code == 200
        denied = kv(double, "cdlibt/a", "PUT", b"2", token="cdlibt-ro")
        assert denied.status_code == 403
        assert denied.text.startswith("Permission denied: token with AccessorID") and "key:write" in denied.text
        txn = requests.put(f"{double.url}/v1/txn", params={"token": "cdlibt-ro"},
                           json=[{"KV": {"Verb": "set", "Key": "cdlibt/a", "Value": "eA=="}}], timeout=10)
        assert txn.status_code == 409 and "Permission denied" in txn.json()["Errors"][0]["What"]
        assert all("cdlibt-r" not in entry["query"] for entry in double.requests_log)


def test_txn_applies_all_or_nothing(double):
    def b64(text):
        return base64.b64encode(text.encode()).decode()

    ok = requests.put(f"{double.url}/v1/txn", json=[
        {"KV": {"Verb": "set", "Key": "cdlibt/t/a", "Value": b64("1")}},
        {"KV": {"Verb": "cas", "Key": "cdlibt/t/b", "Value": b64("2"), "Index": 0}},
        {"KV": {"Verb": "check-not-exists", "Key": "cdlibt/t/c"}},
    ], timeout=10)
    body = ok.json()
    assert ok.status_code == 200 and body["Errors"] is None and len(body["Results"]) == 2
    assert body["Results"][0]["KV"]["Value"] is None and "X-Consul-Index" not in ok.headers
    index = body["Results"][1]["KV"]["ModifyIndex"]
    failed = requests.put(f"{double.url}/v1/txn", json=[
        {"KV": {"Verb": "set", "Key": "cdlibt/t/new", "Value": b64("x")}},
        {"KV": {"Verb": "check-index", "Key": "cdlibt/t/b", "Index": index + 5}},
        {"KV": {"Verb": "check-not-exists", "Key": "cdlibt/t/a"}},
    ], timeout=10)
    errors = failed.json()["Errors"]
    assert failed.status_code == 409 and [e["OpIndex"] for e in errors] == [1, 2]
    assert errors[0]["What"] == f'failed index check for key "cdlibt/t/b", current modify index {index} != {index + 5}'
    assert errors[1]["What"] == 'key "cdlibt/t/a" exists'
    assert kv(double, "cdlibt/t/new").status_code == 404
    too_many = requests.put(f"{double.url}/v1/txn", json=[{"KV": {"Verb": "get", "Key": "k"}}] * 129, timeout=10)
    assert too_many.status_code == 413 and too_many.text == "Transaction contains too many operations (129 > 128)"


def test_routing_errors_and_request_log(double):
    unknown = requests.get(f"{double.url}/v1/nope", timeout=10)
    assert unknown.status_code == 404 and unknown.text == "Invalid URL path: not a recognized HTTP API endpoint"
    wrong = requests.post(f"{double.url}/v1/session/list", timeout=10)
    assert wrong.status_code == 405 and "GET" in wrong.headers["Allow"]
    assert json.loads(requests.get(f"{double.url}/v1/status/leader", timeout=10).text) == "127.0.0.1:8300"
    assert [(r["method"], r["path"], r["status"]) for r in double.requests_log[-3:]] == [
        ("GET", "/v1/nope", 404), ("POST", "/v1/session/list", 405), ("GET", "/v1/status/leader", 200)]
