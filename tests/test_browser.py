"""Headless Chromium renders <img> tags pointing at the edge, for every preset and format.

A real origin holds the sample blobs, a real edge serves them, a page on 127.0.0.1 holds
one <img> per sample x preset x format (plus no suffix: the edge negotiates from
Chromium's own Accept header) and one per raw /blob URL, and the system Chromium, driven by playwright-core
(tests/browser/render.js), loads it. Every image must decode at the expected size.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from atcdn.core.cid import compute
from atcdn.edge.presets import CONTENT_TYPES, FORMATS

from tests.helpers.env import TOKEN, need_tool
from tests.helpers.nodes import Origin, start_edge
from tests.helpers.npm import npm_package
from tests.helpers.sample_images import PRESETS, SAMPLES
from tests.helpers.servers import static_server

pytestmark = pytest.mark.timeout(600)  # the first run installs tests/browser

DID = "did:plc:" + "b" * 24
SUFFIXES = (*FORMATS, "")  # "" = no suffix, Accept negotiation


def img_id(sample: str, preset: str, suffix: str) -> str:
    return f"{sample}-{preset}-{suffix or 'auto'}"


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An edge in front of an origin that holds every sample; no PDS behind it."""
    tmp = tmp_path_factory.mktemp("browser-edge")
    origin = Origin(tmp / "origin", {}, tmp / "origin.log")
    origin.start()
    try:
        for sample in SAMPLES:
            res = httpx.put(f"{origin.url}/blob/{compute(sample.data)}", params={"did": DID},
                            content=sample.data, headers={"Authorization": f"Bearer {TOKEN}"})
            assert res.status_code in (200, 201), res.text
        # AVIF on: @avif is refused (400) when it is off, and Chromium must decode it too.
        edge = start_edge(origin.url, tmp / "cache", tmp / "edge.log",
                          env={"ATCDN_PDS_FALLBACK": "0", "ATCDN_EDGE_ENABLE_AVIF": "1"})
        try:
            yield edge.url
        finally:
            edge.proc.stop()
    finally:
        origin.stop()


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory, edge_url: str) -> Iterator[str]:
    """The test page, served by a static server on 127.0.0.1 (another origin than the edge,
    as a real site embedding CDN images would be)."""
    root = tmp_path_factory.mktemp("page")
    tags = []
    for sample in SAMPLES:
        cid = compute(sample.data)
        tags.append(f'<img id="raw-{sample.name}" src="{html.escape(f"{edge_url}/blob/{DID}/{cid}")}">')
        for preset in PRESETS:
            for suffix in SUFFIXES:
                src = f"{edge_url}/img/{preset}/plain/{DID}/{cid}" + (f"@{suffix}" if suffix else "")
                tags.append(f'<img id="{img_id(sample.name, preset, suffix)}" '
                            f'src="{html.escape(src)}">')
    (root / "index.html").write_text(
        "<!doctype html><html><head><meta charset=utf-8><title>atcdn</title></head><body>\n"
        + "\n".join(tags) + "\n</body></html>\n")
    with static_server(root) as base:
        yield f"{base}/index.html"


@pytest.fixture(scope="module")
def rendered(page_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What Chromium saw: every <img> by id, and the answer to every request."""
    chromium = need_tool("chromium")
    folder = npm_package("browser")
    profile = tmp_path_factory.mktemp("chromium-profile")
    done = subprocess.run(
        ["node", str(folder / "render.js"), page_url, str(profile)],
        check=False, cwd=folder, capture_output=True, text=True, timeout=280,
        env={**os.environ, "CHROMIUM": chromium},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    return {"images": {img["id"]: img for img in result["images"]},
            "responses": result["responses"]}


@pytest.mark.parametrize("suffix", SUFFIXES, ids=lambda s: s or "auto")
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_img_renders(rendered: dict, sample, preset: str, suffix: str) -> None:
    img = rendered["images"][img_id(sample.name, preset, suffix)]
    response = rendered["responses"].get(img["src"])
    assert response is not None, f"Chromium never got an answer for {img['src']}"
    assert response["status"] == 200, response
    assert img["complete"] and img["naturalWidth"] > 0, f"{img['src']} did not decode"
    assert (img["naturalWidth"], img["naturalHeight"]) == sample.sizes[preset]
    if suffix:
        assert response["contentType"] == CONTENT_TYPES[suffix]
    else:
        # Chromium accepts every format we make; negotiation may pick any of them.
        assert response["contentType"] in CONTENT_TYPES.values()


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_raw_blob_renders(rendered: dict, sample) -> None:
    """/blob/ serves the original under a sandbox CSP; an <img> must still show it
    (Chromium applies the photo's EXIF orientation itself)."""
    img = rendered["images"][f"raw-{sample.name}"]
    response = rendered["responses"][img["src"]]
    assert response["status"] == 200
    assert response["contentType"] == sample.mime
    assert img["complete"] and img["naturalWidth"] > 0
    assert (img["naturalWidth"], img["naturalHeight"]) == sample.sizes["download"]
