"""The playground page in a real headless Chromium (Debian's, driven by Playwright) against real
`ovi serve` processes over TLS: text-to-video on the `tiny` preset (121 frames: a 5.04 s clip)
with files served only to the owner's key (`files_require_key`: the page fetches them with the
key), and image-to-video on the shared `tiny_1s` server (plain file URLs), each with progress,
a preview and a clip that plays with sound, and a 422 shown as the API's message.

Screenshots land in `tests/artifacts/` (git-ignored), one per scenario.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from _e2e import API_KEY, ROOT, Server, start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
TIMEOUT_MS = 120_000
# One generation: the `tiny` preset's 121-frame VAE and audio decode took 150 s of wall time on a
# loaded 2-core machine (50 s of CPU), more than TIMEOUT_MS.
GENERATION_MS = 420_000

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The `tiny` preset: the full 121-frame length, so the clip lasts more than 5 s; its files
    are served only with the owner's key."""
    base = tmp_path_factory.mktemp("ovi-playground")
    server = start_server(
        base / "data", base / "tls", preset="tiny", extra_env={"OVI_FILES_REQUIRE_KEY": "true"}
    )
    try:
        yield server
    finally:
        if server.stop() not in (0, -signal.SIGTERM):
            print(server.log_tail())


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"],
            timeout=60_000,
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(browser) -> Iterator[object]:
    """`open_page(server)`: a fresh tab (own session storage) on the server's playground, with
    the API key typed in; JavaScript errors on the page fail the test."""
    contexts, problems = [], []

    def open_page(server: Server):
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1400, "height": 1000}
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.goto(server.url + "/")  # redirected to /playground/
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#api-key", API_KEY)
        page.dispatch_event("#api-key", "change")
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not problems, problems


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"playground-{name}.png"), full_page=True)


def set_steps(page, steps: int) -> None:
    page.click("#advanced > summary")
    page.fill("#field-num_inference_steps", str(steps))


def generate_and_check(
    page, server: Server, steps: int, min_duration: float, keyed: bool = False
) -> dict:
    """Click Generate; wait for the clip; check progress, preview and playback with sound.
    `keyed`: the server serves files only with the key, so the page shows them from blob: URLs
    it fetched with the key; else the elements load the file URLs themselves."""
    page.click("#submit")
    page.wait_for_selector("#video-figure:not([hidden])", timeout=GENERATION_MS)
    assert page.text_content("#phase") == "Done."
    assert page.eval_on_selector("#progress", "p => [p.value, p.max]") == [steps, steps]
    assert "Denoised in" in page.text_content("#eta")
    # the preview of the last step, fetched and decoded by the browser
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    assert f"after step {steps} of {steps}" in page.get_attribute("#preview", "alt")
    preview_url = page.get_attribute("#preview", "data-url")
    assert preview_url.startswith(server.url + "/files/outputs/")
    preview_src = page.get_attribute("#preview", "src")
    assert preview_src.startswith("blob:") if keyed else preview_src == preview_url
    # the clip: loads, lasts as long as the preset says, plays, and its audio track is decoded
    page.wait_for_function("document.getElementById('video').readyState >= 1")
    duration = page.eval_on_selector("#video", "v => v.duration")
    assert duration > min_duration, duration
    page.eval_on_selector("#video", "v => v.play()")
    page.wait_for_function(
        "(() => { const v = document.getElementById('video');"
        " return v.currentTime > 0.3 && v.webkitAudioDecodedByteCount > 0; })()"
    )
    video = page.eval_on_selector(
        "#video",
        "v => ({paused: v.paused, muted: v.muted, width: v.videoWidth, src: v.currentSrc,"
        " audio: v.webkitAudioDecodedByteCount, frames: v.webkitDecodedFrameCount})",
    )
    assert not video["paused"] and not video["muted"] and video["width"] > 0
    assert video["audio"] > 0 and video["frames"] > 0
    video["url"] = page.get_attribute("#video", "data-url")
    assert video["url"].startswith(server.url + "/files/outputs/")
    assert video["src"].startswith("blob:") if keyed else video["src"] == video["url"]
    return video


