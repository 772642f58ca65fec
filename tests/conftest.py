"""Shared test setup: offline hub, reference fixtures, one tiny pipeline per session.

`tiny_pipeline` is the tiny model at about 1 s (`tiny_1s`, 25 frames): the tests check
behaviour, and one CLI test (`tests/cli/test_cli_generate.py`) runs the real 5 s length."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach the hub

import pytest  # noqa: E402

from tools.services import MotoS3, RedisServer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_pipeline():
    from model.pipeline import OviPipeline

    return OviPipeline.from_preset("tiny_1s")


# --- real services (tools/services.py): one redis-server and one moto S3 per session ---


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)  # boto3 reads the standard variables, as in production
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
