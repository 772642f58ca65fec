"""Zero-change drop-in: the unmodified fal clients against this server answering as fal's hosts.

The test makes its own network and mount namespace (`unshare -n -m`, root only), brings up `lo`,
bind-mounts its own /etc/hosts that sends every name of `server.fal_hosts.FAL_HOSTS` to
127.0.0.1, and starts `ovi serve --preset tiny_1s` on port 443 there with a certificate from
`ovi tls init --fal-hosts`. Inside, the clients get only what a fal user sets:

- `fal-client` (Python): `FAL_KEY` and `SSL_CERT_FILE` (no FAL_RUN_HOST, no patched constant);
- `@fal-ai/client` (node, `js/dropin.mjs`): its credentials and `NODE_EXTRA_CA_CERTS` (no
  `requestMiddleware`, no proxy).

Both do subscribe, submit/status/result, cancel, run and uploads (Python `upload_file`; JS the
automatic upload of a `Blob` input). The server runs with `--log-format json` (via
`OVI_LOG_FORMAT`), and its log is checked to be JSON lines with request ids, phases, durations. This file is also the in-namespace driver and the Python
client program (run as a script); the test reads the JSON they print.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _e2e import API_KEY, check_mp4, start_server

from server.fal_hosts import FAL_HOSTS

JS_DIR = Path(__file__).parent / "js"
I2V = "fal-ai/ovi/image-to-video"
T2V = "fal-ai/ovi"


def _namespaces_available() -> str | None:
    """Why the namespace test cannot run here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root for unshare -n -m (CI runs as root)"
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "-n", "-m", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        return f"unshare -n -m fails here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def _client_env(**only: str) -> dict[str, str]:
    """A clean environment: the system basics plus exactly `only` (no FAL_*/OVI_*/proxies)."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(only)
    return env


def test_unmodified_clients_in_a_namespace(tmp_path) -> None:
    reason = _namespaces_available()
    if reason:
        pytest.skip(reason)
    node = shutil.which("node") is not None and (JS_DIR / "node_modules/@fal-ai/client").exists()
    if shutil.which("node") and shutil.which("npm") and not node:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            capture_output=True,
            timeout=300,
            check=True,
        )
        node = True
    from PIL import Image

    image = tmp_path / "first frame.png"
    Image.new("RGB", (72, 56), (10, 160, 90)).save(image)
    proc = subprocess.run(
        ["unshare", "-n", "-m", sys.executable, __file__, "driver", str(tmp_path), str(image),
         "node" if node else "no-node"],
        capture_output=True,
        text=True,
        timeout=420,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(lines[-1])

    py = out["python"]
    assert py["base_urls"] == {"run": "https://fal.run/", "queue": "https://queue.fal.run/"}
    # upload_file: token from rest.fal.ai, bytes to v3.fal.media; both answered by this server
    assert py["upload_url"].startswith("https://v3.fal.media/files/uploads/"), py["upload_url"]
    assert py["upload_bytes"] == image.stat().st_size
    assert py["subscribe"]["video_bytes"] == py["subscribe"]["result"]["video"]["file_size"]
    assert py["subscribe"]["result"]["video"]["url"].startswith("https://queue.fal.run/files/")
    assert py["submit"]["result"]["seed"] == 42 and py["submit"]["status"] == "Completed"
    assert py["submit"]["steps_logged"] == 1
    assert py["cancel"]["error_type"] == "client_cancelled"
    assert py["run"]["result"]["seed"] == 7
    assert py["run"]["result"]["video"]["url"].startswith("https://fal.run/files/outputs/")
    assert out["mp4_checked"] >= 1
    # --log-format json: every line is one JSON object; HTTP and generation phases carry ids
    log = out["log"]
    assert log["lines"] > 0 and log["json"] == log["lines"], log["not_json"]
    assert log["access_with_id"] > 0
    assert {"http", "text_encode", "denoise", "vae_decode", "audio_decode", "mux"} <= set(
        log["phases_with_id"]
    ), log

    if not node:
        pytest.skip("node/npm missing: the Python client passed; @fal-ai/client was not run")
    js = out["js"]
    assert js["subscribe"]["bytes"] == js["subscribe"]["data"]["video"]["file_size"] > 0
    assert js["submit"]["status"] == "COMPLETED" and js["submit"]["data"]["seed"] == 5
    assert js["cancel"]["error_type"] == "client_cancelled"
    assert js["run"]["data"]["seed"] == 9
    # the Blob went to this server's storage too: the image is stored by both clients' uploads
    assert out["uploaded_sha256"].count(hashlib.sha256(image.read_bytes()).hexdigest()) == 2


# --- in the namespace (run as `python this_file.py driver TMP IMAGE node|no-node`) ---


def _driver(tmp: str, image: str, with_node: str) -> dict[str, Any]:
    base = Path(tmp)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    hosts = base / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n::1 localhost\n"
        + "".join(f"127.0.0.1 {name}\n" for name in FAL_HOSTS)
    )
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True, timeout=10)
    clock = time.monotonic()
    server = start_server(
        base / "data", base / "tls", port=443, fal_hosts=True, extra_env={"OVI_LOG_FORMAT": "json"}
    )
    timings = {"server_start_s": time.monotonic() - clock}
    try:
        out: dict[str, Any] = {}

        def client(name: str, argv: list[str], cwd: Path | None = None, **env: str) -> Any:
            """Run one real client to the end; the JSON it prints last."""
            run = subprocess.run(
                argv, cwd=cwd, env=_client_env(FAL_KEY=API_KEY, **env), capture_output=True,
                text=True, timeout=240,
            )  # fmt: skip
            if run.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{run.stderr}\n{server.log_tail()}")
            return json.loads(run.stdout.strip().splitlines()[-1])

        python_argv = [sys.executable, __file__, "python-client", image]
        out["python"] = client("fal-client", python_argv, SSL_CERT_FILE=str(server.bundle))
        timings["python_client_s"] = time.monotonic() - clock - sum(timings.values())
        if with_node == "node":
            out["js"] = client(
                "@fal-ai/client", ["node", "dropin.mjs"], JS_DIR,
                NODE_EXTRA_CA_CERTS=str(server.ca_cert), OVI_IMAGE_FILE=image,
            )  # fmt: skip
            timings["js_client_s"] = time.monotonic() - clock - sum(timings.values())
        out["timings"] = timings
        print(json.dumps(timings), file=sys.stderr)
        checked = 0
        with server.http() as client:  # one output decodes (fetched as https://fal.run/...)
            url = out["python"]["run"]["result"]["video"]["url"]
            r = client.get(url.replace("https://fal.run", server.url))
            check_mp4(r.content)
            checked += 1
        out["mp4_checked"] = checked
        uploads = (base / "data" / "files" / "uploads").glob("*/*")
        out["uploaded_sha256"] = [hashlib.sha256(p.read_bytes()).hexdigest() for p in uploads]
    finally:
        server.stop()
    out["log"] = _json_log_summary(server.log_path.read_text(errors="replace"))
    return out


def _json_log_summary(text: str) -> dict[str, Any]:
    """What the server's `--log-format json` log held: lines, JSON lines, events with ids."""
    lines = [line for line in text.splitlines() if line.strip()]
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return {
        "lines": len(lines),
        "json": len(events),
        "not_json": [line for line in lines if not line.startswith("{")][:5],
        "access_with_id": sum(
            1 for e in events if e.get("logger") == "ovi.access" and e.get("request_id")
        ),
        "phases_with_id": sorted(
            {
                e["phase"]
                for e in events
                if e.get("request_id") and "duration_s" in e and "phase" in e
            }
        ),
    }


