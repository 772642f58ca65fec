"""server/worker.py: the request->pipeline mapping, one job (real tiny pipeline), the worker loop
and the process supervisor (crash -> re-queue once -> fail)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.options import RuntimeOptions
from model.presets import get_preset
from model.sampling import SamplingParams
from server.jobs import JobStatus, NewJob, SqliteJobStore, open_store
from server.jobs.base import CANCELLED
from server.schemas import I2V_APP, T2V_APP, OviImageToVideoInput, OviInput
from server.settings import ServerSettings
from server.storage import LocalStorage, Storage, file_owner_tag, key_from_path, owner_tag
from server.worker import (
    JobContext,
    classify_failure,
    fit_preview,
    preview_steps,
    run_job,
    run_worker,
    sampling_params,
)


def t2v(**kw) -> dict:
    return OviInput(prompt="a cat says hi", **kw).model_dump(mode="json")


def i2v(**kw) -> dict:
    return OviImageToVideoInput(prompt="a cat", image_url="data:,", **kw).model_dump(mode="json")


def image_input(storage: Storage, data: bytes) -> dict[str, str]:
    """What the API does with a request's image: store it, keep the key."""
    stored = storage.save(data, kind="inputs", content_type="image/png", file_name="image")
    return {"image": stored.key}


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def store(tmp_path: Path) -> SqliteJobStore:
    s = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


@pytest.fixture()
def ctx(store: SqliteJobStore, tmp_path: Path) -> JobContext:
    return JobContext(
        store=store,
        storage=LocalStorage(tmp_path / "files"),
        worker_id="w",
        tmp_dir=tmp_path / "tmp",
    )


# --- mapping and classification ---


DEFAULTS = SamplingParams(steps=4, slg_layer=1, height=64, width=64)


def test_sampling_params_text_to_video() -> None:
    params = sampling_params(
        T2V_APP, t2v(resolution="512x992", seed=3, num_inference_steps=7), DEFAULTS
    )
    assert params == DEFAULTS.replace(
        video_negative_prompt="jitter, bad hands, blur, distortion",
        audio_negative_prompt="robotic, muffled, echo, distorted",
        steps=7,
        seed=3,
        height=992,  # "WxH": 512 wide, 992 high
        width=512,
    )


def test_sampling_params_image_to_video() -> None:
    params = sampling_params(I2V_APP, i2v(), DEFAULTS)
    assert params.steps == 30 and params.seed is None
    assert (params.height, params.width) == (64, 64)  # i2v: the image decides, not the request
    assert params.slg_layer == 1  # knobs fal does not expose keep the variant's defaults
    with pytest.raises(ValueError):
        sampling_params("fal-ai/other", t2v(), DEFAULTS)


def test_sampling_params_negative_seed_and_noise() -> None:
    # a negative seed is used as given (echoed back); `noise` is our one extra input
    params = sampling_params(T2V_APP, t2v(seed=-1, noise="portable"), DEFAULTS)
    assert params.seed == -1 and params.noise == "portable"
    assert sampling_params(I2V_APP, i2v(), DEFAULTS).noise is None  # the runtime default


