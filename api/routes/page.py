"""GET / (a page to try the model in a browser), GET /static/{name} (its script and style) and
GET /static/samples/{name} (the sample images it offers to click).

The page is plain HTML/JS/CSS shipped in ``api/static``: no build step, nothing from a CDN. It is
served without a key; it calls POST /detect itself and asks for a key when that answers 401.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter(tags=["page"], include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Only these names are served: a fixed table, so no path from the URL ever reaches the filesystem.
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The sample images, fresh synthetic scenes the built-in model never saw: docs/pictures.py makes them, one per name.
SAMPLES_DIR = STATIC_DIR / "samples"
SAMPLES = ("sample-1.png", "sample-2.png", "sample-3.png", "sample-4.png")
# Everything the page loads comes from this origin; the chosen image is shown from a blob: URL.
_CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


@router.get("/")
async def page() -> FileResponse:
    """The page: choose or drop an image, see its detections drawn over it."""
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": _CSP}
    )


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in _ASSETS:
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=_ASSETS[name])


@router.get("/static/samples/{name}")
async def sample(name: str) -> FileResponse:
    if name not in SAMPLES:
        raise HTTPException(404, f"no sample image {name!r}")
    return FileResponse(SAMPLES_DIR / name, media_type="image/png")
