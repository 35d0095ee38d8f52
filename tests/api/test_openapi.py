"""The OpenAPI document: every route documents its errors with the {"detail": str} schema."""

from __future__ import annotations

import pytest

from api.main import create_app
from tests.api.serving import settings


@pytest.fixture(scope="module")
def spec() -> dict:
    return create_app(settings()).openapi()


@pytest.mark.parametrize(
    "path, method, statuses",
    [
        ("/detect", "post", {200, 400, 401, 413, 415, 422, 500, 503, 504}),
        ("/detect/render", "post", {200, 400, 401, 413, 415, 422, 500, 503, 504}),
        ("/healthz", "get", {200, 503}),
        ("/readyz", "get", {200, 503}),
        ("/v1/model", "get", {200, 401, 503}),
        ("/metrics", "get", {200, 401}),
    ],
)
def test_every_error_is_documented(spec, path, method, statuses):
    responses = spec["paths"][path][method]["responses"]
    assert {int(s) for s in responses} == statuses
    for status in statuses - {200}:
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["detail"]["type"] == "string" and error["required"] == ["detail"]


def test_detect_documents_both_body_types_and_the_options(spec):
    operation = spec["paths"]["/detect"]["post"]
    assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    params = {p["name"] for p in operation["parameters"]}
    assert params == {"score_threshold", "max_detections", "classes", "masks", "keypoints"}
    assert "image/png" in spec["paths"]["/detect/render"]["post"]["responses"]["200"]["content"]


def test_protected_routes_declare_the_bearer_scheme(spec):
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/detect"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