def test_classify_failure() -> None:
    from model.preprocess import ImageLoadError

    err = classify_failure(ImageLoadError("cannot identify image file"))
    assert err.status_code == 422 and err.error_type == "image_load_error"
    assert err.detail[0]["loc"] == ["body", "image_url"]
    assert err.message.startswith("Could not load image from url: ")
    err = classify_failure(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert err.status_code == 500 and "Out of GPU memory" in err.message
    err = classify_failure(ValueError("steps must be positive"))
    assert err.status_code == 422 and err.detail[0]["msg"] == "steps must be positive"
    err = classify_failure(KeyError("x"))
    assert err.status_code == 500 and err.error_type == "runner_server_error"


# --- one job with the real tiny pipeline ---


def test_run_job_text_to_video(tiny_pipeline, store: SqliteJobStore, ctx: JobContext) -> None:
    job = store.submit(NewJob(app=T2V_APP, input=t2v(num_inference_steps=2, seed=11)))
    run_job(tiny_pipeline, store.claim("w"), ctx)
    done = store.get(job.id)
    assert done.status is JobStatus.COMPLETED and done.error is None, done.error
    video = done.result["video"]
    assert done.result["seed"] == 11
    assert video["content_type"] == "video/mp4" and video["url"].startswith("/files/outputs/")
    stored = ctx.storage.stat(key_from_path(video["url"]))
    assert stored.file_size == video["file_size"] > 0
    messages = [e.message for e in store.logs(job.id)]
    assert any(m.startswith("Step 1/2") for m in messages)
    assert any(m.startswith("Step 2/2") for m in messages)
    assert done.metrics["inference_time"] > 0
    assert not any(ctx.tmp_dir.iterdir())  # the temporary MP4 is gone


def test_run_job_bad_image_fails_the_job_only(
    tiny_pipeline, store: SqliteJobStore, ctx: JobContext
) -> None:
    files = image_input(ctx.storage, b"not an image")
    job = store.submit(NewJob(app=I2V_APP, input=i2v(), input_files=files))
    run_job(tiny_pipeline, store.claim("w"), ctx)
    done = store.get(job.id)
    assert done.error.status_code == 422 and done.error.error_type == "image_load_error"
    with pytest.raises(FileNotFoundError):  # the job is over: its input goes
        ctx.storage.stat(files["image"])


@pytest.mark.parametrize("input_files", [{}, {"image": "inputs/AAAAAAAAAAAAAAAAAAAAAA/image"}])
def test_run_job_missing_image_is_a_clear_422(
    store: SqliteJobStore, ctx: JobContext, input_files: dict[str, str]
) -> None:
    """Queued before the upgrade (no key) or expired from the storage: the job fails, clearly."""
    job = store.submit(NewJob(app=I2V_APP, input=i2v(), input_files=input_files))
    run_job(FakePipeline(), store.claim("w"), ctx)
    error = store.get(job.id).error
    assert error.status_code == 422 and "submit again" in error.message


def test_run_job_cancel_and_shutdown(tiny_pipeline, store: SqliteJobStore, ctx: JobContext) -> None:
    job = store.submit(
        NewJob(app=I2V_APP, input=i2v(), input_files=image_input(ctx.storage, png_bytes()))
    )
    store.claim("w")
    store.cancel(job.id)  # running: the flag is seen before the first step
    run_job(tiny_pipeline, store.get(job.id), ctx)
    assert store.get(job.id).error == CANCELLED

    files = image_input(ctx.storage, png_bytes())
    job = store.submit(NewJob(app=I2V_APP, input=i2v(), input_files=files))
    claimed = store.claim("w")
    stopping = JobContext(**{**ctx.__dict__, "stopping": lambda: True})
    run_job(tiny_pipeline, claimed, stopping)
    back = store.get(job.id)
    assert back.status is JobStatus.IN_QUEUE and back.attempts == 0
    assert ctx.storage.stat(files["image"])  # back in the queue: its input stays


def test_preview_steps() -> None:
    assert preview_steps(50, 8) == {6, 12, 19, 25, 31, 38, 44, 50}
    assert preview_steps(3, 8) == {1, 2, 3}
    assert preview_steps(4, 2) == {2, 4}
    assert preview_steps(30, 0) == set() and preview_steps(0, 8) == set()


def test_fit_preview_needs_a_vae() -> None:
    assert fit_preview(object()) is None  # a stand-in pipeline: previews off, no error


# --- the loop, with a fake pipeline ---


class FakePipeline:
    preset = get_preset("tiny")
    runtime = RuntimeOptions()

    def __call__(self, prompt: str, image=None, *, params, callback=None, should_cancel=None):
        from model.pipeline import OviOutput, StepInfo

        if prompt == "explode":
            raise RuntimeError("boom")
        for step in range(1, params.steps + 1):
            if should_cancel and should_cancel():
                from model.pipeline import GenerationCancelled

                raise GenerationCancelled()
            if callback:
                callback(StepInfo(step, params.steps, 0.0))
        video = np.zeros((5, 32, 32, 3), np.uint8)
        audio = np.zeros(1600, np.float32)
        return OviOutput(video=video, audio=audio, seed=params.seed or 1, height=32, width=32)


class PreviewingPipeline(FakePipeline):
    """The fake pipeline with the loop's current estimate in each step's callback."""

    def __call__(self, prompt: str, image=None, *, params, callback=None, should_cancel=None):
        from model.pipeline import StepInfo

        def with_estimate(info: StepInfo) -> None:
            callback(StepInfo(info.step, info.total, info.elapsed, torch.randn(1, 48, 3, 4, 6)))

        return super().__call__(prompt, image, params=params, callback=with_estimate)


def test_run_job_links_previews_from_its_logs(store: SqliteJobStore, ctx: JobContext) -> None:
    from model.preview import LatentPreview

    ctx.previews, ctx.preview = 2, LatentPreview(torch.randn(48, 3), torch.zeros(3))
    new = NewJob(
        app=T2V_APP,
        input=t2v(num_inference_steps=4),
        base_url="https://ovi.test",
        user_id="alice",
    )
    job = store.submit(new)
    run_job(PreviewingPipeline(), store.claim("w"), ctx)
    assert store.get(job.id).error is None
    lines = [e.message for e in store.logs(job.id) if e.message.startswith("Preview")]
    # the previews' id names their owner, as the clip's does (files_require_key serves them)
    file_ids = {line.split("/files/outputs/")[1].split("/")[0] for line in lines}
    assert {file_owner_tag(i) for i in file_ids} == {owner_tag("alice")}
    assert [line.split(":")[0] for line in lines] == ["Preview 2/4", "Preview 4/4"]
    for step, line in zip((2, 4), lines, strict=True):
        url = line.split(": ", 1)[1]
        assert url.startswith("https://ovi.test/files/outputs/") and url.endswith(f"-{step}.png")
        stored = ctx.storage.stat(url.removeprefix("https://ovi.test/files/"))
        assert stored.content_type == "image/png"
        data = b"".join(ctx.storage.read(stored.key))
        assert Image.open(io.BytesIO(data)).size == (6, 4)  # one latent frame, w x h

    def broken(latents: torch.Tensor) -> np.ndarray:
        raise RuntimeError("no preview today")

    ctx.preview = broken  # a failing preview is logged; the job still completes
    job = store.submit(new)
    run_job(PreviewingPipeline(), store.claim("w"), ctx)
    assert store.get(job.id).error is None and store.get(job.id).result["video"]["file_size"]
    assert not [e for e in store.logs(job.id) if e.message.startswith("Preview")]


def test_run_worker_loop_carries_on_after_failures(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path, poll_interval_s=0.01, heartbeat_interval_s=0.05)
    store = open_store(settings.job_store_url)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker,
        args=(settings, "loop-worker"),
        kwargs={"stop_event": stop, "pipeline": FakePipeline()},
    )
    bad = store.submit(NewJob(app=T2V_APP, input={**t2v(), "prompt": "explode"}))
    good = store.submit(NewJob(app=T2V_APP, input=t2v(num_inference_steps=1)))
    thread.start()
    try:
        deadline = time.time() + 20
        while not store.get(good.id).done and time.time() < deadline:
            time.sleep(0.02)
        assert [w.state for w in store.workers()] == ["ready"]
    finally:
        stop.set()
        thread.join(10)
    assert store.get(bad.id).error.message == "Generation failed: RuntimeError: boom"
    assert store.get(good.id).result["video"]["file_size"] > 0
    assert store.workers() == []  # unregistered on the way out