# --- the Python client program (a fresh interpreter: FAL_KEY and SSL_CERT_FILE only) ---


def _python_client(image: str) -> dict[str, Any]:
    import fal_client
    import fal_client.client
    import httpx

    out: dict[str, Any] = {
        "base_urls": {
            "run": fal_client.client.RUN_URL_FORMAT,
            "queue": fal_client.client.QUEUE_URL_FORMAT,
        }
    }
    url = fal_client.upload_file(image)
    out["upload_url"] = url
    out["upload_bytes"] = len(httpx.get(url).content)

    result = fal_client.subscribe(
        I2V,
        arguments={"prompt": "A fox looks up. <S>Hi.<E>", "image_url": url,
                   "num_inference_steps": 1},
    )  # fmt: skip
    out["subscribe"] = {
        "result": result,
        "video_bytes": len(httpx.get(result["video"]["url"]).content),
    }

    handle = fal_client.submit(
        T2V, arguments={"prompt": "Rain on a window.", "num_inference_steps": 1, "seed": 42}
    )
    submitted = handle.get()
    final = fal_client.status(T2V, handle.request_id, with_logs=True)
    out["submit"] = {
        "result": submitted,
        "status": type(final).__name__,
        "steps_logged": sum(log["message"].startswith("Step ") for log in final.logs or []),
    }

    long = fal_client.submit(T2V, arguments={"prompt": "A long clip.", "num_inference_steps": 50})
    long.cancel()
    deadline = time.time() + 120
    while True:
        r = httpx.get(long.status_url, headers={"Authorization": f"Key {os.environ['FAL_KEY']}"})
        body = r.json()
        if body["status"] == "COMPLETED" or time.time() > deadline:
            break
        time.sleep(0.1)
    out["cancel"] = {"status": body["status"], "error_type": body.get("error_type")}

    out["run"] = {
        "result": fal_client.run(
            T2V, arguments={"prompt": "Waves on a beach.", "num_inference_steps": 1, "seed": 7}
        )
    }
    return out


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    fn = {"driver": _driver, "python-client": _python_client}[mode]
    print(json.dumps(fn(*args)))
