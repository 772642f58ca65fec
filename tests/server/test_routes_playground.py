"""server/routes/playground.py: the page and its assets are served; `/` leads there."""

from __future__ import annotations

import re
from pathlib import Path

from _app import make_settings, running_app

from server.routes.playground import STATIC_DIR


def test_root_redirects_to_the_page_and_assets_are_served(tmp_path: Path) -> None:
    with running_app(make_settings(tmp_path)) as (client, _app):
        for path in ("/", "/playground"):
            r = client.get(path, follow_redirects=False)
            assert r.status_code == 307 and r.headers["location"] == "/playground/"
        page = client.get("/playground/")  # no key: the page is public, the API is not
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:href|src)="([\w.-]+\.(?:css|js))"', page.text)
        assert sorted(assets) == ["playground.css", "playground.js"]
        for asset in assets:
            r = client.get(f"/playground/{asset}")
            assert r.status_code == 200 and r.content == (STATIC_DIR / asset).read_bytes()
        assert client.get("/playground/nope.js").status_code == 404


def test_every_static_control_has_a_label() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    ids = re.findall(r'<(?:input|select|textarea|progress)[^>]*\bid="([\w-]+)"', html)
    labelled = set(re.findall(r'<label[^>]*\bfor="([\w-]+)"', html))
    radios = re.findall(r'<input type="radio"', html)  # wrapped in their <label>
    assert ids and set(ids) <= labelled and len(radios) == 2
