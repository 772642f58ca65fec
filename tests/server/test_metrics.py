"""server/metrics.py and `GET /metrics`: the exposition parses, names follow Prometheus
conventions, and the numbers move as a real worker (the tiny_1s pipeline, in a thread) runs jobs
submitted through the API. Checked by `promtool check metrics` too when it is installed."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest
from _app import AUTH, make_settings, running_app
from prometheus_client.parser import text_string_to_metric_families

from server.jobs.base import WorkerInfo
from server.metrics import PHASES, WorkerMetrics, merge_snapshots, snapshot
from server.storage import LocalStorage
from server.worker import run_worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def png_data_uri() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 32), (9, 90, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def scrape(client) -> tuple[str, Samples, dict[str, str]]:
    """The text, every sample by (name, labels) and every family's type."""
    r = client.get("/metrics", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(r.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def check_names(text: str, types: dict[str, str]) -> None:
    """Prometheus conventions: an `ovi_` prefix, base units, `_total` on counters."""
    for name, kind in types.items():
        assert name.startswith("ovi_"), name
        assert not name.endswith(("_ms", "_milliseconds", "_kb", "_mb")), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line
    promtool = shutil.which("promtool")
    if promtool:
        proc = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture()
def worker_thread(tiny_pipeline):
    """(start, stop): `run_worker` with the tiny pipeline in a thread against an app's store;
    stop it before the app closes its store."""
    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(settings, store) -> None:
        stop = threading.Event()
        thread = threading.Thread(
            target=run_worker,
            args=(settings, "w-metrics"),
            kwargs=dict(
                stop_event=stop,
                store=store,
                storage=LocalStorage(settings.data_dir / "files"),
                pipeline=tiny_pipeline,
                metrics=WorkerMetrics(),
            ),
            daemon=True,
        )
        thread.start()
        started.append((stop, thread))

    def stop_all() -> None:
        for stop, thread in started:
            stop.set()
            thread.join(30)

    yield start, stop_all
    stop_all()


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_metrics_move_as_jobs_run(tmp_path, worker_thread) -> None:
    settings = make_settings(tmp_path / "data", heartbeat_interval_s=0.1)
    with running_app(settings) as (client, app):
        text, samples, types = scrape(client)
        check_names(text, types)
        assert value(samples, "ovi_queue_depth", priority="normal") == 0
        assert value(samples, "ovi_job_store_up") == 1

        body = {"prompt": "A bell rings.", "num_inference_steps": 2, "seed": 3}
        ids = [
            client.post("/queue/fal-ai/ovi", json=body, headers=AUTH).json()["request_id"],
            client.post(
                "/queue/fal-ai/ovi", json=body, headers={**AUTH, "X-Fal-Queue-Priority": "low"}
            ).json()["request_id"],
        ]
        _, samples, _ = scrape(client)
        assert value(samples, "ovi_queue_depth", priority="normal") == 1
        assert value(samples, "ovi_queue_depth", priority="low") == 1
        assert value(samples, "ovi_jobs_running") == 0

        start_worker, stop_worker = worker_thread
        start_worker(settings, app.state.store)

        def done() -> bool:
            codes = [
                client.get(f"/queue/fal-ai/ovi/requests/{i}/status", headers=AUTH).status_code
                for i in ids
            ]
            return codes == [200, 200]

        wait_for(done)

        def reported() -> bool:  # the heartbeat after the second job carries its numbers
            _, s, _ = scrape(client)
            return value(s, "ovi_worker_jobs_total", outcome="ok", worker="w-metrics") == 2

        wait_for(reported, timeout=15)
        text, samples, types = scrape(client)
        check_names(text, types)
        stop_worker()

    w = {"worker": "w-metrics"}
    assert value(samples, "ovi_queue_depth", priority="normal") == 0
    assert value(samples, "ovi_queue_depth", priority="low") == 0
    assert value(samples, "ovi_workers", state="ready") == 1
    for phase in ("text_encode", "denoise", "vae_decode", "audio_decode", "mux"):
        assert value(samples, "ovi_phase_duration_seconds_count", phase=phase, **w) == 2, phase
        assert value(samples, "ovi_phase_duration_seconds_sum", phase=phase, **w) > 0, phase
    assert value(samples, "ovi_denoise_step_duration_seconds_count", **w) == 4  # 2 jobs x 2
    assert value(samples, "ovi_dit_steps_per_second", **w) > 0
    assert value(samples, "ovi_queue_wait_seconds_count", **w) == 2
    assert value(samples, "ovi_storage_written_bytes_total", kind="outputs", **w) > 0
    submits = value(
        samples,
        "ovi_http_requests_total",
        endpoint="/queue/fal-ai/ovi",
        method="POST",
        outcome="2xx",
    )
    assert submits == 2
    polls = ("ovi_http_requests_total", "/queue/fal-ai/ovi/requests/{request_id}/status")
    assert value(samples, polls[0], endpoint=polls[1], method="GET", outcome="2xx") >= 2
    assert types["ovi_http_request_duration_seconds"] == "histogram"
    assert set(PHASES) >= {"text_encode", "denoise", "vae_decode", "audio_decode", "mux"}


def test_metrics_need_the_key_and_count_refusals(tmp_path) -> None:
    with running_app(make_settings(tmp_path / "data")) as (client, _app):
        assert client.get("/metrics").status_code == 401
        assert client.get("/queue/fal-ai/ovi/requests/nope/status", headers=AUTH).status_code == 404
        assert client.get("/no/such/path").status_code == 404
        body = {"prompt": "x", "image_url": png_data_uri()}
        r = client.post("/queue/fal-ai/ovi/image-to-video", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        _, samples, _ = scrape(client)
    assert value(samples, "ovi_storage_written_bytes_total", kind="inputs", worker="api") > 0
    path = "/queue/fal-ai/ovi/requests/{request_id}/status"
    assert (
        value(samples, "ovi_http_requests_total", endpoint=path, method="GET", outcome="4xx") == 1
    )
    assert (
        value(samples, "ovi_http_requests_total", endpoint="other", method="GET", outcome="4xx")
        == 1
    )
    assert (
        value(samples, "ovi_http_requests_total", endpoint="/metrics", method="GET", outcome="4xx")
        == 1
    )


def test_snapshots_merge_under_a_worker_label() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.observe_job("ok", 1.5, {"denoise": 1.0, "steps": 4.0, "mux": 0.1})
    b.observe_job("error", 0.2)
    families = {m.name: m for m in merge_snapshots([({"worker": "a"}, a.snapshot()),
                                                     ({"worker": "b"}, snapshot(b.registry))])}  # fmt: skip
    jobs = {(s.labels["worker"], s.labels["outcome"]): s.value
            for s in families["ovi_worker_jobs"].samples if s.name.endswith("_total")}  # fmt: skip
    assert jobs == {("a", "ok"): 1.0, ("b", "error"): 1.0}
    rate = [s for s in families["ovi_dit_steps_per_second"].samples if s.labels["worker"] == "a"]
    assert rate[0].value == 4.0


def test_grafana_dashboard_queries_only_exported_metrics(tmp_path) -> None:
    """docs/grafana-dashboard.json is valid JSON and every `ovi_*` name it queries is exported."""
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana-dashboard.json").read_text())
    worker = WorkerMetrics()
    worker.observe_job("ok", 1.0, {"denoise": 1.0, "steps": 2.0})
    worker.step_seconds.observe(0.5)
    worker.queue_wait_seconds.observe(0.1)
    worker.gpu_memory_bytes.labels("allocated").set(1)
    worker.storage_bytes.labels("outputs").inc(1)
    with running_app(make_settings(tmp_path / "data")) as (client, app):
        app.state.metrics.webhook_attempt("delivered")
        app.state.store.heartbeat(
            WorkerInfo(id="w", state="ready", heartbeat_at=time.time(), metrics=worker.snapshot())
        )
        scrape(client)  # a request counted before the next scrape
        _, samples, _ = scrape(client)
    exported = {name for name, _ in samples}
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bovi_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exported, queried - exported
