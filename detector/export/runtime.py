"""``OnnxPredictor``: a file written by ``python -m detector.export``, run by onnxruntime on the CPU, behind
the ``Predictor``'s interface (``predict``, ``to_json``, the class and keypoint names).

Input contract as the Predictor's: images are HWC uint8 RGB numpy arrays, any size; results are in each
image's own pixels. What the graph leaves to its caller (``detector.export.graph``'s docstring) is done
here with the model's own code, so that the detections are the torch backend's up to float rounding:
resizing and normalising (``transform.preprocess``), padding (``transform.batch_images``), decoding
keypoint heatmaps (``keypoint_head.heatmaps_to_keypoints``), mapping detections back to the input's
pixels (``transform.rescale_detections``). Images run as the torch backend runs them, one pass per padded
size among them, so that each image gets what it gets alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from detector.export.onnx_file import METADATA_KEY
from detector.modeling.keypoint_head import heatmaps_to_keypoints
from detector.modeling.transform import InputConfig, batch_images, padded_size, preprocess, rescale_detections
from detector.predictor import WARM_UP_SIZE, Predictor
from detector.structures import Detections
from detector.weights.catalogue import sha256_of


class OnnxPredictor:
    """``path``: an ONNX file of ``python -m detector.export``; ``threads``: onnxruntime's intra-op threads
    (None: its default, one per physical core). ValueError naming the file when it is not one of ours."""

    speed = "onnxruntime"  # where the service and the CLIs report the torch backend's speed mode

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort  # only this backend needs it (the "onnx" extra)

        self.weights_path = Path(path)
        if not self.weights_path.is_file():
            raise ValueError(f"ONNX file {self.weights_path} does not exist")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.weights_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types: not a valid model
            raise ValueError(f"{self.weights_path} is not an ONNX model onnxruntime can load: {e}") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is None:
            raise ValueError(f"{self.weights_path} has no {METADATA_KEY!r} metadata: export it with python -m detector.export")
        meta = json.loads(meta)
        self.name = meta["preset"]
        self.class_names = list(meta["class_names"])
        self.input = InputConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["input"].items()})
        self._keypoint_names = tuple(meta["keypoint_names"])
        self._keypoint_classes = tuple(meta["keypoint_classes"])
        self._keypoint_labels = tuple(meta["keypoint_labels"])
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.has_masks = "mask_probs" in self._outputs
        self.has_keypoints = "keypoint_heatmaps" in self._outputs
        self.device = torch.device("cpu")
        self.weights_sha256 = sha256_of(self.weights_path)

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return self._keypoint_names if self.has_keypoints else ()

    @property
    def keypoint_classes(self) -> tuple[str, ...]:
        return self._keypoint_classes if self.has_keypoints else ()

    to_json = Predictor.to_json  # one schema for both backends: it reads only class_names

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections of ``images`` (HWC uint8 RGB), on the CPU: one onnxruntime run per padded size among
        them, as ``Predictor.predict``."""
        tensors = []
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"image {i}: expected an HxWx3 uint8 RGB array, got {desc}")
            tensors.append(torch.from_numpy(np.array(image, copy=not image.flags.writeable)).permute(2, 0, 1))
        with torch.inference_mode():
            resized = [preprocess(t, self.input) for t in tensors]
            groups: dict[tuple[int, int], list[int]] = {}
            for i, image in enumerate(resized):
                groups.setdefault(padded_size(image.shape[-2:], self.input.size_divisible), []).append(i)
            detections: list[Detections | None] = [None] * len(images)
            for indices in groups.values():
                for i, det in zip(indices, self._run([resized[i] for i in indices])):
                    detections[i] = rescale_detections(det, tuple(tensors[i].shape[-2:]))
        return detections

    def _run(self, images: list[torch.Tensor]) -> list[Detections]:
        """Resized, normalised images (3, H', W') -> detections in those images' pixels."""
        sizes = np.array([list(i.shape[-2:]) for i in images], dtype=np.int64)  # (N, 2)
        batch = batch_images(images, self.input.size_divisible).numpy()  # (N, 3, Hp, Wp)
        out = dict(zip(self._outputs, self.session.run(None, {"images": batch, "image_sizes": sizes})))
        out = {k: torch.from_numpy(v) for k, v in out.items()}
        keypoints = has_keypoints = None
        if self.has_keypoints:
            has_keypoints = torch.isin(out["labels"], torch.tensor(self._keypoint_labels, dtype=torch.int64))  # (D,)
            keypoints = out["boxes"].new_zeros((len(out["labels"]), out["keypoint_heatmaps"].shape[1], 3))  # (D, P, 3)
            if has_keypoints.any():
                keypoints[has_keypoints] = heatmaps_to_keypoints(out["keypoint_heatmaps"], out["boxes"][has_keypoints])
        results = []
        for i, size in enumerate(sizes.tolist()):
            index = torch.nonzero(out["batch_index"] == i).flatten()  # this image's rows, best first
            results.append(Detections(
                boxes=out["boxes"][index], scores=out["scores"][index], labels=out["labels"][index],
                image_size=tuple(size), mask_probs=out["mask_probs"][index] if self.has_masks else None,
                keypoints=None if keypoints is None else keypoints[index],
                has_keypoints=None if has_keypoints is None else has_keypoints[index],
            ))
        return results

    def warm_up_batches(self, max_batch_size: int) -> list[list[np.ndarray]]:
        """What the service runs once before serving (``Predictor.warm_up_batches``): on the CPU, one
        photo-sized image."""
        return [[np.zeros((*WARM_UP_SIZE, 3), np.uint8)]]

    def close(self) -> None:
        """Nothing to end (onnxruntime's threads live with the session); the Predictor's interface."""

    def __enter__(self) -> OnnxPredictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
