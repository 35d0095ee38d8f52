"""The reliability suite: bad inputs, fuzzing, overload, faults and restarts. One real (small,
random-init) Predictor for the in-process apps; ``python -m api`` subprocesses for the rest."""

from __future__ import annotations

import pytest
import torch

from detector.predictor import Predictor
from tests.api.serving import PRESET
from tests.reliability import tally


@pytest.fixture(scope="session")
def predictor() -> Predictor:
    torch.set_num_threads(1)  # the 2 shared cores are faster without oversubscription
    torch.manual_seed(0)
    return Predictor.from_preset(PRESET)


def pytest_terminal_summary(terminalreporter) -> None:
    lines = tally.summary_lines()
    if lines:
        terminalreporter.section("reliability")
        for line in lines:
            terminalreporter.write_line(line)
