"""Issue 17 through the real app (no workers, no model): keys are tenants, `/health` without a
key names nothing, single-use upload URLs, webhook hosts checked at submit, and the headers and
`error_type` every error answer carries."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from _app import RESULT, finish_next, make_settings, running_app, store_of
from PIL import Image

from server.jobs.sqlite import SqliteJobStore

A, B, ADMIN = "key-a", "alice:key-b", "ops:key-admin"
AUTH_A = {"Authorization": f"Key {A}"}
AUTH_B = {"Authorization": f"Key {B}"}
AUTH_ADMIN = {"Authorization": f"Key {ADMIN}"}
APP = "/queue/fal-ai/ovi"


def _tenants(tmp_path: Path, **overrides: Any):
    return running_app(
        make_settings(tmp_path, api_keys=[A, B], admin_api_keys=[ADMIN], **overrides)
    )


def _routes(request_id: str) -> list[tuple[str, str]]:
    base = f"{APP}/requests/{request_id}"
    return [
        ("GET", base + "/status"),
        ("GET", base + "/status/stream"),
        ("GET", base),
        ("PUT", base + "/cancel"),
    ]


def test_another_key_gets_404_on_every_route_as_for_an_unknown_id(tmp_path: Path) -> None:
    with _tenants(tmp_path) as (client, app):
        mine = client.post(APP, json={"prompt": "a"}, headers=AUTH_A).json()["request_id"]
        unknown = "00000000-0000-0000-0000-000000000000"
        for (method, path), (_, unknown_path) in zip(_routes(mine), _routes(unknown), strict=True):
            theirs = client.request(method, path, headers=AUTH_B)
            nobody = client.request(method, unknown_path, headers=AUTH_B)
            assert theirs.status_code == nobody.status_code == 404, path
            assert (
                theirs.json()
                == nobody.json()
                == {
                    "detail": "Request not found",
                    "error_type": "request_not_found",
                }
            )
        # the owner and the admin still see it; B's cancels did nothing
        assert client.get(_routes(mine)[0][1], headers=AUTH_A).json()["status"] == "IN_QUEUE"
        assert client.get(_routes(mine)[0][1], headers=AUTH_ADMIN).status_code == 202
        finish_next(store_of(app))
        for auth in (AUTH_A, AUTH_ADMIN):
            result = client.get(_routes(mine)[2][1], headers=auth)
            assert result.status_code == 200 and result.json()["seed"] == RESULT["seed"]
        stream = client.get(_routes(mine)[1][1], headers=AUTH_A)
        assert stream.status_code == 200 and '"COMPLETED"' in stream.text
        assert store_of(app).get(mine).error is None  # not cancelled by B


def test_files_need_the_owners_key_when_required(tmp_path: Path) -> None:
    with _tenants(tmp_path, files_require_key=True) as (client, _):
        up = client.post("/files/upload", content=b"GIF89a", headers=AUTH_A)
        url = up.json()["access_url"]
        assert client.get(url, headers=AUTH_A).content == b"GIF89a"
        assert client.get(url, headers=AUTH_ADMIN).status_code == 200
        assert client.get(url, headers=AUTH_B).status_code == 404
        refused = client.get(url)
        assert refused.status_code == 401 and refused.json()["error_type"] == "unauthorized"
        # nor can another key use it as its image_url
        png = io.BytesIO()
        Image.new("RGB", (8, 8)).save(png, format="PNG")
        image_url = client.post("/files/upload", content=png.getvalue(), headers=AUTH_A).json()
        body = {"prompt": "a", "image_url": image_url["access_url"]}
        i2v = APP + "/image-to-video"
        theirs = client.post(i2v, json=body, headers=AUTH_B)
        assert theirs.status_code == 422 and "another key's" in theirs.text
        assert client.post(i2v, json=body, headers=AUTH_A).status_code == 200
    with _tenants(tmp_path) as (client, _):  # default: the URL is the capability
        assert client.get(url).content == b"GIF89a"


def test_health_without_a_key_names_no_worker_host_or_request(tmp_path: Path) -> None:
    with _tenants(tmp_path) as (client, app):
        request_id = client.post(APP, json={"prompt": "a"}, headers=AUTH_A).json()["request_id"]
        store = store_of(app)
        from _app import claim

        job = claim(store, "worker-on-gpu-host-7")
        assert job is not None and job.id == request_id
        public = client.get("/health")
        assert set(public.json()) == {"status", "queue"}
        assert public.json()["queue"] == {"in_queue": 0, "in_progress": 1}
        for secret in (request_id, "worker-on-gpu-host-7", "pid", "host"):
            assert secret not in public.text
        for auth in (AUTH_B, AUTH_ADMIN):
            detailed = client.get("/health", headers=auth).json()
            assert detailed["workers"][0]["job_id"] == request_id


def test_status_reads_do_not_parse_the_stored_input(tmp_path: Path) -> None:
    with _tenants(tmp_path) as (client, app):
        request_id = client.post(APP, json={"prompt": "a"}, headers=AUTH_A).json()["request_id"]
        store = store_of(app)
        assert isinstance(store, SqliteJobStore)
        with sqlite3.connect(store.path) as db:  # an input no JSON parser accepts
            db.execute("UPDATE jobs SET input='{not json' WHERE id=?", (request_id,))
        assert store.get(request_id, with_input=False).input == {}
        status = client.get(f"{APP}/requests/{request_id}/status?logs=1", headers=AUTH_A)
        assert status.status_code == 202 and status.json()["queue_position"] == 0
        with pytest.raises(json.JSONDecodeError):
            store.get(request_id)  # the full read does parse it


def test_upload_url_is_single_use(tmp_path: Path) -> None:
    with _tenants(tmp_path) as (client, _):
        r = client.post(
            "/storage/upload/initiate",
            json={"file_name": "a.png", "content_type": "image/png"},
            headers=AUTH_A,
        )
        upload_url, file_url = r.json()["upload_url"], r.json()["file_url"]
        assert client.put(upload_url, content=b"first").status_code == 200
        replay = client.put(upload_url, content=b"second")
        assert replay.status_code == 403
        assert replay.json()["error_type"] == "invalid_upload_token"
        assert "already used" in replay.json()["detail"]
        assert client.get(file_url).content == b"first"


@pytest.mark.parametrize(
    "hook, reason",
    [
        ("http://localhost:8080/hook", "loopback address localhost (127.0.0.1)"),
        ("http://2130706433/hook", "loopback address 2130706433 (127.0.0.1)"),
        ("http://[::1]/hook", "loopback address ::1"),
        ("http://no-such-host.invalid/hook", "could not resolve host 'no-such-host.invalid'"),
    ],
)
def test_webhook_host_is_resolved_and_refused_at_submit(
    tmp_path: Path, hook: str, reason: str
) -> None:
    with _tenants(tmp_path) as (client, app):
        r = client.post(f"{APP}?fal_webhook={hook}", json={"prompt": "a"}, headers=AUTH_A)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["query", "fal_webhook"] and reason in detail["msg"]
        assert store_of(app).counts()["IN_QUEUE"] == 0  # nothing queued


def test_every_error_answer_has_an_error_type_and_a_request_id(tmp_path: Path) -> None:
    with _tenants(tmp_path, max_queue_size=1, retry_after_s=7) as (client, _):
        assert client.post(APP, json={"prompt": "a"}, headers=AUTH_A).status_code == 200
        answers = {
            "429 queue full": client.post(APP, json={"prompt": "b"}, headers=AUTH_A),
            "401 no key": client.post(APP, json={"prompt": "b"}),
            "404 unknown id": client.get(f"{APP}/requests/nope/status", headers=AUTH_A),
            "422 schema": client.post(
                APP, json={"prompt": "x", "num_inference_steps": 0}, headers=AUTH_A
            ),
            "400 invalid utf-8": client.post(
                APP,
                content=b'{"prompt": "\xff\xfe"}',
                headers={**AUTH_A, "Content-Type": "application/json"},
            ),
            "400 nested too deep": client.post(
                APP,
                content=b"[" * 100_000 + b"]" * 100_000,
                headers={**AUTH_A, "Content-Type": "application/json"},
            ),
            "404 unknown path": client.get("/nope"),
        }
        for name, r in answers.items():
            assert str(r.status_code) == name.split()[0], (name, r.text)
            assert r.headers.get("x-fal-request-id"), name
            body = r.json()
            assert (
                body.get("error_type")
                or r.headers.get("x-fal-error-type")
                or (r.status_code == 422 and body["detail"][0]["type"])
            ), name
        assert answers["429 queue full"].headers["retry-after"] == "7"
        warming = client.get("/health")  # no worker: 503
        assert warming.status_code == 503 and warming.headers["retry-after"] == "7"
        assert answers["400 invalid utf-8"].json()["error_type"] == "bad_request"
        assert answers["404 unknown id"].headers["x-fal-request-id"] == "nope"


def test_openapi_documents_every_answer(tmp_path: Path) -> None:
    with _tenants(tmp_path) as (client, _):
        paths = client.get("/openapi.json").json()["paths"]
    every_submit = {"200", "400", "401", "408", "413", "422", "429", "500", "503", "507"}
    for path in ("/queue/fal-ai/ovi", "/fal-ai/ovi", "/v1/videos"):
        assert every_submit <= set(paths[path]["post"]["responses"]), path
    for suffix in ("/status", "", "/cancel"):
        path = "/queue/fal-ai/ovi/requests/{request_id}" + suffix
        for op in paths[path].values():
            assert {"401", "404", "500", "503"} <= set(op["responses"]), path
    for path in ("/v1/videos/{video_id}", "/v1/videos/{video_id}/content"):
        for op in paths[path].values():
            assert {"401", "404", "500", "503"} <= set(op["responses"]), path
    for path in ("/workers", "/metrics"):
        assert "401" in paths[path]["get"]["responses"], path
    assert "408" in paths["/storage/upload/put/{file_id}"]["put"]["responses"]
    for path, ops in paths.items():
        for op in ops.values():
            assert "500" in op["responses"], path
    assert "404" in paths["/files/{kind}/{file_id}/{name}"]["get"]["responses"]
    assert "401" in paths["/files/{kind}/{file_id}/{name}"]["get"]["responses"]


def test_another_key_sees_none_of_the_videos_api(tmp_path: Path) -> None:
    """`/v1/videos` (Bearer or Key) as the fal routes: another key's video is a 404 like an
    unknown id on get, content and delete (nothing deleted), and absent from its list."""
    bearer = {k: {"Authorization": f"Bearer {key}"} for k, key in (("a", A), ("b", B))}
    with _tenants(tmp_path) as (client, app):
        mine = client.post("/v1/videos", json={"prompt": "a"}, headers=bearer["a"]).json()["id"]
        finish_next(store_of(app))
        unknown = "00000000-0000-0000-0000-000000000000"
        for method, suffix in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
            theirs = client.request(method, f"/v1/videos/{mine}{suffix}", headers=bearer["b"])
            nobody = client.request(method, f"/v1/videos/{unknown}{suffix}", headers=bearer["b"])
            assert theirs.status_code == nobody.status_code == 404, (method, suffix)
            assert theirs.json() == nobody.json()
        listed = client.get("/v1/videos", headers=bearer["b"])
        assert listed.status_code == 200 and listed.json()["data"] == []
        after = client.get(f"/v1/videos?after={mine}", headers=bearer["b"])
        assert after.status_code == 404
        for auth in (bearer["a"], AUTH_ADMIN):
            assert client.get("/v1/videos", headers=auth).json()["data"][0]["id"] == mine
            assert client.get(f"/v1/videos/{mine}", headers=auth).json()["status"] == "completed"
        assert client.delete(f"/v1/videos/{mine}", headers=bearer["a"]).status_code == 200
