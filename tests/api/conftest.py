"""Fixtures for the service tests: one real (random-init, small) Predictor for the session, and an
app built around it. Nothing is mocked: requests go through the real model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from detector.predictor import Predictor
from tests.api.serving import PRESET, serving


@pytest.fixture(scope="session")
def predictor() -> Predictor:
    # One thread: the 2 shared cores are faster without oversubscription (0.7 s vs 3 s a forward).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return Predictor.from_preset(PRESET)


@pytest.fixture(scope="module")
def client(predictor) -> Iterator[TestClient]:
    """A shared app with small limits, so that the limits are cheap to test."""
    with serving(predictor, max_wait_ms=5, max_body_bytes=2_000_000, max_pixels=1_000_000) as c:
        yield c
