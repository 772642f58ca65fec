"""Per-request LoRAs (the `lora` extra field of the inputs): where a request may take them from,
checked at submit (a 422 naming the entry) and resolved to local files by the worker.

A `path` is a file name inside the `lora_dir` setting (no absolute path, no `..`, no symlink out
of it); a `url` is one of this server's stored files (`/files/uploads/...`, e.g. uploaded with
fal's storage API), read from the storage by its key. Nothing else: never an arbitrary local
path, never a foreign URL. Only `.safetensors` files (a `.pt` file is a pickle: code). This
module imports no torch (the API process uses it).
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from server.storage.base import (
    PUBLIC_KINDS,
    Storage,
    file_owner_tag,
    key_from_path,
    owner_tag,
)

LORA_SUFFIX = ".safetensors"
MAX_CACHED = 16  # stored LoRAs a worker keeps copied locally (`resolve_lora_files`)


def lora_dir_file(name: str, lora_dir: Path | None) -> Path:
    """The file `name` names inside `lora_dir`; ValueError says why it is refused."""
    if lora_dir is None:
        raise ValueError(
            "LoRA paths are off on this server (no lora_dir setting); upload the file to the"
            " storage and pass its url"
        )
    candidate = Path(name)
    if not name.strip() or candidate.is_absolute() or ".." in candidate.parts:
        raise ValueError("path must be a file name inside the server's LoRA folder")
    root = lora_dir.resolve()
    full = (root / candidate).resolve()
    if not full.is_relative_to(root):
        raise ValueError("path must be a file name inside the server's LoRA folder")
    if full.suffix != LORA_SUFFIX:
        raise ValueError(f"a LoRA file must be a {LORA_SUFFIX} file")
    if not full.is_file():
        raise ValueError(f"no LoRA file {name!r} in the server's LoRA folder")
    return full


def stored_key(url: str, owner: str | None = None) -> str:
    """The storage key of one of our stored files named by `url`; ValueError otherwise. With
    `owner` (`files_require_key`), another key's file is refused as /files refuses it."""
    try:
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    except ValueError:
        path = ""
    key = key_from_path(path)
    if key is None or not key.startswith(PUBLIC_KINDS):
        raise ValueError(
            "url must be a file stored on this server (a /files/... URL; upload the LoRA first)"
        )
    if owner is not None and file_owner_tag(key.split("/")[1]) != owner_tag(owner):
        raise ValueError("stored file not found (expired, never uploaded, or another key's)")
    if not key.endswith(LORA_SUFFIX):
        raise ValueError(f"a LoRA file must be a {LORA_SUFFIX} file")
    return key


def check_lora_inputs(
    entries: Iterable[dict[str, Any]],
    lora_dir: Path | None,
    storage: Storage,
    owner: str | None = None,
) -> list[dict[str, Any]]:
    """Check every entry of a request's `lora` list now (blocking: run it off the event loop).
    Returns pydantic-style 422 detail items, empty when all are usable."""
    detail = []
    for i, entry in enumerate(entries):
        field = "path" if entry.get("path") is not None else "url"
        try:
            if field == "path":
                lora_dir_file(entry["path"], lora_dir)
            else:
                storage.stat(stored_key(entry["url"], owner))
        except FileNotFoundError:
            reason = "stored file not found (expired or never uploaded)"
            detail.append(_item(i, field, reason, entry[field]))
        except ValueError as e:
            detail.append(_item(i, field, str(e), entry[field]))
    return detail


def _item(i: int, field: str, msg: str, value: Any) -> dict[str, Any]:
    return {"loc": ["body", "lora", i, field], "msg": msg, "type": "lora_error", "input": value}


def resolve_lora_files(
    entries: Iterable[dict[str, Any]], lora_dir: Path | None, storage: Storage, cache_dir: Path
) -> list[tuple[str, float]]:
    """(local file, scale) of each entry, for the worker: a `path` in place, a stored `url`
    copied once into `cache_dir` (keys are immutable, so the copy is reused). ValueError (the
    job's 422) when one is no longer usable."""
    files = []
    for entry in entries:
        scale = float(entry.get("scale", 1.0))
        if entry.get("path") is not None:
            files.append((str(lora_dir_file(entry["path"], lora_dir)), scale))
            continue
        key = stored_key(entry["url"])
        local = cache_dir / key.replace("/", "_")
        if not local.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(local.name + f".{os.getpid()}.part")
            try:
                with partial.open("wb") as out:
                    for chunk in storage.read(key):
                        out.write(chunk)
            except FileNotFoundError:
                partial.unlink(missing_ok=True)
                raise ValueError(
                    f"the LoRA {entry['url']} is no longer stored (expired); upload it again"
                ) from None
            partial.replace(local)
        else:
            # recently used (the access time; the modification time, which the pipeline's
            # adapter cache compares, stays)
            os.utime(local, ns=(time.time_ns(), local.stat().st_mtime_ns))
        files.append((str(local), scale))
    _prune(cache_dir, keep={Path(f) for f, _ in files})
    return files


def _prune(cache_dir: Path, keep: set[Path]) -> None:
    """Keep the `MAX_CACHED` most recently used stored LoRAs (and those of this request)."""
    if not cache_dir.is_dir():
        return
    cached = sorted(
        (p for p in cache_dir.glob(f"*{LORA_SUFFIX}") if p.is_file()),
        key=lambda p: p.stat().st_atime,
        reverse=True,
    )
    for old in cached[MAX_CACHED:]:
        if old not in keep:
            old.unlink(missing_ok=True)
