"""The page at GET /: served as plain files, and driven in headless Chromium against the real
service in a subprocess (the small random-init model), with an API key configured.

The browser tests skip, saying why, only when no Chromium and chromedriver are on PATH (and fail then
under CI=true: tests/inputs.py).
``DETECTOR_SCREENSHOT_DIR``: where the screenshot of the drawn page goes (else pytest's tmp dir).
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from selenium.webdriver import Chrome

from api.main import create_app
from api.render import _PALETTE
from api.routes.page import SAMPLES, SAMPLES_DIR
from detector.data.coco_keypoints import COCO_SKELETON
from detector.modeling.presets import SYNTHETIC_CLASSES
from detector.train import SYNTHETIC
from docs.pictures import MAX_PNG_BYTES
from tests.api.browser.chrome import NO_BROWSER, find_browser, start_chrome
from tests.api.browser.page import SLIDER_POSITIONS, DetectorPage
from tests.api.browser.server import detect_requests, serve
from tests.api.serving import settings
from tests.inputs import missing_input

KEY = "page-test-key"
W, H = 640, 480

# ---- served as files (no browser, no model)


@pytest.fixture(scope="module")
def plain_client() -> TestClient:
    # No `with`: the lifespan does not run, so no model loads; the page needs none. Keys are set:
    # the page and its files are served without one.
    return TestClient(create_app(settings(api_keys=[KEY])))


def test_root_serves_the_page_without_a_key(plain_client):
    response = plain_client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    html = response.text
    needed = ('<canvas id="canvas"', 'id="file"', 'id="threshold"', 'src="/static/app.js"', 'href="/static/style.css"')
    assert all(part in html for part in needed)
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere: works offline


@pytest.mark.parametrize(
    "name, content_type, needle",
    [
        ("app.js", "text/javascript; charset=utf-8", "function decodeRle"),
        ("style.css", "text/css; charset=utf-8", "#canvas"),
    ],
)
def test_static_files_are_served(plain_client, name, content_type, needle):
    response = plain_client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert needle in response.text


@pytest.mark.parametrize("name", ["index.html.bak", "..%2Fmain.py", "nothing.js"])
def test_only_the_page_files_are_served(plain_client, name):
    assert plain_client.get(f"/static/{name}").status_code == 404


@pytest.mark.parametrize("name", SAMPLES)
def test_the_samples_are_served(plain_client, name):
    response = plain_client.get(f"/static/samples/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == (SAMPLES_DIR / name).read_bytes() and len(response.content) < MAX_PNG_BYTES
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.mode == "RGB"
    # As the built-in training set's scenes: the longer side its size, the other 75-100% of it.
    assert max(image.size) == SYNTHETIC["size"] and min(image.size) >= 0.75 * SYNTHETIC["size"]


@pytest.mark.parametrize("name", ["sample-0.png", "sample-1.PNG", "..%2Fapp.js", "..%2F..%2Fmain.py", "app.js", "x"])
def test_only_the_samples_in_the_table_are_served(plain_client, name):
    assert plain_client.get(f"/static/samples/{name}").status_code == 404


def test_the_table_of_samples_is_the_folder(plain_client):
    assert sorted(path.name for path in SAMPLES_DIR.iterdir()) == sorted(SAMPLES)


def test_the_page_offers_every_sample_as_a_button(plain_client):
    html = plain_client.get("/").text
    buttons = re.findall(r'<button type="button" data-sample="([^"]+)"><img src="/static/samples/([^"]+)" alt="([^"]+)">',
                         html)
    assert [(name, src) for name, src, _ in buttons] == [(name, name) for name in SAMPLES]
    alts = [alt for _, _, alt in buttons]
    assert len(set(alts)) == len(SAMPLES) and all("sample" in alt for alt in alts)


def test_the_page_is_not_in_the_api_document(plain_client):
    paths = plain_client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)


# ---- in a browser


@pytest.fixture(scope="module")
def base_url(tmp_path_factory) -> Iterator[str]:
    if find_browser() is None:
        missing_input(NO_BROWSER)
    with serve(tmp_path_factory.mktemp("server"), api_keys=KEY) as base:
        yield base


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Iterator[Chrome]:
    found = find_browser()
    if found is None:
        missing_input(NO_BROWSER)
    driver = start_chrome(*found, profile_dir=tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture
def page(driver, base_url) -> Iterator[DetectorPage]:
    page = DetectorPage(driver, base_url).open()
    yield page
    assert page.console_errors() == []


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    """A 640x480 PNG of a few shapes, in colours far from the page's palette."""
    image = Image.new("RGB", (W, H), (236, 226, 206))
    draw = ImageDraw.Draw(image)
    draw.rectangle((60, 80, 230, 260), fill=(96, 96, 104))
    draw.ellipse((300, 60, 520, 280), fill=(40, 52, 88))
    draw.polygon([(120, 440), (260, 300), (400, 440)], fill=(150, 120, 90))
    draw.line([(520, 330), (600, 450)], fill=(20, 20, 20), width=12)
    path = tmp_path_factory.mktemp("images") / "shapes.png"
    image.save(path)
    return path


