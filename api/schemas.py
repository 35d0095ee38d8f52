"""Request options and response bodies, named by role; ``ERRORS`` documents each error status."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from detector.mask_formats import DEFAULT_MASK_FORMAT, MASK_FORMATS

# ---- requests


class DetectOptions(BaseModel):
    """Query options shared by POST /detect and POST /detect/render."""

    model_config = ConfigDict(extra="ignore")

    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="drop detections scoring below this")
    max_detections: int = Field(100, ge=1, le=1000, description="keep at most this many, best first")
    classes: str | None = Field(None, description="comma-separated class names to keep (GET /v1/model lists them)")
    masks: Literal[MASK_FORMATS] = Field(DEFAULT_MASK_FORMAT, description="mask encoding, or none")
    keypoints: bool = Field(True, description="include keypoints (keypoint models only)")

    def class_names(self) -> list[str] | None:
        """The names in ``classes``, or None (keep every class) when it names none."""
        names = [name.strip() for name in (self.classes or "").split(",") if name.strip()]
        return names or None


# ---- responses


class ErrorResponse(BaseModel):
    detail: str = Field(description="what went wrong, for a person to read")


class RLEMask(BaseModel):
    size: list[int] = Field(description="[height, width] of the image")
    counts: str = Field(description="COCO compressed run-length encoding, column-major")


class PolygonMask(BaseModel):
    size: list[int] = Field(description="[height, width] of the image")
    polygons: list[list[float]] = Field(description="outer contours, each [x1, y1, x2, y2, ...] (COCO polygons)")


class Detection(BaseModel):
    bbox: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in image pixels")
    score: float
    label: int = Field(description="model label, an index into GET /v1/model's classes")
    category: str = Field(description="class name")
    mask: RLEMask | PolygonMask | None = Field(None, description="absent with masks=none or a model without masks")
    keypoints: list[list[float]] | None = Field(
        None, description="[[x, y, score], ...] per keypoint; absent for classes without keypoints (all but "
        "person in the presets), with keypoints=false or a model without keypoints"
    )


class Timings(BaseModel):
    queue_ms: float = Field(description="waiting for the model, including batching")
    inference_ms: float = Field(description="the batched forward pass this image was part of")
    total_ms: float = Field(description="from the request's arrival to this answer")


class DetectionResponse(BaseModel):
    width: int
    height: int
    detections: list[Detection]
    model: str = Field(description="preset name of the model that answered")
    timings: Timings


class ModelInfoResponse(BaseModel):
    preset: str
    classes: list[str] = Field(description="index == label; classes[0] is the background")
    masks: bool = Field(description="the model predicts masks")
    keypoints: bool = Field(description="the model predicts keypoints")
    keypoint_classes: list[str] = Field(description="the classes whose detections carry keypoints (empty without)")
    keypoint_names: list[str] = Field(description="the name of each keypoint, in the order of a detection's "
                                      "keypoints (empty without)")
    weights: str | None = Field(description="weights file name, or null for random initialisation")
    weights_sha256: str | None
    device: str
    speed: str = Field(description="exact, fast or bf16 (detector/modeling/fast_inference.py)")
    max_batch_size: int


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessResponse(BaseModel):
    status: Literal["ready"] = "ready"


_ERROR_DESCRIPTIONS = {
    400: "Malformed request (e.g. a broken multipart body)",
    401: "Missing or invalid API key (send Authorization: Bearer <key>)",
    413: "Request body or decoded image too large",
    415: "Not an image, or an image format that is not accepted",
    422: "Invalid query option or undecodable image",
    500: "Inference failed for this image",
    503: "Not ready, shutting down, or too busy (see Retry-After)",
    504: "Waited too long in the queue",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting the given error statuses with ``ErrorResponse``."""
    return {status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}
