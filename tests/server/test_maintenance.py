"""server/maintenance.py: webhooks into the outbox once per completion, dead workers, sweeps."""

from __future__ import annotations

import json
import time
from pathlib import Path

from _app import AUTH, RESULT, finish_next, make_settings, running_app, store_of

from server.jobs.base import JobError, JobStatus, NewJob, WorkerInfo
from server.maintenance import Maintenance


def test_webhooks_enter_the_outbox_once_per_completion(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, url_allowlist=["127.0.0.2"])
    with running_app(settings) as (client, app):
        app.state.webhooks.stop()  # keep the deliveries in the outbox to look at them
        hook = "https://127.0.0.2:9/ovi"  # hosts are resolved at submit: no DNS name offline
        ok = client.post(
            f"/queue/fal-ai/ovi?fal_webhook={hook}", json={"prompt": "x"}, headers=AUTH
        )
        assert ok.status_code == 200 and ok.json()["gateway_request_id"]
        bad = client.post(
            f"/queue/fal-ai/ovi?fal_webhook={hook}", json={"prompt": "y"}, headers=AUTH
        )
        store = store_of(app)
        finish_next(store)
        finish_next(store, error=JobError("Generation failed: x", "runner_server_error", 500))
        maintenance = Maintenance(settings, store, app.state.storage, webhooks=app.state.webhooks)
        maintenance.tick()
        maintenance.tick()
        assert store.delivery_counts() == {"pending": 2}
        sent = {d.request_id: d for d in store.claim_deliveries(10, lease_s=60)}
        first = json.loads(sent[ok.json()["request_id"]].body)
        second = json.loads(sent[bad.json()["request_id"]].body)
        assert sent[ok.json()["request_id"]].url == hook
        assert first["gateway_request_id"] == ok.json()["gateway_request_id"]
        assert first["status"] == "OK" and first["error"] is None
        assert first["payload"]["video"]["url"] == "http://testserver" + RESULT["video"]["url"]
        assert second["status"] == "ERROR" and second["error"] == "Invalid status code: 500"
        assert second["payload"] == {
            "detail": "Generation failed: x",
            "error_type": "runner_server_error",
        }
        refused = client.post(
            "/queue/fal-ai/ovi?fal_webhook=http://127.0.0.1:9/hook",
            json={"prompt": "x"},
            headers=AUTH,
        )
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_recovers_stale_workers_and_sweeps(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker_stale_after_s=5, output_retention_s=60)
    with running_app(settings) as (_, app):
        store, storage = store_of(app), app.state.storage
        job = store.submit(NewJob(app="fal-ai/ovi", input={"prompt": "x"}))
        store.heartbeat(WorkerInfo(id="remote-1", state="ready", heartbeat_at=time.time() - 10))
        store.claim("remote-1")
        old = storage.save(b"x", kind="outputs", content_type="video/mp4", file_name="a.mp4")
        maintenance = Maintenance(settings, store, storage)
        maintenance.tick()
        back = store.get(job.id)
        assert back.status is JobStatus.IN_QUEUE and back.attempts == 1
        assert store.workers() == []
        assert storage.stat(old.key)  # younger than the retention
        maintenance._last_sweep = 0.0
        storage.sweep(60, now=time.time() + 120)  # what the next sweep an hour later does
        assert storage.delete(old.key) is False
