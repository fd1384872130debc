"""cdlib.secrets: what is a secret, and masking by value wherever it appears."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from cdlib import secrets
from cdlib.secrets import MASK, mask, mask_data, register, values


@pytest.fixture(autouse=True)
def clean_registry():
    secrets.reset()
    yield
    secrets.reset()


def test_known_credential_variables_are_secret():
    env = {"CDLIB_REGISTRY_PASSWORD": "reg-pass-1", "CONSUL_HTTP_TOKEN": "consul-tok-1",
           "JENKINS_API_TOKEN": "jenkins-tok-1", "ETCDCTL_PASSWORD": "etcd-pass-1", "GREETING": "hello-world"}
    assert values(env) == {"reg-pass-1", "consul-tok-1", "jenkins-tok-1", "etcd-pass-1"}


@pytest.mark.parametrize("name", ["SMOKE_API_TOKEN", "db_password", "MY_PASSWD", "APP_SECRET", "STRIPE_API_KEY",
                                  "SSH_PRIVATE_KEY", "GOOGLE_CREDENTIALS", "x_token"])
def test_names_that_say_secret_are_secret(name):
    assert values({name: "value-1234"}) == {"value-1234"}


def test_a_user_name_is_not_a_secret_but_its_password_is():
    assert values({"ETCDCTL_USER": "root"}) == set()
    assert values({"ETCDCTL_USER": "root:etcd-pw-9"}) == {"etcd-pw-9"}


def test_passwords_of_urls_in_the_environment_are_secret():
    env = {"CDLIB_STORE": "etcd://admin:st%40re-pw@127.0.0.1:2379", "DOCKER_HOST": "ssh://deploy:dk-pass@host",
           "http_proxy": "http://u:proxy-pw@proxy:3128", "PLAIN_URL": "http://example.com/a:b@c"}
    found = values(env)
    assert {"st%40re-pw", "st@re-pw", "dk-pass", "proxy-pw"} <= found
    assert "deploy" not in found and "admin" not in found


def test_docker_auth_config_and_the_password_it_encodes():
    auth = base64.b64encode(b"robot:reg-secret-7").decode()
    doc = json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}})
    found = values({"DOCKER_AUTH_CONFIG": doc})
    assert {doc, auth, "reg-secret-7"} <= found


def test_a_token_file_hides_its_content_not_its_path(tmp_path):
    token = tmp_path / "token"
    token.write_text("file-token-42\n")
    assert values({"CONSUL_HTTP_TOKEN_FILE": str(token)}) == {"file-token-42"}
    token.write_text("file-token-43\n")  # read again when it changes
    assert mask(f"{token}: file-token-43", env={"CONSUL_HTTP_TOKEN_FILE": str(token)}) == f"{token}: ***"


def test_registered_values_are_masked_by_value_whatever_the_name():
    assert mask("db=innocent-value-1", env={}) == "db=innocent-value-1"
    register("innocent-value-1", None, "")
    assert mask("db=innocent-value-1;", env={}) == "db=***;"


def test_register_env_takes_the_values_of_named_variables():
    secrets.register_env(["CDLIBT_A", "CDLIBT_MISSING"], env={"CDLIBT_A": "value-of-a-1", "CDLIBT_B": "value-b-1"})
    assert values({}) == {"value-of-a-1"}


def test_short_values_are_a_documented_limit():
    register("abc")
    assert secrets.MIN_LENGTH == 4
    assert mask("abc abcd", env={}) == "abc abcd"
    register("abcd")
    assert mask("abc abcd", env={}) == "abc ***"


@pytest.mark.parametrize("encode", [lambda v: v, lambda v: quote(v, safe=""), quote, quote_plus,
                                    lambda v: json.dumps(v)[1:-1],
                                    lambda v: base64.b64encode(v.encode()).decode()])
def test_the_value_is_masked_in_its_usual_encodings(encode):
    secret = 'p@ss w/"x"\\y:z'
    register(secret)
    assert mask(f"<{encode(secret)}>", env={}) == f"<{MASK}>"


def test_a_json_document_stays_valid_once_masked():
    secret = 'quo"te\\back'
    register(secret)
    doc = json.dumps({"message": f"failed: {secret}", "nested": [{"out": secret}]})
    assert json.loads(mask(doc, env={})) == {"message": "failed: ***", "nested": [{"out": "***"}]}


def test_a_secret_that_contains_another_is_masked_whole():
    register("pass", "password-long-1")
    assert mask("x password-long-1 y pass", env={}) == "x *** y ***"


def test_mask_data_masks_nested_strings_and_leaves_the_rest():
    register("nested-secret-1")
    data = {"a": ["ok", "has nested-secret-1", ("nested-secret-1", 3)], "n": 5, "b": None,
            "nested-secret-1": {"x": True}}
    out = mask_data(data, env={})
    assert out == {"a": ["ok", "has ***", ("***", 3)], "n": 5, "b": None, "nested-secret-1": {"x": True}}
    assert data["a"][1] == "has nested-secret-1"  # a new object, the original is untouched
    assert mask_data({"x": ["y"]}, env={}) == {"x": ["y"]}


def test_edges_of_a_cut_piece_are_masked():
    register("0123456789-secret")
    # a piece that ends with the beginning of the secret, one that starts with its end
    assert mask("output 0123456", edges=True, env={}) == "output ***"
    assert mask("89-secret more", edges=True, env={}) == "*** more"
    assert mask("output 012", edges=True, env={}) == "output 012"  # shorter than MIN_LENGTH
    assert mask("output 0123456", env={}) == "output 0123456"  # only when asked


def test_the_cli_redacts_through_secrets(monkeypatch):
    from cdlib import cli

    monkeypatch.setenv("CDLIBT_DB_PASSWORD", "cli-db-pw-1")
    register("cli-registered-1")
    assert cli._redact("cli-db-pw-1 cli-registered-1 plain") == "*** *** plain"


def test_journal_writes_mask_free_text_only():
    from cdlib import keys
    from cdlib.journal import Journal, history
    from cdlib.store.memory import MemoryStore

    register("journal-secret-1")
    store = MemoryStore()
    j = Journal.create(store, "shop", {"id": "r1", "service": "shop", "image": "img:journal-secret-1",
                                       "color": "blue", "holder": {"build": "job journal-secret-1", "pid": 1}})
    step = j.intent("proxy", {"prior": "config journal-secret-1"})
    j.fail(step, "refused: journal-secret-1")
    j.add_test({"suite": "pre-integration", "output": "printed journal-secret-1", "passed": False})
    stored = store.get_json(keys.release("shop"))
    assert stored["steps"][0]["error"] == "refused: ***"
    assert stored["tests"][0]["output"] == "printed ***"
    assert stored["holder"]["build"] == "job ***"
    # structural fields are never rewritten: an undo needs them exactly
    assert stored["steps"][0]["data"]["prior"] == "config journal-secret-1"
    assert stored["image"] == "img:journal-secret-1"
    j.close("rolled-back", "pre-integration failed: journal-secret-1")
    entry = history(store, "shop")[0]
    assert entry["message"] == "pre-integration failed: ***"
    assert "journal-secret-1" not in json.dumps(entry["tests"]) + json.dumps(entry["steps"])
