"""The service's settings: one pydantic-settings class, read from ``DETECTOR_*`` environment
variables, overridable by ``python -m api`` flags (see ``api/__main__.py``)."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from detector.export.backends import BACKENDS, DEFAULT_BACKEND
from detector.memory import FLAG_HELP
from detector.modeling.preset_names import DEFAULT_PRESET
from detector.modeling.speeds import DEFAULT_SPEED, SPEED_HELP, SPEED_NAMES


# From the batcher's close to uvicorn's: answering the 503s, closing the connections, the lifespan's end.
SHUTDOWN_MARGIN_S = 5.0


def _cores() -> int:
    """The cores this process may run on (a container's CPU set), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETECTOR_", frozen=True)

    # The model. Weights go through the engine's loaders (Predictor.from_preset): a file that names its
    # model (written by detector.train or detector.weights convert) needs no preset.
    preset: str | None = Field(None, description="model preset name (detector/modeling/presets.py); default: "
                               f"the one the weights file names, else {DEFAULT_PRESET}")
    weights: str | None = Field(None, description="weights file or catalogue name; default: the preset's own")
    device: str = Field("cpu", description="torch device, e.g. cpu, cuda, cuda:1")
    speed: Literal[SPEED_NAMES] = Field(DEFAULT_SPEED, description=SPEED_HELP)
    # The onnxruntime backend serves a file of python -m detector.export (CPU): the file is the model, so
    # preset and weights stay unset.
    backend: Literal[BACKENDS] = Field(DEFAULT_BACKEND, description="torch, or onnxruntime with onnx")
    onnx: str | None = Field(None, description="the ONNX file (python -m detector.export) of backend onnxruntime")

    # Applied by python -m api at startup (process-wide), not by create_app.
    keep_freed_memory: bool = Field(True, description=FLAG_HELP)
    # cuDNN times its algorithms for each new input shape and keeps the fastest: it pays where shapes repeat
    # (batch_by_size, few image sizes) and costs a timing run at every new one otherwise.
    cudnn_benchmark: bool = Field(False, description="on a CUDA device, let cuDNN time and pick its convolution "
                                  "algorithms per input shape (torch.backends.cudnn.benchmark)")

    # Batching: a GPU forward of 4 images costs little more than one; 10 ms of waiting is small
    # next to a forward pass (tens of ms), is not paid when the server is already busy, nor by
    # requests that come one at a time (api/batcher.py).
    max_batch_size: int = Field(4, ge=1, le=256, description="most images in one forward pass")
    max_wait_ms: float = Field(10.0, ge=0, description="longest a request waits for others to batch with")
    queue_size: int = Field(64, ge=1, description="requests waiting for the model; beyond it: 503")
    # The model runs one forward pass per padded size in a batch: batching by size makes each batch one pass
    # (at the cost of waiting for company of one's own size). Off by default; bench/gpu_check.py measures it.
    batch_by_size: bool = Field(False, description="batch only images of one padded size together (one forward pass a batch)")
    request_timeout_s: float = Field(30.0, gt=0, description="longest a request may wait in the queue")
    # A forward pass cannot be stopped from outside; past this, its requests get 504 and /readyz 503
    # (so that an orchestrator restarts the process) until it ends. 45 s: a large model, batch and image
    # on a small CPU take up to ~1 min, far less on a GPU; no more than shutdown_timeout_s, so that a
    # pass that is not stuck still ends within a shutdown.
    forward_timeout_s: float = Field(45.0, gt=0, description="longest a forward pass may run before its requests get 504")
    # The bound on a shutdown (SIGTERM): the queue is served for at most this long, then every request
    # left (one whose forward pass is stuck too) is answered 503 and the process exits. uvicorn's own
    # graceful timeout is this plus SHUTDOWN_MARGIN_S; docker-compose.yml's stop_grace_period (60 s)
    # is above both.
    shutdown_timeout_s: float = Field(
        45.0, gt=0, description="at shutdown, longest the queue is served before the requests left get 503"
    )

    # Input limits: 20 MB holds any sensible photo; 40 MP is a 7700 x 5200 image, 120 MB as RGB.
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest request body (413 beyond)")
    max_pixels: int = Field(40_000_000, ge=1, description="largest decoded image, width x height (413 beyond)")

    # Each request that reads and decodes its body (or draws its result) holds one or two full-size images
    # (a 40 MP image is 120 MB as RGB, about 2.5x that while it is decoded): one per core keeps the cores busy,
    # four at most keeps that memory within a small server's (api/decode.py: WorkSlots). Requests waiting
    # for one count toward queue_size.
    decode_concurrency: int = Field(
        default_factory=lambda: min(_cores(), 4), ge=1,
        description="requests reading and decoding a body, or drawing a result, at once (default: the cores, at most 4)",
    )
    # uvicorn answers 503 to connections past this. Above queue_size + max_batch_size + decode_concurrency,
    # so the queue refuses first (with Retry-After) and the probes still get through.
    limit_concurrency: int = Field(100, ge=1, description="most connections and requests at once; beyond it: 503")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    # NoDecode: read the variable as "key1,key2" rather than as JSON.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="bearer keys; when set, every route but /healthz and /readyz needs one"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("preset", "weights", "onnx", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value
