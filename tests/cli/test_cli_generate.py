"""`ovi generate` and `ovi batch` end to end (real ffmpeg, decoded with PyAV).

One test runs the real 5 s length (`tiny`, 121 frames); the others use `tiny_1s` (25 frames)."""

import json

import av
import pytest
from PIL import Image

from cli.main import main


def _probe(path):
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.decode(video=0))
        return (
            frames,
            float(v.average_rate),
            float(v.duration * v.time_base),
            float(a.duration * a.time_base),
            a.codec_context.name,
        )


def generate(tmp_path, *argv: str, preset: str = "tiny_1s", out: str = "o.mp4") -> int:
    """`ovi generate --preset PRESET --out TMP/OUT ARGV...` (a prompt unless ARGV has one)."""
    prompt = [] if "--prompt" in argv else ["--prompt", "x"]
    return main(["generate", "--preset", preset, "--out", str(tmp_path / out), *prompt, *argv])


def test_generate_t2v_writes_a_playable_mp4(tmp_path, capsys):
    """The one CLI test at the real 5 s length (121 frames)."""
    argv = ["--prompt", "waves on a beach", "--steps", "2", "--seed", "5"]
    assert generate(tmp_path, *argv, preset="tiny", out="x.mp4") == 0
    frames, fps, vdur, adur, acodec = _probe(tmp_path / "x.mp4")
    assert (frames, fps, acodec) == (121, 24.0, "aac")
    assert vdur == pytest.approx(5.04, abs=0.01) and adur == pytest.approx(5.04, abs=0.03)
    summary = capsys.readouterr().out
    assert "64x64, 121 frames, 5.04 s, seed 5" in summary


def test_generate_i2v_with_wav(tmp_path):
    image = tmp_path / "in.png"
    Image.new("RGBA", (120, 80), (10, 200, 10, 128)).save(image)
    argv = ["--prompt", "grass", "--image", str(image), "--steps", "1", "--save-wav"]
    assert generate(tmp_path, *argv, out="y.mp4") == 0
    assert _probe(tmp_path / "y.mp4")[0] == 25
    assert (tmp_path / "y.wav").is_file()


def test_batch_runs_every_row_and_skips_finished_rows(tmp_path, capsys):
    image = tmp_path / "frame.jpg"
    Image.new("RGB", (40, 160), (0, 0, 255)).save(image)  # 1:4 portrait
    table = tmp_path / "prompts.csv"
    table.write_text(
        'text_prompt,image_path\nwaves,\nbirds singing,frame.jpg\n"rain, then thunder",\n'
    )
    out_dir = tmp_path / "out"
    argv = ["batch", str(table), "--out-dir", str(out_dir), "--preset", "tiny_1s", "--steps", "1"]
    assert main([*argv, "--seed", "10"]) == 0
    records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"] * 3
    assert [r["seed"] for r in records] == [10, 10, 10]  # the official scheme: seed + repeat
    assert records[1]["height"] > records[1]["width"]  # portrait image row
    for r in records:
        assert _probe(r["path"])[0] == 25
    capsys.readouterr()
    assert main(argv) == 0
    assert "3 already done, 0 to generate" in capsys.readouterr().out


def test_clear_errors_not_tracebacks(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert generate(tmp_path, "--image", str(bad)) == 2
    assert capsys.readouterr().err.startswith("error: ")
    argv = ["generate", "--variant", "720x720_5s", "--weights-dir", str(tmp_path), "--prompt", "x"]
    assert main([*argv, "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert "weight file not found" in err and "make weights" in err
    assert generate(tmp_path, "--steps", "0") == 2
    assert "steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        generate(tmp_path, "--resolution", "big")
    assert exc.value.code == 2


def test_model_and_sampling_flags_reach_the_pipeline(monkeypatch, tmp_path):
    from cli.clips import load
    from cli.flags import sampling_overrides
    from cli.main import build_parser
    from model.options import RuntimeOptions
    from model.pipeline import OviPipeline

    seen = {}

    def record(kind):
        def build(*args, **kwargs):
            seen[kind] = (args, kwargs)
            return "pipe"

        return build

    monkeypatch.setattr(OviPipeline, "from_preset", record("preset"))
    monkeypatch.setattr(OviPipeline, "from_pretrained", record("pretrained"))
    parser = build_parser()
    base = ["--prompt", "x", "--out", str(tmp_path / "o.mp4")]
    args = parser.parse_args(["generate", *base, "--preset", "tiny"])
    assert (args.block_offload, args.fp8_compute, args.batch_cfg) == (None, None, None)
    flags = ["--block-offload", "--fp8-compute", "--batch-cfg"]
    assert load(parser.parse_args(["generate", *base, "--preset", "tiny", *flags]))
    modes = dict(batch_cfg=True, block_offload=True, fp8_compute=True)
    assert seen["preset"] == (("tiny",), dict(runtime=RuntimeOptions(**modes)))
    args = parser.parse_args(["batch", "p.csv", "--out-dir", str(tmp_path), "--fp8", *flags])
    load(args)
    assert seen["pretrained"][1]["runtime"] == RuntimeOptions(fp8=True, **modes)
    args = parser.parse_args(["batch", "p.csv", "--out-dir", "o", "--offload-text-encoder"])
    load(args)
    assert seen["pretrained"][1]["runtime"] == RuntimeOptions(offload_text_encoder=True)
    assert seen["pretrained"][0][1] == "720x720_5s"  # the default variant
    argv = ["generate", *base, "--steps", "7", "--video-guidance", "5", "--slg-layer", "-1"]
    overrides = sampling_overrides(parser.parse_args([*argv, "--resolution", "480x640"]))
    assert overrides == dict(steps=7, video_guidance_scale=5.0, slg_layer=-1, height=480, width=640)


def test_fp8_compute_on_cpu_is_an_error_line(tmp_path, capsys):
    assert generate(tmp_path, "--device", "cpu", "--fp8-compute") == 2
    assert capsys.readouterr().err.startswith("error: fp8 compute needs a CUDA GPU")
