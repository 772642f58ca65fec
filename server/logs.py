"""Log output for the server and its workers: plain lines (the default) or, with
`--log-format json` (`OVI_LOG_FORMAT=json`), one JSON object per line.

A JSON line always has `ts`, `level`, `logger`, `message` and `process`, plus `request_id`,
`phase` and `duration_s` when the event has them: passed as `extra={...}` by the caller, or the
request id of the job this worker is running (`REQUEST_ID`). The API logs one `ovi.access` event
per HTTP request (endpoint, method, status, duration_s, request_id) in JSON mode, where it
replaces uvicorn's access log.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Literal

LogFormat = Literal["plain", "json"]
REQUEST_ID: ContextVar[str | None] = ContextVar("ovi_request_id", default=None)
ACCESS_LOGGER = "ovi.access"
# Extra fields copied from a record into its JSON line when present.
EXTRA_FIELDS = ("request_id", "phase", "duration_s", "endpoint", "method", "status", "worker")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `process` names the emitter (`api`, `worker[0]`, ...)."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self.process or record.processName,
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = round(value, 6) if isinstance(value, float) else value
        if "request_id" not in line and REQUEST_ID.get() is not None:
            line["request_id"] = REQUEST_ID.get()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(
    level: str | int = "info", fmt: LogFormat = "plain", *, process: str = ""
) -> None:
    """Replace the root handler: plain `time level [process] logger: message`, or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        tag = f" {process}" if process else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Plain mode keeps uvicorn's access log; JSON mode has ours (with the request id) instead.
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if fmt == "json" else logging.WARNING)
