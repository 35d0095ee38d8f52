"""POST /detect and POST /detect/render against the real (small, random-init) model: the answer's
schema, the options, every class of bad input, and batching, overload, deadlines and isolation."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from api.decode import decode_image
from api.schemas import DetectOptions
from detector.weights.builtin import builtin_file
from tests.api.api_images import encode, gradient, jpeg, jpeg_with_orientation, png, png_header_only
from tests.api.serving import as_file, serving

ALL = {"score_threshold": 0}  # a random-init model scores low: keep everything it finds


def _check_result(body: dict, width: int, height: int) -> None:
    assert (body["width"], body["height"]) == (width, height)
    assert body["model"] == "small_r18_fpn"
    assert set(body["timings"]) == {"queue_ms", "inference_ms", "total_ms"}
    assert body["timings"]["total_ms"] >= body["timings"]["inference_ms"] > 0
    assert body["detections"], "the random-init model finds something at score 0"
    scores = [d["score"] for d in body["detections"]]
    assert scores == sorted(scores, reverse=True)
    for det in body["detections"]:
        x1, y1, x2, y2 = det["bbox"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert det["category"] in ("circle", "square", "triangle", "person") and det["label"] >= 1
        assert det["mask"]["size"] == [height, width] and isinstance(det["mask"]["counts"], str)
        if det["category"] == "person":  # the model's only keypoint class
            assert len(det["keypoints"]) == 17 and all(len(k) == 3 for k in det["keypoints"])
        else:
            assert "keypoints" not in det


def test_multipart_upload(client):
    response = client.post("/detect", params=ALL, files=as_file(jpeg(64, 48)))
    assert response.status_code == 200, response.text
    _check_result(response.json(), 64, 48)


def test_raw_image_body(client):
    response = client.post("/detect", params=ALL, content=png(50, 30), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    _check_result(response.json(), 50, 30)


def test_options_filter_and_shape_the_answer(client):
    found = client.post("/detect", params=ALL, files=as_file(jpeg())).json()["detections"]
    category = found[-1]["category"]
    params = {"score_threshold": 0, "max_detections": 3, "classes": f" {category}, ", "masks": "none", "keypoints": "false"}
    response = client.post("/detect", params=params, files=as_file(jpeg()))
    assert response.status_code == 200, response.text
    detections = response.json()["detections"]
    assert 0 < len(detections) <= 3
    assert {d["category"] for d in detections} == {category}
    assert all("mask" not in d and "keypoints" not in d for d in detections)


def _sample() -> dict:
    """The built-in model's sample image (circles and persons above 0.5), as an upload."""
    return as_file(builtin_file("sample.png").read_bytes(), "sample.png", "image/png")


def test_keypoints_only_for_persons(client):
    response = client.post("/detect", files=_sample())
    assert response.status_code == 200, response.text
    found = {(d["category"], "keypoints" in d) for d in response.json()["detections"]}
    assert {("circle", False), ("person", True)} <= found  # the sample's circles and persons
    assert all(has_keypoints == (category == "person") for category, has_keypoints in found), found


def test_score_threshold_drops_low_scores(client):
    scores = [d["score"] for d in client.post("/detect", params=ALL, files=_sample()).json()["detections"]]
    assert len(scores) > 6, scores
    threshold = (scores[4] + scores[5]) / 2  # between the 5th and the 6th score
    response = client.post("/detect", params={"score_threshold": threshold}, files=_sample())
    assert response.status_code == 200
    assert [d["score"] for d in response.json()["detections"]] == [s for s in scores if s >= threshold] == scores[:5]


def test_polygon_masks(client):
    response = client.post("/detect", params={"masks": "polygon"}, files=_sample())
    assert response.status_code == 200, response.text
    detections = response.json()["detections"]
    assert len(detections) >= 3, detections  # the sample's circles and persons
    for det in detections:
        assert det["mask"]["size"] == [256, 249] and det["mask"]["polygons"], det
        x1, y1, x2, y2 = det["bbox"]
        for polygon in det["mask"]["polygons"]:
            assert len(polygon) >= 6 and len(polygon) % 2 == 0  # [x1, y1, x2, y2, ...], 3 points at least
            xs, ys = polygon[0::2], polygon[1::2]
            # (x, y) order, in image pixels: every point lies in its detection's box, give or take the 3 px
            # that pasting a 28x28 mask with a border of one cell adds to a box of this size
            assert x1 - 3 <= min(xs) and max(xs) <= x2 + 3 and y1 - 3 <= min(ys) and max(ys) <= y2 + 3, det
        xs = [x for polygon in det["mask"]["polygons"] for x in polygon[0::2]]
        ys = [y for polygon in det["mask"]["polygons"] for y in polygon[1::2]]
        assert max(xs) - min(xs) > (x2 - x1) / 2 and max(ys) - min(ys) > (y2 - y1) / 2  # the outline of the object


