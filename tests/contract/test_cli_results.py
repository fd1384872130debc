"""The result file the CLI writes for a held lock, as the Jenkins steps read it (see test_groovy_steps.py).

A deploy checks its proxy configuration with the real ``nginx -t`` before it takes the lock, so this
runs the nginx binary that scripts/setup installs (no server is started): hence this tier, not tests/unit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args, env=None, cwd=None):
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "cdlib", *args], capture_output=True, text=True, env=full,
                          cwd=cwd, timeout=60)


def test_lock_held_result_names_the_service_and_the_holder(tmp_path):
    from cdlib import keys
    from cdlib.store.base import default_holder
    from cdlib.store.sqlite import SqliteStore

    f = tmp_path / "cdlib.yml"
    db = tmp_path / "s.db"
    f.write_text(f"service: shop\nport: 80\nimage: r/shop:1\nstore: sqlite:///{db}\n")
    store = SqliteStore(db)
    store.acquire_lock(keys.lock("shop"), default_holder(release="r-9", image="r/shop:0"), ttl=60)
    store.close()
    proc = run("deploy", "-f", str(f), "--json", cwd=tmp_path)
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    assert doc["service"] == "shop"
    assert doc["error"]["type"] == "LockHeld" and doc["error"]["holder"]["release"] == "r-9"
    assert "token" not in doc["error"]["holder"]
