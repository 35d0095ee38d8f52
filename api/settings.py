"""The service's settings: one pydantic-settings class, read from ``DETECTOR_*`` environment
variables, overridable by ``python -m api`` flags (see ``api/__main__.py``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from detector.memory import FLAG_HELP
from detector.modeling.preset_names import DEFAULT_PRESET
from detector.modeling.speeds import DEFAULT_SPEED, SPEED_HELP, SPEED_NAMES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETECTOR_", frozen=True)

    # The model. Weights go through the engine's loaders (Predictor.from_preset): a file that names its
    # model (written by detector.train or detector.weights convert) needs no preset.
    preset: str | None = Field(None, description="model preset name (detector/modeling/presets.py); default: "
                               f"the one the weights file names, else {DEFAULT_PRESET}")
    weights: str | None = Field(None, description="weights file; default: the preset's own")
    device: str = Field("cpu", description="torch device, e.g. cpu, cuda, cuda:1")
    speed: Literal[SPEED_NAMES] = Field(DEFAULT_SPEED, description=SPEED_HELP)

    # Applied by python -m api at startup (process-wide), not by create_app.
    keep_freed_memory: bool = Field(True, description=FLAG_HELP)

    # Batching: a GPU forward of 4 images costs little more than one; 10 ms of waiting is small
    # next to a forward pass (tens of ms), is not paid when the server is already busy, nor by
    # requests that come one at a time (api/batcher.py).
    max_batch_size: int = Field(4, ge=1, le=256, description="most images in one forward pass")
    max_wait_ms: float = Field(10.0, ge=0, description="longest a request waits for others to batch with")
    queue_size: int = Field(64, ge=1, description="requests waiting for the model; beyond it: 503")
    request_timeout_s: float = Field(30.0, gt=0, description="longest a request may wait in the queue")
    # A forward pass cannot be stopped from outside; past this, its requests get 504 and /readyz 503
    # (so that an orchestrator restarts the process) until it ends. 300 s: a large model, batch and
    # image on a small CPU take ~1 min.
    forward_timeout_s: float = Field(300.0, gt=0, description="longest a forward pass may run before its requests get 504")

    # Input limits: 20 MB holds any sensible photo; 40 MP is a 7700 x 5200 image, 120 MB as RGB.
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest request body (413 beyond)")
    max_pixels: int = Field(40_000_000, ge=1, description="largest decoded image, width x height (413 beyond)")

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

    @field_validator("preset", "weights", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value