def test_exif_rotation_gives_the_rotated_size(client):
    response = client.post("/detect", files=as_file(jpeg_with_orientation(40, 20, orientation=6)))
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (20, 40)


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "GIF"), ("1", "BMP")])
def test_image_modes_are_accepted(client, mode, fmt):
    response = client.post("/detect", files=as_file(encode(gradient(40, 30, mode), fmt), content_type="image/*"))
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (40, 30)


def test_render_gives_a_png_of_the_image(client):
    response = client.post("/detect/render", params={**ALL, "max_detections": 5}, files=as_file(jpeg(64, 48)))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert "inference;dur=" in response.headers["server-timing"]
    drawn = Image.open(io.BytesIO(response.content))
    assert drawn.format == "PNG" and drawn.size == (64, 48)


def test_render_draws_the_detections_on_the_image(client):
    original = np.asarray(Image.open(builtin_file("sample.png")).convert("RGB"))  # (H, W, 3), lossless
    response = client.post("/detect/render", files=_sample())
    assert response.status_code == 200, response.text
    drawn = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert drawn.shape == original.shape
    changed = (drawn != original).any(axis=2)  # (H, W)
    assert 0.01 < changed.mean() < 0.9  # the sample's objects drawn over it, the rest of the image kept


def test_render_tints_the_masks_unless_masks_none(client):
    """The masks are drawn from their windows (not from the answer's encoding): masks=none draws boxes,
    labels and keypoints alone, so fewer pixels change."""
    original = np.asarray(Image.open(builtin_file("sample.png")).convert("RGB"))
    changed = {}
    for masks in ("rle", "none"):
        response = client.post("/detect/render", params={"masks": masks}, files=_sample())
        assert response.status_code == 200, response.text
        changed[masks] = (np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")) != original).any(axis=2)
    assert changed["rle"].sum() > changed["none"].sum() > 0
    assert not (changed["none"] & ~changed["rle"]).any()  # what masks=none draws, the masked render draws too


def test_render_refuses_bad_input_like_detect(client):
    assert client.post("/detect/render", files=as_file(b"not an image")).status_code == 415


# ---- bad input: a clear 4xx, and the server keeps answering


def _truncated() -> bytes:
    data = jpeg(128, 128)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        ({"files": as_file(b"")}, 422, "empty"),
        ({"files": as_file(_truncated())}, 422, "cannot decode"),
        ({"files": as_file(b"plain text, not an image")}, 415, "not a recognised image"),
        ({"files": as_file(encode(gradient(16, 16), "TIFF"), "a.tif", "image/tiff")}, 415, "TIFF"),
        ({"content": b'{"image": 1}', "headers": {"content-type": "application/json"}}, 415, "multipart/form-data"),
        ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 422, "empty"),
        ({"files": {"picture": ("a.jpg", jpeg(), "image/jpeg")}}, 422, "'image'"),
        ({"data": {"image": "not a file"}, "files": {"other": ("a", b"x")}}, 422, "'image'"),
        ({"files": as_file(png(1001, 1000))}, 413, "pixels"),
        ({"files": as_file(png_header_only(100_000, 100_000))}, 413, ""),
        ({"content": b"x" * 2_000_001, "headers": {"content-type": "image/jpeg"}}, 413, "larger than"),
        ({"content": iter([b"x" * 1_000_000] * 3), "headers": {"content-type": "image/jpeg"}}, 413, "larger than"),
    ],
    ids=["empty-file", "truncated", "text", "tiff", "json-body", "empty-body", "no-image-field", "image-not-a-file",
         "too-many-pixels", "bomb-header", "body-over-limit", "chunked-over-limit"],
)  # fmt: skip
def test_bad_input_gets_a_clear_4xx(client, request_kwargs, status, message):
    response = client.post("/detect", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "params, field",
    [
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"score_threshold": "high"}, "score_threshold"),
        ({"max_detections": 0}, "max_detections"),
        ({"max_detections": 1001}, "max_detections"),
        ({"masks": "bitmap"}, "masks"),
        ({"keypoints": "perhaps"}, "keypoints"),
        ({"classes": "circle,unicorn"}, "unicorn"),
    ],
)
def test_bad_query_values_get_422_with_a_message(client, params, field):
    response = client.post("/detect", params=params, files=as_file(jpeg()))
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str) and field in response.json()["detail"]


