"""server/settings.py: sources and their precedence, list parsing, validation, bind policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import ServerSettings, is_loopback_host, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OVI_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = ServerSettings()
    assert s.host == "127.0.0.1" and s.port == 8000 and s.workers == 1
    assert s.api_keys == [] and s.sse_ping_interval_s == 15.0 and s.model_name == "720x720_5s"
    assert s.job_store_url == "sqlite:///data/jobs.sqlite3"
    assert s.storage_url == (Path.cwd() / "data" / "files").as_uri()


def test_job_store_and_storage_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = ServerSettings(data_dir=tmp_path)
    assert s.job_store_url == f"sqlite:///{tmp_path}/jobs.sqlite3"  # sqlite:////abs/...
    assert s.storage_url == f"file://{tmp_path}/files"
    monkeypatch.setenv("OVI_JOB_STORE", "sqlite:////srv/ovi/jobs.sqlite3")
    monkeypatch.setenv("OVI_STORAGE", "file:///srv/ovi/files")
    s = ServerSettings(data_dir=tmp_path)
    assert (s.job_store_url, s.storage_url) == (
        "sqlite:////srv/ovi/jobs.sqlite3",
        "file:///srv/ovi/files",
    )
    config = tmp_path / "ovi.toml"
    config.write_text('job_store = "sqlite:///q.db"\nstorage = "file:///x"\n')
    monkeypatch.delenv("OVI_JOB_STORE")
    assert load_settings(config_file=config).job_store_url == "sqlite:///q.db"
    with pytest.raises(ValidationError, match="supported schemes are sqlite://, redis://"):
        ServerSettings(job_store="postgres://localhost/0")
    with pytest.raises(ValidationError, match="supported schemes are file://, s3://"):
        ServerSettings(storage="gs://bucket/prefix")
    assert ServerSettings(job_store="redis://localhost:6379/0").job_store_url.startswith("redis")
    assert ServerSettings(storage="s3://bucket/prefix").storage_url == "s3://bucket/prefix"


def test_precedence_flags_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ovi.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\nworkers = 2\n[server]\npreset = "tiny"\n')
    s = load_settings(config_file=config)
    assert (s.port, s.host, s.workers, s.model_name) == (9000, "0.0.0.0", 2, "tiny")
    monkeypatch.setenv("OVI_PORT", "9100")
    assert load_settings(config_file=config).port == 9100  # env beats file
    assert load_settings(config_file=config, port=9200).port == 9200  # flags beat env
    assert load_settings(config_file=config, port=None).port == 9100  # unset flags don't mask
    monkeypatch.setenv("OVI_CONFIG", str(config))
    assert load_settings().workers == 2


def test_unknown_config_key_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "ovi.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(config_file=config)


def test_lists_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVI_API_KEYS", "k1, k2")
    monkeypatch.setenv("OVI_TRUSTED_PROXIES", '["10.0.0.0/8", "127.0.0.1"]')
    s = ServerSettings()
    assert s.api_keys == ["k1", "k2"] and s.trusted_proxies == ["10.0.0.0/8", "127.0.0.1"]
    monkeypatch.setenv("OVI_TRUSTED_PROXIES", "not-an-ip")
    with pytest.raises(ValidationError):
        ServerSettings()


def test_validation() -> None:
    with pytest.raises(ValidationError):
        ServerSettings(tls_cert="cert.pem")  # no key
    with pytest.raises(ValidationError):
        ServerSettings(public_base_url="ovi.example.com")
    assert ServerSettings(public_base_url="https://ovi.example.com/").public_base_url == (
        "https://ovi.example.com"
    )
    with pytest.raises(ValidationError):
        ServerSettings(workers=-1)


def test_bind_policy() -> None:
    ServerSettings(host="127.0.0.1").check_bind_policy()
    ServerSettings(host="::1").check_bind_policy()
    with pytest.raises(ValueError, match="without API keys"):
        ServerSettings(host="0.0.0.0").check_bind_policy()
    ServerSettings(host="0.0.0.0", api_keys=["k"]).check_bind_policy()
    ServerSettings(host="0.0.0.0", allow_unauthenticated=True).check_bind_policy()
    assert is_loopback_host("localhost") and not is_loopback_host("example.com")


def test_memory_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    s = ServerSettings()
    assert (s.block_offload, s.fp8_compute, s.batch_cfg) == (False, False, False)
    monkeypatch.setenv("OVI_BLOCK_OFFLOAD", "1")
    monkeypatch.setenv("OVI_BATCH_CFG", "true")
    s = ServerSettings()
    assert s.block_offload and s.batch_cfg and not s.fp8_compute
    assert ServerSettings(fp8_compute=True, device="cuda:1").fp8_compute
    with pytest.raises(ValidationError, match="fp8 compute needs a CUDA GPU"):
        ServerSettings(fp8_compute=True, device="cpu")
