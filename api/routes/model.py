"""GET /v1/model: what is being served."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import ReadyServiceDep, require_api_key
from api.schemas import ModelInfoResponse, errors

router = APIRouter(tags=["model"], dependencies=[Depends(require_api_key)])


@router.get("/v1/model", response_model=ModelInfoResponse, responses=errors(401, 503))
async def model_info(service: ReadyServiceDep) -> ModelInfoResponse:
    """The preset, its classes and keypoints, the weights file and its SHA-256, the device and speed."""
    predictor = service.predictor
    return ModelInfoResponse(
        preset=predictor.name,
        classes=list(predictor.class_names),
        masks=predictor.has_masks,
        keypoints=predictor.has_keypoints,
        keypoint_classes=list(predictor.keypoint_classes),
        keypoint_names=list(predictor.keypoint_names),
        weights=predictor.weights_path.name if predictor.weights_path is not None else None,
        weights_sha256=service.weights_sha256,
        device=str(predictor.device),
        speed=predictor.speed,
        max_batch_size=service.settings.max_batch_size,
    )

