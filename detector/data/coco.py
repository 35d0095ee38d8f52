"""A COCO-format data set: an images folder plus one annotation file -> (image, Targets, info).

Works for ``instances_*.json`` (boxes, masks) and ``person_keypoints_*.json`` (boxes, masks,
keypoints) alike. Annotations are filtered once, at construction, from the json alone:
crowd regions and boxes that are empty once clipped to the image never reach the targets,
and ``stats`` counts what was left out.

Shape shorthand: K objects kept in an image, P keypoints per object (17 for COCO persons),
H x W the image's height and width in pixels.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from detector.data.coco_file import load_coco_file
from detector.data.images import read_image
from detector.structures import Targets

logger = logging.getLogger(__name__)

@dataclass
class DatasetStats:
    """What loading left out. All but the corrupt-image count are settled at construction."""

    crowd_skipped: int = 0  # iscrowd=1 annotations: regions, not objects, so never targets
    degenerate_dropped: int = 0  # boxes with zero width or height once clipped to the image
    images_without_annotations: int = 0  # images with no object left; skipped when skip_empty
    # Missing files (found at construction) plus corrupt ones found so far *in this process*:
    # a DataLoader worker's finds stay in that worker's copy.
    images_missing_or_corrupt: int = 0


@dataclass(frozen=True)
class _Record:
    """One image and the annotations kept for it."""

    image_id: int
    file_name: str
    height: int
    width: int
    annotation_ids: tuple[int, ...]  # (K,)
    boxes: np.ndarray  # (K, 4) float32 xyxy, clipped to the image
    labels: np.ndarray  # (K,) int64


class CocoDataset(Dataset):
    """Images of one COCO-format annotation file as ``(image, targets, info)``.

    image: Tensor[3, H, W] uint8 RGB, EXIF orientation applied.
    targets: ``Targets`` with boxes (Tensor[K, 4] float32, xyxy), labels (Tensor[K] int64, 1..C),
        masks (Tensor[K, H, W] uint8) when ``with_masks``, keypoints (Tensor[K, P, 3] float32,
        (x, y, v)) when a category of the file names keypoints (zeros for objects without).
    info: ``{"image_id", "file_name", "height", "width"}``, the size being the file's own
        (before ``transforms``).

    Labels are contiguous: ``category_id_to_label`` / ``label_to_category_id`` map them,
    ``class_names[label]`` names them (``class_names[0] == "__background__"``).
    A missing image raises ValueError at construction and a corrupt one when read, unless
    ``skip_bad_images``: then it is skipped (a corrupt one gives the next good item) and counted.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        *,
        with_masks: bool = False,
        skip_empty: bool = True,  # images without objects teach nothing to R-CNN training
        skip_bad_images: bool = False,
        transforms: Callable[[Tensor, Targets], tuple[Tensor, Targets]] | None = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        self.with_masks = with_masks
        self.skip_empty = skip_empty
        self.skip_bad_images = skip_bad_images
        self.transforms = transforms
        if not self.images_dir.is_dir():
            raise ValueError(f"images folder not found: {self.images_dir}")
        self.coco = load_coco_file(self.annotation_file)

        category_ids = sorted(self.coco.cats)
        self.category_id_to_label = {cid: i + 1 for i, cid in enumerate(category_ids)}
        self.label_to_category_id = {label: cid for cid, label in self.category_id_to_label.items()}
        self.class_names = ["__background__"] + [self.coco.cats[cid]["name"] for cid in category_ids]
        self.num_keypoints = max((len(self.coco.cats[c].get("keypoints", ())) for c in category_ids), default=0)
        # The categories that name keypoints (COCO: person); the others' objects have none.
        self.keypoint_class_names = tuple(
            self.coco.cats[c]["name"] for c in category_ids if self.coco.cats[c].get("keypoints")
        )

        self.stats = DatasetStats()
        self._records = self._index()
        self._corrupt: set[int] = set()  # indices into _records found unreadable at load time

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[Tensor, Targets, dict]:
        n = len(self._records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a data set of {n} images")
        for offset in range(n):  # under skip_bad_images, a corrupt image gives the next good one
            i = (index + offset) % n
            if i in self._corrupt:
                continue
            try:
                image = self._read_image(self._records[i])
            except ValueError as error:
                if not self.skip_bad_images:
                    raise
                self._corrupt.add(i)
                self.stats.images_missing_or_corrupt += 1
                logger.warning("skipping unreadable image: %s", error)
                continue
            return self._item(self._records[i], image)
        raise ValueError(f"no readable image left in {self.images_dir} (all {n} failed to decode)")

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of an image from the annotation file, without decoding it (for grouping)."""
        record = self._records[index]
        return record.height, record.width

    def annotation_ids(self, index: int) -> tuple[int, ...]:
        """COCO annotation id of each target row of an image, in order."""
        return self._records[index].annotation_ids

    @property
    def has_keypoints(self) -> bool:
        return self.num_keypoints > 0

    def _index(self) -> list[_Record]:
        records, missing = [], []
        for image_id in sorted(self.coco.imgs):
            entry = self.coco.imgs[image_id]
            record = self._record(entry)
            if not record.annotation_ids:
                self.stats.images_without_annotations += 1
                if self.skip_empty:
                    continue
            if not (self.images_dir / record.file_name).is_file():
                missing.append(record.file_name)
                continue
            records.append(record)
        if missing and not self.skip_bad_images:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(
                f"image file not found: {self.images_dir / missing[0]}{more}, listed in "
                f"{self.annotation_file}; pass skip_bad_images=True to skip missing images"
            )
        if missing:
            logger.warning(
                "%d images listed in %s are missing from %s", len(missing), self.annotation_file, self.images_dir
            )
        self.stats.images_missing_or_corrupt += len(missing)
        return records

    def _record(self, entry: dict) -> _Record:
        """Keep an image's non-crowd annotations whose clipped box is not empty."""
        try:
            image_id, file_name = entry["id"], entry["file_name"]
            height, width = int(entry["height"]), int(entry["width"])
        except KeyError as error:
            raise ValueError(f"image entry {entry} in {self.annotation_file} lacks {error}") from None
        ids, boxes, labels = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                self.stats.crowd_skipped += 1
                continue
            if ann["category_id"] not in self.category_id_to_label:
                raise ValueError(
                    f"annotation {ann['id']} in {self.annotation_file} has category_id "
                    f"{ann['category_id']}, not among the file's categories"
                )
            x, y, w, h = self._checked_bbox(ann)
            box = (max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height))
            if box[2] <= box[0] or box[3] <= box[1]:
                self.stats.degenerate_dropped += 1
                continue
            ids.append(ann["id"])
            boxes.append(box)
            labels.append(self.category_id_to_label[ann["category_id"]])
        return _Record(
            image_id=image_id,
            file_name=file_name,
            height=height,
            width=width,
            annotation_ids=tuple(ids),
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),  # (K, 4)
            labels=np.asarray(labels, dtype=np.int64),  # (K,)
        )

    def _checked_bbox(self, ann: dict) -> tuple[float, float, float, float]:
        """The annotation's [x, y, w, h]; a malformed bbox or (with masks) polygon is a ValueError naming it."""
        where = f"annotation {ann.get('id')} in {self.annotation_file}"
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise ValueError(f"{where} has bbox {bbox!r}: expected [x, y, width, height]")
        segmentation = ann.get("segmentation")
        if self.with_masks and isinstance(segmentation, list):
            if not segmentation or any(len(p) < 6 or len(p) % 2 for p in segmentation):
                raise ValueError(f"{where}: each polygon needs at least 3 (x, y) points, got {segmentation!r}")
        return tuple(float(v) for v in bbox)

    def _read_image(self, record: _Record) -> Tensor:
        """Decode as Tensor[3, H, W] uint8 RGB, EXIF orientation applied, as the Predictor's images are."""
        path = self.images_dir / record.file_name
        array = read_image(path)  # (H, W, 3); ValueError naming the file when unreadable
        if array.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"image {path} is {array.shape[1]}x{array.shape[0]} (W x H, EXIF orientation applied) but "
                f"{self.annotation_file} says {record.width}x{record.height}"
            )
        return torch.from_numpy(np.array(array)).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)

    def _item(self, record: _Record, image: Tensor) -> tuple[Tensor, Targets, dict]:
        anns = [self.coco.anns[a] for a in record.annotation_ids]
        targets = Targets(
            boxes=torch.from_numpy(record.boxes.copy()),
            labels=torch.from_numpy(record.labels.copy()),
            masks=self._masks(record, anns) if self.with_masks else None,
            keypoints=self._keypoints(anns) if self.has_keypoints else None,
        )
        info = {
            "image_id": record.image_id,
            "file_name": record.file_name,
            "height": record.height,
            "width": record.width,
        }
        if self.transforms is not None:
            image, targets = self.transforms(image, targets)
        return image, targets, info

    def _masks(self, record: _Record, anns: list[dict]) -> Tensor:
        """Tensor[K, H, W] uint8 from polygons or RLE alike."""
        if not anns:
            return torch.zeros((0, record.height, record.width), dtype=torch.uint8)
        with warnings.catch_warnings():  # pycocotools' RLE decoding predates numpy 2's copy keyword
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            masks = np.stack([self.coco.annToMask(a) for a in anns])  # (K, H, W)
        return torch.from_numpy(masks.astype(np.uint8))

    def _keypoints(self, anns: list[dict]) -> Tensor:
        """Tensor[K, P, 3] float32 of (x, y, v); all zeros for objects without keypoints."""
        out = np.zeros((len(anns), self.num_keypoints, 3), dtype=np.float32)
        for k, ann in enumerate(anns):
            values = ann.get("keypoints")
            if not values:
                continue
            if len(values) != 3 * self.num_keypoints:
                raise ValueError(
                    f"annotation {ann['id']} in {self.annotation_file} has {len(values)} keypoint values, "
                    f"expected 3 x {self.num_keypoints}"
                )
            out[k] = np.asarray(values, dtype=np.float32).reshape(self.num_keypoints, 3)
        return torch.from_numpy(out)
