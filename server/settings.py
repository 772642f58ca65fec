"""Deployment settings: one `ServerSettings`, read from flags, `OVI_*` variables and a TOML file.

Precedence, highest first: values passed in code (the CLI's flags), environment variables
(`OVI_PORT=8443`), a config file (`--config FILE` or `OVI_CONFIG=FILE`; TOML, keys are the field
names: `port = 8443`), then the defaults below. List fields take JSON or a comma-separated string
from the environment: `OVI_API_KEYS=key1,key2`.

Nothing is read at import: build with `load_settings(...)` or the cached `get_settings()`.
Per-request knobs live in `server/schemas.py` and model variants in `model/presets.py`; this file
only says how the process is deployed.
"""

from __future__ import annotations

import ipaddress
import os
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from model.options import ModelSource, RuntimeOptions, option_fields

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CONFIG_ENV_VAR = "OVI_CONFIG"
_config_file: ContextVar[Path | None] = ContextVar("ovi_config_file", default=None)

StrList = Annotated[list[str], NoDecode]


class ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the TOML config file named by `load_settings(config_file=...)` or `OVI_CONFIG`."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = _config_file.get()
        if path is None and os.environ.get(CONFIG_ENV_VAR):
            path = Path(os.environ[CONFIG_ENV_VAR])
        self._data: dict[str, Any] = {}
        if path is not None:
            with open(path, "rb") as f:
                self._data = tomllib.load(f)
            # A [server] table or top-level keys: both read the same.
            self._data = {**self._data.pop("server", {}), **self._data}
            unknown = set(self._data) - set(settings_cls.model_fields)
            if unknown:
                raise ValueError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _runtime_fields() -> dict[str, Any]:
    """One setting per `RuntimeOptions` field: same name (TOML key), `OVI_<NAME>`, its help."""
    return {
        f.name: (tp, Field(f.default, description=f.metadata["help"]))
        for f, tp in option_fields(RuntimeOptions)
    }


# The runtime knobs, generated: a new `RuntimeOptions` field is a new setting with no edit here.
_RuntimeSettings = create_model("_RuntimeSettings", __base__=BaseSettings, **_runtime_fields())


