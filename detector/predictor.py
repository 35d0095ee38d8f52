"""The Predictor owns turning raw images into tensors and detections into JSON-able dicts.

Input contract: images are HWC uint8 RGB numpy arrays, any size. Results are in each image's own pixels.
The model (``detector.modeling``) knows nothing of files, numpy or JSON; the CLIs and the service know
nothing of the model's insides.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from detector.mask_formats import DEFAULT_MASK_FORMAT, MASK_FORMATS
from detector.mask_paste import mask_windows
from detector.modeling.poolers import RoIAlignThreads
from detector.modeling.preset_names import DEFAULT_PRESET
from detector.modeling.rcnn import RCNN, build_model
from detector.modeling.speeds import SPEEDS, InferenceOptions
from detector.modeling.transform import model_input_size, padded_size
from detector.structures import Detections
from detector.weights import load_weights
from detector.weights.builtin import builtin_weights
from detector.weights.catalogue import resolve_catalogued, sha256_of, verify_if_catalogued
from detector.weights.model_metadata import model_config_for

log = logging.getLogger(__name__)


class Predictor:
    """``speed`` (``detector.modeling.speeds.SPEEDS``): "exact" runs the model as it is (torchvision's
    detections bit for bit); "fast" (default) folds FrozenBN into the convs, runs the trunk channels-last
    and wide 3x3 convs over large maps with NNPACK: the same maths, rounded otherwise, so the same detections up to float
    rounding; "bf16" adds bfloat16 autocast, approximate, and fast only on bf16 hardware. The fast modes
    run an optimised copy: ``self.model`` stays the model as given (to save, or to go on training); the
    copy holds new tensors only where it changes them (folded convs, other layouts) and shares the rest.
    On a GPU the copy is built on the CPU and moved: ``self.model``'s tensors that it replaced stay on the
    CPU, so that the GPU holds each weight once.

    On the CPU it owns the threads that split RoIAlign across cores (``poolers.RoIAlignThreads``), lent
    to its model only while it predicts; ``close()``, the end of a ``with`` block, or the Predictor's
    collection ends them."""

    def __init__(
        self,
        model: RCNN,
        *,
        device: str | torch.device = "cpu",
        name: str = "custom",
        weights_path: Path | None = None,
        weights_sha256: str | None = None,
        speed: str = "fast",
    ) -> None:
        """Changes nothing outside itself: process-wide settings (``detector.memory.keep_freed_memory``,
        for the CPU) are the caller's to apply, as the CLIs and the service do."""
        if speed not in SPEEDS:
            raise ValueError(f"speed must be one of {tuple(SPEEDS)}, got {speed!r}")
        self.device = torch.device(device)
        self.speed = speed
        if speed == "bf16":
            from detector.modeling.kernels import bf16_is_fast  # only this mode asks torch's private ops

            if not bf16_is_fast(self.device):
                log.warning("speed='bf16' on %s without native bf16: it is emulated, far slower than 'fast'", self.device)
        options = inference_options(speed, self.device)
        if speed == "exact" or self.device.type == "cpu":
            self.model = model.to(self.device).eval()
            self._net = self.model if speed == "exact" else self.model.optimize_for_inference(**vars(options))
        else:
            # Built where the model is (the CPU, where its file was read), then moved: the copy's tensors go to
            # the device (those it shares with the model move for both: Module.to moves parameters in place),
            # and the tensors the copy replaced (the convs before folding) stay on the CPU. Each weight is on
            # the device once (twice only for a model given on the device already).
            self.model = model.eval()
            self._net = model.optimize_for_inference(**vars(options)).to(self.device)
        self._roi_threads = RoIAlignThreads()  # used on the CPU only, made on first use
        weakref.finalize(self, self._roi_threads.close)
        self.name = name
        self.weights_path = Path(weights_path) if weights_path else None
        self.weights_sha256 = weights_sha256  # of the file at weights_path, where the builder hashed it
        self.class_names = list(model.cfg.class_names)
        self.has_masks = model.cfg.mask is not None
        self.has_keypoints = model.cfg.keypoint is not None

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        """The name of each keypoint, in the order of ``Detections.keypoints``' rows; () without keypoints."""
        return tuple(self.model.cfg.keypoint_names) if self.has_keypoints else ()

    @property
    def keypoint_classes(self) -> tuple[str, ...]:
        """The classes whose detections carry keypoints (``Detections.has_keypoints``); () without keypoints."""
        return tuple(self.model.cfg.keypoint_classes) if self.has_keypoints else ()

    @classmethod
    def from_preset(
        cls, preset: str | None, weights: str | Path | None = None, device: str | torch.device = "cpu", *,
        speed: str = "fast",
    ) -> Predictor:
        """Build the model of ``weights`` (a safetensors or torchvision file) and load them. A file that names
        its model (``detector.weights.model_metadata``) gives the classes, keypoints and input sizes, and
        its preset: ``preset`` may then be None, and must be the file's where given (ValueError naming
        both). Other files take ``preset``'s config (the default preset for None). Without weights, the
        preset's built-in weights are used where the project ships them (``detector.weights.builtin``),
        else the model is random, with a warning; ValueError when this installation lacks the built-in
        files altogether."""
        if weights is None:
            weights = builtin_weights(preset or DEFAULT_PRESET)
        else:  # a file, or the name of a catalogued checkpoint (downloaded when absent), which names its preset
            weights, entry = resolve_catalogued(weights, trunk=False)
            if entry is not None and preset not in (None, entry.preset):
                raise ValueError(f"{weights.name} is the catalogue's checkpoint of {entry.preset}, not of {preset}")
            preset = preset or (entry.preset if entry is not None else None)
        name, cfg = model_config_for(preset, weights)
        digest = None
        if weights is None:
            log.warning("preset %s has no built-in weights: the model is randomly initialised", name)
            model = build_model(cfg)
        else:
            digest = sha256_of(weights) if Path(weights).is_file() else None  # once: checked, then reported
            verify_if_catalogued(Path(weights), digest)
            with torch.device("meta"):  # no memory and no random initialisation for what the file replaces
                model = build_model(cfg)
            try:
                load_weights(model, weights, assign=True)  # the file's tensors, memory-mapped, not copied
            except ValueError as e:  # a file of other classes, say: the message names what it was loaded into
                raise ValueError(f"{e} (the model: {name} with {len(cfg.class_names) - 1} classes)") from None
        return cls(model, device=device, name=name, weights_path=weights, weights_sha256=digest, speed=speed)

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections of ``images`` (HWC uint8 RGB), on the CPU: one forward pass per padded size among them
        (``RCNN.predict``), so each image gets what it gets alone. The images go to the device as uint8 (a
        quarter of float32's bytes) and are resized and normalised there."""
        tensors = []
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"image {i}: expected an HxWx3 uint8 RGB array, got {desc}")
            tensors.append(to_device(image, self.device))
        if not tensors:
            return []
        with self._roi_threads.active():
            return [d.to("cpu") for d in self._net.predict(tensors)]

    def padded_size(self, image: np.ndarray) -> tuple[int, int]:
        """The padded (H, W) ``image`` (HxWx3) runs at: ``predict`` runs one forward pass per padded size
        among its images, so a batcher that gathers images of one padded size runs one pass per batch."""
        cfg = self.model.cfg.input
        return padded_size(model_input_size(image.shape[0], image.shape[1], cfg), cfg.size_divisible)

    def warm_up_batches(self, max_batch_size: int) -> list[list[np.ndarray]]:
        """The batches to run once before serving, on the thread that will serve (CUDA's and cuDNN's state
        is per thread): on the CPU one photo-sized image (the allocator's arena, the thread pools); on a GPU
        ``max_batch_size`` images in each orientation, so that the largest batch's memory is reserved (an
        out-of-memory shows at startup, not at the first busy minute) and the kernels of both shapes are
        loaded."""
        if self.device.type == "cpu":
            return [[np.zeros((*WARM_UP_SIZE, 3), np.uint8)]]
        height, width = WARM_UP_SIZE
        return [[np.zeros((h, w, 3), np.uint8)] * max_batch_size for h, w in ((height, width), (width, height))]

    def close(self) -> None:
        """End the threads this Predictor owns now rather than at its collection (a later predict makes
        them again)."""
        self._roi_threads.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def to_json(self, det: Detections, *, masks: str = DEFAULT_MASK_FORMAT, keypoints: bool = True) -> dict:
        """The predict/service schema: {"width", "height", "detections": [{"bbox", "score", "label",
        "category", "mask"?, "keypoints"?}]}, boxes as [x1, y1, x2, y2] in image pixels; "keypoints" only
        for the detections that have them (the model's keypoint classes)."""
        if masks not in MASK_FORMATS:
            raise ValueError(f"masks must be one of {MASK_FORMATS}, got {masks!r}")
        height, width = det.image_size
        items = [
            {"bbox": [round(v, 2) for v in box], "score": round(score, 4), "label": label, "category": self.class_names[label]}
            for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist())
        ]
        if det.mask_probs is not None and masks == "rle":
            for item, rle in zip(items, det.rle_masks()):
                item["mask"] = rle
        elif det.mask_probs is not None and masks == "polygon":
            for item, polygons in zip(items, mask_polygons(det)):
                item["mask"] = {"size": [height, width], "polygons": polygons}
        if det.keypoints is not None and keypoints:  # only detections of the keypoint classes have them
            for item, kps, has in zip(items, det.keypoints.tolist(), det.has_keypoints.tolist()):
                if has:
                    item["keypoints"] = [[round(x, 2), round(y, 2), round(s, 3)] for x, y, s in kps]
        return {"width": width, "height": height, "detections": items}


