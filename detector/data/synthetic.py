"""A synthetic COCO-format data set of shapes and stick figures, for tests and smoke training.

    python -m detector.data.synthetic --out DIR --train N --val M --size S --seed K

writes DIR/train/*.png, DIR/val/*.png, DIR/annotations/instances_{train,val}.json and
DIR/manifest.json (the arguments, so ``ensure_synthetic`` can reuse the files). Categories 1..4
are circle, square, triangle and person; the person category carries COCO's 17 keypoint names
and skeleton, and every annotation has ``keypoints``/``num_keypoints`` (zeros for shapes), so
pycocotools' COCOeval runs bbox, segm and keypoints on the files unchanged.

Objects drawn later occlude earlier ones: a mask (RLE) holds an object's visible pixels, and
objects left almost fully hidden are not annotated. A keypoint's v is 0 outside the image
(written (0, 0, 0) as COCO does), 1 where a later object covers it, 2 where it is visible.
The same arguments give byte-identical files; each image has its own random stream, drawn
from (seed, split, index), so asking for more images leaves the first ones unchanged.

Shape shorthand: H x W an image's height and width, P = 17 keypoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES, skeleton_1_based

logger = logging.getLogger(__name__)

KINDS = ("circle", "square", "triangle", "person")  # category id = index + 1
CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {
        "id": 4,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO_KEYPOINT_NAMES),
        "skeleton": skeleton_1_based(),
    },
]
GENERATOR_VERSION = 1  # bump whenever a seed's output changes, so ensure_synthetic regenerates
MIN_VISIBLE_FRACTION = 0.2  # an object with less of its in-image area visible counts as hidden
MIN_VISIBLE_PIXELS = 16  # ... and so does one with fewer visible pixels than this
MIN_IMAGE_SIZE = 32  # smaller images leave no room for the objects' minimum sizes
# Size ranges as fractions of the image size: radius, half side, circumradius, head-to-ankle height.
# A person's limb angles in radians outwards from hanging down: arms from a little inwards to raised
# overhead, legs from straight to astride. Order: left arm, right arm, left leg, right leg.
POSE_RANGES = ((-0.2, 2.6), (-0.2, 2.6), (0.0, 0.6), (0.0, 0.6))
SIZE_RANGES = {"circle": (0.06, 0.2), "square": (0.06, 0.17), "triangle": (0.08, 0.24), "person": (0.35, 0.9)}


@dataclass(frozen=True)
class Shape:
    """One object to draw.

    kind: one of KINDS. center: (x, y) in pixels. size: radius (circle), half side (square),
    circumradius (triangle) or head-to-ankle height (person). angle: rotation in radians
    (square, triangle). pose: a person's (left_arm, right_arm, left_leg, right_leg), see
    ``person_keypoints``.
    """

    kind: str
    center: tuple[float, float]
    size: float
    colour: tuple[int, int, int] = (255, 255, 255)
    angle: float = 0.0
    pose: tuple[float, float, float, float] = (0.3, 0.3, 0.15, 0.15)


@dataclass(frozen=True)
class SyntheticPaths:
    root: Path
    train_images: Path
    val_images: Path
    train_annotations: Path
    val_annotations: Path


def person_keypoints(center: tuple[float, float], height: float, pose: Sequence[float]) -> np.ndarray:
    """COCO's 17 keypoints of a stick figure facing the viewer, (P, 2) int64 (x, y) pixels.

    center: middle of the figure; height: top of the head to the ankles; pose: angles in radians
    of the (left arm, right arm, left leg, right leg) outwards from hanging straight down.
    The person's left is the image's right, as for someone facing the camera.
    """
    left_arm, right_arm, left_leg, right_leg = pose
    points = {  # (x, y) in units of height, from the top of the head on the figure's axis
        "nose": (0.0, 0.10), "left_eye": (0.03, 0.075), "right_eye": (-0.03, 0.075),
        "left_ear": (0.065, 0.09), "right_ear": (-0.065, 0.09),
        "left_shoulder": (0.11, 0.22), "right_shoulder": (-0.11, 0.22),
        "left_hip": (0.07, 0.52), "right_hip": (-0.07, 0.52),
    }  # fmt: skip

    def limb(start: tuple[float, float], angle: float, length: float, outwards: float) -> tuple[float, float]:
        return start[0] + outwards * length * math.sin(angle), start[1] + length * math.cos(angle)

    for side, outwards, arm, leg in (("left", 1.0, left_arm, left_leg), ("right", -1.0, right_arm, right_leg)):
        points[f"{side}_elbow"] = limb(points[f"{side}_shoulder"], arm, 0.16, outwards)
        points[f"{side}_wrist"] = limb(points[f"{side}_elbow"], arm + 0.4, 0.15, outwards)  # elbow bent a little
        points[f"{side}_knee"] = limb(points[f"{side}_hip"], leg, 0.23, outwards)
        points[f"{side}_ankle"] = limb(points[f"{side}_knee"], 0.5 * leg, 0.23, outwards)
    unit = np.array([points[name] for name in COCO_KEYPOINT_NAMES])  # (P, 2)
    origin = np.array([center[0], center[1] - height / 2])
    return np.rint(origin + unit * height).astype(np.int64)  # (P, 2)


def _shape_mask(shape: Shape, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels the shape covers, hidden or not."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    (cx, cy), s = shape.center, shape.size
    if shape.kind == "circle":
        draw.ellipse([cx - s, cy - s, cx + s, cy + s], fill=1)
    elif shape.kind in ("square", "triangle"):
        corners, radius, turn = (4, s * math.sqrt(2), math.pi / 4) if shape.kind == "square" else (3, s, -math.pi / 2)
        angles = [shape.angle + turn + 2 * math.pi * k / corners for k in range(corners)]
        draw.polygon([(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles], fill=1)
    elif shape.kind == "person":
        _draw_person(draw, person_keypoints(shape.center, s, shape.pose), s)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}, expected one of {KINDS}")
    return np.asarray(canvas) > 0


def _draw_person(draw: ImageDraw.ImageDraw, points: np.ndarray, height: float) -> None:
    """Head disc, thick torso and limbs through the keypoints, round joints."""
    p = {name: tuple(float(v) for v in xy) for name, xy in zip(COCO_KEYPOINT_NAMES, points)}
    thick = max(2, round(0.05 * height))
    head = ((p["left_ear"][0] + p["right_ear"][0]) / 2, (p["left_ear"][1] + p["right_ear"][1]) / 2)
    radius = 0.085 * height
    draw.ellipse([head[0] - radius, head[1] - radius, head[0] + radius, head[1] + radius], fill=1)
    neck = ((p["left_shoulder"][0] + p["right_shoulder"][0]) / 2, p["left_shoulder"][1])
    pelvis = ((p["left_hip"][0] + p["right_hip"][0]) / 2, p["left_hip"][1])
    draw.line([head, neck, pelvis], fill=1, width=round(1.5 * thick))
    for side in ("left", "right"):
        draw.line([p[f"{side}_shoulder"], p[f"{side}_elbow"], p[f"{side}_wrist"]], fill=1, width=thick)
        draw.line([p[f"{side}_hip"], p[f"{side}_knee"], p[f"{side}_ankle"]], fill=1, width=thick)
    draw.line([p["left_shoulder"], p["right_shoulder"]], fill=1, width=thick)
    draw.line([p["left_hip"], p["right_hip"]], fill=1, width=thick)
    r = thick / 2
    for name in COCO_KEYPOINT_NAMES[5:]:  # shoulders down: round the joints and ends of the limbs
        x, y = p[name]
        draw.ellipse([x - r, y - r, x + r, y + r], fill=1)


def keypoint_visibility(points: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """(P, 3) int64 COCO keypoints from (P, 2) pixel positions and an (H, W) bool mask of what later
    objects cover: (0, 0, 0) outside the image, v = 1 under a later object, v = 2 visible."""
    height, width = covered.shape
    x, y = points[:, 0], points[:, 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)  # (P,)
    v = np.zeros(len(points), dtype=np.int64)
    v[inside] = np.where(covered[y[inside], x[inside]], 1, 2)
    return np.stack([np.where(inside, x, 0), np.where(inside, y, 0), v], axis=1)


def render_scene(background: np.ndarray, shapes: Sequence[Shape]) -> tuple[np.ndarray, list[dict]]:
    """Draw shapes in order over an (H, W, 3) uint8 background.

    Returns the (H, W, 3) uint8 image and a COCO annotation (without id and image_id) for each
    object left visible enough, in drawing order.
    """
    height, width = background.shape[:2]
    image = background.copy()
    full = [_shape_mask(shape, height, width) for shape in shapes]  # each (H, W) bool
    covered, later = np.zeros((height, width), dtype=bool), [None] * len(shapes)
    for i in reversed(range(len(shapes))):  # what the objects drawn after object i cover
        later[i] = covered.copy()
        covered |= full[i]
    annotations = []
    for shape, mask, hidden in zip(shapes, full, later):
        image[mask] = shape.colour
        points = person_keypoints(shape.center, shape.size, shape.pose) if shape.kind == "person" else None
        if points is not None:
            _paint_eyes(image, mask, points, shape)
        visible = mask & ~hidden
        area = int(visible.sum())
        if area < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * mask.sum()):
            continue
        annotations.append(_annotation(shape, visible, area, points, hidden))
    return image, annotations


def _paint_eyes(image: np.ndarray, mask: np.ndarray, points: np.ndarray, shape: Shape) -> None:
    """Dark dots at the eyes, a cue for where the person faces; inside the person's own pixels."""
    r = max(1, round(0.015 * shape.size))
    dark = tuple(c // 3 for c in shape.colour)
    for x, y in points[1:3]:  # left_eye, right_eye
        rows, cols = slice(max(y - r, 0), max(y + r + 1, 0)), slice(max(x - r, 0), max(x + r + 1, 0))
        image[rows, cols][mask[rows, cols]] = dark


def _annotation(shape: Shape, visible: np.ndarray, area: int, points: np.ndarray | None, hidden: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    keypoints = np.zeros((len(COCO_KEYPOINT_NAMES), 3), dtype=np.int64)
    if points is not None:
        keypoints = keypoint_visibility(points, hidden)
    return {
        "category_id": KINDS.index(shape.kind) + 1,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": float(area),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],  # [x, y, w, h] of the visible pixels
        "iscrowd": 0,
        "keypoints": keypoints.reshape(-1).tolist(),  # zeros for shapes: COCOeval keypoints reads them all
        "num_keypoints": int((keypoints[:, 2] > 0).sum()),
    }


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 between two random colours: a gradient, stripes, smooth blotches or pixel noise."""
    low, high = rng.integers(0, 256, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xx * math.cos(theta) + yy * math.sin(theta)  # (H, W)
    kind = rng.integers(4)
    if kind == 0:
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    elif kind == 1:
        t = (np.sin(along * 2 * math.pi / rng.uniform(6, 40)) > 0).astype(np.float32)
    elif kind == 2:
        grid = rng.random((int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.float32)
        t = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))
    else:
        t = rng.random((height, width), dtype=np.float32) * rng.uniform(0.2, 1.0)
    return (low + t[..., None] * (high - low)).astype(np.uint8)  # (H, W, 3)


def _random_shape(rng: np.random.Generator, background: np.ndarray, size: int) -> Shape:
    height, width = background.shape[:2]
    kind = KINDS[int(rng.integers(len(KINDS)))]
    center = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
    reference = background[int(center[1]), int(center[0])].astype(np.int64)
    for _ in range(8):  # a colour that stands out from the background behind the object
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - reference).sum() > 150:
            break
    return Shape(
        kind=kind,
        center=center,
        size=float(rng.uniform(*SIZE_RANGES[kind]) * size),
        colour=tuple(int(c) for c in colour),
        angle=float(rng.uniform(0, 2 * math.pi)),
        pose=tuple(float(rng.uniform(low, high)) for low, high in POSE_RANGES),
    )


def make_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    """One random scene: (H, W, 3) uint8 with a side of size and the other 75-100% of it, 1-6 objects."""
    long_side, short_side = size, round(size * rng.uniform(0.75, 1.0))
    height, width = (short_side, long_side) if rng.random() < 0.5 else (long_side, short_side)
    background = _background(rng, height, width)
    shapes = [_random_shape(rng, background, size) for _ in range(int(rng.integers(1, 7)))]
    return render_scene(background, shapes)


def _paths(root: Path) -> SyntheticPaths:
    return SyntheticPaths(
        root=root,
        train_images=root / "train",
        val_images=root / "val",
        train_annotations=root / "annotations" / "instances_train.json",
        val_annotations=root / "annotations" / "instances_val.json",
    )


def _write_split(images_dir: Path, annotation_file: Path, count: int, size: int, seed: int, split: int) -> None:
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image, anns = make_image(np.random.default_rng([seed, split, index]), size)
        file_name = f"{index:06d}.png"
        Image.fromarray(image).save(images_dir / file_name, format="PNG")
        images.append({"id": index + 1, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        annotations += [{"id": len(annotations) + k + 1, "image_id": index + 1, **ann} for k, ann in enumerate(anns)]
    info = {"description": "detector synthetic shapes and stick figures", "version": GENERATOR_VERSION, "seed": seed}
    data = {"info": info, "licenses": [], "categories": CATEGORIES, "images": images, "annotations": annotations}
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(data))


def _manifest(train: int, val: int, size: int, seed: int) -> dict:
    for name, value, least in (("train", train, 0), ("val", val, 0), ("size", size, MIN_IMAGE_SIZE), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return {"version": GENERATOR_VERSION, "train": train, "val": val, "size": size, "seed": seed}


def write_synthetic(root: str | Path, train: int, val: int, size: int = 256, seed: int = 0) -> SyntheticPaths:
    """Generate the data set under root (overwriting what a previous run wrote there)."""
    manifest = _manifest(train, val, size, seed)
    paths = _paths(Path(root))
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / "manifest.json").unlink(missing_ok=True)  # an interrupted run must not look complete
    _write_split(paths.train_images, paths.train_annotations, train, size, seed, split=0)
    _write_split(paths.val_images, paths.val_annotations, val, size, seed, split=1)
    (paths.root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %d train and %d val synthetic images to %s", train, val, paths.root)
    return paths


def ensure_synthetic(root: str | Path, train: int, val: int, size: int = 256, seed: int = 0) -> SyntheticPaths:
    """The data set under root, generated only if absent or made with other arguments."""
    manifest = _manifest(train, val, size, seed)
    paths = _paths(Path(root))
    try:
        existing = json.loads((paths.root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        existing = None
    complete = paths.train_annotations.is_file() and paths.val_annotations.is_file()
    if existing == manifest and complete:
        logger.debug("reusing synthetic data set at %s", paths.root)
        return paths
    return write_synthetic(root, train, val, size, seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detector.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--train", type=int, default=200, help="number of training images")
    parser.add_argument("--val", type=int, default=50, help="number of validation images")
    parser.add_argument("--size", type=int, default=256, help="longer side of the images, in pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    args = parser.parse_args(argv)
    try:
        paths = write_synthetic(args.out, args.train, args.val, args.size, args.seed)
    except ValueError as error:
        parser.error(str(error))
    for name, path in asdict(paths).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
