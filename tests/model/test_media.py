from pathlib import Path

import av
import numpy as np
import pytest

from model.media import MediaError, write_arrays, write_mp4, write_wav


def _clip(frames: int = 121, size: int = 64, samples: int = 80384):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    t = np.arange(samples) / 16000
    audio = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return video, audio


def _streams(path: Path):
    with av.open(str(path)) as container:
        v, a = container.streams.video[0], container.streams.audio[0]
        return (
            dict(codec=v.codec_context.name, pix_fmt=v.codec_context.pix_fmt, fps=float(v.average_rate),
                 frames=sum(1 for _ in container.decode(video=0)), duration=float(v.duration * v.time_base)),
            dict(codec=a.codec_context.name, rate=a.codec_context.sample_rate, duration=float(a.duration * a.time_base)),
        )  # fmt: skip


def test_mp4_has_h264_and_aac_of_matching_length(tmp_path):
    video, audio = _clip()
    path = write_mp4(tmp_path / "clip.mp4", video, audio, fps=24, sample_rate=16000)
    v, a = _streams(path)
    assert v == dict(
        codec="h264", pix_fmt="yuv420p", fps=24.0, frames=121, duration=pytest.approx(121 / 24)
    )
    assert a["codec"] == "aac" and a["rate"] == 48000
    assert abs(a["duration"] - 80384 / 16000) < 0.03  # AAC frames pad a little
    assert abs(a["duration"] - v["duration"]) < 1 / 24  # within one video frame


def test_faststart_puts_moov_before_mdat(tmp_path):
    video, audio = _clip(frames=9)
    data = write_mp4(tmp_path / "c.mp4", video, audio[:6000]).read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


def test_failed_mux_leaves_no_file(tmp_path):
    video, audio = _clip(frames=5)
    with pytest.raises(MediaError):
        write_mp4(tmp_path / "bad.mp4", video, audio, sample_rate=0)  # ffmpeg refuses rate 0
    assert list(tmp_path.iterdir()) == []


def test_rejects_odd_sizes_and_wrong_dtype(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 31, 32, 3), np.uint8), None)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 32, 32, 3), np.float32), None)


def test_wav_and_arrays(tmp_path):
    video, audio = _clip(frames=3, samples=1600)
    wav = write_wav(tmp_path / "a.wav", audio)
    import wave

    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 1600)
    npz = np.load(write_arrays(tmp_path / "a.npz", video=video, audio=audio))
    np.testing.assert_array_equal(npz["video"], video)
    np.testing.assert_array_equal(npz["audio"], audio)