# ---- batching, overload, deadlines, isolation


def _post_concurrently(client, bodies: list[bytes], **params) -> list:
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(client.post, "/detect", params=params, files=as_file(body)) for body in bodies]
        return [f.result() for f in futures]


def _metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


class HangingPredictor:
    """The real predictor, except that its first forward after the warm-up blocks until ``release`` is set
    (``entered`` says it has begun): the tests hold a pass, rather than hoping one is slow enough."""

    def __init__(self, real) -> None:
        self._real = real
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    def predict(self, images):
        self.calls += 1
        if self.calls == 2:  # the first call is the warm-up at start
            self.entered.set()
            self.release.wait(30)
        return self._real.predict(images)


@contextmanager
def one_held_request(client, hanging: HangingPredictor) -> Iterator[Future]:
    """A request whose forward pass is running, held, while the block runs; released when it ends."""
    with ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(client.post, "/detect", files=as_file(jpeg()))
            assert hanging.entered.wait(30), "the first forward pass never began"
            yield first
        finally:
            hanging.release.set()


def _wait_for_depth(client, depth: int) -> None:
    """Until ``depth`` requests wait in the batcher's queue (behind the pass running now)."""
    deadline = time.monotonic() + 30
    while client.app.state.service.batcher.depth != depth:
        assert time.monotonic() < deadline, client.app.state.service.batcher.depth
        time.sleep(0.005)


def test_concurrent_requests_are_batched(predictor):
    hanging = HangingPredictor(predictor)
    with serving(hanging, max_batch_size=4, max_wait_ms=500) as client:
        with one_held_request(client, hanging) as first:
            with ThreadPoolExecutor(3) as pool:  # three more arrive while the first pass runs
                queued = [pool.submit(client.post, "/detect", files=as_file(jpeg(w, h)))
                          for w, h in [(64, 48), (32, 32), (48, 64)]]
                _wait_for_depth(client, 3)
                hanging.release.set()
                responses = [f.result() for f in queued]
        assert first.result().status_code == 200
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert [(r.json()["width"], r.json()["height"]) for r in responses] == [(64, 48), (32, 32), (48, 64)]
        # Two forward passes for four images: the three that waited together shared one.
        assert (_metric(client, "detector_batch_size_count"), _metric(client, "detector_batch_size_sum")) == (2, 4)


def test_full_queue_answers_503_with_retry_after_at_once(predictor):
    hanging = HangingPredictor(predictor)
    with serving(hanging, max_batch_size=1, max_wait_ms=0, queue_size=1) as client:
        with one_held_request(client, hanging) as first, ThreadPoolExecutor(1) as pool:
            queued = pool.submit(client.post, "/detect", files=as_file(jpeg()))
            _wait_for_depth(client, 1)  # the queue is full
            refused = client.post("/detect", files=as_file(jpeg()))  # answered while the pass is held
            hanging.release.set()
            assert (first.result().status_code, queued.result().status_code) == (200, 200)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1 and "busy" in refused.json()["detail"]


def test_request_past_its_deadline_gets_504_and_is_not_run(predictor):
    hanging = HangingPredictor(predictor)
    with serving(hanging, max_batch_size=1, max_wait_ms=0, request_timeout_s=0.2) as client:
        with one_held_request(client, hanging) as first:
            late = [client.post("/detect", files=as_file(jpeg())) for _ in range(2)]  # behind the held pass
            assert not first.done()  # answered at their deadline, not when the pass ahead ended
            hanging.release.set()
            assert first.result().status_code == 200  # started before its deadline: it finishes
        assert [r.status_code for r in late] == [504, 504], [r.text for r in late]
        assert _metric(client, "detector_batch_size_count") == 1  # the late ones never ran


