"""The queue API through the real app (no worker processes): the store stands in for workers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from _app import AUTH, RESULT, claim, finish_next, make_settings, running_app, store_of

import server.serving as serving
from server.fetch import ImageInputError
from server.jobs.base import CANCELLED, START_TIMEOUT, WORKER_LOST, JobError, Outcome
from server.schemas import FAL_FIELDS
from server.storage import read_all

Q = "/queue/fal-ai/ovi"
I2V = "/queue/fal-ai/ovi/image-to-video"


@pytest.fixture()
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    async def fake_load(url: str, settings, **kw) -> bytes:
        if "bad" in url:
            raise ImageInputError(url, "not a readable image: cannot identify image file")
        return b"image-bytes"

    monkeypatch.setattr(serving, "load_image_input", fake_load)
    with running_app(make_settings(tmp_path, max_queue_size=3)) as (client, app):
        yield client, app


def submit(client, path: str = Q, body: dict | None = None, **kw):
    return client.post(path, json=body or {"prompt": "a cat", "num_inference_steps": 2}, **kw)


def test_submit_answers_urls_and_request_id(app_client) -> None:
    client, app = app_client
    r = submit(client, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    rid = body["request_id"]
    assert r.headers["x-fal-request-id"] == rid
    base = f"http://testserver/queue/fal-ai/ovi/requests/{rid}"
    assert body["response_url"] == base
    assert body["status_url"] == base + "/status"
    assert body["cancel_url"] == base + "/cancel"
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0
    job = store_of(app).get(rid)
    assert job.input["num_inference_steps"] == 2 and job.input["resolution"] == "992x512"


def test_image_to_video_urls_drop_the_sub_path_and_store_the_image(app_client) -> None:
    client, app = app_client
    r = submit(client, I2V, {"prompt": "x", "image_url": "https://example.com/a.png"}, headers=AUTH)
    assert r.status_code == 200, r.text
    rid = r.json()["request_id"]
    assert r.json()["response_url"].endswith(f"/queue/fal-ai/ovi/requests/{rid}")
    (key,) = store_of(app).get(rid).input_files.values()  # the job keeps only the key
    assert read_all(app.state.storage, key) == b"image-bytes"
    # both paths find it
    assert client.get(f"{I2V}/requests/{rid}/status", headers=AUTH).status_code == 202
    assert client.get(f"{Q}/requests/{rid}/status", headers=AUTH).status_code == 202


def test_status_lifecycle_logs_metrics_and_result(app_client) -> None:
    client, app = app_client
    rid = submit(client, headers=AUTH).json()["request_id"]
    second = submit(client, headers=AUTH).json()["request_id"]
    st = client.get(f"{Q}/requests/{second}/status", headers=AUTH)
    assert st.status_code == 202 and st.json()["queue_position"] == 1
    assert st.json()["logs"] is None and st.headers["x-fal-request-id"] == second

    r = client.get(f"{Q}/requests/{rid}", headers=AUTH)
    assert r.status_code == 400 and r.json()["detail"] == "Request is still in progress"

    store = store_of(app)
    job = claim(store)
    store.append_log(job.id, "Step 1/2")
    st = client.get(f"{Q}/requests/{rid}/status?logs=1", headers=AUTH)
    assert st.status_code == 202
    body = st.json()
    assert body["status"] == "IN_PROGRESS" and "queue_position" not in body
    assert [e["message"] for e in body["logs"]] == ["Step 1/2"]
    assert set(body["logs"][0]) == {"message", "level", "source", "timestamp"}
    assert client.get(f"{Q}/requests/{second}/status", headers=AUTH).json()["queue_position"] == 0

    store.complete(job.id, "w", Outcome(RESULT, metrics={"inference_time": 1.25}))
    st = client.get(f"{Q}/requests/{rid}/status?logs=false", headers=AUTH)
    assert st.status_code == 200
    assert st.json()["status"] == "COMPLETED" and st.json()["metrics"] == {"inference_time": 1.25}
    assert st.json()["logs"] is None and "error" not in st.json()

    r = client.get(f"{Q}/requests/{rid}", headers=AUTH)
    assert r.status_code == 200 and r.headers["x-fal-request-id"] == rid
    assert r.json()["video"]["url"] == "http://testserver" + RESULT["video"]["url"]
    assert r.json()["seed"] == 7


def test_failed_request_answers_its_error(app_client) -> None:
    client, app = app_client
    rid = submit(client, headers=AUTH).json()["request_id"]
    finish_next(
        store_of(app), error=JobError("Generation failed: boom", "runner_server_error", 500)
    )
    st = client.get(f"{Q}/requests/{rid}/status", headers=AUTH).json()
    assert st["status"] == "COMPLETED"
    assert st["error"] == "Generation failed: boom" and st["error_type"] == "runner_server_error"
    r = client.get(f"{Q}/requests/{rid}", headers=AUTH)
    assert r.status_code == 500
    assert r.json() == {"detail": "Generation failed: boom", "error_type": "runner_server_error"}
    assert r.headers["x-fal-error-type"] == "runner_server_error"
    assert r.headers["x-fal-request-id"] == rid


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (WORKER_LOST, 500),
        (JobError("gone", "runner_disconnected", 503), 500),  # as stored by older versions
        (JobError("bad gateway", "runner_server_error", 502), 500),
        (JobError("late", "runner_server_error", 504), 500),  # a 504 without the user mark
        (CANCELLED, 499),
        (START_TIMEOUT, 504),
    ],
)
def test_failed_results_use_codes_no_client_retries(app_client, error, code) -> None:
    # @fal-ai/client retries 429/502/503/504 on the result (and re-POSTs fal.run); fal-client
    # retries 408/409/429. A final failure must be none of these, except the start timeout's 504
    # marked `X-Fal-Request-Timeout-Type: user`, which neither client retries.
    client, app = app_client
    rid = submit(client, headers=AUTH).json()["request_id"]
    finish_next(store_of(app), error=error)
    r = client.get(f"{Q}/requests/{rid}", headers=AUTH)
    assert r.status_code == code
    assert r.json()["error_type"] == r.headers["x-fal-error-type"] == error.error_type
    assert r.headers["x-fal-request-id"] == rid
    if code == 504:
        assert r.headers["x-fal-request-timeout-type"] == "user"


def test_cancel_queued_then_already_completed(app_client) -> None:
    client, _ = app_client
    rid = submit(client, headers=AUTH).json()["request_id"]
    r = client.put(f"{Q}/requests/{rid}/cancel", headers=AUTH)
    assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED"}
    st = client.get(f"{Q}/requests/{rid}/status", headers=AUTH).json()
    assert st["status"] == "COMPLETED" and st["error_type"] == "client_cancelled"
    r = client.put(f"{Q}/requests/{rid}/cancel", headers=AUTH)
    assert r.status_code == 400 and r.json()["status"] == "ALREADY_COMPLETED"
    r = client.get(f"{Q}/requests/{rid}", headers=AUTH)
    assert r.status_code == 499 and r.json()["error_type"] == "client_cancelled"


def test_cancel_running_sets_the_flag(app_client) -> None:
    client, app = app_client
    rid = submit(client, headers=AUTH).json()["request_id"]
    claim(store_of(app))
    assert client.put(f"{Q}/requests/{rid}/cancel", headers=AUTH).status_code == 202
    assert store_of(app).is_cancel_requested(rid)


def test_unknown_request_is_404_everywhere(app_client) -> None:
    client, _ = app_client
    for method, suffix in (
        ("GET", "/status"),
        ("GET", ""),
        ("PUT", "/cancel"),
        ("GET", "/status/stream"),
    ):
        r = client.request(method, f"{Q}/requests/does-not-exist{suffix}", headers=AUTH)
        assert r.status_code == 404, (method, suffix)
        assert r.json()["detail"] == "Request not found"


def test_validation_422_shapes(app_client) -> None:
    client, app = app_client
    r = submit(client, body={"num_inference_steps": 51, "seed": "x"}, headers=AUTH)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert {tuple(d["loc"]) for d in detail} == {
        ("body", "prompt"),
        ("body", "num_inference_steps"),
        ("body", "seed"),
    }
    assert all({"loc", "msg", "type"} <= set(d) for d in detail)
    r = submit(client, body={"prompt": "x", "resolution": "100x100"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "resolution"]
    r = client.post(Q, content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = submit(client, I2V, {"prompt": "x"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image_url"]
    assert store_of(app).counts()["IN_QUEUE"] == 0


def test_unloadable_image_is_422_and_not_queued(app_client) -> None:
    client, app = app_client
    r = submit(
        client, I2V, {"prompt": "x", "image_url": "https://example.com/bad.png"}, headers=AUTH
    )
    assert r.status_code == 422
    (item,) = r.json()["detail"]
    assert item["loc"] == ["body", "image_url"] and item["type"] == "image_load_error"
    assert item["msg"].startswith("Could not load image from url: ")
    assert store_of(app).counts()["IN_QUEUE"] == 0


def test_queue_full_is_429(app_client) -> None:
    client, _ = app_client
    for _ in range(3):
        assert submit(client, headers=AUTH).status_code == 200
    r = submit(client, headers=AUTH)
    assert r.status_code == 429 and r.json()["error_type"] == "queue_full"


def test_priority_and_timeout_headers(app_client) -> None:
    client, app = app_client
    low = submit(client, headers={**AUTH, "X-Fal-Queue-Priority": "low"}).json()["request_id"]
    normal = submit(client, headers={**AUTH, "X-Fal-Queue-Priority": "normal"}).json()["request_id"]
    assert client.get(f"{Q}/requests/{normal}/status", headers=AUTH).json()["queue_position"] == 0
    assert client.get(f"{Q}/requests/{low}/status", headers=AUTH).json()["queue_position"] == 1
    assert submit(client, headers={**AUTH, "X-Fal-Queue-Priority": "urgent"}).status_code == 400
    assert submit(client, headers={**AUTH, "X-Fal-Request-Timeout": "soon"}).status_code == 400

    store_of(app).cancel(low)
    rid = submit(client, headers={**AUTH, "X-Fal-Request-Timeout": "0.2"}).json()["request_id"]
    time.sleep(0.3)
    st = client.get(f"{Q}/requests/{rid}/status", headers=AUTH).json()
    assert st["status"] == "COMPLETED" and st["error_type"] == "request_timeout"
    r = client.get(f"{Q}/requests/{rid}", headers=AUTH)
    assert r.status_code == 504
    assert r.headers["x-fal-request-timeout-type"] == "user"


def test_auth_is_required(app_client) -> None:
    client, _ = app_client
    assert submit(client).status_code == 401
    assert submit(client, headers={"Authorization": "Key wrong"}).status_code == 401
    assert submit(client, headers={"Authorization": "Bearer test-key"}).status_code == 401
    r = client.get(f"{Q}/requests/x/status")
    assert r.status_code == 401 and r.headers["x-fal-error-type"] == "unauthorized"


def test_queue_host_at_root(app_client) -> None:
    client, _ = app_client
    host = {"Host": "queue.ovi.test"}
    r = client.post("/fal-ai/ovi", json={"prompt": "x"}, headers={**AUTH, **host})
    assert r.status_code == 200
    rid = r.json()["request_id"]
    assert r.json()["status_url"] == f"http://queue.ovi.test/fal-ai/ovi/requests/{rid}/status"
    assert (
        client.get(f"/fal-ai/ovi/requests/{rid}/status", headers={**AUTH, **host}).status_code
        == 202
    )
    assert client.get("/health", headers=host).status_code in (200, 503)


def test_sse_stream_until_completed(app_client) -> None:
    client, app = app_client
    rid = submit(client, headers=AUTH).json()["request_id"]
    store = store_of(app)

    def work() -> None:  # the TestClient hands the body over only once the stream ends
        try:
            time.sleep(0.15)
            claim(store)
            store.append_log(rid, "Step 1/2")
            time.sleep(0.5)  # longer than the 0.3 s ping interval
            store.append_log(rid, "Step 2/2")
            time.sleep(0.1)
            store.append_log(rid, "Done")
            store.complete(rid, "w", Outcome(RESULT))
        finally:  # whatever went wrong, end the stream (the assertions below then fail)
            if not store.get(rid).done:
                store.cancel(rid)  # a queued job completes as cancelled
                store.complete(rid, "w", Outcome(error=CANCELLED))  # a running one, if ours

    worker = threading.Thread(target=work)
    worker.start()
    with client.stream("GET", f"{Q}/requests/{rid}/status/stream?logs=1", headers=AUTH) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-fal-request-id"] == rid
        lines = list(r.iter_lines())
    worker.join()
    seen = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    statuses = [s["status"] for s in seen]
    assert statuses[0] == "IN_QUEUE" and statuses[-1] == "COMPLETED"
    assert "IN_PROGRESS" in statuses
    assert set(statuses) <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert ": ping" in lines
    # each event carries only the lines new since the last one: the JS client concatenates them
    # (onQueueUpdate in streaming mode), so the concatenation is the log, each line once
    streamed = [entry["message"] for event in seen for entry in event["logs"]]
    assert streamed == ["Step 1/2", "Step 2/2", "Done"]
    assert all(
        set(e) == {"message", "level", "source", "timestamp"} for s in seen for e in s["logs"]
    )
    # without logs=1 every event still has the key, as null
    with client.stream("GET", f"{Q}/requests/{rid}/status/stream", headers=AUTH) as r:
        done = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["status"] for e in done] == ["COMPLETED"] and done[0]["logs"] is None


def test_per_endpoint_openapi(app_client) -> None:
    client, _ = app_client
    r = client.get(
        "/openapi/queue/openapi.json", params={"endpoint_id": "fal-ai/ovi/image-to-video"}
    )
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.0.4"
    assert doc["servers"] == [{"url": "http://testserver/queue"}]
    schemas = doc["components"]["schemas"]
    assert schemas["QueueStatus"]["properties"]["status"]["enum"] == [
        "IN_QUEUE",
        "IN_PROGRESS",
        "COMPLETED",
    ]
    order = schemas["OviI2VRequest"]["x-fal-order-properties"]
    assert order == [*FAL_FIELDS, "image_url", "lora", "fast"]  # fal's, then ours: test_schemas
    assert "/fal-ai/ovi/image-to-video" in doc["paths"]
    assert "/fal-ai/ovi/image-to-video/requests/{request_id}/status" in doc["paths"]
    r = client.get("/openapi/queue/openapi.json", params={"endpoint_id": "fal-ai/other"})
    assert r.status_code == 404
