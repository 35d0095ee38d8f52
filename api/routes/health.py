"""GET /healthz (the process is alive) and GET /readyz (it can take traffic); never behind a key.

Open to anyone, so they say only "ok", "ready", "loading", "shutting down", "stalled" or "failed: see
the server log": why the model failed to load (its path, the exception), or why its device failed (a CUDA
error), is in the log, not here. Both probes fail once the device failed, so that an orchestrator restarts
the process: every later forward pass would fail too."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from api.deps import LOAD_FAILED, ServiceDep
from api.schemas import HealthResponse, ReadinessResponse, errors

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, responses=errors(503))
async def healthz(service: ServiceDep) -> HealthResponse:
    """Alive: the event loop answers. 503 only if the model failed to load or its device failed (restart
    to retry)."""
    if service.failure is not None:
        raise HTTPException(503, LOAD_FAILED)
    return HealthResponse()


@router.get("/readyz", response_model=ReadinessResponse, responses=errors(503))
async def readyz(service: ServiceDep) -> ReadinessResponse:
    """Ready: the model is loaded and warmed up, no forward pass is stuck, and the server is not
    shutting down."""
    if service.failure is not None:
        raise HTTPException(503, LOAD_FAILED)
    if service.draining:
        raise HTTPException(503, "shutting down")
    if not service.ready:
        raise HTTPException(503, "loading")
    if service.batcher is not None and service.batcher.stalled:
        raise HTTPException(503, "stalled: a forward pass is past forward_timeout_s")
    return ReadinessResponse()
