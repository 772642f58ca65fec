"""The API process's periodic duties, one `tick` a second from one asyncio task: start deadlines,
dead workers, webhooks due into the outbox, and the retention sweeps of the store and the storage.

Every duty goes through the `JobStore` and `Storage` seams, so any number of API processes may
run it against one store: each step is safe to repeat (a webhook enters the outbox once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from anyio import to_thread

from server.jobs.base import JobStore
from server.readiness import Faults
from server.serving import webhook_message
from server.settings import ServerSettings
from server.storage import Storage

if TYPE_CHECKING:
    from server.supervisor import WorkerSupervisor
    from server.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)


class Maintenance:
    """Expire, recover, hand webhooks over, sweep."""

    def __init__(
        self,
        settings: ServerSettings,
        store: JobStore,
        storage: Storage,
        *,
        webhooks: WebhookDispatcher | None = None,
        supervisor: WorkerSupervisor | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.webhooks = webhooks
        self.supervisor = supervisor
        self.faults = faults or Faults()
        self._last_sweep = 0.0

    @property
    def sweep_every_s(self) -> float:
        return min(3600.0, max(1.0, self.settings.output_retention_s / 10))

    def tick(self) -> None:
        store = self.store
        store.expire_overdue()
        stale = store.stale_workers(self.settings.worker_stale_after_s)
        if self.supervisor is not None:  # our own live children are never stale by our clock
            alive = self.supervisor.alive()
            stale = [w for w in stale if w not in alive]
        if stale:
            recovered = store.recover(stale, max_attempts=self.settings.max_attempts)
            log.warning("workers %s stale; recovered %s", stale, recovered)
        self.pump_webhooks()
        now = time.monotonic()
        if now - self._last_sweep >= self.sweep_every_s:
            self._last_sweep = now
            retention = self.settings.output_retention_s
            removed = self.storage.sweep(retention) + store.sweep(retention)
            if removed:
                log.info("retention sweep removed %d item(s)", removed)

    def pump_webhooks(self) -> None:
        """Completed jobs' webhooks into the outbox (the dispatcher sends them)."""
        if self.webhooks is None:
            return
        for job in self.store.webhooks_due():
            status, payload, error = webhook_message(job)
            assert job.webhook_url is not None
            self.webhooks.enqueue(
                job.webhook_url,
                request_id=job.id,
                status=status,
                payload=payload,
                error=error,
                gateway_request_id=job.gateway_request_id,
                user_id=job.user_id,
            )

    async def run(self, interval_s: float = 1.0) -> None:
        """Tick until cancelled; a failing tick is logged and the next one runs anyway."""
        while True:
            try:
                await to_thread.run_sync(self.tick)
            except Exception as exc:  # e.g. a full disk: reported in /health, retried
                log.warning("maintenance tick failed: %s: %s", type(exc).__name__, exc)
                self.faults.report("maintenance", exc)
            else:  # the store answers again: faults noted by earlier writes are over
                self.faults.clear("maintenance")
                self.faults.clear("job store")
            await asyncio.sleep(interval_s)
