"""GET /metrics: Prometheus text, from the app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import ServiceDep, require_api_key
from api.schemas import errors

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}, **errors(401)},
)
async def metrics(service: ServiceDep) -> Response:
    """Requests by route and status, latencies, batch sizes, queue depth."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
