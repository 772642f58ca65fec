"""cli/serve.py and cli/worker.py: `ovi serve` / `ovi worker` flags -> settings -> uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from cli import serve, worker
from cli.serve import settings_from_args


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OVI_"):
            monkeypatch.delenv(name)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ovi")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.register(sub)
    worker.register(sub)
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
    calls: list[tuple[Any, bool]] = []
    monkeypatch.setattr(
        "server.lifecycle.serve", lambda settings, recover_db: calls.append((settings, recover_db))
    )
    monkeypatch.setattr("cli.serve.check_weights", lambda settings: None)  # no files here
    with pytest.raises(ValueError, match="without API keys"):
        serve.run(parse("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)))
    assert calls == []
    serve.run(
        parse("serve", "--host", "0.0.0.0", "--allow-unauthenticated", "--data-dir", str(tmp_path))
    )
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert"), key.write_text("key")  # checked to exist before serving
    serve.run(
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
            "--recover-db",
            "--drain-timeout",
            "7.5",
        )
    )
    assert calls[0][0].host == "0.0.0.0" and calls[0][1] is False
    assert calls[1][0].port == 8443 and calls[1][0].tls_cert == cert
    assert calls[1][0].drain_timeout_s == 7.5 and calls[1][1] is True


def test_worker_command_is_registered() -> None:
    args = parse("worker", "--preset", "tiny", "--data-dir", "d")
    assert args.func is worker.run


def test_serve_refuses_to_start_without_weight_files(tmp_path, capsys) -> None:
    from cli.main import main

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


def test_runtime_flags_are_generated_for_every_option() -> None:
    """A `RuntimeOptions` field is a flag of `serve` and `worker` and a setting, with no edit."""
    import dataclasses

    from model.options import RuntimeOptions

    args = parse("serve", "--preset", "tiny", "--no-compile", "--dtype", "float16")
    s = settings_from_args(args)
    assert s.runtime == RuntimeOptions(compile=False, dtype="float16")
    for f in dataclasses.fields(RuntimeOptions):
        assert f.name in vars(parse("worker")), f.name


def test_runtime_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVI_OFFLOAD_TEXT_ENCODER", "true")
    monkeypatch.setenv("OVI_FAST_PATH", "false")
    s = settings_from_args(parse("worker", "--preset", "tiny"))
    assert s.runtime.offload_text_encoder and s.runtime.fast_path is False
    s = settings_from_args(parse("worker", "--preset", "tiny", "--fast-path"))
    assert s.runtime.fast_path is True  # the flag beats the environment


def test_fp8_compute_on_cpu_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    assert main(["worker", "--preset", "tiny", "--device", "cpu", "--fp8-compute"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fp8 compute needs a CUDA GPU" in err


def test_store_and_storage_urls_are_flags(tmp_path: Path) -> None:
    store, files = f"sqlite:///{tmp_path}/q.sqlite3", f"file://{tmp_path}/shared"
    s = settings_from_args(parse("worker", "--job-store", store, "--storage", files))
    assert (s.job_store, s.storage) == (store, files)


def test_worker_gpus_and_redis_urls(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    s = settings_from_args(
        parse("worker", "--gpus", "0,2", "--job-store", "redis://10.0.0.5:6379/0")
    )
    assert s.runtime.gpu_list() == [0, 2] and s.job_store_url == "redis://10.0.0.5:6379/0"
    for bad in (["--gpus", "cuda:0"], ["--job-store", "redis://10.0.0.5/0"]):
        assert main(["worker", "--preset", "tiny", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "Traceback" not in err
    assert main(["worker", "--preset", "tiny", "--storage", "s3://"]) == 2
    assert "s3://bucket/prefix" in capsys.readouterr().err


def test_worker_gpus_give_each_supervised_process_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.worker as worker_module

    seen: list[str | None] = []
    monkeypatch.setattr(
        worker_module,
        "run_worker_until_signalled",
        lambda s, wid, device=None, **kw: seen.append(device),
    )
    s = settings_from_args(parse("worker", "--preset", "tiny", "--gpus", "2,5"))
    for slot in (0, 1):
        worker_module.worker_process_main(s, f"w{slot}", slot)
    assert seen == ["cuda:2", "cuda:5"]


def test_worker_gpus_are_cut_into_one_slice_per_group() -> None:
    """With --cfg-parallel/--sp, --gpus lists a multiple of one clip's ranks: a worker group per
    slice; a count that is not a multiple is one error line."""
    from server.worker_group import group_gpus

    s = settings_from_args(parse("worker", "--preset", "tiny", "--gpus", "0,1,2,3", "--sp", "2"))
    assert s.runtime.gpu_groups() == [[0, 1], [2, 3]]
    assert [group_gpus(s, slot) for slot in (0, 1)] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="3 GPUs given"):
        settings_from_args(parse("worker", "--gpus", "0,1,2", "--cfg-parallel"))


def test_worker_serves_its_metrics_and_logs_json(tmp_path: Path) -> None:
    """`ovi worker --metrics-port P --log-format json` (a real process): its registry answers on
    P (`ovi_worker_jobs`, `ovi_phase_duration_seconds`, ...) and its log lines are JSON."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVI_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--preset", "tiny_1s", "--device", "cpu",
         "--data-dir", str(tmp_path / "data"), "--metrics-port", str(port), "--log-format", "json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no metrics endpoint"
                time.sleep(0.1)
        names = {f.name for f in text_string_to_metric_families(r.text)}
        assert {"ovi_worker_jobs", "ovi_phase_duration_seconds", "ovi_gpu_memory_bytes"} <= names
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["process"] == "worker" for line in lines), lines[:3]
