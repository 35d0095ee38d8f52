"""``create_app`` builds the service. Nothing is loaded at import: the lifespan loads the model
(in the background, so /healthz answers while it loads and /readyz says 503 until it is warm)
and, at shutdown, serves every queued request before it returns. Neither changes the process
(malloc, Pillow's limits): the entry point does that (``api/__main__.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.batcher import Batcher
from api.decode import BodySizeLimit
from api.deps import Service
from api.metrics import Metrics, RequestMetrics
from api.routes import detect, health, metrics, model, page
from api.settings import Settings
from detector.export.backends import load_predictor
from detector.predictor import Predictor
from detector.weights.catalogue import sha256_of

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, predictor: Predictor | None = None) -> FastAPI:
    """The app; it loads ``Predictor.from_preset(settings.preset, settings.weights, ...)`` at startup unless
    given one."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="detector",
        summary="Faster / Mask / Keypoint R-CNN detections over HTTP, batched across requests",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = Service(settings=settings, metrics=Metrics(), predictor=predictor)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    # add_middleware wraps: the last added runs first. Metrics see every answer, 413s included.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=app.state.service.metrics)
    for router in (detect.router, health.router, model.router, metrics.router, page.router):
        app.include_router(router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load in the background (/healthz answers meanwhile); at shutdown, serve the queue first."""
    service: Service = app.state.service
    # Started afresh each time: a lifespan run again on the same app (a test client entered twice)
    # must not keep the last run's "shutting down", nor look ready before its batcher is started.
    service.ready = service.draining = False
    service.loop = asyncio.get_running_loop()  # for Service.drain, called from the SIGTERM handler
    loads_its_own = service.predictor is None
    loading = asyncio.create_task(_load(service), name="load-model")
    try:
        yield
    finally:
        service.draining = True
        service.metrics.model_ready.set(0)
        if not loading.done():
            loading.cancel()  # a load running in its thread still finishes before the process exits
            with contextlib.suppress(asyncio.CancelledError):
                await loading
        if service.batcher is not None:
            # Serves what is queued, within the bound; a close begun at SIGTERM (Service.drain) is waited for.
            await service.batcher.close(service.settings.shutdown_timeout_s)
        stuck = service.batcher is not None and service.batcher.busy  # a pass abandoned at shutdown still runs
        if loads_its_own and service.predictor is not None and not stuck:
            await asyncio.to_thread(service.predictor.close)  # its RoIAlign threads, once their work is done
        logger.info("drained; shut down")


async def _load(service: Service) -> None:
    """Load the model unless the app was given one, warm it up on the batcher's forward thread, start the
    batcher, turn ready."""
    settings, predictor, batcher = service.settings, service.predictor, None
    try:
        if predictor is None:
            what = settings.onnx or settings.preset or settings.weights or "the default preset"
            logger.info("loading %s on %s", what, settings.device)
            predictor = await asyncio.to_thread(
                load_predictor, settings.backend, settings.preset, settings.weights, settings.device,
                speed=settings.speed, onnx=settings.onnx,
            )
        if predictor.weights_sha256 is not None:  # hashed once, by Predictor.from_preset
            service.weights_sha256 = predictor.weights_sha256
        elif predictor.weights_path is not None:
            service.weights_sha256 = await asyncio.to_thread(sha256_of, Path(predictor.weights_path))
        batcher = Batcher(
            predictor.predict,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_size=settings.queue_size,
            timeout_s=settings.request_timeout_s,
            forward_timeout_s=settings.forward_timeout_s,
            observer=service.metrics,
            key=predictor.padded_size if settings.batch_by_size else None,
        )
        # On the thread that will serve (CUDA's and cuDNN's state is per thread), at the largest batch on a GPU.
        for images in predictor.warm_up_batches(settings.max_batch_size):
            await batcher.run_on_forward_thread(predictor.predict, images)
    except Exception as exc:
        if batcher is not None:
            batcher.abandon()
        # Logged once, with the file and the reason; the probes only say "failed: see the server log".
        # A ValueError is ours and names the file (no traceback needed); anything else gets its traceback.
        service.load_error = f"{type(exc).__name__}: {exc}"
        logger.error("the model failed to load (preset %s, weights %s): %s", settings.preset or "unset",
                     settings.weights or "the preset's built-in weights", service.load_error,
                     exc_info=not isinstance(exc, ValueError))
        return
    batcher.start()
    service.metrics.track_queue_depth(lambda: batcher.depth)
    service.predictor, service.batcher = predictor, batcher
    service.ready = True
    service.metrics.model_ready.set(1)
    logger.info("ready: %s on %s", predictor.name, predictor.device)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable string, like every other error here: "score_threshold: Input should be ..."."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"][1:]) or str(error["loc"][0])
        problems.append(f"{where}: {error['msg']}")
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500 without the exception: its text and traceback go to the server log (Starlette logs it)."""
    return JSONResponse({"detail": "internal server error"}, status_code=500)