class PoisonedPredictor:
    """The real predictor, except that a forward holding a 13-pixel-wide image raises (fault injection)."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def predict(self, images):
        if any(image.shape[1] == 13 for image in images):
            raise RuntimeError("poisoned image")
        return self._real.predict(images)


def test_a_stuck_forward_gets_504_and_fails_readiness_until_it_ends(predictor):
    hanging = HangingPredictor(predictor)
    # 3 s: far above a real forward of the small model (~0.1 s), which must pass once released.
    with serving(hanging, max_batch_size=1, max_wait_ms=0, forward_timeout_s=3) as client:
        try:
            response = client.post("/detect", files=as_file(jpeg()))
            assert response.status_code == 504 and "inference ran 3 s" in response.json()["detail"]
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "forward pass" in ready.json()["detail"]
        finally:
            hanging.release.set()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.post("/detect", files=as_file(jpeg())).status_code == 200


def test_a_failing_request_fails_alone_and_the_server_keeps_serving(predictor):
    with serving(PoisonedPredictor(predictor), max_batch_size=4, max_wait_ms=500) as client:
        responses = _post_concurrently(client, [jpeg(), jpeg(13, 13), jpeg()])
        assert [r.status_code for r in responses] == [200, 500, 200]
        assert "inference failed" in responses[1].json()["detail"]
        assert client.post("/detect", files=as_file(jpeg())).status_code == 200


def _scene(width: int, height: int, seed: int) -> bytes:
    """A PNG (lossless: the server decodes exactly these pixels) of a few filled shapes on noise."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)  # (H, W, 3)
    y, x = np.mgrid[0:height, 0:width]
    for _ in range(3):  # squares and discs
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        r = rng.uniform(0.1, 0.25) * min(width, height)
        square = (np.abs(x - cx) < r) & (np.abs(y - cy) < r)
        image[square if rng.random() < 0.5 else (x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.integers(120, 256, 3)
    return encode(Image.fromarray(image), "PNG")


def _assert_same_detections(served: list[dict], alone: list[dict]) -> None:
    """Equal up to float rounding: labels and masks exactly, numbers within 1e-4."""
    assert [(d["label"], d["category"]) for d in served] == [(d["label"], d["category"]) for d in alone]
    for got, want in zip(served, alone):
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-4)
        assert ("keypoints" in got) == ("keypoints" in want)
        if "keypoints" in want:
            assert np.asarray(got["keypoints"]) == pytest.approx(np.asarray(want["keypoints"]), abs=1e-4)
        assert got["mask"] == want["mask"]


def test_simultaneous_requests_of_mixed_sizes_share_passes_and_each_gets_its_own_answer(predictor):
    # (width, height): landscape, portrait, square and wide, which a batch would pad differently from
    # each alone; the engine runs each padded size as its own group, and 4:3 at two scales share one.
    sizes = [(96, 72), (72, 96), (100, 100), (160, 120), (200, 80), (120, 160)]
    bodies = [_scene(w, h, seed) for seed, (w, h) in enumerate(sizes)]
    hanging = HangingPredictor(predictor)
    with serving(hanging, max_batch_size=4, max_wait_ms=200) as client:
        with one_held_request(client, hanging) as first, ThreadPoolExecutor(len(bodies)) as pool:
            futures = [pool.submit(client.post, "/detect", params=ALL, files=as_file(body)) for body in bodies]
            _wait_for_depth(client, len(bodies))  # all six wait together behind the held pass
            hanging.release.set()
            responses = [f.result() for f in futures]
        assert first.result().status_code == 200
        assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
        passes, images = _metric(client, "detector_batch_size_count"), _metric(client, "detector_batch_size_sum")
    assert (passes, images) == (3, 1 + len(bodies))  # the held one, then the six in batches of 4 and 2
    options = DetectOptions(**ALL)
    for body, response in zip(bodies, responses):
        image = decode_image(body, max_pixels=10**8)
        det = predictor.predict([image])[0].select(options.score_threshold, None, options.max_detections)
        alone = predictor.to_json(det, masks=options.masks, keypoints=options.keypoints)
        assert (response.json()["width"], response.json()["height"]) == (alone["width"], alone["height"])
        assert response.json()["detections"], "the model finds something at score 0"
        _assert_same_detections(response.json()["detections"], alone["detections"])


def test_batching_by_size_serves_images_of_every_size(predictor):
    """DETECTOR_BATCH_BY_SIZE: concurrent requests of two padded sizes run in batches of one size each."""

    class Recording:
        def __init__(self, real) -> None:
            self._real, self.batches = real, []

        def __getattr__(self, name):
            return getattr(self._real, name)

        def predict(self, images):
            self.batches.append({self._real.padded_size(i) for i in images})
            return self._real.predict(images)

    recording = Recording(predictor)
    with serving(recording, batch_by_size=True, max_wait_ms=300) as client:
        recording.batches.clear()  # the warm-up's
        sizes = [(64, 48), (48, 64), (64, 48), (48, 64)]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda wh: client.post("/detect", files=as_file(jpeg(*wh))), sizes))
    assert [a.status_code for a in answers] == [200] * 4
    assert [(a.json()["width"], a.json()["height"]) for a in answers] == sizes
    assert len({size for batch in recording.batches for size in batch}) == 2  # two padded sizes came
    assert all(len(batch) == 1 for batch in recording.batches), recording.batches  # never together
