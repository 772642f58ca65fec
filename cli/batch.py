"""`ovi batch`: every row of a CSV/TSV (`text_prompt[, image_path]`), resumable.

Each clip's record goes to `results.jsonl` in the output folder as it finishes; a rerun skips
the items already written. A bad row fails alone and the batch goes on (exit code 1 at the end).
Seeds (`item_seed`): with `--seed S`, repeat k of every row gets `S + k`: the official
`inference.py` scheme as far as its public documentation shows it (a `seed` and
`each_example_n_times` per prompt, the seed moving with the repeat, not the row), so row r's
clips are the ones the official script makes for that prompt with the same seed. Not checked
against its source here (issue 12). Without `--seed`, each clip draws its own (and records it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from cli import UsageError
from cli.clips import add_output_flags, check_before_loading, load, read_image, run_ranks, save
from cli.flags import add_model_flags, add_sampling_flags, sampling_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="generate every row of a CSV/TSV (text_prompt[, image_path])")
    p.add_argument("prompts", type=Path)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=1, help="clips per row")
    add_output_flags(p)
    add_model_flags(p)
    add_sampling_flags(p)
    p.set_defaults(func=run)


def read_prompt_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV/TSV with a `text_prompt` column and an optional `image_path` column."""
    if not path.is_file():
        raise UsageError(f"prompt file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise UsageError(
            f"{path} is empty: it needs a header row with a text_prompt column (optional:"
            " image_path), then one row per clip"
        )
    dialect = (
        "excel-tab" if path.suffix.lower() == ".tsv" or "\t" in text.splitlines()[0] else "excel"
    )
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    if not rows or "text_prompt" not in rows[0]:
        raise UsageError(f"{path} needs a header with a text_prompt column (optional: image_path)")
    for i, row in enumerate(rows):
        if not (row.get("text_prompt") or "").strip():
            raise UsageError(f"{path}: row {i + 1} has an empty text_prompt")
    return rows


def item_seed(seed: int | None, repeat: int) -> int | None:
    """The seed of clip `repeat` of any row: `seed + repeat`, as the official `inference.py`
    seeds its repeats (the row does not enter); None stays None (each clip draws one)."""
    return None if seed is None else seed + repeat


def image_paths(rows: list[dict[str, str]], table: Path) -> dict[int, Path]:
    """Row index -> its image (relative paths are relative to the table's folder); a missing
    file is a `UsageError` naming the row, so the batch stops before the model is built."""
    paths: dict[int, Path] = {}
    for i, row in enumerate(rows):
        image_path = (row.get("image_path") or "").strip()
        if not image_path:
            continue
        resolved = Path(image_path)
        if not resolved.is_absolute():
            resolved = table.parent / resolved
        if not resolved.is_file():
            raise UsageError(
                f"{table}: row {i + 1}: image not found: {resolved} (image_path is relative to"
                " the table's folder); fix the path or empty the cell for text-to-video"
            )
        paths[i] = resolved
    return paths


def _done_items(log_path: Path) -> set[str]:
    done: set[str] = set()
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if record.get("status") == "ok" and Path(record["path"]).is_file():
                done.add(record["item"])
    return done


def run(args: argparse.Namespace) -> int:
    rows = read_prompt_table(args.prompts)
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    images = image_paths(rows, args.prompts)
    check_before_loading(args, [row["text_prompt"] for row in rows])
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "results.jsonl"
    done = _done_items(log_path)
    items = [(r, k) for r in range(len(rows)) for k in range(args.repeats)]
    todo = [(r, k) for r, k in items if f"{r:04d}_{k}" not in done]
    print(f"{len(items)} clips: {len(items) - len(todo)} already done, {len(todo)} to generate")
    if not todo:
        return 0
    return run_ranks(_generate_items, args, rows, images, todo, log_path)


def _generate_items(
    args: argparse.Namespace,
    rows: list[dict[str, str]],
    images: dict[int, Path],
    todo: list[tuple[int, int]],
    log_path: Path,
    device: Any = None,
) -> int | None:
    """One rank's part (all of it in one process): every rank generates every item; rank 0
    shows progress, writes the clips and the log, and returns the exit code."""
    from tqdm import tqdm

    out_dir: Path = args.out_dir
    pipe = load(args, device)
    main = pipe.parallel is None or pipe.parallel.is_main
    params = pipe.preset.sampling.replace(**sampling_overrides(args))
    failures = 0
    with (
        tqdm(total=len(todo) * params.steps, unit="step", desc="batch", disable=not main) as bar,
        open(log_path if main else os.devnull, "a") as log_file,
    ):
        for r, k in todo:
            row, item = rows[r], f"{r:04d}_{k}"
            path = out_dir / f"{item}.mp4"
            record: dict[str, Any] = {
                "item": item, "row": r, "repeat": k, "prompt": row["text_prompt"]
            }  # fmt: skip
            base = bar.n
            started = time.perf_counter()
            try:
                image = None
                if r in images:
                    record["image_path"] = str(images[r])
                    image = read_image(images[r])
                seed = item_seed(params.seed, k)
                out = pipe(
                    row["text_prompt"],
                    image,
                    params=params.replace(seed=seed),
                    callback=lambda info, base=base: bar.update(base + info.step - bar.n),
                )
                if main:
                    save(out, path, args)
                record.update(
                    status="ok", path=str(path), seed=out.seed, width=out.width, height=out.height,
                    frames=out.num_frames, duration=out.duration,
                )  # fmt: skip
            except (UsageError, ValueError) as exc:  # a bad row fails alone; the batch goes on
                failures += 1
                record.update(status="error", error=str(exc))
                if main:
                    tqdm.write(f"error: row {r + 1} ({item}): {exc}")
                bar.update(base + params.steps - bar.n)
            record["seconds"] = round(time.perf_counter() - started, 3)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
    if not main:
        return None
    print(f"{len(todo) - failures} generated, {failures} failed; log: {log_path}")
    return 1 if failures else 0
