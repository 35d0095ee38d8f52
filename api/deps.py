"""The service's state and what routes depend on: ``Annotated[..., Depends(...)]`` aliases.

HTTP errors are raised here and in the routes, nowhere deeper: ``decode`` and ``batcher`` raise
their own exceptions, and ``http_error`` maps them to a status.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Annotated

import anyio
import numpy as np
from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.batcher import (BatcherClosed, BatcherError, BatchFailed, DeadlineExceeded, DeviceFailed, OutOfMemory,
                         QueueFull)
from api.decode import ImageError, ImageTooLarge, UnsupportedImage, WorkSlots, decode_image
from api.metrics import Metrics
from api.schemas import DetectOptions
from api.settings import Settings

if TYPE_CHECKING:
    from api.batcher import Batcher
    from detector.predictor import Predictor


@dataclass
class Service:
    """Everything one app serves with; ``app.state.service``. The lifespan fills it in."""

    settings: Settings
    metrics: Metrics
    predictor: Predictor | None = None  # given to create_app, or loaded by the lifespan
    batcher: Batcher | None = None
    weights_sha256: str | None = None
    ready: bool = False  # loaded and warmed up
    draining: bool = False  # SIGTERM received or shutting down: readiness fails
    load_error: str | None = None  # why the model failed to load: for the log and tests, never sent to clients
    slots: WorkSlots = field(init=False)  # bodies read and decoded, results drawn, at once
    loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)  # set by the lifespan

    def __post_init__(self) -> None:
        self.slots = WorkSlots(self.settings.decode_concurrency)

    @property
    def failure(self) -> str | None:
        """Why this process cannot serve until it is restarted, for the log: the model failed to load, or
        its device failed (a CUDA error that every later forward pass would repeat). None when healthy."""
        if self.load_error is not None:
            return self.load_error
        return self.batcher.failed if self.batcher is not None else None

    def drain(self) -> None:
        """Shutting down: readiness fails at once; the batcher goes on serving, for ``shutdown_timeout_s``
        at most, then every request still waiting for the model gets 503 (``Batcher.abandon``). Safe from
        a signal handler on the event loop's thread."""
        self.draining = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._abandon_later)

    def _abandon_later(self) -> None:
        if self.batcher is not None:
            self.loop.call_later(self.settings.shutdown_timeout_s, self.batcher.abandon)


# What a client is told when the model failed to load or its device failed: the reason (a server path, an
# exception's text) is for the operator, in the server log.
LOAD_FAILED = "failed: see the server log"


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def get_ready_service(service: ServiceDep) -> Service:
    if service.failure is not None:
        raise HTTPException(503, LOAD_FAILED)
    if not service.ready:
        raise HTTPException(503, "loading", headers={"Retry-After": "5"})
    return service


ReadyServiceDep = Annotated[Service, Depends(get_ready_service)]

_bearer = HTTPBearer(auto_error=False, description="one of the keys in DETECTOR_API_KEYS, when it is set")


def require_api_key(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    keys = service.settings.api_keys
    if not keys:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    # compare_digest against every key: the time taken does not tell how close a guess was.
    if not any([hmac.compare_digest(given, key.encode()) for key in keys]):
        raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


def get_detect_options(options: Annotated[DetectOptions, Query()], service: ReadyServiceDep) -> DetectOptions:
    """The query options, with the class filter checked against the model's classes."""
    names = options.class_names()
    if names is not None:
        unknown = sorted(set(names) - set(service.predictor.class_names[1:]))
        if unknown:
            raise HTTPException(422, f"unknown classes {unknown}; GET /v1/model lists the model's classes")
    return options


DetectOptionsDep = Annotated[DetectOptions, Depends(get_detect_options)]


async def receive_image(request: Request, settings: Settings) -> np.ndarray:
    """The request's image, decoded off the event loop: a multipart file field ``image``,
    or the whole body when it is sent as image/* (or application/octet-stream)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "the multipart body needs a file field named 'image'")
            data = await upload.read()
    elif media_type.startswith("image/") or media_type == "application/octet-stream":
        data = await request.body()
    else:
        raise HTTPException(
            415, f"send the image as a multipart/form-data file field 'image' or as an image/* body, not {media_type!r}"
        )
    try:
        return await anyio.to_thread.run_sync(partial(decode_image, data, max_pixels=settings.max_pixels))
    except ImageError as exc:
        raise http_error(exc) from exc


def http_error(exc: ImageError | BatcherError) -> HTTPException:
    """The status for each way an image or a request can fail below the HTTP layer."""
    if isinstance(exc, QueueFull):
        return HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, OutOfMemory):
        return HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, BatcherClosed):
        return HTTPException(503, str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, DeviceFailed):  # no Retry-After: this process will not recover; its orchestrator restarts it
        return HTTPException(503, str(exc))
    if isinstance(exc, DeadlineExceeded):
        return HTTPException(504, str(exc))
    if isinstance(exc, BatchFailed):
        return HTTPException(500, str(exc))
    if isinstance(exc, ImageTooLarge):
        return HTTPException(413, str(exc))
    if isinstance(exc, UnsupportedImage):
        return HTTPException(415, str(exc))
    return HTTPException(422, str(exc))
