"""Regenerate the pictures: the page's sample images and the README's picture of the built-in model.

    python docs/pictures.py                         # writes api/static/samples/*.png and docs/detections.png
    python docs/pictures.py --check                 # exit 1 when a committed file's pixels differ from what it would write
    python docs/pictures.py --check --samples-only  # the samples alone: no model (tests/docs/test_pictures.py)

The samples (one per name in ``api.routes.page.SAMPLES``) are fresh synthetic scenes from
``detector.data.synthetic``'s own generator, at the built-in training set's size and seed
(``detector.train.SYNTHETIC``) but from random stream ``SAMPLE_SPLIT``, which ``write_synthetic`` never
draws (it draws 0 for train and 1 for val): the built-in model never saw them, whatever set it was trained
on. They are picked deterministically: the first indices 0, 1, 2, ... of that stream whose scene has a
person and at least ``MIN_SHAPES`` other shapes annotated and whose PNG stays under ``MAX_PNG_BYTES`` (a
pixel-noise background barely compresses).

``docs/detections.png`` is the built-in model (the default preset with its shipped weights, the default
speed, on the CPU) as the service draws it: ``POST /detect/render?score_threshold=0.5`` on the first sample,
answered by the app of ``api.main`` in this process (FastAPI's TestClient, which needs httpx: the dev
extra). It changes with the weights: regenerate it when they change. Both are deterministic on one machine.
Elsewhere the picture may differ in a few pixels (float rounding); the samples' pixels do not. ``--check``
compares pixels, not bytes: a PNG's bytes depend on the zlib that Pillow compresses with.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DETECTIONS = ROOT / "docs" / "detections.png"
SAMPLE_SPLIT = 2  # the random stream of the samples: write_synthetic draws 0 (train) and 1 (val)
MIN_SHAPES = 3  # shapes other than persons in a sample
MAX_PNG_BYTES = 80_000  # each sample's PNG, so the page's row of samples loads at once
SCORE_THRESHOLD = 0.5
READY_TIMEOUT_S = 300.0  # loading and warming the built-in model on a busy CPU


def _png(image) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def candidates() -> Iterator[tuple[int, bytes, list[str]]]:
    """(index, PNG, kinds of the annotated objects) of each scene of the samples' stream, in index order."""
    import numpy as np

    from detector.data.synthetic import KINDS, make_image
    from detector.train import SYNTHETIC

    index = 0
    while True:
        image, annotations = make_image(np.random.default_rng([SYNTHETIC["seed"], SAMPLE_SPLIT, index]),
                                        SYNTHETIC["size"])
        yield index, _png(image), [KINDS[ann["category_id"] - 1] for ann in annotations]
        index += 1


def fits(png: bytes, kinds: list[str]) -> bool:
    """Whether a scene (its PNG, the kinds of its annotated objects) makes a sample."""
    return "person" in kinds and sum(kind != "person" for kind in kinds) >= MIN_SHAPES and len(png) < MAX_PNG_BYTES


def pick(count: int) -> list[tuple[int, bytes, list[str]]]:
    """(index, PNG, kinds) of the first ``count`` scenes of the samples' stream that fit."""
    fitting = (candidate for candidate in candidates() if fits(candidate[1], candidate[2]))
    return [next(fitting) for _ in range(count)]


def sample_pngs() -> dict[Path, bytes]:
    """{path under api/static/samples: its PNG}, in the order of ``api.routes.page.SAMPLES``."""
    from api.routes.page import SAMPLES, SAMPLES_DIR

    return {SAMPLES_DIR / name: png for name, (_, png, _) in zip(SAMPLES, pick(len(SAMPLES)), strict=True)}


def detections_png(image_png: bytes) -> bytes:
    """The built-in model's detections on ``image_png``, drawn by ``POST /detect/render`` of a fresh app."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import Settings
    from detector.modeling.speeds import DEFAULT_SPEED

    # Every model argument given: a DETECTOR_* variable of the caller's must not choose another model.
    settings = Settings(preset=None, weights=None, device="cpu", speed=DEFAULT_SPEED, backend="torch",
                        onnx=None, api_keys=[])
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (ready := client.get("/readyz")).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the built-in model did not become ready: {ready.json()}")
            time.sleep(0.1)
        response = client.post(f"/detect/render?score_threshold={SCORE_THRESHOLD}",
                               files={"image": ("sample.png", image_png, "image/png")})
    response.raise_for_status()
    return response.content


def pictures(samples_only: bool) -> dict[Path, bytes]:
    """{path: the bytes it should hold}."""
    files = sample_pngs()
    if not samples_only:
        files[DETECTIONS] = detections_png(next(iter(files.values())))
    return files


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _pixels(png: bytes) -> tuple:
    """A PNG's mode, size and pixels: what a picture shows, whatever zlib compressed it."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.mode, image.size, image.tobytes()


def differing(files: dict[Path, bytes]) -> list[Path]:
    """The paths of ``files`` that are missing or hold other pixels."""
    return [path for path, data in files.items()
            if not path.is_file() or _pixels(path.read_bytes()) != _pixels(data)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/pictures.py", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a file differs from what would be written")
    parser.add_argument("--samples-only", action="store_true",
                        help="only the sample images, not docs/detections.png (no model)")
    args = parser.parse_args(argv)

    files = pictures(args.samples_only)
    if args.check:
        stale = differing(files)
        for path in stale:
            print(f"{_shown(path)}: differs from what python docs/pictures.py writes", file=sys.stderr)
        return 1 if stale else 0
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {_shown(path)} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
