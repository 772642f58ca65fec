"""The `ovi` command: generate | batch | conformance | weights | serve | worker | tls.

A thin layer: it parses flags into the same objects the Python API and the server use, and turns
every expected failure (missing weights, bad image, bad value) into one `error:` line and exit
code 2, never a traceback. Heavy imports (torch, fastapi) happen inside the subcommands.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("ovi")


class UsageError(Exception):
    """A bad argument; printed as one line."""


# --------------------------------------------------------------------------------------------
# shared flags


def _resolution(value: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 512x992, got {value!r}") from None
    return h, w


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    from model.presets import DEFAULT_VARIANT, PRESETS

    real = [n for n, pr in PRESETS.items() if not pr.random_weights]
    fake = [n for n, pr in PRESETS.items() if pr.random_weights]
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--variant", choices=real, help=f"real model variant (default {DEFAULT_VARIANT})"
    )
    group.add_argument("--preset", choices=fake, help="random-weight preset for tests and demos")
    p.add_argument(
        "--weights-dir", type=Path, default=None, help="where `make weights` put the files"
    )
    p.add_argument(
        "--fp8", action="store_true", help="load the float8 fusion file (computed in bf16)"
    )
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep components on CPU, move each to the GPU while it runs",
    )
    p.add_argument(
        "--offload-text-encoder",
        action="store_true",
        help="keep only umT5 on CPU, moved to the GPU for prompt encoding (40-48 GB GPUs)",
    )
    p.add_argument(
        "--block-offload",
        action="store_true",
        help="stream the DiT's layers from pinned host memory one layer ahead (24-32 GB GPUs);"
        " the other components use --cpu-offload",
    )
    p.add_argument(
        "--fp8-compute",
        action="store_true",
        help="compute the DiT's block linears in float8 (torch._scaled_mm; CUDA only, approximate)",
    )
    p.add_argument(
        "--batch-cfg", action="store_true", help="run both guidance passes as one batch of 2"
    )


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    from model.presets import SOLVERS

    p.add_argument("--steps", type=int, help="denoising steps (variant default: 50)")
    p.add_argument("--seed", type=int, help="random seed (default: random, always reported)")
    p.add_argument("--solver", choices=SOLVERS, help="flow solver (default unipc)")
    p.add_argument("--shift", type=float, help="timestep shift of the flow schedule (default 5.0)")
    p.add_argument("--video-guidance", type=float, help="video CFG scale (default 4.0)")
    p.add_argument("--audio-guidance", type=float, help="audio CFG scale (default 3.0)")
    p.add_argument(
        "--slg-layer", type=int, help="block skipped in the negative pass; -1 = off (default 11)"
    )
    p.add_argument("--negative-prompt", help="video negative prompt")
    p.add_argument("--audio-negative-prompt", help="audio negative prompt")
    p.add_argument(
        "--resolution",
        type=_resolution,
        metavar="HxW",
        help="t2v size before snapping to the variant's area",
    )


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    height, width = args.resolution if args.resolution else (None, None)
    return dict(
        steps=args.steps,
        solver=args.solver,
        shift=args.shift,
        video_guidance_scale=args.video_guidance,
        audio_guidance_scale=args.audio_guidance,
        slg_layer=args.slg_layer,
        negative_prompt=args.negative_prompt,
        audio_negative_prompt=args.audio_negative_prompt,
        height=height,
        width=width,
    )


def _load_pipeline(args: argparse.Namespace):
    from model.pipeline import OviPipeline
    from model.presets import DEFAULT_VARIANT
    from model.weights import DEFAULT_WEIGHTS_DIR

    modes = dict(
        batch_cfg=args.batch_cfg, block_offload=args.block_offload, fp8_compute=args.fp8_compute
    )
    if args.preset:
        return OviPipeline.from_preset(args.preset, device=args.device, **modes)
    return OviPipeline.from_pretrained(
        args.weights_dir or DEFAULT_WEIGHTS_DIR,
        args.variant or DEFAULT_VARIANT,
        device=args.device,
        cpu_offload=args.cpu_offload,
        offload_text_encoder=args.offload_text_encoder,
        fp8=args.fp8,
        **modes,
    )


def _read_image(path: Path):
    from model.preprocess import load_image

    if not path.is_file():
        raise UsageError(f"image not found: {path}")
    return load_image(path.read_bytes())


def _save(out, path: Path, wav: bool, arrays: bool) -> None:
    from model.media import write_arrays, write_mp4, write_wav

    write_mp4(path, out.video, out.audio, fps=out.fps, sample_rate=out.sample_rate)
    if wav:
        write_wav(path.with_suffix(".wav"), out.audio, sample_rate=out.sample_rate)
    if arrays:
        write_arrays(path.with_suffix(".npz"), video=out.video, audio=out.audio)


def _summary(out, path: Path, seconds: float) -> str:
    return (
        f"{path}: {out.width}x{out.height}, {out.num_frames} frames, {out.duration:.2f} s, "
        f"seed {out.seed}, {seconds:.1f} s"
    )


# --------------------------------------------------------------------------------------------
# generate


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.out.suffix.lower() != ".mp4":
        raise UsageError(f"--out must end in .mp4, got {args.out}")
    image = _read_image(args.image) if args.image else None
    started = time.perf_counter()
    pipe = _load_pipeline(args)
    with tqdm(total=args.steps or pipe.preset.sampling.steps, unit="step", desc="denoise") as bar:
        out = pipe(
            args.prompt,
            image,
            seed=args.seed,
            callback=lambda info: bar.update(info.step - bar.n),
            **_sampling_kwargs(args),
        )
    _save(out, args.out, args.save_wav, args.save_arrays)
    print(_summary(out, args.out, time.perf_counter() - started))
    return 0


# --------------------------------------------------------------------------------------------
# batch


def read_prompt_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV/TSV with a `text_prompt` column and an optional `image_path` column."""
    if not path.is_file():
        raise UsageError(f"prompt file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
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


def cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    rows = read_prompt_table(args.prompts)
    if args.repeats < 1:
        raise UsageError("--repeats must be >= 1")
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "results.jsonl"
    done = _done_items(log_path)
    items = [(r, k) for r in range(len(rows)) for k in range(args.repeats)]
    todo = [(r, k) for r, k in items if f"{r:04d}_{k}" not in done]
    print(f"{len(items)} clips: {len(items) - len(todo)} already done, {len(todo)} to generate")
    if not todo:
        return 0
    pipe = _load_pipeline(args)
    steps = args.steps or pipe.preset.sampling.steps
    failures = 0
    with (
        tqdm(total=len(todo) * steps, unit="step", desc="batch") as bar,
        open(log_path, "a") as log_file,
    ):
        for r, k in todo:
            row, item = rows[r], f"{r:04d}_{k}"
            path = out_dir / f"{item}.mp4"
            image_path = (row.get("image_path") or "").strip()
            record: dict = {"item": item, "row": r, "repeat": k, "prompt": row["text_prompt"]}
            base = bar.n
            started = time.perf_counter()
            try:
                image = None
                if image_path:
                    resolved = Path(image_path)
                    if not resolved.is_absolute():
                        resolved = args.prompts.parent / resolved
                    record["image_path"] = str(resolved)
                    image = _read_image(resolved)
                seed = None if args.seed is None else args.seed + r * args.repeats + k
                out = pipe(
                    row["text_prompt"],
                    image,
                    seed=seed,
                    callback=lambda info, base=base: bar.update(base + info.step - bar.n),
                    **_sampling_kwargs(args),
                )
                _save(out, path, args.save_wav, args.save_arrays)
                record.update(
                    status="ok", path=str(path), seed=out.seed, width=out.width, height=out.height,
                    frames=out.num_frames, duration=out.duration,
                )  # fmt: skip
            except (UsageError, ValueError) as exc:  # a bad row fails alone; the batch goes on
                failures += 1
                record.update(status="error", error=str(exc))
                bar.update(base + steps - bar.n)
            record["seconds"] = round(time.perf_counter() - started, 3)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
    print(f"{len(todo) - failures} generated, {failures} failed; log: {log_path}")
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------
# conformance and weights


def cmd_conformance(args: argparse.Namespace) -> int:
    from model.conformance import run_conformance

    _, failed = run_conformance(args.reference)
    return 1 if failed else 0


def cmd_weights(args: argparse.Namespace) -> int:
    from model.weights import DEFAULT_WEIGHTS_DIR, download, variant_files

    weights_dir = args.dir or DEFAULT_WEIGHTS_DIR
    if args.list:
        for spec in variant_files(args.variant, args.fp8):
            size = f"{spec.approx_bytes / 1e9:.1f} GB" if spec.approx_bytes else "?"
            print(f"{spec.repo}:{spec.path} -> {weights_dir / spec.local} ({size})")
        return 0
    paths = download(args.variant, weights_dir, args.fp8)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


# --------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    from model.presets import DEFAULT_VARIANT, PRESETS

    parser = argparse.ArgumentParser(
        prog="ovi", description="Ovi audio+video generation: CLI and server"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate one clip")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", type=Path, help="first frame (PNG/JPEG/WebP/GIF): image-to-video")
    p.add_argument("--out", type=Path, required=True, help="output .mp4")
    p.add_argument("--save-wav", action="store_true", help="also write the audio as .wav beside it")
    p.add_argument("--save-arrays", action="store_true", help="also write raw frames+audio as .npz")
    _add_model_flags(p)
    _add_sampling_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("batch", help="generate every row of a CSV/TSV (text_prompt[, image_path])")
    p.add_argument("prompts", type=Path)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=1, help="clips per row")
    p.add_argument("--save-wav", action="store_true")
    p.add_argument("--save-arrays", action="store_true")
    _add_model_flags(p)
    _add_sampling_flags(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser(
        "conformance", help="check against reference vectors (fusion, sampler, t5, ...)"
    )
    p.add_argument("reference", type=Path, help="folder in the reference format")
    p.set_defaults(func=cmd_conformance)

    real = [n for n, pr in PRESETS.items() if not pr.random_weights]
    p = sub.add_parser("weights", help="download the weight files of a variant (resumable)")
    p.add_argument("--variant", choices=real, default=DEFAULT_VARIANT)
    p.add_argument("--dir", type=Path, default=None, help="weights dir (default: ./weights)")
    p.add_argument("--fp8", action="store_true", help="the float8 fusion file instead of bf16")
    p.add_argument("--list", action="store_true", help="only list the files")
    p.set_defaults(func=cmd_weights)

    from server.serve_cli import add_serve_commands
    from server.tls import add_tls_commands

    add_serve_commands(sub)
    add_tls_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from model.errors import CheckpointMismatchError, WeightFileMissingError

    try:
        return int(args.func(args) or 0)
    except (
        UsageError,
        WeightFileMissingError,
        CheckpointMismatchError,
        ValueError,  # also ImageLoadError
        FileNotFoundError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
