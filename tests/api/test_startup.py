"""api/__main__.py's startup sets the process-wide settings (malloc keeps freed memory on the CPU,
Pillow's pixel limit from ``max_pixels``); building an app, running its lifespan or decoding an image
changes neither."""

from __future__ import annotations

import pytest
from PIL import Image

from api.__main__ import configure_process
from api.decode import decode_image
from api.main import create_app
from tests.api.api_images import png
from tests.api.serving import settings
from tests.process_state import glibc_only, state_after

PILLOW_DEFAULT = Image.MAX_IMAGE_PIXELS  # unless something in this process raised it already
ABOVE_PILLOW = 4 * (PILLOW_DEFAULT or 10**8)

# python -m api's main() up to the point where uvicorn would start serving.
_STARTUP = """
import api.__main__ as entry
entry._serve = lambda *args, **kwargs: True
entry.main({argv!r})
"""


@glibc_only
@pytest.mark.parametrize("keep", ["true", "false"])
def test_startup_applies_the_settings(keep):
    state = state_after(_STARTUP.format(argv=["--keep-freed-memory", keep, "--max-pixels", str(ABOVE_PILLOW),
                                              "--log-level", "warning"]))
    assert state["memory_applied"] is (True if keep == "true" else None)
    assert state["big_block_mmapped"] is (keep == "false")
    assert state["max_image_pixels"] == ABOVE_PILLOW


@glibc_only
def test_an_app_run_in_a_test_client_leaves_the_process_as_it_was():
    state = state_after(
        "from fastapi.testclient import TestClient\n"
        "from api.main import create_app\n"
        "from tests.api.serving import settings, wait_ready\n"
        f"app = create_app(settings(preset='small_r18_fpn', max_pixels={ABOVE_PILLOW}, keep_freed_memory=True))\n"
        "with TestClient(app) as client:\n"
        "    wait_ready(client)\n"
        "    assert client.get('/readyz').status_code == 200\n"
    )
    assert (state["memory_applied"], state["big_block_mmapped"]) == (None, True)
    assert state["max_image_pixels"] == PILLOW_DEFAULT


def test_building_an_app_and_decoding_leave_pillows_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    create_app(settings(max_pixels=10**6))
    assert decode_image(png(40, 30), max_pixels=10**6).shape == (30, 40, 3)  # 1,200 pixels: under both
    assert Image.MAX_IMAGE_PIXELS == 5_000


def test_configure_process_raises_pillows_limit_never_lowers_it(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    configure_process(settings(max_pixels=10**6, keep_freed_memory=False))
    assert Image.MAX_IMAGE_PIXELS == 10**6
    configure_process(settings(max_pixels=1_000, keep_freed_memory=False))
    assert Image.MAX_IMAGE_PIXELS == 10**6
