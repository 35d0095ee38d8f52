"""Fuzzing the service in-process, around the real small model: schemathesis over the OpenAPI
document (no 5xx, answers conform to the document), and Hypothesis mutating valid PNG, JPEG, GIF
and WebP bytes (bit flips, truncations, splices, insertions, extreme header fields: never a 5xx).

Both are bounded (a fixed number of examples, derandomized: CI runs the same cases every time);
RELIABILITY_FUZZ_EXAMPLES=500 widens them for a local hunt.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import hypothesis.strategies as st
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from api.main import create_app
from tests.api.api_images import encode, gradient, jpeg, png
from tests.api.serving import serving
from tests.api.serving import settings as app_settings
from tests.reliability import tally

EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 40,
    deadline=None,  # a forward takes a second on a busy CPU
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
LIMITS = {"max_body_bytes": 2_000_000, "max_pixels": 1_000_000, "max_wait_ms": 5}

# ---- schemathesis: every documented operation, positive and negative data

API_KEY = "fuzz-key"  # set, so that the document's bearer scheme is enforced and its checks apply
OPERATIONS = [(path, method.upper()) for path, item in create_app(app_settings()).openapi()["paths"].items()
              for method in item]  # fmt: skip


@pytest.fixture(scope="module")
def api_schema(predictor):
    """The app's own document; requests go to the app in-process (schemathesis runs its lifespan)."""
    app = create_app(app_settings(**LIMITS, api_keys=[API_KEY]), predictor=predictor)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.auth()
    class Key:
        def get(self, case, context) -> str:
            return API_KEY

        def set(self, case, data, context) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return schema


def _ensure_ready(schema) -> None:
    """schemathesis ends the app's lifespan after each test and starts it again at the next request:
    wait out the warm-up, whose 503s would otherwise count as server errors."""
    service = schema.app.state.service
    if service.ready and not service.draining:
        return
    schema["/healthz"]["GET"].Case().call()  # starts the lifespan
    deadline = time.monotonic() + 60
    while not service.ready:
        assert service.load_error is None and time.monotonic() < deadline
        time.sleep(0.02)


# Any bytes and any class name fit the document, so a valid-looking request may still get a 415 or 422.
_IMAGE_OPERATIONS = {("/detect", "POST"), ("/detect/render", "POST")}


@pytest.mark.parametrize("path, method", OPERATIONS)
@given(data=st.data())
@FUZZ
def test_openapi_operations_never_5xx_and_conform(api_schema, path, method, data):
    mode = data.draw(st.sampled_from(list(GenerationMode)))  # data that fits the document, and data that does not
    case = data.draw(api_schema[path][method].as_strategy(generation_mode=mode))
    _ensure_ready(api_schema)
    response = case.call()
    tally.fuzz_case(f"schemathesis {mode.value}", response.status_code)
    excluded = [schemathesis.checks.positive_data_acceptance] if (path, method) in _IMAGE_OPERATIONS else []
    case.validate_response(response, excluded_checks=excluded)


# ---- Hypothesis: mutated image bytes


SEEDS = {
    "png": png(48, 40),
    "jpeg": jpeg(48, 40),
    "gif": encode(gradient(48, 40, "P"), "GIF"),
    "webp": encode(gradient(48, 40), "WEBP"),
}


@st.composite
def mutated_image(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "overwrite"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":  # a piece of another seed, in place of a piece of this one
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            start = draw(st.integers(0, len(other) - 1))
            data[at : at + draw(st.integers(0, 64))] = other[start : start + draw(st.integers(1, 256))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:  # a header field set to an extreme: 0x00.. or 0xff..
            data[at : at + 4] = draw(st.sampled_from([b"\x00" * 4, b"\xff" * 4, b"\x7f\xff\xff\xff"]))
    return bytes(data)


@pytest.fixture(scope="module")
def client(predictor) -> Iterator[TestClient]:
    with serving(predictor, **LIMITS) as client:
        yield client


@given(data=mutated_image(), raw_body=st.booleans())
@settings(FUZZ, max_examples=EXAMPLES or 150)  # most are refused cheaply; about one in five reaches the model
def test_mutated_images_never_5xx(client, data, raw_body):
    if raw_body:
        response = client.post("/detect", content=data, headers={"content-type": "image/png"})
    else:
        response = client.post("/detect", files={"image": ("a.png", data, "image/png")})
    tally.fuzz_case("mutated images", response.status_code)
    assert response.status_code in (200, 413, 415, 422), response.text
    body = response.json()
    assert isinstance(body["detections"], list) if response.status_code == 200 else body["detail"], body
