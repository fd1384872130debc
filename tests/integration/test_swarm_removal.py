"""cdlib.swarmremoval on the real single-node swarm: a service whose tasks keep failing and are
restarted at once (so Swarm keeps creating tasks and the reaper keeps deleting old ones: the moment
Docker 20.10's manager crashes at when the service is removed) goes away with its tasks at rest
when it is removed, and the engine still answers afterwards. A global service goes the same way."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from pathlib import Path

import docker
import pytest

from cdlib import swarmremoval
from tests.support.swarm import PREFIX, remove_swarm_objects, swarm_manager  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

NAME = f"{PREFIX}rm-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def failing_image(docker_client):
    """An image whose process exits 1 at once."""
    tag = f"{NAME}:fail"
    with tempfile.TemporaryDirectory(prefix="cdlibt-img-") as tmp:
        shutil.copy2("/bin/busybox", Path(tmp) / "busybox")
        (Path(tmp) / "Dockerfile").write_text('FROM scratch\nCOPY busybox /bin/busybox\n'
                                              'ENTRYPOINT ["/bin/busybox", "false"]\n')
        docker_client.images.build(path=tmp, tag=tag, rm=True, forcerm=True)
    yield tag
    docker_client.images.remove(tag, force=True)


class Recording:
    """client.api, recording the service's tasks as they are when remove_service is called."""

    def __init__(self, api):
        self._api = api
        self.tasks_at_removal: list[dict] | None = None

    def __getattr__(self, name):
        return getattr(self._api, name)

    def remove_service(self, service_id):
        self.tasks_at_removal = swarmremoval.tasks_of(self._api, service_id)
        return self._api.remove_service(service_id)


def _churning(client, name: str, image: str, mode) -> str:
    svc = client.services.create(image, name=name, mode=mode,
                                 restart_policy=docker.types.RestartPolicy(condition="any", delay=0))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # restarted at least twice: tasks are being created and retired
        failed = [t for t in svc.tasks() if t["Status"]["State"] in ("failed", "rejected")]
        if len(failed) >= 2:
            return svc.id
        time.sleep(0.2)
    raise AssertionError(f"{name} did not restart its failing tasks within 60 s: {svc.tasks()}")


@pytest.mark.parametrize("mode", ["replicated", "global"])
def test_a_service_that_keeps_restarting_is_removed_with_its_tasks_at_rest(docker_client, swarm_manager,  # noqa: F811
                                                                           failing_image, mode):
    name = f"{NAME}-{mode}"
    service_mode = docker.types.ServiceMode("replicated", replicas=2) if mode == "replicated" else \
        docker.types.ServiceMode("global")
    try:
        sid = _churning(docker_client, name, failing_image, service_mode)
        api = Recording(docker_client.api)
        assert swarmremoval.remove_service(api, name) is True
        assert api.tasks_at_removal is not None and swarmremoval.at_rest(api.tasks_at_removal), api.tasks_at_removal
        assert docker_client.info()["Swarm"]["LocalNodeState"] == "active"  # the manager is still there
        assert [s for s in docker_client.api.services() if s["ID"] == sid] == []
        assert swarmremoval.remove_service(docker_client.api, name) is False  # gone: nothing to do, no error
    finally:
        remove_swarm_objects(name)