class ServerSettings(_RuntimeSettings):  # type: ignore[misc, valid-type]
    """How one `ovi serve` process is deployed. Field names are the TOML keys; env adds `OVI_`.

    Besides the fields below, every `RuntimeOptions` field (`model/options.py`) is a setting of
    the same name (`device`, `cpu_offload`, `block_offload`, `fp8`, ...), read by the worker."""

    model_config = SettingsConfigDict(env_prefix="OVI_", extra="ignore", validate_default=True)

    # --- model source (read by the worker only) ---
    variant: str = Field("720x720_5s", description="Model variant from model/presets.py.")
    preset: str | None = Field(
        None, description="A preset with built-in random weights (`tiny`) instead of `variant`."
    )
    weights_dir: Path = Field(Path("weights"), description="Where `ovi weights` put the files.")

    # --- network ---
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535)
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve https.")
    tls_key: Path | None = Field(None, description="PEM private key for `tls_cert`.")
    public_base_url: str | None = Field(
        None, description="Base of the absolute URLs we hand out, e.g. https://ovi.example.com."
    )
    trusted_proxies: StrList = Field(
        default_factory=list,
        description="IPs/CIDRs whose X-Forwarded-Proto/Host are honoured (e.g. 127.0.0.1).",
    )
    cors_origins: StrList = Field(default_factory=lambda: ["*"])

    # --- auth ---
    api_keys: StrList = Field(
        default_factory=list, description="Accepted `Authorization: Key <key>` values."
    )
    allow_unauthenticated: bool = Field(
        False, description="Allow binding a non-loopback host with no API keys configured."
    )
    admin_api_keys: StrList = Field(
        default_factory=list,
        description="Keys that see every tenant's requests and the /health details (each API"
        " key is a tenant: it sees only the requests it submitted).",
    )
    files_require_key: bool = Field(
        False,
        description="Serve /files only to the owner's key (or an admin key); default: a file"
        " URL is an unguessable capability, readable without a key.",
    )

    # --- data ---
    data_dir: Path = Field(
        Path("data"),
        description="Local state: the default job store and storage, signing keys, temp files.",
    )
    job_store: str | None = Field(
        None,
        description="Job store URL shared by the API and the workers, e.g."
        " sqlite:////srv/ovi/jobs.sqlite3; None: sqlite:///<data_dir>/jobs.sqlite3.",
    )
    storage: str | None = Field(
        None,
        description="Where outputs, uploads and job inputs live, shared by the API and the"
        " workers, e.g. file:///srv/ovi/files; None: file://<data_dir>/files.",
    )
    output_retention_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Outputs, uploads and finished jobs live this long."
    )
    s3_presign: bool = Field(
        False,
        description="With s3:// storage, hand out pre-signed URLs on the store instead of"
        " /files/ URLs served by the API.",
    )

    # --- queue and workers ---
    workers: int = Field(
        1, ge=0, description="Worker processes (one per GPU); 0 = API only, workers run elsewhere."
    )
    gpus_per_worker: int | None = Field(
        None,
        ge=1,
        description="GPUs per worker for one clip on several GPUs (--cfg-parallel/--sp): worker"
        " i uses GPUs [i*K, i*K + K); None: as many as the layout needs.",
    )
    max_queue_size: int = Field(1000, ge=1, description="Queued requests before 429.")
    max_attempts: int = Field(
        2, ge=1, description="Runs per request when its worker dies (2 = re-queued once)."
    )
    heartbeat_interval_s: float = Field(1.0, gt=0)
    worker_stale_after_s: float = Field(
        30.0, gt=0, description="A worker silent this long is dead; its request is re-queued."
    )
    poll_interval_s: float = Field(
        0.1, gt=0, description="How often waiting routes and idle workers look at the store."
    )
    sse_ping_interval_s: float = Field(15.0, gt=0, description="`: ping` period on SSE streams.")
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="On shutdown, how long a running job may take to stop."
    )
    drain_timeout_s: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, how long a running job may go on to finish before it is"
        " released back to the queue at its next step (0: released at once).",
    )
    min_free_disk_mb: float = Field(
        64.0,
        ge=0,
        description="Below this much free space in data_dir, submits answer 507 and /health"
        " says degraded.",
    )
    log_level: str = Field("info")
    log_format: Literal["plain", "json"] = Field(
        "plain", description="`json`: one JSON object per log line (request id, phase, duration)."
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="`ovi worker` only: also serve its Prometheus metrics on this port.",
    )
    previews: int = Field(
        8,
        ge=0,
        description="Preview images per clip while it denoises (a latent-to-RGB sketch of the"
        " current estimate, linked from the request's logs; the playground shows them); 0 = none.",
    )

    # --- inputs, storage, webhooks, TLS ---
    # (fields owned by fetch.py / storage.py / webhooks.py / tls.py go in this block)
    lora_dir: Path | None = Field(
        None,
        description="Folder of LoRA files a request may name in its `lora` field (`path`: a file"
        " name inside it); None: only LoRAs uploaded to the storage (`url`).",
    )
    url_allowlist: StrList = Field(
        default_factory=list,
        description="Hosts, IPs or CIDRs that image_url fetches and webhooks may reach although"
        " they are loopback/private/link-local/metadata (e.g. 127.0.0.1, 10.0.0.0/8, minio.lan).",
    )
    fetch_max_bytes: int = Field(25 * 1024 * 1024, gt=0, description="Largest image_url download.")
    fetch_connect_timeout_s: float = Field(5.0, gt=0)
    fetch_read_timeout_s: float = Field(20.0, gt=0, description="Longest silence while reading.")
    fetch_total_timeout_s: float = Field(60.0, gt=0, description="Whole image_url download.")
    fetch_max_redirects: int = Field(5, ge=0)
    upload_max_bytes: int = Field(50 * 1024 * 1024, gt=0, description="Largest file upload.")
    upload_url_ttl_s: float = Field(
        3600.0, gt=0, description="Lifetime of pre-signed upload URLs and upload tokens."
    )
    webhook_max_attempts: int = Field(10, ge=1, description="Deliveries tried per webhook.")
    webhook_initial_delay_s: float = Field(
        15.0, gt=0, description="Wait before the first retry; doubles per retry (10 tries ~ 2 h)."
    )
    webhook_max_delay_s: float = Field(3600.0, gt=0, description="Cap on one retry wait.")
    webhook_timeout_s: float = Field(15.0, gt=0, description="Per-delivery HTTP timeout.")

    # --- bounded request costs ---
    body_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait for the next piece of a request body (then 408); past it, the"
        " body must also keep up 16 KiB/s on average.",
    )
    image_max_pixels: int = Field(
        16_000_000,
        gt=0,
        description="Largest image_url accepted (width x height, read from the header before"
        " any pixel is decoded).",
    )
    image_pixel_budget: int = Field(
        4_194_304,
        gt=0,
        description="Decoded size of an image_url: larger images are reduced while decoding"
        " (JPEG draft) or right after (integer box reduce) to at most this many pixels.",
    )
    image_decode_concurrency: int = Field(
        2, ge=1, description="Images decoded at once in the API process (the rest wait)."
    )
    retry_after_s: int = Field(
        5, ge=1, description="`Retry-After` seconds on 429 (queue full) and 503 answers."
    )

    # --- end inputs, storage, webhooks, TLS ---

    @field_validator(
        "trusted_proxies",
        "cors_origins",
        "api_keys",
        "admin_api_keys",
        "url_allowlist",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if not key.strip():
                raise ValueError(
                    "an API key is empty (an unset shell variable?): give --api-key a value,"
                    " or leave it out to serve loopback without keys"
                )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("job_store")
    @classmethod
    def _check_job_store(cls, value: str | None) -> str | None:
        from server.jobs import check_store_url

        return check_store_url(value) if value else None

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, value: str | None) -> str | None:
        from server.storage import check_storage_url

        return check_storage_url(value) if value else None

    @field_validator("public_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_base_url must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_runtime(self) -> ServerSettings:
        self.runtime  # noqa: B018 - RuntimeOptions refuses bad combinations (fp8 compute on cpu)
        return self

    @model_validator(mode="after")
    def _check_tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "--tls-cert and --tls-key (tls_cert, tls_key) go together: give both, e.g."
                " --tls-cert tls/server.pem --tls-key tls/server-key.pem after"
                " `ovi tls init tls`, or neither to serve plain http"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, ConfigFileSource(settings_cls))

    # --- derived paths ---
    @property
    def job_store_url(self) -> str:
        return self.job_store or f"sqlite:///{self.data_dir / 'jobs.sqlite3'}"

    @property
    def storage_url(self) -> str:
        url = self.storage or (self.data_dir / "files").absolute().as_uri()
        if self.s3_presign and url.startswith("s3://") and "presign=" not in url:
            url += ("&" if "?" in url else "?") + "presign=1"
        return url

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def model_name(self) -> str:
        return self.preset or self.variant

    @property
    def source(self) -> ModelSource:
        return ModelSource(self.model_name, self.weights_dir)

    @property
    def runtime(self) -> RuntimeOptions:
        return RuntimeOptions.from_mapping(self.__dict__)  # the generated fields, by name

    @property
    def all_api_keys(self) -> list[str]:
        """Every accepted key: the tenants' and the admins'."""
        return [*self.api_keys, *self.admin_api_keys]

    def is_loopback_host(self) -> bool:
        return is_loopback_host(self.host)

    def check_bind_policy(self) -> None:
        """Refuse an open, key-less server: no keys means loopback only unless told otherwise."""
        if not self.all_api_keys and not self.allow_unauthenticated and not self.is_loopback_host():
            raise ValueError(
                f"refusing to serve {self.host} without API keys: set OVI_API_KEYS (or --api-key),"
                " bind a loopback address, or pass --allow-unauthenticated"
            )


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> ServerSettings:
    """Build settings from `overrides` > `OVI_*` env > `config_file` (or `OVI_CONFIG`) > defaults.

    `None` overrides are dropped, so CLI flags that were not given do not mask the environment.
    """
    token = _config_file.set(Path(config_file) if config_file else None)
    try:
        return ServerSettings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)


@lru_cache
def get_settings() -> ServerSettings:
    """The process-wide settings from the environment (and `OVI_CONFIG`); cached."""
    return load_settings()
