"""The `ovi` command end to end on the tiny preset (real ffmpeg, decoded with PyAV)."""

import json

import av
import pytest
from PIL import Image

from server.cli import main


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


def test_generate_t2v_writes_a_playable_mp4(tmp_path, capsys):
    out = tmp_path / "x.mp4"
    assert (
        main(
            [
                "generate",
                "--preset",
                "tiny",
                "--prompt",
                "waves on a beach",
                "--steps",
                "2",
                "--seed",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    frames, fps, vdur, adur, acodec = _probe(out)
    assert (frames, fps, acodec) == (121, 24.0, "aac")
    assert vdur == pytest.approx(5.04, abs=0.01) and adur == pytest.approx(5.04, abs=0.03)
    summary = capsys.readouterr().out
    assert "64x64, 121 frames, 5.04 s, seed 5" in summary


def test_generate_i2v_with_wav(tmp_path):
    image = tmp_path / "in.png"
    Image.new("RGBA", (120, 80), (10, 200, 10, 128)).save(image)
    out = tmp_path / "y.mp4"
    assert (
        main(
            [
                "generate",
                "--preset",
                "tiny",
                "--prompt",
                "grass",
                "--image",
                str(image),
                "--steps",
                "1",
                "--out",
                str(out),
                "--save-wav",
            ]
        )
        == 0
    )
    assert _probe(out)[0] == 121
    assert (tmp_path / "y.wav").is_file()


def test_batch_runs_every_row_and_skips_finished_rows(tmp_path, capsys):
    image = tmp_path / "frame.jpg"
    Image.new("RGB", (40, 160), (0, 0, 255)).save(image)  # 1:4 portrait
    table = tmp_path / "prompts.csv"
    table.write_text(
        'text_prompt,image_path\nwaves,\nbirds singing,frame.jpg\n"rain, then thunder",\n'
    )
    out_dir = tmp_path / "out"
    assert (
        main(
            [
                "batch",
                str(table),
                "--out-dir",
                str(out_dir),
                "--preset",
                "tiny",
                "--steps",
                "1",
                "--seed",
                "10",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"] * 3
    assert [r["seed"] for r in records] == [10, 11, 12]
    assert records[1]["height"] > records[1]["width"]  # portrait image row
    for r in records:
        assert _probe(r["path"])[0] == 121
    capsys.readouterr()
    assert (
        main(["batch", str(table), "--out-dir", str(out_dir), "--preset", "tiny", "--steps", "1"])
        == 0
    )
    assert "3 already done, 0 to generate" in capsys.readouterr().out


def test_clear_errors_not_tracebacks(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert (
        main(
            [
                "generate",
                "--preset",
                "tiny",
                "--prompt",
                "x",
                "--image",
                str(bad),
                "--out",
                str(tmp_path / "o.mp4"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("error: ")
    assert (
        main(
            [
                "generate",
                "--variant",
                "720x720_5s",
                "--weights-dir",
                str(tmp_path),
                "--prompt",
                "x",
                "--out",
                str(tmp_path / "o.mp4"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "weight file not found" in err and "make weights" in err
    assert (
        main(
            [
                "generate",
                "--preset",
                "tiny",
                "--prompt",
                "x",
                "--out",
                str(tmp_path / "o.mp4"),
                "--steps",
                "0",
            ]
        )
        == 2
    )
    assert "steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "generate",
                "--preset",
                "tiny",
                "--prompt",
                "x",
                "--out",
                "o.mp4",
                "--resolution",
                "big",
            ]
        )
    assert exc.value.code == 2


def test_memory_and_batching_flags_reach_the_pipeline(monkeypatch, tmp_path):
    from model.pipeline import OviPipeline
    from server.cli import _load_pipeline, build_parser

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
    assert (args.block_offload, args.fp8_compute, args.batch_cfg) == (False, False, False)
    flags = ["--block-offload", "--fp8-compute", "--batch-cfg"]
    assert _load_pipeline(parser.parse_args(["generate", *base, "--preset", "tiny", *flags]))
    modes = dict(batch_cfg=True, block_offload=True, fp8_compute=True)
    assert seen["preset"] == (("tiny",), dict(device=None, **modes))
    args = parser.parse_args(["batch", "p.csv", "--out-dir", str(tmp_path), "--fp8", *flags])
    _load_pipeline(args)
    kwargs = seen["pretrained"][1]
    assert {k: kwargs[k] for k in modes} == modes and kwargs["fp8"] and not kwargs["cpu_offload"]
    assert not kwargs["offload_text_encoder"]
    _load_pipeline(
        parser.parse_args(["batch", "p.csv", "--out-dir", "o", "--offload-text-encoder"])
    )
    assert seen["pretrained"][1]["offload_text_encoder"]


def test_fp8_compute_on_cpu_is_an_error_line(tmp_path, capsys):
    argv = ["generate", "--preset", "tiny", "--prompt", "x", "--out", str(tmp_path / "o.mp4")]
    assert main([*argv, "--device", "cpu", "--fp8-compute"]) == 2
    assert capsys.readouterr().err.startswith("error: fp8 compute needs a CUDA GPU")