# --- building the pipeline ---


def test_load_pipeline_passes_the_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.pipeline import OviPipeline
    from server.worker import load_pipeline

    seen = {}

    def from_pretrained(weights_dir, variant, *, runtime):
        seen.update(weights_dir=weights_dir, variant=variant, runtime=runtime)
        return "pipe"

    monkeypatch.setattr(OviPipeline, "from_pretrained", from_pretrained)
    modes = dict(
        cpu_offload=True, fp8=True, block_offload=True, fp8_compute=True, batch_cfg=True,
        offload_text_encoder=True,
    )  # fmt: skip
    settings = ServerSettings(weights_dir=Path("w"), variant="960x960_5s", **modes)
    assert load_pipeline(settings, device="cuda:1") == "pipe"
    assert seen == dict(
        weights_dir=Path("w"), variant="960x960_5s",
        runtime=RuntimeOptions(device="cuda:1", **modes),
    )  # fmt: skip


def test_load_pipeline_tiny_preset_with_block_offload() -> None:
    from model.optimize import BlockOffload
    from server.worker import load_pipeline

    pipe = load_pipeline(ServerSettings(preset="tiny", block_offload=True, batch_cfg=True))
    assert isinstance(pipe.fusion.offload, BlockOffload) and pipe.cpu_offload
    assert pipe.fast_path.block_offload and pipe.fast_path.batch_cfg