WARM_UP_SIZE = (480, 640)  # a typical photo's (H, W)


def inference_options(speed: str, device: torch.device) -> InferenceOptions:
    """``SPEEDS[speed]`` for ``device``: NNPACK is a CPU kernel, so elsewhere it is off. Left on, its only
    effect on a GPU would be its side effect: the 3x3 convs' weights kept in NCHW for it, which cuDNN then
    reorders at every call against the channels-last activations."""
    options = SPEEDS[speed]
    return options if device.type == "cpu" else replace(options, nnpack=False)


def to_device(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """An HxWx3 uint8 image -> a (3, H, W) uint8 tensor on ``device`` (a view of a HWC tensor). To a GPU
    through page-locked memory, copied without blocking: the copy overlaps the work queued before it on the
    stream, which orders it before the kernels that read it."""
    tensor = torch.from_numpy(np.array(image, copy=not image.flags.writeable))  # (H, W, 3), shares a writeable array
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    return tensor.permute(2, 0, 1)


def mask_polygons(det: Detections) -> list[list[list[float]]]:
    """Outer contours of each mask as COCO polygons ([x1, y1, x2, y2, ...] per part), in image pixels.

    Traced on each mask's in-box window (``mask_windows``) with a one-pixel zero border, which gives the
    contours of the full mask: outside its window a mask is zero. Never K x H x W."""
    import cv2  # only this output format needs OpenCV

    if det.mask_probs is None:
        raise ValueError("mask_polygons needs detections with masks (mask_probs is None)")
    out = []
    for window, y0, x0 in mask_windows(det.mask_probs, det.boxes, det.image_size, rule=det.mask_paste):
        if window.numel() == 0:
            out.append([])
            continue
        framed = np.pad(window.numpy().view(np.uint8), 1)  # (h+2, w+2) uint8, 0/1
        contours, _ = cv2.findContours(framed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0 - 1, y0 - 1))
        out.append([c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3])
    return out
