"""The unmodified `fal-client` (PyPI) against `ovi serve --preset tiny_1s`, configured only by the
environment variables the README gives: FAL_RUN_HOST, FAL_QUEUE_RUN_HOST, SSL_CERT_FILE, FAL_KEY.

fal-client reads its hosts at import, so each scenario runs in a fresh interpreter: this file
run as a script (`python test_fal_python_client.py SCENARIO`), printing one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from _e2e import API_KEY, check_mp4, run_client_script

I2V = "fal-ai/ovi/image-to-video"
T2V = "fal-ai/ovi"


def run_scenario(server, name: str, *args: str) -> Any:
    return run_client_script(server, __file__, name, *args)


def download(server, url: str) -> bytes:
    assert url.startswith(server.url + "/files/outputs/"), url
    with server.http() as client:
        r = client.get(url)
        assert r.status_code == 200
        assert r.headers["content-type"] == "video/mp4"
        ranged = client.get(url, headers={"Range": "bytes=0-99"})
        assert ranged.status_code == 206 and len(ranged.content) == 100
        return r.content


# --- tests (in the pytest process) ---


def test_subscribe_image_to_video_with_logs(ovi_server) -> None:
    out = run_scenario(ovi_server, "subscribe")
    result = out["result"]
    assert set(result) == {"video", "seed"}
    video = result["video"]
    assert video["content_type"] == "video/mp4" and video["file_name"].endswith(".mp4")
    data = download(ovi_server, video["url"])
    assert len(data) == video["file_size"]
    check_mp4(data)
    assert any(m.startswith("Step 3/3") for m in out["logs"]), out["logs"]
    assert out["request_id"]


def test_submit_status_result_and_cancel_after_completion(ovi_server) -> None:
    out = run_scenario(ovi_server, "submit")
    assert out["early_result"] == {"status": 400, "detail": "Request is still in progress"}
    assert out["first_status"] in ("Queued", "InProgress", "Completed")
    assert out["result"]["seed"] == 42
    assert out["final_status"]["type"] == "Completed"
    assert out["final_status"]["metrics"]["inference_time"] > 0
    assert out["final_status"]["error"] is None
    assert out["cancel_after"] == {"status": 400, "body": {"status": "ALREADY_COMPLETED"}}
    check_mp4(download(ovi_server, out["result"]["video"]["url"]))


def test_cancel_running_and_queued(ovi_server) -> None:
    out = run_scenario(ovi_server, "cancel")
    for key in ("running", "queued"):
        entry = out[key]
        assert entry["status"]["type"] == "Completed"
        assert entry["status"]["error_type"] == "client_cancelled"
        assert entry["result_error"]["status"] == 499
    assert out["running"]["saw_progress"]


def test_run_text_to_video(ovi_server) -> None:
    out = run_scenario(ovi_server, "run")
    assert out["result"]["seed"] == 7
    check_mp4(download(ovi_server, out["result"]["video"]["url"]))


def test_errors(ovi_server) -> None:
    out = run_scenario(ovi_server, "errors")
    bad_steps = out["bad_steps"]
    assert bad_steps["status"] == 422
    assert bad_steps["message"][0]["loc"] == ["body", "num_inference_steps"]
    for key in ("private_url", "corrupt_image", "oversized_data_uri"):
        err = out[key]
        assert err["status"] == 422, (key, err)
        (item,) = err["message"]
        assert item["loc"] == ["body", "image_url"] and item["type"] == "image_load_error"
        assert item["msg"].startswith("Could not load image from url: ")
    assert out["unknown_status"]["status"] == 404
    assert out["unknown_result"]["status"] == 404
    assert out["bad_key"]["status"] == 401


def test_health_reports_ready(ovi_server) -> None:
    with ovi_server.http() as client:
        r = client.get("/health")
        detailed = client.get("/health", headers={"Authorization": f"Key {API_KEY}"})
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert "model" not in r.json() and "workers" not in r.json()  # details need a key
    assert detailed.json()["model"] == "tiny_1s" and detailed.json()["workers"]


# --- scenarios (in a fresh interpreter configured by the environment) ---


def _status_dict(status: Any) -> dict[str, Any]:
    import fal_client

    out: dict[str, Any] = {"type": type(status).__name__}
    if isinstance(status, fal_client.Completed):
        out.update(metrics=status.metrics, error=status.error, error_type=status.error_type)
    return out


def _http_error(fn) -> dict[str, Any]:
    import fal_client

    try:
        fn()
    except fal_client.client.FalClientHTTPError as e:
        return {"status": e.status_code, "message": e.message, "error_type": e.error_type}
    raise AssertionError("expected an HTTP error")


def _png_uri() -> str:
    import fal_client
    from PIL import Image

    return fal_client.encode_image(Image.new("RGB", (80, 64), (250, 200, 20)), format="png")


def scenario_subscribe() -> dict[str, Any]:
    import fal_client

    logs: list[str] = []

    def on_queue_update(update: Any) -> None:
        if isinstance(update, fal_client.InProgress):
            for log in update.logs or []:
                logs.append(log["message"])

    ids: list[str] = []
    result = fal_client.subscribe(
        I2V,
        arguments={"prompt": "A red panda waves. <S>Hello there.<E>", "image_url": _png_uri(),
                   "num_inference_steps": 3},
        with_logs=True,
        on_enqueue=ids.append,
        on_queue_update=on_queue_update,
    )  # fmt: skip
    status = fal_client.status(I2V, ids[0], with_logs=True)
    logs += [log["message"] for log in status.logs or []]
    return {"result": result, "logs": logs, "request_id": ids[0]}


def scenario_submit() -> dict[str, Any]:
    import fal_client
    import httpx

    handle = fal_client.submit(
        T2V,
        arguments={"prompt": "Rain on a window.", "num_inference_steps": 2, "seed": 42,
                   "resolution": "512x992", "not_a_field": True},
    )  # fmt: skip
    key = {"Authorization": f"Key {__import__('os').environ['FAL_KEY']}"}
    early = httpx.get(handle.response_url, headers=key)
    early_result = {"status": early.status_code, "detail": early.json().get("detail")}
    first = fal_client.status(T2V, handle.request_id, with_logs=True)
    result = fal_client.result(T2V, handle.request_id)  # waits, by id like the client does
    final = fal_client.status(T2V, handle.request_id, with_logs=True)
    cancel = httpx.put(handle.cancel_url, headers=key)
    err = _http_error(lambda: fal_client.cancel(T2V, handle.request_id))
    assert err["status"] == 400
    return {
        "early_result": early_result,
        "first_status": type(first).__name__,
        "result": result,
        "final_status": _status_dict(final),
        "cancel_after": {"status": cancel.status_code, "body": {"status": cancel.json()["status"]}},
    }


def scenario_cancel() -> dict[str, Any]:
    import fal_client

    args = {"prompt": "A long clip.", "num_inference_steps": 50}
    running = fal_client.submit(T2V, arguments=args)
    queued = fal_client.submit(T2V, arguments={**args, "num_inference_steps": 1})
    saw_progress = False
    deadline = time.time() + 60
    while time.time() < deadline:
        status = running.status(with_logs=True)
        if isinstance(status, fal_client.InProgress) and status.logs:
            saw_progress = any(log["message"].startswith("Step") for log in status.logs)
            if saw_progress:
                break
        time.sleep(0.05)
    queued.cancel()  # still waiting behind the running one
    running.cancel()
    out: dict[str, Any] = {}
    for name, handle in (("running", running), ("queued", queued)):
        *_, last = handle.iter_events(with_logs=True, interval=0.05)
        out[name] = {
            "status": _status_dict(last),
            "result_error": _http_error(handle.get),
        }
    out["running"]["saw_progress"] = saw_progress
    return out


def scenario_run() -> dict[str, Any]:
    import fal_client

    result = fal_client.run(
        T2V, arguments={"prompt": "Waves on a beach.", "num_inference_steps": 2, "seed": 7}
    )
    return {"result": result}


def scenario_errors() -> dict[str, Any]:
    import base64

    import fal_client

    run = fal_client.run
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (10 * 1024 * 1024 + 10)).decode()
    corrupt = "data:image/png;base64," + base64.b64encode(b"definitely not a png").decode()
    out = {
        "bad_steps": _http_error(lambda: run(T2V, arguments={"prompt": "x", "num_inference_steps": 100})),
        "private_url": _http_error(lambda: run(I2V, arguments={"prompt": "x", "image_url": "http://127.0.0.1:9/a.png"})),
        "corrupt_image": _http_error(lambda: run(I2V, arguments={"prompt": "x", "image_url": corrupt})),
        "oversized_data_uri": _http_error(lambda: fal_client.submit(I2V, arguments={"prompt": "x", "image_url": big})),
        "unknown_status": _http_error(lambda: fal_client.status(T2V, "00000000-0000-0000-0000-000000000000")),
        "unknown_result": _http_error(lambda: fal_client.result(I2V, "00000000-0000-0000-0000-000000000000")),
        "bad_key": _http_error(lambda: fal_client.SyncClient(key="wrong").run(T2V, arguments={"prompt": "x"})),
    }  # fmt: skip
    return out


if __name__ == "__main__":
    fn = globals()[f"scenario_{sys.argv[1]}"]
    print(json.dumps(fn(*sys.argv[2:])))
