"""Inputs that some tests need from outside the project: the COCO sample (tests/tiny_coco.py), Chromium
with chromedriver (tests/api/browser/chrome.py), docker-compose (tests/api/test_compose.py).

``missing_input(reason)`` skips the calling test, saying why, when such an input is absent; under
``CI=true`` it fails the test instead: CI provides every input (.ci/run), so a missing one there is an
error in CI, not a reason to go green without the test.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    """Whether CI says it is running us (GitHub Actions, GitLab and .ci/run set CI=true)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing_input(reason: str) -> NoReturn:
    """Skip with ``reason``, or, under CI=true, fail with it."""
    __tracebackhide__ = True  # pytest reports the calling test's line, not this one
    if under_ci():
        pytest.fail(f"{reason}; CI=true, so it must be there", pytrace=False)
    pytest.skip(reason)
