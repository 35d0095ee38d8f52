"""The Predictor on CUDA (``pytest -m cuda``; ``make gpu-check`` runs these and measures the same drift).

Each mode on the GPU against the exact mode on the CPU, on the built-in model (trained weights: real
detections, not random ones that sit on the thresholds) and the sample image at three sizes in one call
(three padded sizes). Bounds: "exact" with TF32 off differs from the CPU by the kernels' rounding only (a
detection that sits on the score threshold may come or go); "fast" (TF32 on, BN folded) a little more; bf16
and float16 autocast are approximate and keep most detections. The figures: bench/results/gpu_check.json.

Without CUDA every test here skips, also under CI=true: a GPU is hardware, not an input CI provides, so
this is a plain ``skipif``, not ``tests/inputs.py``'s ``missing_input`` (which fails under CI).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.engine import compare
from detector.modeling.kernels import bf16_is_fast
from detector.predictor import Predictor
from detector.weights.builtin import builtin_file

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (make gpu-check runs these on a GPU)"),
]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    sample = Image.open(builtin_file("sample.png")).convert("RGB")
    out = []
    for side in (800, 600, 480):
        scale = side / min(sample.size)
        out.append(np.asarray(sample.resize((round(sample.width * scale), round(sample.height * scale)))))
    return out


@pytest.fixture(scope="module")
def on_cpu(images):
    return Predictor.from_preset(None, speed="exact").predict(images)


def _on_cuda(images, speed: str, *, tf32: bool = True, fp16: bool = False):
    predictor = Predictor.from_preset(None, device=CUDA, speed=speed)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=tf32), \
            torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
        return predictor.predict(images)


def test_detections_come_back_on_the_cpu(images, on_cpu):
    dets = _on_cuda(images, "exact", tf32=False)
    assert all(d.boxes.device.type == "cpu" and (d.mask_probs is None or d.mask_probs.device.type == "cpu") for d in dets)
    assert sum(len(d) for d in on_cpu) > 0  # the sample has objects: the comparisons below compare something


def test_exact_on_cuda_matches_the_cpu_up_to_kernel_rounding(images, on_cpu):
    drift = compare(on_cpu, _on_cuda(images, "exact", tf32=False))
    assert drift["matched_1px"] >= 0.95 and drift["max_score_diff"] < 1e-3, drift


def test_fast_on_cuda_is_the_exact_model_up_to_rounding(images, on_cpu):
    drift = compare(on_cpu, _on_cuda(images, "fast"))
    assert drift["matched_1px"] >= 0.9 and drift["max_score_diff"] < 2e-2, drift


@pytest.mark.parametrize("speed, fp16", [("bf16", False), ("exact", True)], ids=["bf16", "fp16-autocast"])
def test_half_precision_on_cuda_keeps_most_detections(images, on_cpu, speed, fp16):
    drift = compare(on_cpu, _on_cuda(images, speed, fp16=fp16))
    assert drift["matched"] >= 0.8 and drift["max_score_diff"] < 0.1, drift


def test_an_image_gets_on_cuda_in_a_batch_what_it_gets_alone(images):
    predictor = Predictor.from_preset(None, device=CUDA, speed="exact")
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        batched = predictor.predict(images)
        alone = [predictor.predict([image])[0] for image in images]
    assert compare(alone, batched)["matched_1px"] == 1.0


def test_bf16_is_fast_on_the_gpus_that_have_it():
    major, _ = torch.cuda.get_device_capability(CUDA)
    assert bf16_is_fast(CUDA) == (major >= 8)


def test_a_fast_predictor_holds_each_weight_on_the_gpu_once():
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(CUDA)
    predictor = Predictor.from_preset(None, device=CUDA, speed="fast")
    held = torch.cuda.memory_allocated(CUDA) - before
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*predictor._net.parameters(), *predictor._net.buffers()] if t.is_cuda}
    assert held <= sum(storages.values()) * 1.05 + 2**20, (held, sum(storages.values()))


def test_images_reach_the_gpu_from_pinned_memory_with_their_values():
    from detector.predictor import to_device

    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    tensor = to_device(image, CUDA)
    assert tensor.is_cuda and tensor.dtype == torch.uint8 and tensor.shape == (3, 37, 53)
    assert torch.equal(tensor.cpu(), torch.from_numpy(image).permute(2, 0, 1))
