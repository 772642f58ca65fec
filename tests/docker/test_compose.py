"""`docker/compose.yaml` without Docker: interpolated as `docker compose config` would, parsed by
the Compose-spec validator (`compose-spec`, typed keys and values), then the topology the
scale-out docs promise: Redis with AOF, two API replicas behind one published port, workers with
GPU reservations, one shared volume, the image referenced by name, and settings that parse."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from server.settings import ServerSettings

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"
ENV = {"OVI_API_KEYS": "k1", "OVI_GPUS": "0,1"}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$` (a literal `$`)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == "?":
            raise ValueError(f"{name}: {arg}")
        return arg

    return re.sub(r"\$\$|\$\{(\w+)(?::?([-?])([^}]*))?\}", sub, text)


def load(env: dict[str, str]) -> dict[str, Any]:
    compose_spec = pytest.importorskip("compose_spec")
    return compose_spec.PyCompose.from_yaml(interpolate(COMPOSE.read_text(), env)).to_dict()


def test_compose_is_valid_and_has_the_documented_topology() -> None:
    spec = load(ENV)
    services = spec["services"]
    assert set(services) == {"redis", "api-1", "api-2", "lb", "worker"}

    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--appendfsync") + 1] in ("everysec", "always")
    assert "redis-data" in spec["volumes"]

    apis = [services["api-1"], services["api-2"]]
    for api in apis:
        assert api["image"] == "ovi-server" and "ports" not in api  # only via the lb
        assert api["command"][:4] == ["ovi", "serve", "--workers", "0"]
        assert "shared:/shared" in api["volumes"]
        assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    lb = services["lb"]
    assert len(lb["ports"]) == 1
    config = spec["configs"][lb["configs"][0]["source"]]["content"]
    assert re.findall(r"server (api-\d):8000", config) == ["api-1", "api-2"]
    assert "$http_host" in config and "proxy_buffering off" in config

    worker = services["worker"]
    assert worker["command"] == ["ovi", "worker", "--gpus", "0,1"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "shared:/shared" in worker["volumes"] and "shared" in spec["volumes"]

    for name, service in services.items():  # references resolve
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    # The settings every Ovi service gets parse as the server would read them.
    for service in (*apis, worker):
        env = {k.removeprefix("OVI_").lower(): v for k, v in service["environment"].items() if v}
        settings = ServerSettings(**env)
        assert settings.job_store_url == "redis://redis:6379/0"
        assert settings.storage_url == "file:///shared/files"
    assert ServerSettings(gpus="0,1").runtime.gpu_groups() == [[0], [1]]  # a worker per GPU


def test_compose_refuses_to_start_without_api_keys() -> None:
    with pytest.raises(ValueError, match="OVI_API_KEYS"):
        interpolate(COMPOSE.read_text(), {})


def test_compose_and_dockerfile_agree() -> None:
    """The image runs as uid 10001 and owns every path compose mounts a volume on (Docker gives
    a new named volume its mount point's owner); the image's HTTP healthcheck is off where no
    HTTP server runs; the replicas listen on the port the image exposes and the lb proxies to;
    the final stage carries no pip or build toolchain."""
    spec = load(ENV)
    dockerfile = (COMPOSE.parent / "Dockerfile").read_text()
    final = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert "\nUSER 10001" in final
    (chown,) = re.findall(r"chown ovi:ovi ([^\n\\]+)", final)
    owned = set(chown.split())
    (exposed,) = re.findall(r"^EXPOSE (\d+)$", final, re.M)
    for bad in ("python3-pip", "pip install", "build-essential", "gcc", "python3-dev"):
        assert bad not in final, bad
    for name, service in spec["services"].items():
        if service.get("image") != "ovi-server":
            continue
        for volume in service["volumes"]:
            target = volume.split(":")[1]
            assert target in owned, f"{name} mounts {target}, which uid 10001 does not own"
        if service["command"][:2] == ["ovi", "serve"]:
            assert service["command"][service["command"].index("--port") + 1] == exposed
            assert "healthcheck" not in service  # the image's /health check applies
        else:
            assert service["healthcheck"]["disable"] is True
    config = spec["configs"]["nginx"]["content"]
    assert set(re.findall(r"server api-\d:(\d+)", config)) == {exposed}