def _count(response: dict, threshold: float) -> int:
    """How many detections the server would return at ``threshold`` (it keeps score >= threshold)."""
    return sum(det["score"] >= threshold for det in response["detections"])


def _splitting_threshold(response: dict) -> float:
    """A slider position (a multiple of its step) that shows some detections, but not all:
    the one that shows closest to half of them."""
    total = len(response["detections"])
    splits = [t for t in SLIDER_POSITIONS if 0 < _count(response, t) < total]
    assert splits, f"no threshold splits the scores {[d['score'] for d in response['detections']]}"
    return min(splits, key=lambda t: abs(_count(response, t) - total / 2))


def test_the_page_script_agrees_with_the_server(page):
    """Its COCO RLE decoder gives pycocotools' runs; its skeleton and palette are the server's."""
    rng = np.random.default_rng(0)
    masks = [np.zeros((7, 5), np.uint8), np.ones((7, 5), np.uint8), (rng.random((90, 70)) > 0.5).astype(np.uint8)]
    blob = np.zeros((480, 640), np.uint8)  # long runs, several 5-bit groups, negative differences
    blob[40:400, 100:600] = 1
    blob[200:210, 300:302] = 0
    masks.append(blob)
    for mask in masks:
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        runs = page.driver.execute_script("return window.detectorPage.decodeRle(arguments[0])", counts)
        assert runs == _runs(mask)
    script = page.driver.execute_script("return window.detectorPage.constants")
    assert script["skeleton"] == [list(pair) for pair in COCO_SKELETON]
    assert script["palette"] == [list(rgb) for rgb in _PALETTE]


