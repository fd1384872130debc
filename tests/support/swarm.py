"""A single-node Docker Swarm on loopback for the Swarm tests.

``swarm_manager`` (session scope) makes the local engine a swarm manager when it is not in a swarm
(``docker swarm init --advertise-addr 127.0.0.1``) and, at the end of the session, leaves the swarm
(``docker swarm leave --force``) only when it created it, and only when no service but the tests'
own (``cdlibsw…``) is left on it: an engine that was a swarm before stays one, and services someone
else started meanwhile are never removed behind their back.

``remove_swarm_objects(prefix)`` removes the services and set-aside configs a test made, through the
Docker SDK and cdlib.swarmremoval (the one safe way to remove a service on Docker 20.10), not through
the runtime under test.
"""

from __future__ import annotations

import subprocess
import time

import docker
import pytest

from cdlib import swarmremoval

PREFIX = "cdlibsw"  # every service a Swarm test creates is named <PREFIX>...


def swarm_state() -> str:
    client = docker.from_env()
    try:
        return str(client.info().get("Swarm", {}).get("LocalNodeState", ""))
    finally:
        client.close()


@pytest.fixture(scope="session")
def swarm_manager():
    state = swarm_state()
    created = False
    if state != "active":
        proc = subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
                              capture_output=True, text=True, timeout=60)
        # another session may have made it a swarm between the look and the init
        if proc.returncode != 0 and swarm_state() != "active":
            raise RuntimeError(f"docker swarm init failed: {proc.stderr.strip()}")
        created = proc.returncode == 0
    yield
    if created:
        remove_swarm_objects(PREFIX)
        client = docker.from_env()
        try:
            others = [s.name for s in client.services.list() if not s.name.startswith(PREFIX)]
        finally:
            client.close()
        if not others:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, timeout=60)


def remove_swarm_objects(prefix: str, timeout: float = 30) -> None:
    """Remove the services named prefix... and the configs named prefix... (set-aside specs), then
    wait until their containers are gone."""
    client = docker.from_env()
    try:
        # stopped and left to come to rest before the removal: Docker 20.10's manager crashes when a
        # service goes while Swarm deletes one of its tasks (see cdlib.swarmremoval)
        ids = swarmremoval.remove_services(
            client.api, [svc["ID"] for svc in client.api.services() if svc["Spec"]["Name"].startswith(prefix)])
        for cfg in client.api.configs():
            if cfg["Spec"]["Name"].startswith(prefix):
                try:
                    client.api.remove_config(cfg["ID"])
                except docker.errors.NotFound:
                    pass
        deadline = time.monotonic() + timeout
        while ids and time.monotonic() < deadline:
            rows = client.api.containers(all=True, filters={"label": "com.docker.swarm.service.id"})
            left = [r for r in rows if (r.get("Labels") or {}).get("com.docker.swarm.service.id") in ids]
            if not left:
                break
            time.sleep(0.1)
    finally:
        client.close()