def test_text_to_video_progress_preview_and_playback(open_page, tiny_server: Server) -> None:
    page = open_page(tiny_server)
    page.fill("#prompt", "A cat on a table")
    page.click("#speech-helper")  # no selection: a placeholder line of speech
    page.click("#audio-helper")
    prompt = page.input_value("#prompt")
    assert prompt == "A cat on a table <S>Hello there!<E> Audio: describe the voices and sounds"
    set_steps(page, 2)
    page.select_option("#field-resolution", "720x720")
    video = generate_and_check(page, tiny_server, steps=2, min_duration=5, keyed=True)  # 5.04 s
    with tiny_server.http() as client:  # the file itself is refused without the key
        path = video["url"].removeprefix(tiny_server.url)
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": f"Key {API_KEY}"}).status_code == 200
    item = page.text_content("#history li")
    assert "A cat on a table" in item and "text to video · done" in item
    screenshot(page, "t2v")


def test_image_to_video_upload(open_page, ovi_server: Server, tmp_path: Path) -> None:
    from PIL import Image

    page = open_page(ovi_server)
    image = tmp_path / "first.png"
    Image.new("RGB", (96, 64), (200, 60, 40)).save(image)
    page.check("input[name=mode][value='fal-ai/ovi/image-to-video']")
    assert page.is_hidden("#field-resolution") and page.is_visible("#field-image_url")
    page.set_input_files("#image-file", str(image))
    page.wait_for_selector("#image-thumb:not([hidden])")
    page.fill("#prompt", "The red card flips over. Audio: paper rustle")
    set_steps(page, 2)
    generate_and_check(page, ovi_server, steps=2, min_duration=1)  # tiny_1s: 25 frames, 1.04 s
    assert "image to video · done" in page.text_content("#history li")
    screenshot(page, "i2v")


def test_invalid_input_shows_the_api_message(open_page, ovi_server: Server) -> None:
    page = open_page(ovi_server)
    # the form is the API's: one control per input field of both apps and per submit option
    with ovi_server.http() as client:
        doc = client.get("/openapi.json").json()
    expected = {"field-x-fal-queue-priority", "field-x-fal-request-timeout", "field-fal_webhook"}
    for name in ("OviT2VRequest", "OviI2VRequest"):  # fal's schema names
        expected |= {f"field-{field}" for field in doc["components"]["schemas"][name]["properties"]}
    expected = {"prompt" if i == "field-prompt" else i for i in expected}
    controls = page.eval_on_selector_all(
        "#request-form :is(input, select, textarea):not([name=mode], #api-key, #image-file)",
        "all => all.map(e => e.id)",
    )
    assert set(controls) == expected
    set_steps(page, 99)
    page.focus("#prompt")
    page.keyboard.type("Too many steps")
    page.keyboard.press("Control+Enter")  # the keyboard path to Generate
    error = page.wait_for_selector("#error:not([hidden])")
    assert error.text_content() == "num_inference_steps: Input should be less than or equal to 50"
    assert page.get_attribute("#field-num_inference_steps", "aria-invalid") == "true"
    assert page.text_content("#phase") == "Refused (HTTP 422)."
    assert "refused: num_inference_steps" in page.text_content("#history li")
    screenshot(page, "422")
    # image-to-video without an image: the API names the missing field
    page.check("input[name=mode][value='fal-ai/ovi/image-to-video']")
    page.fill("#field-num_inference_steps", "2")
    page.click("#submit")
    page.wait_for_function(
        "document.getElementById('error').textContent.startsWith('image_url: Field required')"
    )
    # a wrong key: the API's 401 message
    page.fill("#api-key", "not-the-key")
    page.set_input_files("#image-file", [])
    page.fill("#field-image_url", "https://example.com/first.png")
    page.click("#submit")
    page.wait_for_function(
        "document.getElementById('error').textContent.startsWith('Missing or invalid API key')"
    )
    assert page.text_content("#phase") == "Refused (HTTP 401)."