def _runs(mask: np.ndarray) -> list[int]:
    """Alternating 0- and 1-runs of ``mask`` in column-major order, starting with 0s (COCO's RLE)."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *runs] if flat[0] == 1 else runs


def test_the_page_shows_the_served_classes(page, image_path):
    """From GET /v1/model, once the key is given: the served model's classes (a trained file's own)."""
    page.detect_with_key(image_path, KEY)
    classes = page.driver.find_element("id", "classes")
    page.wait(lambda _: classes.text != "–")
    assert classes.text == ", ".join(SYNTHETIC_CLASSES[1:])
    assert page.driver.find_element("id", "model-name").text.startswith("small_r18_fpn")


def test_a_401_asks_for_a_key_then_retries(page, image_path):
    page.choose(image_path)
    assert page.wait_for("key-needed", "done") == "key-needed"
    assert page.key_field_shown() and "API key" in page.status()
    page.enter_key("not-the-key")
    assert page.wait_for("key-needed", "done") == "key-needed"
    assert "refused" in page.status()
    page.enter_key(KEY)
    assert page.wait_for("done", "error") == "done", page.status()
    assert not page.key_field_shown()
    response = page.response()
    assert (response["width"], response["height"]) == (W, H) and response["model"] == "small_r18_fpn"
    assert page.drawn()["drawn"] == _count(response, page.threshold())
    assert page.drawn()["requests"] == 3  # no key, the wrong key, the right key


def test_the_slider_filters_without_asking_again(page, image_path, base_url):
    before = detect_requests(base_url, KEY)
    response = page.detect_with_key(image_path, KEY)
    total = len(response["detections"])
    assert total > 0, "the model finds something at score 0"

    page.set_threshold(0)
    assert page.drawn()["drawn"] == total
    middle = _splitting_threshold(response)
    page.set_threshold(middle)
    assert page.drawn()["drawn"] == _count(response, middle) < total
    assert page.count_line() == f"{_count(response, middle)} of {total} detections score {middle:.2f} or more."
    page.set_threshold(1)
    assert page.drawn()["drawn"] == _count(response, 1.0)

    assert page.drawn()["requests"] == 2  # the 401, then the keyed upload: the slider asked nothing
    assert _settled(lambda: detect_requests(base_url, KEY), before + 2) == before + 2


def _settled(read, expected: int, timeout_s: float = 5.0) -> int:
    """``read()`` once it reaches ``expected`` (the server counts a request just after answering it)."""
    deadline = time.monotonic() + timeout_s
    while (value := read()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_masks_and_keypoints_toggle(page, image_path):
    response = page.detect_with_key(image_path, KEY)
    page.set_threshold(0)
    total = len(response["detections"])
    persons = [det for det in response["detections"] if "keypoints" in det]  # the only keypoint class
    assert 0 < len(persons) < total and all(det["category"] == "person" for det in persons)
    assert page.drawn()["masks"] == total and page.drawn()["keypoints"] == len(persons)
    everything = page.canvas_pixels()

    page.toggle("masks")
    assert page.drawn()["masks"] == 0 and page.drawn()["keypoints"] == len(persons)
    no_masks = page.canvas_pixels()
    assert (no_masks != everything).any()  # the masks were drawn (where: see the next test)
    page.toggle("keypoints")
    assert page.drawn()["keypoints"] == 0 and page.drawn()["drawn"] == total
    if any(score > 0 for det in persons for *_, score in det["keypoints"]):
        assert (page.canvas_pixels() != no_masks).any()
    page.toggle("masks")
    page.toggle("keypoints")
    assert np.array_equal(page.canvas_pixels(), everything)  # drawing is a function of the controls


def test_boxes_and_masks_are_drawn_at_their_image_pixels(page, image_path):
    response = page.detect_with_key(image_path, KEY)
    page.toggle("keypoints")
    best = response["detections"][0]
    page.set_threshold(max(t for t in SLIDER_POSITIONS if t <= best["score"]))  # the best, and any close to it
    shown = [det for det in response["detections"] if det["score"] >= page.threshold()]
    with_masks = page.canvas_pixels()
    page.toggle("masks")
    boxes_only = page.canvas_pixels()
    assert boxes_only.shape == (H, W, 3)  # the canvas is the image, pixel for pixel...
    left, top, right, bottom = page.canvas_rect()
    assert (right - left, bottom - top) == (W, H)  # ...shown at its own size: lines and labels in pixels
    labels = _label_bands(shown)

    # The best box is drawn last, over the others: its edges are its class colour, but where labels lie.
    edges = _box_edges(best) & ~labels
    assert edges.any(), "labels cover the whole box"
    colour = np.array(_PALETTE[best["label"] % len(_PALETTE)])
    assert (boxes_only[edges] == colour).all()

    # The page decodes the RLE itself: it tints exactly pycocotools' pixels, but for those that
    # boxes and labels are drawn over.
    masks = np.zeros((H, W), bool)
    for det in shown:
        masks |= mask_utils.decode({"size": det["mask"]["size"], "counts": det["mask"]["counts"].encode()}).astype(bool)
    tinted = (with_masks != boxes_only).any(axis=2)
    assert tinted.any(), "no mask was drawn"
    assert not (tinted & ~masks).any()
    hidden = labels.copy()
    for det in shown:
        hidden |= _box_ring(det)
    assert not (masks & ~tinted & ~hidden).any()


def _box_edges(det: dict) -> np.ndarray:
    """(H, W) bool: pixels that a 2-pixel stroke of ``det``'s box covers whole (it straddles the edges)."""
    x1, y1, x2, y2 = det["bbox"]
    out = np.zeros((H, W), bool)
    left, right, top, bottom = min(int(x1), W - 1), min(int(x2), W - 1), min(int(y1), H - 1), min(int(y2), H - 1)
    out[top + 1 : bottom, [left, right]] = True
    out[bottom, left + 1 : right] = True
    return out


def _box_ring(det: dict, margin: int = 2, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """(H, W) bool, of an image of ``size`` (H, W): pixels within ``margin`` of ``det``'s box outline."""
    x1, y1, x2, y2 = det["bbox"]
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]] + 0.5  # pixel centres
    outer = (xs > x1 - margin) & (xs < x2 + margin) & (ys > y1 - margin) & (ys < y2 + margin)
    inner = (xs > x1 + margin) & (xs < x2 - margin) & (ys > y1 + margin) & (ys < y2 - margin)
    return outer & ~inner


