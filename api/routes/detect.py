"""POST /detect (JSON) and POST /detect/render (PNG): one image in, its detections out."""

from __future__ import annotations

import time

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from api.batcher import BatcherError
from api.deps import DetectOptionsDep, ReadyServiceDep, Service, http_error, receive_image, require_api_key
from api.render import render_png
from api.schemas import DetectionResponse, DetectOptions, Timings, errors
from detector.mask_paste import mask_windows
from detector.structures import Detections

router = APIRouter(tags=["detect"], dependencies=[Depends(require_api_key)])

# The body is read by hand (two content types), so it is described here for the OpenAPI document.
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image (JPEG, PNG, WebP, BMP, GIF or MPO) as a multipart file field `image`, or as the raw body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_ERRORS = errors(400, 401, 413, 415, 422, 500, 503, 504)


# exclude_none: a detection without a mask or keypoints (masks=none, a class without keypoints) has no such field.
@router.post("/detect", response_model=DetectionResponse, response_model_exclude_none=True, responses=_ERRORS,
             openapi_extra=_IMAGE_BODY)
async def detect(request: Request, service: ReadyServiceDep, options: DetectOptionsDep) -> DetectionResponse:
    """Detect objects in one image."""
    _, _, result, timings = await _detect(request, service, options)
    return DetectionResponse(**result, model=service.predictor.name, timings=timings)


@router.post(
    "/detect/render",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the image with its detections drawn"}, **_ERRORS},
    openapi_extra=_IMAGE_BODY,
)
async def detect_render(request: Request, service: ReadyServiceDep, options: DetectOptionsDep) -> Response:
    """Detect objects in one image and draw them on it (boxes, labels, masks, keypoints)."""
    # The masks are drawn from their in-box windows: the answer's own mask encoding would paste each twice.
    image, det, result, timings = await _detect(request, service, options, encode_masks=False)
    draw_masks = options.masks != "none" and det.mask_probs is not None
    async with service.slots.slot():  # a canvas and a PNG the size of the image: bounded like decoding
        png = await anyio.to_thread.run_sync(_render, image, det, result, draw_masks)
    return Response(png, media_type="image/png", headers={"Server-Timing": _server_timing(timings)})


async def _detect(
    request: Request, service: Service, options: DetectOptions, *, encode_masks: bool = True
) -> tuple[np.ndarray, Detections, dict, Timings]:
    """Decode, wait for a batched forward, then select and encode this request's detections (their masks
    in ``options.masks`` unless ``encode_masks`` is False)."""
    try:
        # A full queue refuses before the body is read and decoded; requests waiting for a slot count toward it.
        service.batcher.ensure_room(ahead=service.slots.waiting)
        async with service.slots.slot():
            image = await receive_image(request, service.settings)
        outcome = await service.batcher.submit(image)
    except BatcherError as exc:
        raise http_error(exc) from exc
    labels = _labels(service, options)
    masks = options.masks if encode_masks else "none"
    det, result = await anyio.to_thread.run_sync(_encode, service, outcome.value, options, labels, masks)
    started = getattr(request.state, "started", None) or time.perf_counter()
    timings = Timings(
        queue_ms=outcome.queue_s * 1000,
        inference_ms=outcome.run_s * 1000,
        total_ms=(time.perf_counter() - started) * 1000,
    )
    return image, det, result, timings


def _labels(service: Service, options: DetectOptions) -> list[int] | None:
    names = options.class_names()
    if names is None:
        return None
    wanted = set(names)
    return [label for label, name in enumerate(service.predictor.class_names) if label > 0 and name in wanted]


def _encode(
    service: Service, det: Detections, options: DetectOptions, labels: list[int] | None, masks: str
) -> tuple[Detections, dict]:
    det = det.select(options.score_threshold, labels, options.max_detections)
    return det, service.predictor.to_json(det, masks=masks, keypoints=options.keypoints)


def _render(image: np.ndarray, det: Detections, result: dict, draw_masks: bool) -> bytes:
    """The masks are drawn from their in-box windows (never K full masks), each pasted once."""
    windows = None
    if draw_masks:
        windows = ((w.numpy(), y0, x0)
                   for w, y0, x0 in mask_windows(det.mask_probs, det.boxes, det.image_size, rule=det.mask_paste))
    return render_png(image, result, masks=windows)


def _server_timing(timings: Timings) -> str:
    return f"queue;dur={timings.queue_ms:.1f}, inference;dur={timings.inference_ms:.1f}, total;dur={timings.total_ms:.1f}"
