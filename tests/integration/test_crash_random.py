"""SIGKILL `cdlib release` at random moments (not only at failpoints), then `cdlib rollback`: the world
is exactly as before the release (or, when the kill came after the release closed, the new release
with nothing left over), and no lock is left. On SQLite and on the etcd at 127.0.0.1:2379.

The delays are seeded and drawn between 0 and the measured duration of a whole release, so they land
anywhere: before the store is opened, between the lock and the journal, inside a step, while a suite
runs, inside the switch, inside close. More trials: benchmarks/crash_random.py.
"""

from __future__ import annotations

import random

import pytest

from tests.support.crash import CrashWorld, build_images

pytestmark = pytest.mark.integration

SEED = 1129
TRIALS = 10  # per store: the file stays well under 90 s (about 30 s here)


@pytest.fixture(scope="module")
def crash_images(docker_client):
    tags = build_images(docker_client, "cdlibt-crash-web")
    yield tags
    for tag in tags.values():
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:
            pass


@pytest.mark.parametrize("store", ["sqlite", "etcd"])
def test_a_release_killed_at_a_random_moment_is_rolled_back_exactly(tmp_path, docker_client, crash_images, store):
    world = CrashWorld(tmp_path, docker_client, "cdlibt-crash-web", store=store)
    try:
        world.release("v1")
        duration = max(world.release("v2"), world.release("v3"))  # the one that sets aside is slower
        rng = random.Random(f"{SEED}-{store}")
        trials = [world.trial(rng, duration) for _ in range(TRIALS)]
        broken = [t for t in trials if t.outcome == "broken"]
        assert broken == [], broken
        assert sum(t.outcome == "restored" for t in trials) >= TRIALS // 2, trials
    finally:
        world.teardown()


def test_rollback_removes_test_containers_whose_process_is_gone(tmp_path, docker_client, crash_images):
    """A suite run in a container outlives a killed cdlib: 'rollback' removes it once its process is
    gone, and leaves those of live processes alone."""
    import os
    import socket
    import subprocess
    import sys

    world = CrashWorld(tmp_path, docker_client, "cdlibt-crash-web")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    started = []
    try:
        suite_image = {"repository": "cdlibt-crash-web", "tag": "v1"}
        import json

        descriptor = json.loads(world.file.read_text())
        descriptor["tests"]["post-integration"] = {"image": suite_image}
        world.file.write_text(json.dumps(descriptor))
        for owner, pid in (("dead", dead.pid), ("live", os.getpid())):
            started.append(docker_client.containers.run(
                "cdlibt-crash-web:v1", name=f"cdlib-test-{world.name}-post-integration-{owner}", detach=True,
                labels={"cdlib.test": "1", "cdlib.service": world.name, "cdlib.suite": "post-integration",
                        "cdlib.host": socket.gethostname(), "cdlib.pid": str(pid), "cdlib.proc": ""}))
        proc = world.cli("rollback", "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"cdlib-test-{world.name}-post-integration-dead" in json.loads(proc.stdout)["message"]
        names = {c.name for c in docker_client.containers.list(all=True, filters={"label": "cdlib.test=1"})}
        assert f"cdlib-test-{world.name}-post-integration-dead" not in names
        assert f"cdlib-test-{world.name}-post-integration-live" in names
    finally:
        for c in started:
            try:
                c.remove(force=True)
            except Exception:
                pass
        world.teardown()