def _label_bands(shown: list[dict], height: int = 16, width: int = 200, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """(H, W) bool, of an image of ``size`` (H, W): where the labels of ``shown`` may be (16 pixels tall, above
    the box unless at the top of the image; no wider than ``width``), and a pixel around for antialiasing."""
    out = np.zeros(size, bool)
    for det in shown:
        x1, y1 = det["bbox"][:2]
        top = y1 - height if y1 >= height else y1
        out[max(int(top) - 1, 0) : int(top + height) + 2, max(int(x1) - 1, 0) : int(x1) + width] = True
    return out


def test_a_clicked_sample_is_detected_and_drawn(page, base_url):
    page.wait(lambda _: all(t["width"] > 0 for t in page.sample_thumbnails()), 10)  # loaded under the CSP
    assert [t["sample"] for t in page.sample_thumbnails()] == list(SAMPLES)
    before = detect_requests(base_url, KEY)
    name = SAMPLES[0]
    page.click_sample(name)
    assert page.wait_for("key-needed", "done") == "key-needed"
    page.enter_key(KEY)
    assert page.wait_for("done", "error") == "done", page.status()
    assert name in page.status()
    assert page.drawn()["requests"] == 2  # the 401, then the keyed upload
    assert _settled(lambda: detect_requests(base_url, KEY), before + 2) == before + 2
    response = page.response()
    sample = np.asarray(Image.open(SAMPLES_DIR / name).convert("RGB"))
    assert (response["height"], response["width"]) == sample.shape[:2]

    # The canvas is the sample, pixel for pixel, but where boxes and labels are drawn (no masks, no keypoints).
    page.toggle("masks")
    page.toggle("keypoints")
    page.set_threshold(1)
    shown = [det for det in response["detections"] if det["score"] >= 1]
    assert page.drawn()["drawn"] == len(shown)
    size = sample.shape[:2]
    drawn_on = _label_bands(shown, size=size)
    for det in shown:
        drawn_on |= _box_ring(det, size=size)
    canvas = page.canvas_pixels()
    assert canvas.shape == sample.shape and (~drawn_on).any()
    assert np.array_equal(canvas[~drawn_on], sample[~drawn_on])

    page.set_threshold(0)  # whatever the weights, the model keeps something at score 0
    assert page.drawn()["drawn"] == len(response["detections"]) > 0
    assert (page.canvas_pixels() != sample).any()


def test_a_sample_is_chosen_from_the_keyboard(page):
    name = SAMPLES[-1]
    page.press_sample(name)
    assert page.wait_for("key-needed", "done") == "key-needed"
    page.enter_key(KEY)
    assert page.wait_for("done", "error") == "done", page.status()
    assert name in page.status() and page.drawn()["requests"] == 2
    height, width = np.asarray(Image.open(SAMPLES_DIR / name)).shape[:2]
    assert (page.response()["height"], page.response()["width"]) == (height, width)


def test_a_dropped_image_is_detected(page, image_path):
    page.drop(image_path.read_bytes(), "dropped.png", "image/png")
    assert page.wait_for("key-needed", "done") == "key-needed"
    page.enter_key(KEY)
    assert page.wait_for("done", "error") == "done", page.status()
    assert "dropped.png" in page.status()
    assert page.response()["width"] == W


def test_a_non_image_says_why(page, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    page.choose(path)
    assert page.wait_for("key-needed", "error") == "key-needed"
    page.enter_key(KEY)
    assert page.wait_for("done", "error") == "error"
    assert "415" in page.status()
    page.console_errors()  # read (and so cleared): the browser logs the 415, as it should


def test_screenshot_shows_the_detections(page, image_path, tmp_path, capsys):
    response = page.detect_with_key(image_path, KEY)
    page.set_threshold(_low_threshold(response, shown=8))
    assert page.drawn()["drawn"] == _count(response, page.threshold()) > 0
    out_dir = Path(os.environ.get("DETECTOR_SCREENSHOT_DIR") or tmp_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "detector_page.png"
    assert page.driver.save_screenshot(str(path))
    with capsys.disabled():
        print(f"\nscreenshot of the page: {path}")

    shot = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert shot.std() > 20, "the screenshot is (nearly) blank"
    left, top, right, bottom = page.canvas_rect()
    assert (right - left, bottom - top) == (W, H)  # shown at its own size: nothing scaled away
    under_canvas = shot[top:bottom, left:right]
    shown = [det for det in response["detections"] if det["score"] >= page.threshold()]
    colours = {_PALETTE[det["label"] % len(_PALETTE)] for det in shown}
    source = np.asarray(Image.open(image_path).convert("RGB")).astype(int)
    assert _near(source, colours) == 0  # so the drawing is all that can give these colours
    assert _near(under_canvas, colours) > 500, "no boxes or labels in their class colours under the canvas"


def _low_threshold(response: dict, shown: int) -> float:
    """The highest slider position that shows at least ``shown`` detections (or all there are)."""
    wanted = min(shown, len(response["detections"]))
    return max(t for t in SLIDER_POSITIONS if _count(response, t) >= wanted)


def _near(pixels: np.ndarray, colours: set[tuple[int, int, int]], tolerance: int = 12) -> int:
    """How many pixels of (H, W, 3) ``pixels`` are within ``tolerance`` of one of ``colours``."""
    near = np.zeros(pixels.shape[:2], bool)
    for colour in colours:
        near |= (np.abs(pixels - np.array(colour)) <= tolerance).all(axis=2)
    return int(near.sum())
