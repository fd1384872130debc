"""The public schema reader: one-line errors naming the file and the dotted key, for the descriptor and
the job catalog alike; and the bounded YAML reader behind both."""

import re
from pathlib import Path

import pytest

from cdlib.config import schema
from cdlib.config.schema import Reader
from cdlib.errors import ConfigError


def fails(fn, *args, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kw)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    return info.value


def test_fail_names_the_file_and_the_key():
    err = Reader("jobs.yml").fail("services[0].name", "a name", "X Y")
    assert str(err) == "jobs.yml: services[0].name: expected a name, got 'X Y'"
    assert err.file == "jobs.yml" and err.key == "services[0].name"
    assert str(Reader("f").fail("a", "b")) == "f: a: expected b"


def test_section_and_only():
    r = Reader("f.yml")
    assert r.section({}, "", "health", {"path"}) == {}
    assert r.section({"health": {"path": "/"}}, "", "health", {"path"}) == {"path": "/"}
    assert fails(r.section, {"health": [1]}, "", "health", {"path"}).key == "health"
    err = fails(r.section, {"h": {"pth": 1}}, "top", "h", {"path"})
    assert str(err) == "f.yml: top.h.pth: expected no such key (allowed: path)"
    err = fails(r.only, {"bad key\n": 1}, "", {"a", "b"})
    assert "(top level)" in str(err) and "bad key" not in str(err)  # a key that is no key name is not echoed


def test_string_number_boolean():
    r = Reader("f")
    assert r.string({"tag": 1.10}, "image", "tag") == "1.1"  # a float from Python code: str()
    assert r.string({}, "", "x", default="d") == "d"
    assert str(fails(r.string, {}, "", "x", required=True, what="a name")) == "f: x: expected a name (required)"
    assert fails(r.string, {"x": "a b"}, "k", "x", re.compile(r"\w+")).key == "k.x"
    assert r.number({"n": 3}, "", "n", 1, 1, 5, integer=True) == 3
    assert str(fails(r.number, {"n": 2.5}, "", "n", 1, 1, 5, integer=True)) == \
        "f: n: expected an integer from 1 to 5, got 2.5"
    assert str(fails(r.number, {"n": True}, "", "n", 1, 0, 9)) == "f: n: expected a number from 0 to 9, got True"
    assert r.boolean({}, "", "b", True) is True
    assert fails(r.boolean, {"b": "yes"}, "s", "b", False).key == "s.b"


def test_lists_env_and_paths(tmp_path):
    r = Reader("f")
    assert r.str_list({"l": "a"}, "", "l", re.compile(r"[a-z]+"), "words") == ("a",)
    assert fails(r.str_list, {"l": ["a", "B"]}, "", "l", re.compile(r"[a-z]+"), "words").key == "l[1]"
    assert str(fails(r.str_list, {"l": ["a", "a"]}, "", "l", re.compile(r"[a-z]+"), "words")) == \
        "f: l: expected a list of distinct words, got 'a'"
    assert r.env({"env": {"B": 2, "A": "x"}}, "", "env") == (("A", "x"), ("B", "2"))
    assert fails(r.env, {"env": {"1X": "y"}}, "s", "env").key == "s.env.1X"
    assert r.path({"p": "sub/f"}, "k", "p", tmp_path) == tmp_path / "sub/f"
    assert r.path({"p": "/abs"}, "k", "p", tmp_path) == Path("/abs")
    assert fails(r.path, {"p": "a\x01"}, "k", "p", tmp_path).key == "k.p"


def test_the_job_catalog_reads_with_the_same_reader():
    from cdlib.jobs import catalog

    assert catalog.Reader is Reader


def test_read_yaml_is_bounded(tmp_path):
    f = tmp_path / "c.yml"
    f.write_text("a: 1\na: 2\n")
    assert "each key once" in str(fails(schema.read_yaml, f, "catalog", "pass --catalog"))
    f.write_text("x: &x [1]\n" + "l: [" + ", ".join(["*x"] * (schema.MAX_ALIASES + 1)) + "]\n")
    assert "aliases" in str(fails(schema.read_yaml, f, "catalog", "pass --catalog"))
    assert "is a directory" in str(fails(schema.read_yaml, tmp_path, "catalog", "pass --catalog"))
    f.write_text("v: 0123\n")
    assert schema.as_text(schema.read_yaml(f, "catalog", "x")["v"]) == "0123"  # as written in the file
    with pytest.raises(schema.FileProblem, match="is larger than 1 KiB"):
        f.write_text("x" * 2000)
        schema.read_bounded(f, 1024)
