"""server/serving.py on its own: result replay, the sync wait's end on disconnect, and a submit
refused by the store leaving nothing behind in the storage."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _app import RESULT, make_settings

from server.errors import JobFailedError
from server.jobs import JobStatus, QueueFullError, SqliteJobStore
from server.jobs.base import CANCELLED, START_TIMEOUT, JobError
from server.schemas import I2V_APP, T2V_APP, OviImageToVideoInput, OviInput
from server.serving import (
    Serving,
    Submission,
    SubmitOptions,
    absolute_result,
    absolute_url,
    replay_status,
)
from server.storage import LocalStorage


@pytest.fixture()
def serving(tmp_path: Path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield Serving(
        make_settings(tmp_path, max_queue_size=1), store, LocalStorage(tmp_path / "files")
    )
    store.close()


SUBMISSION = Submission(options=SubmitOptions(), user_id="u", base_url="http://h")


def test_replay_status_and_urls() -> None:
    assert replay_status(START_TIMEOUT) == (504, {"X-Fal-Request-Timeout-Type": "user"})
    assert replay_status(CANCELLED) == (499, {})
    assert replay_status(JobError("x", "runner_disconnected", 503)) == (500, {})
    assert replay_status(JobError("x", "weird", 200)) == (500, {})
    assert absolute_url("/files/outputs/a/b.mp4", "http://h") == "http://h/files/outputs/a/b.mp4"
    assert absolute_url("https://cdn/x.mp4", "http://h") == "https://cdn/x.mp4"
    assert absolute_result(RESULT, "http://h")["video"]["url"].startswith("http://h/files/")


def test_run_cancels_when_the_client_leaves(serving: Serving) -> None:
    async def gone() -> bool:
        return True

    with pytest.raises(JobFailedError) as raised:
        asyncio.run(serving.run(T2V_APP, OviInput(prompt="x"), SUBMISSION, gone))
    assert raised.value.status_code == 499
    job = serving.store.get(raised.value.request_id)
    assert job.status is JobStatus.COMPLETED and job.error == CANCELLED


def test_refused_submit_leaves_no_input_behind(
    serving: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fake_load(url: str, settings, **kw) -> bytes:
        return b"image"

    monkeypatch.setattr("server.serving.load_image_input", fake_load)
    body = OviImageToVideoInput(prompt="x", image_url="https://example.com/a.png")
    first = asyncio.run(serving.submit(I2V_APP, body, SUBMISSION))
    assert first.input_files and first.base_url == "http://h" and first.user_id == "u"
    with pytest.raises(QueueFullError):  # max_queue_size=1
        asyncio.run(serving.submit(I2V_APP, body, SUBMISSION))
    inputs = serving.storage.root / "inputs"  # type: ignore[attr-defined]
    assert [p.name for p in inputs.iterdir()] == [first.input_files["image"].split("/")[1]]
