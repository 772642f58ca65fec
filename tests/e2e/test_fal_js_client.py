"""The real `@fal-ai/client` (npm, pinned in tests/e2e/js) in node against `ovi serve --preset tiny_1s`.

`js/subscribe.mjs` is the README's JS recipe: `fal.config({ requestMiddleware })` rewriting
fal.run, queue.fal.run and rest.fal.ai to the server, node trusting our CA through
NODE_EXTRA_CA_CERTS. The first run installs the pinned client with `npm ci` (no Makefile needed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _e2e import check_mp4

JS_DIR = Path(__file__).parent / "js"
I2V = "fal-ai/ovi/image-to-video"
T2V = "fal-ai/ovi"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """tests/e2e/js with its node_modules installed from package-lock.json."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm are not installed: the @fal-ai/client end-to-end tests need them")
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client" / "package.json").exists():
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"npm ci failed in {JS_DIR}:\n{proc.stdout}\n{proc.stderr}")
    return JS_DIR


def run_node(
    server, js_dir: Path, *, app: str, mode: str, input: dict, image: Path | None = None
) -> Any:
    env = server.client_env()  # FAL_KEY, NODE_EXTRA_CA_CERTS, ...
    env.update(OVI_BASE_URL=server.url, OVI_APP=app, OVI_MODE=mode, OVI_INPUT=json.dumps(input))
    if image is not None:
        env["OVI_IMAGE_FILE"] = str(image)
    proc = subprocess.run(
        ["node", "subscribe.mjs"], cwd=js_dir, env=env, capture_output=True, text=True, timeout=240
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"node failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
            f"--- server log ---\n{server.log_tail()}"
        )
    return json.loads(lines[-1])


def _download(server, url: str) -> bytes:
    assert url.startswith(server.url + "/files/outputs/"), url
    with server.http() as client:
        r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    return r.content


def test_subscribe_polling_text_to_video(ovi_server, node_client) -> None:
    out = run_node(
        ovi_server,
        node_client,
        app=T2V,
        mode="polling",
        input={"prompt": "Rain on a tin roof.", "num_inference_steps": 2, "seed": 11},
    )
    assert out["data"]["seed"] == 11 and out["requestId"]
    statuses = [s["status"] for s in out["statuses"]]
    assert statuses and statuses[-1] == "COMPLETED", statuses
    assert any(r.startswith("POST /queue/fal-ai/ovi") for r in out["requests"])
    assert any(r.endswith(f"/requests/{out['requestId']}/status") for r in out["requests"])
    video = out["data"]["video"]
    data = _download(ovi_server, video["url"])
    assert len(data) == video["file_size"]
    check_mp4(data)


def test_subscribe_streaming_with_blob_upload(ovi_server, node_client, tmp_path) -> None:
    from PIL import Image

    image = tmp_path / "still.png"
    Image.new("RGB", (64, 80), (200, 40, 120)).save(image)
    out = run_node(
        ovi_server,
        node_client,
        app=I2V,
        mode="streaming",
        input={"prompt": "A flower opens. <S>Look.<E>", "num_inference_steps": 3},
        image=image,
    )
    requests = out["requests"]
    # the Blob went through fal's storage flow to this server before the submit
    assert requests[0] == "POST /storage/upload/initiate", requests
    assert any(r.startswith("POST /queue/fal-ai/ovi/image-to-video") for r in requests)
    assert any(r.endswith(f"/requests/{out['requestId']}/status/stream") for r in requests)
    assert not any(r.endswith("/status") for r in requests)  # streamed, never polled
    statuses = [s["status"] for s in out["statuses"]]
    assert statuses[-1] == "COMPLETED" and "IN_PROGRESS" in statuses, statuses
    assert max(s["logs"] for s in out["statuses"]) > 0  # step logs arrived over SSE
    # the client concatenates `logs` across SSE events: each line must arrive exactly once
    steps = [m for m in out["lastLogs"] if m.startswith("Step ")]
    assert [m.split()[1] for m in steps] == ["1/3", "2/3", "3/3"], out["lastLogs"]
    assert len(set(out["lastLogs"])) == len(out["lastLogs"]), out["lastLogs"]
    check_mp4(_download(ovi_server, out["data"]["video"]["url"]))
    uploads = list((ovi_server.data_dir / "files" / "uploads").glob("*/*.png"))
    assert any(p.read_bytes() == image.read_bytes() for p in uploads)
