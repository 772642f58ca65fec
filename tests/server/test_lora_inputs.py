"""Per-request LoRAs and the few-step extra field on the API side: the `lora` and `fast` extras
(off by default: a fal request is unchanged), where a LoRA may come from (the `lora_dir`
folder or this server's storage, never another path or URL), a 422 naming the entry at submit,
and the worker's side (files resolved, the pipeline's adapters switched, fast sampling)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import ValidationError

from model.options import RuntimeOptions
from model.presets import FAST_SHIFT, FAST_STEPS, get_preset
from server.jobs import NewJob, SqliteJobStore
from server.lora_inputs import check_lora_inputs, lora_dir_file, resolve_lora_files, stored_key
from server.schemas import OviImageToVideoInput, OviInput
from server.storage import LocalStorage
from server.worker import JobContext, run_job
from tests.server._app import AUTH, make_settings, running_app

T2V = "/queue/fal-ai/ovi"


def _lora_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "style.safetensors").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    return folder


def test_extras_are_off_by_default_and_after_fals_fields() -> None:
    body = OviInput(prompt="x")
    assert body.lora == [] and body.fast is False
    for model, last in ((OviInput, "resolution"), (OviImageToVideoInput, "image_url")):
        assert list(model.model_fields)[-3:] == [last, "lora", "fast"]
    with pytest.raises(ValidationError, match="exactly one of path and url"):
        OviInput(prompt="x", lora=[{"scale": 0.5}])
    with pytest.raises(ValidationError, match="exactly one of path and url"):
        OviInput(prompt="x", lora=[{"path": "a.safetensors", "url": "https://h/files/a"}])
    with pytest.raises(ValidationError):
        OviInput(prompt="x", lora=[{"path": "a.safetensors", "scale": 100}])
    with pytest.raises(ValidationError):
        OviInput(prompt="x", lora=[{"path": "a.safetensors", "weights": "x"}])  # typo: refused


def test_lora_paths_stay_inside_the_folder(tmp_path: Path) -> None:
    folder = _lora_dir(tmp_path)
    assert lora_dir_file("style.safetensors", folder) == (folder / "style.safetensors").resolve()
    refusals = {
        str(tmp_path / "outside.safetensors"): "inside the server's LoRA folder",
        "../outside.safetensors": "inside the server's LoRA folder",
        "link.safetensors": "inside the server's LoRA folder",  # a symlink out of it
        "notes.txt": "must be a .safetensors file",
        "missing.safetensors": "no LoRA file 'missing.safetensors'",
    }
    for name, reason in refusals.items():
        with pytest.raises(ValueError, match=reason):
            lora_dir_file(name, folder)
    with pytest.raises(ValueError, match="no lora_dir setting"):
        lora_dir_file("style.safetensors", None)


def test_lora_urls_must_be_our_stored_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    stored = storage.save(b"abc", kind="uploads", content_type="application/octet-stream",
                          file_name="style.safetensors")  # fmt: skip
    assert stored_key(f"https://ovi.lan/files/{stored.key}") == stored.key
    for url in ("https://example.com/style.safetensors", "file:///etc/passwd", "/tmp/a"):
        with pytest.raises(ValueError, match="stored on this server"):
            stored_key(url)
    detail = check_lora_inputs(
        [
            {"url": f"https://ovi.lan/files/{stored.key}", "scale": 1.0},
            {"url": "https://ovi.lan/files/uploads/AAAAAAAAAAAAAAAAAAAAAA/x.safetensors"},
            {"path": "style.safetensors", "scale": 1.0},
        ],
        None,
        storage,
    )
    assert [d["loc"] for d in detail] == [["body", "lora", 1, "url"], ["body", "lora", 2, "path"]]
    assert "not found" in detail[0]["msg"] and "no lora_dir" in detail[1]["msg"]
    # the worker copies a stored LoRA once into its cache folder
    cache = tmp_path / "cache"
    entry = {"url": f"https://ovi.lan/files/{stored.key}", "scale": 0.5}
    ((local, scale),) = resolve_lora_files([entry], None, storage, cache)
    assert Path(local).read_bytes() == b"abc" and scale == 0.5 and Path(local).parent == cache
    mtime = Path(local).stat().st_mtime_ns
    assert resolve_lora_files([entry], None, storage, cache) == [(local, 0.5)]
    assert Path(local).stat().st_mtime_ns == mtime  # reused as is: the adapter stays attached


def test_submit_refuses_an_unusable_lora_with_a_422_and_queues_a_good_one(tmp_path: Path) -> None:
    folder = _lora_dir(tmp_path)
    with running_app(make_settings(tmp_path / "data", lora_dir=folder)) as (client, app):
        bad = [{"path": "style.safetensors"}, {"path": "../outside.safetensors", "scale": 2}]
        r = client.post(T2V, json={"prompt": "x", "lora": bad}, headers=AUTH)
        assert r.status_code == 422
        (item,) = r.json()["detail"]
        assert item["loc"] == ["body", "lora", 1, "path"] and item["type"] == "lora_error"
        assert sum(app.state.store.counts().values()) == 0  # nothing queued
        body = {"prompt": "x", "lora": [{"path": "style.safetensors", "scale": 0.7}], "fast": True}
        r = client.post(T2V, json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        job = app.state.store.get(r.json()["request_id"], with_input=True)
        assert job.input["fast"] is True
        assert job.input["lora"] == [{"path": "style.safetensors", "url": None, "scale": 0.7}]


class AdapterPipeline:
    """A stand-in pipeline that records the adapters and sampling each clip ran with."""

    preset = get_preset("tiny")
    runtime = RuntimeOptions()

    def __init__(self) -> None:
        self.active: tuple | None = None
        self.seen: list[tuple] = []

    @contextmanager
    def adapters(self, specs, fast=False):
        self.active = ([(Path(s.path).name, s.scale) for s in specs], fast)
        try:
            yield
        finally:
            self.active = None

    def __call__(self, prompt, image=None, *, params, callback=None, should_cancel=None):
        import numpy as np

        from model.pipeline import OviOutput

        self.seen.append((self.active, params.steps, params.video_guidance_scale, params.shift))
        video, audio = np.zeros((5, 32, 32, 3), np.uint8), np.zeros(1600, np.float32)
        return OviOutput(video=video, audio=audio, seed=1, height=32, width=32)


def test_worker_switches_the_requests_loras_and_fast_mode(tmp_path: Path) -> None:
    folder = _lora_dir(tmp_path)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    ctx = JobContext(store=store, storage=LocalStorage(tmp_path / "files"), worker_id="w",
                     tmp_dir=tmp_path / "tmp", lora_dir=folder)  # fmt: skip
    pipe = AdapterPipeline()
    inputs = [
        OviInput(prompt="x", num_inference_steps=4),  # a fal request: no adapters, its steps
        OviInput(prompt="x", lora=[{"path": "style.safetensors", "scale": 0.7}], fast=True),
    ]
    try:
        for body in inputs:
            store.submit(NewJob(app="fal-ai/ovi", input=body.model_dump(mode="json")))
            job = store.claim("w")
            run_job(pipe, job, ctx)
            assert store.get(job.id).error is None
    finally:
        store.close()
    plain = pipe.preset.sampling
    assert pipe.seen == [
        (None, 4, plain.video_guidance_scale, plain.shift),
        (([("style.safetensors", 0.7)], True), FAST_STEPS, 1.0, FAST_SHIFT),
    ]
    assert pipe.active is None  # switched off after the clip


def test_openai_route_takes_the_same_extras(tmp_path: Path) -> None:
    bearer = {"Authorization": AUTH["Authorization"].replace("Key", "Bearer")}
    with running_app(make_settings(tmp_path / "data")) as (client, app):
        missing = {"url": "https://h/files/uploads/AAAAAAAAAAAAAAAAAAAAAA/a.safetensors"}
        r = client.post("/v1/videos", json={"prompt": "x", "lora": [missing]}, headers=bearer)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "lora", 0, "url"]
        r = client.post("/v1/videos", json={"prompt": "x", "fast": True}, headers=bearer)
        assert r.status_code == 200, r.text
        stored = app.state.store.get(r.json()["id"])
        assert stored.input["fast"] is True and stored.input["lora"] == []
