"""Frames + waveform -> MP4 (H.264 + AAC) with the ffmpeg binary that imageio-ffmpeg ships.

Frames go to ffmpeg's stdin and the waveform through a second pipe, so nothing touches a
temporary image or audio file. The MP4 is written to a temporary name beside the target and
renamed into place, so a crash never leaves a half-written file under the final name.

Audio: the model makes 16 kHz mono. We encode AAC-LC at 48 kHz (ffmpeg resamples): 48 kHz is the
rate of video production and of every browser/OS decoder's well-trodden path, while 16 kHz AAC
is valid but unusual (some players and hardware decoders mishandle or refuse low-rate AAC).
"""

from __future__ import annotations

import os
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np

AUDIO_OUTPUT_RATE = 48000
AUDIO_BITRATE = "192k"
VIDEO_CRF = 18  # visually lossless for H.264; the source is a generated clip, not a camera


class MediaError(RuntimeError):
    """ffmpeg failed; the message carries its stderr."""


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_video(video: np.ndarray) -> tuple[int, int, int]:
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(
            f"video must be uint8 [frames, height, width, 3], got {video.dtype} {video.shape}"
        )
    frames, height, width, _ = video.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even sizes, got {width}x{height}")
    return frames, height, width


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")


def write_mp4(
    path: str | Path,
    video: np.ndarray,
    audio: np.ndarray | None,
    *,
    fps: int = 24,
    sample_rate: int = 16000,
) -> Path:
    """Mux `video` (uint8 [F, H, W, 3]) and mono `audio` (float32 [N], in [-1, 1]) into `path`.

    H.264 yuv420p with `+faststart` (playable while downloading), AAC at 48 kHz.
    """
    path = Path(path)
    frames, height, width = _check_video(video)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)

    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps)]
    cmd += ["-i", "pipe:0"]
    pass_fds: tuple[int, ...] = ()
    audio_r = audio_w = -1
    if audio is not None:
        audio = np.ascontiguousarray(np.clip(audio.reshape(-1), -1.0, 1.0), dtype="<f4")
        audio_r, audio_w = os.pipe()
        pass_fds = (audio_r,)
        cmd += ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", f"pipe:{audio_r}"]
    cmd += ["-map", "0:v:0", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(VIDEO_CRF)]
    cmd += ["-preset", "medium", "-r", str(fps)]
    if audio is not None:
        cmd += [
            "-map",
            "1:a:0",
            "-c:a",
            "aac",
            "-b:a",
            AUDIO_BITRATE,
            "-ar",
            str(AUDIO_OUTPUT_RATE),
        ]
    cmd += ["-movflags", "+faststart", "-f", "mp4", str(tmp)]

    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds, close_fds=True
    )
    # ffmpeg's stderr is drained in a thread so a chatty ffmpeg can never block our writes.
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    drain.start()
    writer = None
    try:
        if audio is not None:
            os.close(audio_r)
            audio_bytes = audio.tobytes()

            def feed_audio() -> None:
                with os.fdopen(audio_w, "wb") as pipe:
                    try:
                        pipe.write(audio_bytes)
                    except BrokenPipeError:
                        pass  # ffmpeg died; its stderr says why

            writer = threading.Thread(target=feed_audio, daemon=True)
            writer.start()
        assert proc.stdin is not None
        try:
            for frame in video:  # one frame at a time: no full-clip byte copy
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        proc.wait()
        drain.join()
        if writer is not None:
            writer.join()
        if proc.returncode != 0:
            stderr = b"".join(errors).decode(errors="replace").strip()
            raise MediaError(f"ffmpeg failed ({proc.returncode}): {stderr}")
        os.replace(tmp, path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tmp.unlink(missing_ok=True)
    return path


def write_wav(path: str | Path, audio: np.ndarray, *, sample_rate: int = 16000) -> Path:
    """16-bit PCM mono WAV, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    pcm = (np.clip(audio.reshape(-1), -1.0, 1.0) * 32767.0).round().astype("<i2")
    try:
        with wave.open(str(tmp), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            wav.writeframes(pcm.tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_arrays(path: str | Path, **arrays: np.ndarray) -> Path:
    """Raw arrays (e.g. video, audio, latents) as an .npz, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
