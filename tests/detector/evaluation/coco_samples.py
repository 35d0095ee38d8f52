"""Ground truths to score against and results to score: a small COCO dict built here, the tiny COCO
sample in shared/, ground truth turned into results (perfect or perturbed)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                  "left_knee", "right_knee", "left_ankle", "right_ankle"]


def _box_ann(ann_id, image_id, category_id, x, y, w, h, *, iscrowd=0, keypoints=None):
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h],
           "area": float(w * h), "iscrowd": iscrowd,
           "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    if keypoints is not None:
        ann["keypoints"] = keypoints
        ann["num_keypoints"] = sum(1 for v in keypoints[2::3] if v > 0)
    return ann


def _person_keypoints(x, y, w, h, labelled=17):
    """17 keypoints spread inside the box, the first ``labelled`` visible, the others (0, 0, 0)."""
    points = []
    for i in range(17):
        if i < labelled:
            points += [x + (i % 4 + 0.5) * w / 4, y + (i // 4 + 0.5) * h / 5, 2]
        else:
            points += [0, 0, 0]
    return points


def small_coco_dict() -> dict:
    """3 images, categories person (id 1, with keypoints) and dog (id 18, a gap before it), a crowd."""
    images = [{"id": 10, "file_name": "a.png", "height": 60, "width": 80},
              {"id": 11, "file_name": "b.png", "height": 50, "width": 70},
              {"id": 12, "file_name": "c.png", "height": 40, "width": 40}]
    annotations = [
        _box_ann(1, 10, 1, 5, 5, 30, 45, keypoints=_person_keypoints(5, 5, 30, 45)),
        _box_ann(2, 10, 18, 40, 20, 35, 30),
        _box_ann(3, 11, 1, 10, 2, 20, 40, keypoints=_person_keypoints(10, 2, 20, 40, labelled=9)),
        _box_ann(4, 11, 1, 40, 10, 25, 35, keypoints=_person_keypoints(40, 10, 25, 35, labelled=0)),
        _box_ann(5, 11, 18, 2, 30, 6, 6, iscrowd=1),
        _box_ann(6, 12, 18, 4, 4, 30, 30),
    ]
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": KEYPOINT_NAMES,
                   "skeleton": []},
                  {"id": 18, "name": "dog", "supercategory": "animal"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def ground_truth_as_results(coco: COCO) -> list[dict]:
    """Each scorable ground-truth object as a result of score 1: box, RLE mask, and keypoints where labelled."""
    results = []
    for ann in coco.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        rle = coco.annToRLE(ann)
        result = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0,
                  "bbox": list(ann["bbox"]),
                  "segmentation": {"size": list(rle["size"]), "counts": _str_counts(rle["counts"])}}
        if ann.get("num_keypoints", 0) > 0:
            result["keypoints"] = list(ann["keypoints"])
        results.append(result)
    return results


def perturbed_results(coco: COCO, seed: int = 0) -> list[dict]:
    """Ground truth with moved boxes, shifted masks, jittered keypoints, random scores, some dropped
    and some false positives: results whose AP is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    results = []
    for r in ground_truth_as_results(coco):
        if rng.random() < 0.2:
            continue
        r = copy.deepcopy(r)
        r["score"] = float(rng.random())
        x, y, w, h = r["bbox"]
        r["bbox"] = [x + float(rng.normal(0, 0.1 * w)), y + float(rng.normal(0, 0.1 * h)), w, h]
        with warnings.catch_warnings():  # pycocotools' decode warns under numpy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = mask_utils.decode(r["segmentation"])
        mask = np.roll(mask, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
        rle = mask_utils.encode(np.asfortranarray(mask))
        r["segmentation"] = {"size": list(rle["size"]), "counts": _str_counts(rle["counts"])}
        if "keypoints" in r:
            kps = np.array(r["keypoints"], dtype=float).reshape(-1, 3)
            kps[:, :2] += rng.normal(0, 0.05 * max(w, h), size=(len(kps), 2))
            r["keypoints"] = kps.reshape(-1).tolist()
        results.append(r)
        if rng.random() < 0.3:  # a false positive of the same class in the same image
            fp = copy.deepcopy(r)
            fp["score"] = float(rng.random())
            fp["bbox"] = [fp["bbox"][0] + w, fp["bbox"][1], w, h]
            results.append(fp)
    return results


def _str_counts(counts) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


class GroundTruthPredictor:
    """A stand-in for ``detector.predictor.Predictor`` that "detects" an image's ground truth.

    It knows the images by their size (each image of ``coco`` must have its own); keypoints not
    labelled are put at the box's centre, where COCO's OKS finds persons without keypoints.
    """

    has_masks = False
    has_keypoints = True

    def __init__(self, coco: COCO):
        self.coco = coco
        categories = coco.loadCats(sorted(coco.getCatIds()))
        self.class_names = ["__background__"] + [c["name"] for c in categories]
        self.label_of = {c["id"]: label for label, c in enumerate(categories, start=1)}
        self.image_by_size = {(im["height"], im["width"]): im["id"] for im in coco.dataset["images"]}
        assert len(self.image_by_size) == len(coco.dataset["images"]), "two images of one size"
        self.batch_sizes: list[int] = []

    def predict(self, images):
        self.batch_sizes.append(len(images))
        return [self._detect(self.image_by_size[image.shape[:2]]) for image in images]

    def _detect(self, image_id: int):
        import torch

        from detector.structures import Detections

        anns = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        keypoints = torch.zeros(len(anns), 17, 3)
        for k, ann in enumerate(anns):
            points = torch.tensor(ann.get("keypoints", [0] * 51), dtype=torch.float32).reshape(17, 3)
            centre = (boxes[k, :2] + boxes[k, 2:]) / 2
            keypoints[k, :, :2] = torch.where(points[:, 2:] > 0, points[:, :2], centre)
            keypoints[k, :, 2] = 5.0  # a heatmap logit
        image = self.coco.imgs[image_id]
        has_keypoints = torch.tensor(["keypoints" in self.coco.cats[a["category_id"]] for a in anns], dtype=torch.bool)
        return Detections(boxes=boxes, scores=torch.ones(len(anns)),
                          labels=torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
                          image_size=(image["height"], image["width"]), keypoints=keypoints,
                          has_keypoints=has_keypoints)  # as a model gives them: for persons only


def write_images(coco: COCO, images_dir: Path) -> None:
    """A grey PNG of each image's size under its file name."""
    from PIL import Image

    images_dir.mkdir(parents=True, exist_ok=True)
    for image in coco.dataset["images"]:
        Image.new("RGB", (image["width"], image["height"]), (128, 128, 128)).save(images_dir / image["file_name"])
