"""GET /v1/model: what is served; and the API key, which guards every route but the probes."""

from __future__ import annotations

import hashlib
import time

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from detector.predictor import Predictor
from detector.weights import save_weights
from tests.api.api_images import jpeg
from tests.api.serving import PRESET, as_file, serving, settings, wait_ready


def test_model_info(client, predictor):
    info = client.get("/v1/model").json()
    assert info["preset"] == PRESET
    assert info["classes"] == predictor.class_names and info["classes"][0] == "__background__"
    assert (info["masks"], info["keypoints"], info["device"]) == (True, True, "cpu")
    assert info["keypoint_classes"] == ["person"]
    assert len(info["keypoint_names"]) == 17 and info["keypoint_names"][:3] == ["nose", "left_eye", "right_eye"]
    # The preset's built-in weights (weights/small_r18_fpn.safetensors) when the repository ships them.
    if predictor.weights_path is None:
        assert info["weights"] is None and info["weights_sha256"] is None
    else:
        assert info["weights"] == predictor.weights_path.name
        assert info["weights_sha256"] == hashlib.sha256(predictor.weights_path.read_bytes()).hexdigest()
    assert info["max_batch_size"] == 4
    assert info["speed"] == predictor.speed


def test_the_speed_setting_reaches_the_loaded_model():
    """DETECTOR_SPEED / --speed: the app loads its model in that mode (detector/modeling/fast_inference.py)."""
    with TestClient(create_app(settings(preset=PRESET, speed="exact"))) as client:
        wait_ready(client)
        assert client.get("/v1/model").json()["speed"] == "exact"
        assert client.app.state.service.predictor.speed == "exact"


def test_model_info_names_the_weights_and_their_hash(predictor, tmp_path):
    path = tmp_path / "small.safetensors"
    save_weights(predictor.model, path)
    loaded = Predictor.from_preset(PRESET, weights=path)
    with serving(loaded) as client:
        info = client.get("/v1/model").json()
    assert info["weights"] == "small.safetensors"
    assert info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def keyed_client(predictor):
    with serving(predictor, api_keys=["key-one", "key-two"]) as client:
        yield client


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic a2V5LW9uZQ=="},
                                     {"Authorization": "key-one"}])
@pytest.mark.parametrize("method, path", [("GET", "/v1/model"), ("GET", "/metrics"), ("POST", "/detect"),
                                          ("POST", "/detect/render")])
def test_routes_need_a_valid_key_when_keys_are_set(keyed_client, headers, method, path):
    response = keyed_client.request(method, path, headers=headers, files=as_file(jpeg()) if method == "POST" else None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer" and "API key" in response.json()["detail"]


def test_any_configured_key_is_accepted(keyed_client):
    for key in ("key-one", "key-two"):
        assert keyed_client.get("/v1/model", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    response = keyed_client.post("/detect", headers={"Authorization": "Bearer key-two"}, files=as_file(jpeg()))
    assert response.status_code == 200


@pytest.fixture(scope="module")
def own_classes_file(predictor, tmp_path_factory):
    """The small model's weights saved as trained on 4 classes of other names (the same shapes)."""
    from dataclasses import replace

    from detector.weights.model_metadata import MODEL_KEY, model_metadata

    cfg = replace(predictor.model.cfg, class_names=("__background__", "ring", "tile", "wedge", "walker"),
                  keypoint_classes=("walker",))
    path = tmp_path_factory.mktemp("own") / "model_final.safetensors"
    save_weights(predictor.model, path, metadata={MODEL_KEY: model_metadata(PRESET, cfg)})
    return path


def test_a_file_that_names_its_model_is_served_without_a_preset(own_classes_file):
    with TestClient(create_app(settings(weights=str(own_classes_file)))) as client:
        wait_ready(client)
        info = client.get("/v1/model").json()
    assert info["preset"] == PRESET and info["classes"] == ["__background__", "ring", "tile", "wedge", "walker"]
    assert info["keypoint_classes"] == ["walker"] and info["weights"] == own_classes_file.name


def test_a_preset_that_disagrees_with_the_file_fails_the_load_naming_both(own_classes_file):
    with TestClient(create_app(settings(preset="maskrcnn_r50_fpn", weights=str(own_classes_file)))) as client:
        service = client.app.state.service
        deadline = time.monotonic() + 60
        while service.load_error is None:
            assert time.monotonic() < deadline and not service.ready
            time.sleep(0.02)
        assert client.get("/readyz").status_code == 503
    assert f"holds a {PRESET} model" in service.load_error and "not the maskrcnn_r50_fpn" in service.load_error
