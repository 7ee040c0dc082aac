"""``dsseg explore`` driven in a real browser: Playwright with Debian's Chromium (no browser download).

Marked ``browser``: ``python -m pytest -q -m browser`` runs them (``.ci/run`` does, after the default
run). Skipped where the explore extra (Gradio), Playwright or Chromium is missing; ``.ci/run`` installs
all three. ``DSSEG_SCREENSHOT_DIR=tests/screenshots python -m pytest -q -m browser`` refreshes
the screenshots of docs/explorer.md.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from helpers import IMAGES
from PIL import Image

pytestmark = pytest.mark.browser

gradio = pytest.importorskip("gradio", reason="the explore extra is not installed: pip install -e '.[explore]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium)", allow_module_level=True)

from dsseg.benchmark.explore import synthetic_output  # noqa: E402
from dsseg.explore.app import build_app, launch  # noqa: E402
from dsseg.explore.outputs import OutputBrowser  # noqa: E402
from dsseg.explore.session import ExploredImage, ImageExplorer, spec_from_controls  # noqa: E402
from dsseg.io.images import load_rgb  # noqa: E402
from dsseg.io.masks import decode_segments  # noqa: E402

SMALL = {"image_size": 256}
PHOTO = IMAGES / "135069.jpg"
DEFAULTS = (3, False, 1, "manc_ncut", 0.5, 0.5, "", "none")  # iterations … naming, as the app starts
WAIT_MS = 120_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """The app on a free local port: the tiny backbone at 256², a synthetic job output with scores."""
    output = tmp_path_factory.mktemp("job")
    images = [(n, str(IMAGES / n), *load_rgb(str(IMAGES / n)).shape[:2]) for n in ("135069.jpg", "horses/horse001.jpg")]
    synthetic_output(output, images, rows_per_config=40, rows_per_file=16, errors_every=10)
    explorer = ImageExplorer("tiny", device="cpu", params=SMALL)
    explorer.backbones = {"tiny": tiny}
    browser = OutputBrowser(str(output))
    app = build_app(explorer, browser, [str(IMAGES / "horses" / "horse001.jpg")])
    port = free_port()
    launch(app, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}/", explorer, browser
    app.close()


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium.new_page(viewport={"width": 1400, "height": 1000})
        chromium.close()


def shown_picture(page, selector: str) -> np.ndarray:
    """The image an <img> shows, fetched from the app as the browser did."""
    data = page.request.get(page.get_attribute(f"{selector} img", "src")).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function(
        "([s, t]) => document.querySelector(s) && document.querySelector(s).innerText.includes(t)",
        arg=[selector, text],
        timeout=WAIT_MS,
    )


def wait_new_picture(page, selector: str, before: str | None) -> None:
    page.wait_for_function(
        "([s, b]) => { const i = document.querySelector(s + ' img'); return i && i.src !== b && i.complete; }",
        arg=[selector, before],
        timeout=WAIT_MS,
    )


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """A screenshot of the window, also into $DSSEG_SCREENSHOT_DIR when set (the pictures of docs/explorer.md)."""
    path = tmp_path / name
    page.screenshot(path=str(path), type="jpeg", quality=80)
    folder = os.environ.get("DSSEG_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / name)
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 1000  # a photograph and its overlay drawn, not a blank page
    return path


def test_image_tab_upload_slider_depth_click_and_downloads(served, page, tmp_path):
    url, explorer, _ = served
    page.goto(url)
    page.get_by_role("tab", name="Image").click()
    page.set_input_files("#image-input input[type=file]", str(PHOTO))
    wait_text(page, "#status", "segments")
    image = ExploredImage.of(load_rgb(str(PHOTO)))

    def expected(method: str, kl: float = 1.1, depth: int | None = None):
        spec = spec_from_controls(method, kl, *DEFAULTS, extra=SMALL)
        return explorer.view(image, spec, depth=depth)

    first = expected("diffseg")
    assert np.array_equal(shown_picture(page, "#overlay"), first.overlay())  # the app's overlay, pixel for pixel
    before = page.get_attribute("#overlay img", "src")
    page.fill("#kl input[type=range]", "0.6")  # move the τ slider
    wait_new_picture(page, "#overlay", before)
    wait_text(page, "#status", "forward cached")
    moved = expected("diffseg", 0.6)
    assert moved.segmentation.num_segments != first.segmentation.num_segments
    assert page.get_attribute("#legend table", "data-segments") == str(moved.segmentation.num_segments)
    assert np.array_equal(shown_picture(page, "#overlay"), moved.overlay())
    screenshot(page, tmp_path, "explore-image.jpg")

    page.get_by_label("ncut").check()
    wait_text(page, "#status", "tree depth")
    whole = expected("ncut")
    assert f"tree depth {whole.max_depth} of {whole.max_depth}" in page.inner_text("#status")
    before = page.get_attribute("#overlay img", "src")
    page.fill("#depth input[type=range]", "1")  # the tree-depth slider: a cut, no recomputation
    wait_new_picture(page, "#overlay", before)
    wait_text(page, "#status", f"tree depth 1 of {whole.max_depth}")
    cut = expected("ncut", depth=1)
    assert cut.segmentation.num_segments == 2 and page.get_attribute("#legend table", "data-segments") == "2"
    assert np.array_equal(shown_picture(page, "#overlay"), cut.overlay())

    page.click("#overlay img", position={"x": 20, "y": 20})  # click a segment
    wait_text(page, "#segment-info", "segment")
    assert "area" in page.inner_text("#segment-info") and "bbox" in page.inner_text("#segment-info")
    page.click("#save")
    page.wait_for_selector("#downloads a[download='135069_ncut_segments.json']", timeout=WAIT_MS)
    record = page.request.get(page.get_attribute("#downloads a[download$='_segments.json']", "href")).json()
    assert record["depth"] == 1 and len(record["segments"]) == 2 and record["method"] == "ncut"
    png = page.request.get(page.get_attribute("#downloads a[download='135069_ncut_labels.png']", "href")).body()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), cut.segmentation.labels)


def test_image_tab_pick_an_image(served, page):
    url, explorer, _ = served
    page.goto(url)
    page.get_by_role("tab", name="Image").click()
    page.locator("#examples button").first.click()  # the app's one example: horse001.jpg
    wait_text(page, "#status", "segments")
    picked = ExploredImage.of(load_rgb(str(IMAGES / "horses" / "horse001.jpg")))
    expected = explorer.view(picked, spec_from_controls("diffseg", 1.1, *DEFAULTS, extra=SMALL))
    assert page.get_attribute("#legend table", "data-segments") == str(expected.segmentation.num_segments)
    assert np.array_equal(shown_picture(page, "#overlay"), expected.overlay())  # that image, segmented as set


def test_job_output_pages_sorts_filters_and_shows_segments(served, page, tmp_path):
    url, _, browser = served
    page.goto(url)  # opens on the job output given on the command line
    wait_text(page, "#page", "page 1 of 4 · 40 rows match")
    first, second = (c.config_id for c in browser.configs)
    worst = browser.query(first, "miou").column("image_id").to_pylist()  # the default sort: worst score first
    captions = page.locator("#gallery .caption-label").all_inner_texts()
    assert [c.split(" · ")[0] for c in captions] == worst[:12]
    page.click("#next-page")
    wait_text(page, "#page", "page 2 of 4")
    assert page.locator("#gallery .caption-label").first.inner_text().startswith(worst[12])

    page.click("#row-filter input")
    page.get_by_role("option", name="error: corrupt").click()
    wait_text(page, "#page", "4 rows match")
    assert all("error: corrupt" in c for c in page.locator("#gallery .caption-label").all_inner_texts())
    page.click("#row-filter input")
    page.get_by_role("option", name="all rows").click()
    wait_text(page, "#page", "40 rows match")

    page.click("#config-b input")  # a second config beside the first
    page.get_by_role("option", name=f"diffseg kl_threshold=0.9 [{second}]").click()
    wait_text(page, "#gallery .caption-label", "|")
    page.locator("#gallery button.thumbnail-item").first.click()
    wait_text(page, "#segment-tables", f"config {second}")
    row = browser.rows(browser.query(first, "miou").slice(0, 1))[0]
    assert f"{row['image_id']} · config {first}" in page.inner_text("#segment-tables")
    page.click("#detail-a img", position={"x": 5, "y": 5})
    wait_text(page, "#output-segment", "segment")
    corner = decode_segments(row["segments"])[
        0, 0
    ]  # blocks are an eighth of the image: the click lands in the corner's
    assert f"segment {corner}:" in page.inner_text("#output-segment")
    screenshot(page, tmp_path, "explore-output.jpg")
