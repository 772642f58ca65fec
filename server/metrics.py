"""Prometheus metrics (`GET /metrics`): the API's own, the job store's state, every worker's.

Three sources, one exposition:

- **The API process** (`ApiMetrics`): HTTP requests by endpoint (the route template, never the
  raw path) and outcome (status class), their latency, webhook attempts, bytes it stored.
- **The job store**, read at scrape time (`StoreCollector`): queue depth per priority, running
  jobs, workers per state, the webhook outbox. Every API process sees the same numbers.
- **Workers** (`WorkerMetrics`): per-phase durations, denoising step time, DiT steps/s, queue
  wait, jobs by outcome, GPU memory. A worker sends a snapshot of its registry with every
  heartbeat (`WorkerInfo.metrics`), so the API's `/metrics` shows each worker under a `worker`
  label wherever it runs; `ovi worker --metrics-port P` also serves it directly.

Names follow Prometheus conventions (`ovi_` prefix, `_seconds`, `_bytes`, `_total` on
counters); `tests/server/test_metrics.py` parses the exposition with the client library's parser.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.jobs.base import PRIORITIES, JobStore
from server.logs import ACCESS_LOGGER

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

PHASES = ("text_encode", "image_encode", "denoise", "vae_decode", "audio_decode", "mux")
WORKER_STATES = ("warming", "ready", "failed", "stopping")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

Snapshot = list[dict[str, Any]]  # one dict per metric family: name, type, help, samples


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """A registry's current values as plain JSON-able data (what a worker heartbeats), without
    the `_created` timestamps (a third of the size, and meaningless once relayed)."""
    return [
        {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "samples": [
                [s.name, dict(s.labels), s.value]
                for s in family.samples
                if not s.name.endswith("_created")
            ],
        }
        for family in registry.collect()
    ]


def merge_snapshots(labelled: Iterable[tuple[dict[str, str], Snapshot]]) -> Iterator[Metric]:
    """Families from several snapshots as one family per name, each sample with its source's
    extra labels (e.g. `{"worker": id}`)."""
    families: dict[str, Metric] = {}
    for extra, snap in labelled:
        for fam in snap:
            metric = families.get(fam["name"])
            if metric is None:
                metric = families[fam["name"]] = Metric(fam["name"], fam["help"], fam["type"])
            for name, labels, value in fam["samples"]:
                metric.add_sample(name, {**labels, **extra}, value)
    yield from families.values()


# --- workers ------------------------------------------------------------------------------------


class WorkerMetrics:
    """A worker's registry: what one generation costs, phase by phase."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.phase_seconds = Histogram(
            "ovi_phase_duration_seconds",
            "Wall time of one generation phase: " + ", ".join(PHASES) + ".",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "ovi_denoise_step_duration_seconds",
            "Wall time of one DiT denoising step (both guidance passes).",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.steps_per_second = Gauge(
            "ovi_dit_steps_per_second",
            "DiT denoising steps per second of the last finished denoising loop.",
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "ovi_queue_wait_seconds",
            "Time from submit to a worker starting the job.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "ovi_job_run_duration_seconds",
            "Wall time of one job on a worker, from claim to completion.",
            ["outcome"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.jobs = Counter(
            "ovi_worker_jobs", "Jobs a worker finished, by outcome.", ["outcome"], registry=r
        )
        self.gpu_memory_bytes = Gauge(
            "ovi_gpu_memory_bytes",
            "CUDA memory of the worker's device: allocated, reserved, peak (max allocated).",
            ["kind"],
            registry=r,
        )
        self.storage_bytes = Counter(
            "ovi_storage_written_bytes",
            "Bytes written to the storage, by kind (outputs, uploads, inputs).",
            ["kind"],
            registry=r,
        )

    def observe_job(
        self, outcome: str, seconds: float, timings: dict[str, float] | None = None
    ) -> None:
        """One finished job: its outcome (ok, error, cancelled), run time and phase timings."""
        self.jobs.labels(outcome).inc()
        self.job_seconds.labels(outcome).observe(seconds)
        for phase, value in (timings or {}).items():
            if phase in PHASES:
                self.phase_seconds.labels(phase).observe(value)
        steps, denoise = (timings or {}).get("steps"), (timings or {}).get("denoise")
        if steps and denoise:
            self.steps_per_second.set(steps / denoise)

    def update_gpu_memory(self) -> None:
        """Read the CUDA allocator's counters, if this process already uses CUDA."""
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        self.gpu_memory_bytes.labels("allocated").set(torch.cuda.memory_allocated())
        self.gpu_memory_bytes.labels("reserved").set(torch.cuda.memory_reserved())
        self.gpu_memory_bytes.labels("peak").set(torch.cuda.max_memory_allocated())

    def snapshot(self) -> Snapshot:
        try:
            self.update_gpu_memory()
        except Exception:  # never let metrics stop a heartbeat
            log.exception("could not read GPU memory")
        return snapshot(self.registry)


class StepTimer:
    """Turns the pipeline's per-step callbacks (cumulative `elapsed`) into step durations."""

    def __init__(self, metrics: WorkerMetrics | None) -> None:
        self.metrics = metrics
        self.last = 0.0
        self.steps = 0

    def __call__(self, elapsed: float) -> None:
        if self.metrics is not None:
            self.metrics.step_seconds.observe(max(0.0, elapsed - self.last))
        self.last = elapsed
        self.steps += 1


# --- the API process ----------------------------------------------------------------------------


class StoreCollector(Collector):
    """The job store's state and every live worker's heartbeat snapshot, read per scrape."""

    def __init__(self, store: JobStore, own: Callable[[], Snapshot]) -> None:
        self.store = store
        self.own = own  # the API process's snapshot, merged with the workers' families

    def collect(self) -> Iterator[Metric]:
        up = Metric("ovi_job_store_up", "1 if the job store answered this scrape.", "gauge")
        try:
            depths = self.store.queue_depths()
            running = self.store.counts().get("IN_PROGRESS", 0)
            workers = self.store.workers()
            outbox = self.store.delivery_counts()
        except Exception:
            log.exception("metrics: the job store did not answer")
            up.add_sample("ovi_job_store_up", {}, 0)
            yield up
            yield from merge_snapshots([({"worker": "api"}, self.own())])
            return
        up.add_sample("ovi_job_store_up", {}, 1)
        yield up
        depth = Metric("ovi_queue_depth", "Requests waiting in the queue, by priority.", "gauge")
        for priority in PRIORITIES:
            depth.add_sample("ovi_queue_depth", {"priority": priority}, depths.get(priority, 0))
        yield depth
        jobs = Metric("ovi_jobs_running", "Requests being generated now.", "gauge")
        jobs.add_sample("ovi_jobs_running", {}, running)
        yield jobs
        states = Metric("ovi_workers", "Registered workers, by state.", "gauge")
        for state in WORKER_STATES:
            n = sum(1 for w in workers if w.state == state)
            states.add_sample("ovi_workers", {"state": state}, n)
        yield states
        pending = Metric(
            "ovi_webhook_outbox", "Webhook deliveries in the outbox, by state.", "gauge"
        )
        for state in ("pending", "failed"):
            pending.add_sample("ovi_webhook_outbox", {"state": state}, outbox.get(state, 0))
        yield pending
        sources = [({"worker": "api"}, self.own())]
        sources += [({"worker": w.id}, w.metrics) for w in workers if w.metrics]
        yield from merge_snapshots(sources)


class ApiMetrics:
    """The API process's registry, plus the store collector that reads the queue and workers."""

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ovi_http_requests",
            "HTTP requests, by endpoint (route template), method and outcome (status class).",
            ["endpoint", "method", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "ovi_http_request_duration_seconds",
            "HTTP request latency until the response started, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.webhooks = Counter(
            "ovi_webhook_deliveries",
            "Webhook delivery attempts, by result: delivered, retry (failed, tried again later),"
            " failed (failed for good).",
            ["result"],
            registry=r,
        )
        # Shared with the workers' families (same name), so it is merged, not registered.
        self._shared = CollectorRegistry(auto_describe=True)
        self.storage_bytes = Counter(
            "ovi_storage_written_bytes",
            "Bytes written to the storage, by kind (outputs, uploads, inputs).",
            ["kind"],
            registry=self._shared,
        )
        r.register(StoreCollector(store, lambda: snapshot(self._shared)))

    def webhook_attempt(self, result: str) -> None:
        self.webhooks.labels(result).inc()

    def stored(self, kind: str, size: int) -> None:
        self.storage_bytes.labels(kind).inc(size)


def _endpoint(scope: Scope) -> str:
    """The matched route's path template (bounded label values); `other` when nothing matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"


class MetricsMiddleware:
    """Counts every HTTP request and times it until its response starts (SSE streams and file
    downloads count when their headers go out); logs it as one `ovi.access` event (shown in
    JSON log mode, see `server.logs`)."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], ApiMetrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.metrics() if scope["type"] == "http" else None
        if metrics is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        recorded = False
        request_id: str | None = None

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            endpoint = _endpoint(scope)
            seconds = time.perf_counter() - started
            metrics.requests.labels(endpoint, scope["method"], f"{status // 100}xx").inc()
            metrics.latency.labels(endpoint).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "request_id": request_id,
                        "phase": "http",
                        "duration_s": seconds,
                        "endpoint": endpoint,
                        "method": scope["method"],
                        "status": status,
                    },
                )

        async def send_and_time(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-fal-request-id":
                        request_id = value.decode("latin-1")
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_and_time)
        finally:
            record()  # no response started: counted as a 5xx
