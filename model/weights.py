"""The weight-file manifest (`model/manifest.json`, package data): what each variant needs and
where it lives.

`resolve_files` maps a variant to local paths and fails with the exact file and the command that
fetches it; `download` fetches just the files a variant needs from the Hugging Face hub
(huggingface_hub resumes partial downloads and skips finished ones).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from .errors import WeightFileMissingError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # package data of `model`, read with importlib.resources
# Where `ovi weights` downloads to and the pipeline looks by default: `weights/` under the
# working directory (the repository's `weights/` folder when run from the checkout), as the
# server's `weights_dir` setting and `make weights` default to.
DEFAULT_WEIGHTS_DIR = Path("weights")


@dataclass(frozen=True)
class WeightFile:
    key: str  # manifest key, e.g. "t5"
    repo: str  # Hugging Face repo id
    path: str  # path inside the repo (a folder when `folder`)
    local: str  # path under the weights dir
    folder: bool = False
    inner_key: str | None = None  # nested state dict inside a pickle (BigVGAN: "generator")
    approx_bytes: int | None = None


@cache
def load_manifest() -> dict:
    """The manifest, from the installed `model` package (editable or not)."""
    return json.loads(resources.files(__package__).joinpath(MANIFEST).read_text(encoding="utf-8"))


def variant_files(variant: str, fp8: bool = False, fast: bool = False) -> list[WeightFile]:
    """The files `variant` needs; `fp8` swaps in the float8 fusion file where one exists;
    `fast` adds the few-step mode's files (the FastWan LoRA, `RuntimeOptions.fast`)."""
    manifest = load_manifest()
    if variant not in manifest["variants"]:
        known = ", ".join(manifest["variants"])
        raise ValueError(f"variant {variant!r} has no weight files; choose one of {known}")
    keys = list(manifest["variants"][variant])
    if fp8:
        fp8_key = f"{keys[0]}_fp8"
        if fp8_key not in manifest["files"]:
            raise ValueError(f"no float8 fusion file is published for variant {variant!r}")
        keys[0] = fp8_key
    if fast:
        keys += manifest["fast"]
    return [WeightFile(key=k, **manifest["files"][k]) for k in keys]


def fetch_command(variant: str, weights_dir: Path, fp8: bool = False, fast: bool = False) -> str:
    if fast:
        return f"ovi weights --variant {variant} --dir {weights_dir} --fast" + (
            " --fp8" if fp8 else ""
        )
    return f"make weights VARIANT={variant} WEIGHTS_DIR={weights_dir}" + (" FP8=1" if fp8 else "")


def resolve_files(
    weights_dir: str | Path, variant: str, fp8: bool = False, fast: bool = False
) -> dict[str, Path]:
    """Local path of every file `variant` needs, keyed by role; raise if one is missing."""
    weights_dir = Path(weights_dir)
    paths: dict[str, Path] = {}
    for spec in variant_files(variant, fp8, fast):
        path = weights_dir / spec.local
        present = path.is_dir() and any(path.iterdir()) if spec.folder else path.is_file()
        if not present:
            hint = (
                f"fetch it with `{fetch_command(variant, weights_dir, fp8, fast)}`, or pass"
                " --weights-dir an existing Ovi ckpts/ folder, or try without weights:"
                " --preset tiny"
            )
            raise WeightFileMissingError(path, hint)
        role = "fusion" if spec.key.startswith("fusion_") else spec.key
        paths[role] = path
    return paths


def inner_key(role: str) -> str | None:
    spec = load_manifest()["files"].get(role, {})
    return spec.get("inner_key")


def download(
    variant: str, weights_dir: str | Path, fp8: bool = False, fast: bool = False
) -> dict[str, Path]:
    """Download the files of `variant` that are not complete yet; return their local paths."""
    from huggingface_hub import hf_hub_download, snapshot_download

    weights_dir = Path(weights_dir)
    unreachable: str | None = None  # why the hub cannot be reached ("" once it answered)
    for spec in variant_files(variant, fp8, fast):
        target = weights_dir / spec.local
        # huggingface_hub writes into a side cache and renames when complete, so a file under
        # its final name is whole; a folder is re-synced (cheap) to pick up any missing file.
        if not spec.folder and target.is_file():
            logger.info("present: %s", target)
            continue
        # local_dir = <weights_dir>/<repo folder>, so the file lands at <weights_dir>/<local>.
        repo_dir = weights_dir / spec.local[: len(spec.local) - len(spec.path)].rstrip("/")
        if unreachable is None:
            unreachable = _hub_unreachable()
        try:
            if unreachable:
                raise OSError(unreachable)
            if spec.folder:
                logger.info("fetching %s/%s/* -> %s", spec.repo, spec.path, repo_dir)
                snapshot_download(spec.repo, allow_patterns=[f"{spec.path}/*"], local_dir=repo_dir)
            else:
                logger.info("fetching %s/%s -> %s", spec.repo, spec.path, repo_dir)
                hf_hub_download(spec.repo, spec.path, local_dir=repo_dir)
        except Exception as e:  # the hub's many error types: one message that says what to do
            raise WeightDownloadError(spec, target, weights_dir, e) from None
    return resolve_files(weights_dir, variant, fp8, fast)


HUB_HOST = "huggingface.co"


def _hub_unreachable(timeout_s: float = 5.0) -> str:
    """Why the hub cannot be reached, or "" when it answers a TCP connect within `timeout_s`
    (DNS included, in a thread so it is bounded too): without a network the hub itself would
    retry for half a minute before a message that names no file."""
    import os
    import socket
    import threading

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((HUB_HOST, 443), timeout=timeout_s).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return "" if ok else f"cannot reach {HUB_HOST}: no network?"


class WeightDownloadError(ValueError):
    """A weight file could not be downloaded; the message names it and the two ways on."""

    def __init__(self, spec: WeightFile, target: Path, weights_dir: Path, cause: Exception) -> None:
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        super().__init__(
            f"could not download {spec.repo}/{spec.path} to {target} ({reason[:200]}). Either"
            f" put the files in place and pass their folder as --weights-dir (an existing Ovi"
            f" ckpts/ folder works as is; `ovi weights --list` shows every file), or run"
            f" without weights: .venv/bin/ovi serve --preset tiny"
        )
