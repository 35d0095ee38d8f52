"""``python -m api [--flags]``: serve the model with uvicorn.

Each setting (``api/settings.py``) has a flag, ``--max-batch-size 8`` for ``max_batch_size``;
flags override ``DETECTOR_*`` environment variables, which override the defaults.

Process-wide settings are applied here, at startup, not by ``create_app``: malloc keeps freed
memory on the CPU (``keep_freed_memory``), cuDNN picks its algorithms by timing them on CUDA
(``cudnn_benchmark``) and Pillow's own bomb guard admits what ``max_pixels`` admits.

SIGTERM (or Ctrl-C): readiness turns 503, the listening socket closes, requests in flight finish and
queued ones are served for up to ``shutdown_timeout_s``; those left then (a forward pass stuck) get 503,
and the process exits 0 within ``shutdown_timeout_s + SHUTDOWN_MARGIN_S``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from pydantic import ValidationError

from api.settings import SHUTDOWN_MARGIN_S, Settings
from detector import memory

if TYPE_CHECKING:
    from fastapi import FastAPI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m api", description="Serve the detection model over HTTP. Flags override DETECTOR_* variables."
    )
    for name, field in Settings.model_fields.items():
        # SUPPRESS: an absent flag leaves the environment or default in place.
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS, help=field.description)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[dict[str, str], str]:
    """(the settings given as flags, the log level)."""
    args = vars(_parser().parse_args(argv))
    log_level = args.pop("log_level")
    return args, log_level


def main(argv: list[str] | None = None) -> int:
    overrides, log_level = parse_args(argv)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        _parser().error(str(exc))  # exits 2 with the usage line
    from api.main import create_app  # here, not at the top: --help need not import torch

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_process(settings)
    app = create_app(settings)

    return 0 if _serve(app, settings, log_level, on_exit=app.state.service.drain) else 1


def _serve(app: FastAPI, settings: Settings, log_level: str, on_exit: Callable[[], None]) -> bool:
    """Serve ``app`` with uvicorn until SIGTERM or Ctrl-C; whether it started."""
    import uvicorn  # here: --help need not import it

    class Server(uvicorn.Server):
        """uvicorn's server, telling the app it is draining as soon as the signal arrives."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            on_exit()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, lifespan="on",
        limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=settings.shutdown_timeout_s + SHUTDOWN_MARGIN_S,
    ))
    # uvicorn re-raises the signal it shut down on, once it is done, to give the default handler
    # its say; by then we have shut down gracefully, so that second delivery is a no-op (exit 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _already_handled)
    server.run()
    return server.started


def configure_process(settings: Settings) -> None:
    """What the service changes in its whole process, once, before it serves: malloc's settings on the
    CPU (``detector.memory``), and Pillow's own bomb guard, raised so that it never refuses an image that
    ``max_pixels`` admits (Pillow warns above ``Image.MAX_IMAGE_PIXELS`` and refuses above twice that;
    ``api.decode`` checks ``max_pixels`` itself, before decoding)."""
    from PIL import Image

    if settings.keep_freed_memory:
        memory.keep_freed_memory_for(settings.device)
    if settings.cudnn_benchmark and settings.device.startswith("cuda"):
        import torch

        torch.backends.cudnn.benchmark = True
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < settings.max_pixels:
        Image.MAX_IMAGE_PIXELS = settings.max_pixels


def _already_handled(sig: int, frame: FrameType | None) -> None:
    pass


if __name__ == "__main__":
    sys.exit(main())
