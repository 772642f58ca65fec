"""GET /health: warming until a live worker reports ready."""

from __future__ import annotations

import time
from pathlib import Path

from _app import AUTH, make_settings, running_app, store_of

from server.jobs.base import WorkerInfo


def test_warming_then_ready_then_stale(tmp_path: Path) -> None:
    with running_app(make_settings(tmp_path, preset="tiny")) as (client, app):
        r = client.get("/health")  # no key needed
        assert r.status_code == 503 and r.json()["status"] == "warming"
        assert client.get("/health", headers=AUTH).json()["model"] == "tiny"
        store = store_of(app)
        store.heartbeat(WorkerInfo(id="w1", state="warming", heartbeat_at=time.time()))
        assert client.get("/health").json()["status"] == "warming"
        store.heartbeat(WorkerInfo(id="w1", state="ready", heartbeat_at=time.time()))
        r = client.get("/health", headers=AUTH)
        assert r.status_code == 200 and r.json()["status"] == "ready"
        assert [w["id"] for w in r.json()["workers"]] == ["w1"]
        assert r.json()["queue"] == {"in_queue": 0, "in_progress": 0}
        store.heartbeat(WorkerInfo(id="w1", state="ready", heartbeat_at=time.time() - 3600))
        assert client.get("/health").json()["status"] == "warming"


def test_workers_lists_the_fleet_with_auth(tmp_path: Path) -> None:
    with running_app(make_settings(tmp_path / "data", worker_stale_after_s=30)) as (client, app):
        store = app.state.store
        store.heartbeat(WorkerInfo(id="gpu0", state="ready", heartbeat_at=time.time(), host="a"))
        store.heartbeat(WorkerInfo(id="gpu1", state="warming", heartbeat_at=time.time(), host="b"))
        assert client.get("/workers").status_code == 401
        body = client.get("/workers", headers=AUTH).json()
        assert [(w["id"], w["host"], w["live"]) for w in body["workers"]] == [
            ("gpu0", "a", True),
            ("gpu1", "b", True),
        ]
        assert body["queue"] == {"in_queue": 0, "in_progress": 0}
        assert client.get("/health").json()["status"] == "ready"
