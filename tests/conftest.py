"""The test tiers, by folder as well as by marker.

tests/unit          Python only: no running service, no binary installed by scripts/setup
tests/contract      every adapter against one behaviour suite (doubles in-process; the real
                    components' parameters are marked ``integration``), the Groovy steps and the CLI's
                    results against each other: may run a local binary (groovy, nginx -t), no service
tests/integration   whole flows against dockerd, nginx, HAProxy, etcd, the registry (all ``integration``)
tests/hostile       hostile inputs thrown at a real released service

A test under tests/unit marked ``integration`` is refused here, before anything runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = [item.nodeid for item in items
                 if item.get_closest_marker("integration") is not None and UNIT in Path(item.path).parents]
    if misplaced:
        raise pytest.UsageError("integration tests under tests/unit (move them to tests/integration or "
                                "tests/contract): " + ", ".join(misplaced))
