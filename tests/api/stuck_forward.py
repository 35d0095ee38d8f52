"""``python -m tests.api.stuck_forward [flags]``: ``python -m api`` whose forward pass hangs on any image
exactly ``STUCK_HEIGHT`` pixels high (for the SIGTERM test). Only ``Predictor.predict`` is wrapped: the
server, its signal handling, batcher, threads and shutdown are the production ones."""

from __future__ import annotations

import sys
import time

from api.__main__ import main
from detector.predictor import Predictor

STUCK_HEIGHT = 77
_predict = Predictor.predict


def _predict_or_hang(self: Predictor, images):
    if any(image.shape[0] == STUCK_HEIGHT for image in images):
        time.sleep(3600)  # longer than any test waits: stuck
    return _predict(self, images)


if __name__ == "__main__":
    Predictor.predict = _predict_or_hang
    sys.exit(main())
