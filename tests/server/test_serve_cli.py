"""server/serve_cli.py: `ovi serve` / `ovi worker` flags -> settings -> uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from server.serve_cli import add_serve_commands, cmd_serve, settings_from_args


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OVI_"):
            monkeypatch.delenv(name)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ovi")
    add_serve_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_flags_become_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ovi.toml"
    config.write_text('port = 9001\nvariant = "960x960_5s"\n')
    monkeypatch.setenv("OVI_WORKERS", "2")
    args = parse(
        "serve", "--preset", "tiny", "--data-dir", str(tmp_path), "--api-key", "a",
        "--api-key", "b", "--config", str(config), "--host", "0.0.0.0",
    )  # fmt: skip
    s = settings_from_args(args)
    assert s.preset == "tiny" and s.data_dir == tmp_path and s.api_keys == ["a", "b"]
    assert s.port == 9001 and s.workers == 2 and s.host == "0.0.0.0"
    assert s.variant == "960x960_5s"
    with pytest.raises(SystemExit):
        parse("serve", "--preset", "tiny", "--variant", "720x720_5s")  # one or the other


def test_serve_refuses_open_bind_without_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr("server.serve_cli.check_weights", lambda settings: None)  # no files here
    with pytest.raises(ValueError, match="without API keys"):
        cmd_serve(parse("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)))
    assert calls == []
    cmd_serve(
        parse("serve", "--host", "0.0.0.0", "--allow-unauthenticated", "--data-dir", str(tmp_path))
    )
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cmd_serve(
        parse(
            "serve",
            "--port",
            "8443",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--data-dir",
            str(tmp_path),
        )
    )
    assert calls[0]["host"] == "0.0.0.0"
    assert calls[1]["port"] == 8443 and calls[1]["ssl_certfile"] == str(cert)
    assert calls[1]["proxy_headers"] is False


def test_worker_command_is_registered() -> None:
    args = parse("worker", "--preset", "tiny", "--data-dir", "d")
    assert args.func.__name__ == "cmd_worker"


def test_serve_refuses_to_start_without_weight_files(tmp_path, capsys) -> None:
    from server.cli import main

    code = main(["serve", "--data-dir", str(tmp_path / "data"), "--weights-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "weight file not found" in err and "make weights VARIANT=720x720_5s" in err


def test_memory_mode_flags_become_settings() -> None:
    s = settings_from_args(parse("worker", "--preset", "tiny"))
    assert (s.block_offload, s.fp8_compute, s.batch_cfg) == (False, False, False)
    args = parse(
        "serve", "--preset", "tiny", "--block-offload", "--fp8-compute", "--batch-cfg",
    )  # fmt: skip
    s = settings_from_args(args)
    assert s.block_offload and s.fp8_compute and s.batch_cfg
