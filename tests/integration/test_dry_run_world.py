"""--dry-run against the real dockerd, nginx and SQLite store: the plan names the colors, the proxy
configuration diff and the store keys, and the world is exactly as it was."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def world(service):
    """Containers, store (the locks included), the proxy directory's files and the active configuration."""
    from cdlib import keys

    store = service._store()
    try:
        everything = {e.key: e.value for e in store.list(keys.service(service.name))}
    finally:
        store.close()
    files = sorted(p.name for p in service.proxy_dir.iterdir()) if service.proxy_dir.exists() else None
    return service.containers(), everything, files, service.nginx_conf()


def test_a_first_release_dry_run_creates_no_store_and_no_proxy_directory(service):
    code, out = service.cli_json("release", "--tag", "v1", "--dry-run")
    assert code == 0, out
    assert out["dry_run"] is True and out["plan"]["color"] == "blue"
    assert not service.db.exists() and not service.proxy_dir.exists()
    assert service.containers() == []


def test_release_dry_run_over_a_live_release_changes_nothing_and_names_the_plan(service):
    service.cli("release", "--tag", "v1", check=True)
    before = world(service)
    code, out = service.cli_json("release", "--tag", "v2", "--dry-run")
    assert code == 0, out
    assert world(service) == before
    plan = out["plan"]
    n = service.name
    assert (plan["color"], plan["live_color"]) == ("green", "blue")
    assert [c["name"] for c in plan["containers"]["start"]] == [f"{n}-green-1", f"{n}-green-2"]
    assert plan["containers"]["stop"] == [f"{n}-blue-1", f"{n}-blue-2"]
    assert f"cdlib/services/{n}/live" in plan["store_keys"]["write"]
    diff = plan["proxy"]["diff"]
    assert str(service.proxy_dir / "nginx.conf") in diff.splitlines()[0]
    # static upstreams are named by color; with nginx's Lua balancer one upstream per service holds a
    # table of servers whose lines name the color
    assert any(line.startswith("-") and (f"upstream {n}_blue" in line or f'["{n}"] = "blue ' in line)
               for line in diff.splitlines())
    assert any(line.startswith("+") and (f"upstream {n}_green" in line or f'["{n}"] = "green ' in line)
               for line in diff.splitlines())
    assert f"<port of {n}-green-1 chosen at start>" in diff

    human = service.cli("release", "--tag", "v2", "--dry-run")
    assert human.returncode == 0, human.stderr
    text = human.stdout
    assert "dry run, nothing changed" in text and "as green beside blue" in text
    assert f"+    upstream {n}_green {{" in text or f'+            ["{n}"] = "green ' in text
    assert f"cdlib/services/{n}/instances/green/{n}-green-1" in text
    assert world(service) == before


def test_stage_dry_runs_read_the_open_release_and_change_nothing(service):
    service.cli("release", "--tag", "v1", check=True)
    code, deployed = service.cli_json("deploy", "--tag", "v2")
    assert code == 0, deployed
    before = world(service)
    code, out = service.cli_json("switch", "--dry-run")
    assert code == 0, out
    for inst in deployed["instances"]:
        assert f"{inst['address']}:{inst['port']}" in out["plan"]["proxy"]["diff"]
    code, undo = service.cli_json("rollback", "--dry-run")
    assert code == 0, undo
    assert undo["plan"]["steps"] == ["undo register", "undo start", "undo set-aside", "close"]
    code, refused = service.cli_json("cleanup", "--dry-run")
    assert code == 2 and "cleanup needs it to be" in refused["message"]
    assert world(service) == before
    assert service.cli("rollback").returncode == 0


def test_bad_input_in_a_dry_run_is_exit_2(service):
    proc = service.cli("release", "--dry-run", "--lock-ttl", "1")
    assert proc.returncode == 2 and "--lock-ttl" in proc.stderr


def test_rollback_previous_dry_run_names_the_stopped_color_it_would_resume(service):
    service.cli("release", "--tag", "v1", check=True)
    service.cli("release", "--tag", "v2", check=True)
    before = world(service)
    code, out = service.cli_json("rollback", "--previous", "--dry-run")
    assert code == 0, out
    assert world(service) == before
    plan = out["plan"]
    n = service.name
    assert plan["image"].endswith(":v1") and (plan["color"], plan["live_color"]) == ("blue", "green")
    assert [c["name"] for c in plan["containers"]["resume"]] == [f"{n}-blue-1", f"{n}-blue-2"]
    assert any(line.startswith("+") and (f"upstream {n}_blue" in line or f'["{n}"] = "blue ' in line)
               for line in plan["proxy"]["diff"].splitlines())
    assert service.get() == (200, "v2")
