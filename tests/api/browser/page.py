"""The page at GET / as the tests drive it: what a person does (choose or drop a file, type a key,
move the slider, tick boxes) and what they see (the canvas and the state the page exposes on it).

The page exposes its state for tests as attributes: ``body[data-state]`` is idle, loading,
key-needed, done or error; the canvas has ``data-drawn`` (detections drawn), ``data-masks-drawn``,
``data-keypoints-drawn`` and ``data-requests`` (POST /detect calls the page has made).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

DETECT_TIMEOUT_S = 120  # one forward of the small model on a shared CPU core, with room to spare
SLIDER_STEPS = 100  # the threshold input goes from 0 to 1 in steps of 0.01
# Its positions, as the page reads them: k / 100 is the double nearest to "0.kk", as in JS
# (k * 0.01 is not always: 0.29000000000000004 would misjudge a score of 0.29).
SLIDER_POSITIONS = tuple(k / SLIDER_STEPS for k in range(SLIDER_STEPS + 1))

_DROP = """
const [data, name, type] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type}));
const zone = document.getElementById("dropzone");
for (const kind of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(kind, {dataTransfer: transfer, bubbles: true, cancelable: true}));
}
"""


class DetectorPage:
    def __init__(self, driver: Chrome, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    # ---- what a person does

    def open(self) -> DetectorPage:
        self.driver.get(f"{self.base_url}/")
        self.wait(lambda _: self.driver.execute_script("return window.detectorPage !== undefined"), 10)
        assert self.state() == "idle"
        return self

    def choose(self, path: Path) -> None:
        self._find("#file").send_keys(str(path))

    def click_sample(self, name: str) -> None:
        self._find(f'#samples button[data-sample="{name}"]').click()

    def press_sample(self, name: str) -> None:
        """Tab to the sample's button (focus it) and press Enter, as without a mouse."""
        button = self._find(f'#samples button[data-sample="{name}"]')
        self.driver.execute_script("arguments[0].focus()", button)
        button.send_keys(Keys.ENTER)

    def sample_thumbnails(self) -> list[dict]:
        """[{"sample", "alt", "width"}] of the sample buttons' images; width 0: not loaded."""
        return self.driver.execute_script(
            "return [...document.querySelectorAll('#samples button')].map((b) => ({sample: b.dataset.sample, "
            "alt: b.querySelector('img').alt, width: b.querySelector('img').naturalWidth}))"
        )

    def drop(self, data: bytes, name: str, mime: str) -> None:
        self.driver.execute_script(_DROP, base64.b64encode(data).decode(), name, mime)

    def enter_key(self, key: str) -> None:
        field = self._find("#key")
        field.clear()
        field.send_keys(key, Keys.ENTER)

    def detect_with_key(self, path: Path, key: str) -> dict:
        """Choose ``path``, give ``key`` when asked, wait for the drawing; the response as shown."""
        self.choose(path)
        assert self.wait_for("key-needed", "done") == "key-needed"
        self.enter_key(key)
        assert self.wait_for("done", "error", "key-needed") == "done", self.status()
        return self.response()

    def set_threshold(self, value: float) -> None:
        """Move the slider with the keyboard: Home (0), then one arrow press per step."""
        steps = round(value * SLIDER_STEPS)
        self._find("#threshold").send_keys(Keys.HOME, *[Keys.ARROW_RIGHT] * steps)
        assert self.threshold() == SLIDER_POSITIONS[steps]

    def toggle(self, what: str) -> None:
        """Click the 'masks' or 'keypoints' check box."""
        self._find(f"#show-{what}").click()

    # ---- what they see

    def state(self) -> str:
        return self._find("body").get_attribute("data-state")

    def status(self) -> str:
        return self._find("#status").text

    def count_line(self) -> str:
        return self._find("#count").text

    def key_field_shown(self) -> bool:
        return self._find("#key").is_displayed()

    def threshold(self) -> float:
        return float(self._find("#threshold-value").text)

    def drawn(self) -> dict[str, int]:
        """{"drawn", "masks", "keypoints", "requests"}: the counters on the canvas."""
        canvas = self._find("#canvas")
        return {
            "drawn": int(canvas.get_attribute("data-drawn")),
            "masks": int(canvas.get_attribute("data-masks-drawn")),
            "keypoints": int(canvas.get_attribute("data-keypoints-drawn")),
            "requests": int(canvas.get_attribute("data-requests")),
        }

    def response(self) -> dict:
        """The /detect response, parsed back from the JSON the page shows."""
        return json.loads(self._find("#json").get_attribute("textContent"))

    def canvas_pixels(self) -> np.ndarray:
        """The canvas at its own resolution (the image's), as (H, W, 3) uint8."""
        url = self.driver.execute_script("return document.getElementById('canvas').toDataURL('image/png')")
        png = base64.b64decode(url.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def canvas_rect(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the canvas on the screen, in screenshot pixels."""
        rect = self._find("#canvas").rect
        x, y = round(rect["x"]), round(rect["y"])
        return x, y, x + round(rect["width"]), y + round(rect["height"])

    def console_errors(self) -> list[str]:
        """Errors in the browser console since the last call, but for the 401s the page asks for."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE" and "status of 401" not in entry["message"]
        ]

    # ---- waiting

    def wait(self, condition, timeout_s: float = DETECT_TIMEOUT_S):
        return WebDriverWait(self.driver, timeout_s, poll_frequency=0.05).until(condition)

    def wait_for(self, *states: str) -> str:
        """Wait until the page is in one of ``states``; that state."""
        return self.wait(lambda _: self.state() if self.state() in states else None)

    def _find(self, selector: str):
        return self.driver.find_element(By.CSS_SELECTOR, selector)
