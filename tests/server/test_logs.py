"""server/logs.py: JSON lines carry the request id, phase and duration; plain stays plain."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from server.logs import REQUEST_ID, configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """configure_logging replaces the root handlers (pytest's own among them): put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access = logging.getLogger("ovi.access").level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("ovi.access").setLevel(access)


def test_json_lines_carry_request_id_phase_and_duration(capsys) -> None:
    configure_logging("info", "json", process="worker[0]")
    try:
        log = logging.getLogger("ovi.test")
        log.info("vae %s", "done", extra={"phase": "vae_decode", "duration_s": 0.25})
        token = REQUEST_ID.set("req-1")
        try:
            log.warning("inside a job")
        finally:
            REQUEST_ID.reset(token)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed", extra={"request_id": "req-2"})
    finally:
        pass
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == ["vae done", "inside a job", "failed"]
    assert lines[0]["phase"] == "vae_decode" and lines[0]["duration_s"] == 0.25
    assert lines[0]["process"] == "worker[0]" and "request_id" not in lines[0]
    assert lines[1]["request_id"] == "req-1" and lines[1]["level"] == "WARNING"
    assert lines[2]["request_id"] == "req-2" and "RuntimeError: boom" in lines[2]["exception"]


def test_plain_is_the_default_format(capsys) -> None:
    configure_logging("info")
    logging.getLogger("ovi.test").info("hello", extra={"phase": "x"})
    err = capsys.readouterr().err.strip()
    assert err.endswith("INFO ovi.test: hello") and not err.startswith("{")
    assert logging.getLogger("ovi.access").level == logging.WARNING
