"""detector/modeling/poolers.py: each box pooled from its FPN level, with torchvision's RoIAlign; split
across the threads of a RoIAlignThreads only while one is active, with the numbers of one thread."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torchvision.ops import roi_align

from detector.modeling import poolers
from detector.modeling.poolers import MultiLevelRoIPooler, RoIAlignThreads
from tests.process_state import ROOT


def _features_and_boxes():
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 8, 64 // s, 96 // s, generator=g) for s in (1, 2, 4, 8)]  # strides 4..32 of 256x384
    xy = torch.rand(300, 2, generator=g) * torch.tensor([300.0, 200.0])
    wh = 8 + torch.rand(300, 2, generator=g) ** 2 * 700  # small to large: every level gets boxes
    boxes = torch.cat([xy, xy + wh], dim=1)
    return features, [boxes[:180], boxes[180:]]


def test_each_box_comes_from_its_level_as_roi_align_gives_it():
    features, boxes = _features_and_boxes()
    pooler = MultiLevelRoIPooler(7, sampling_ratio=2)
    with torch.no_grad():
        out = pooler(features, boxes)  # (300, 8, 7, 7)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    levels = pooler.level_of(rois[:, 1:])
    assert set(levels.tolist()) == {0, 1, 2, 3}
    for level, scale in enumerate(pooler.scales):
        idx = torch.where(levels == level)[0]
        assert torch.equal(out[idx], roi_align(features[level], rois[idx], (7, 7), scale, 2, False))


def test_pooling_across_threads_gives_the_numbers_of_one_thread():
    features, boxes = _features_and_boxes()
    pooler = MultiLevelRoIPooler(7, sampling_ratio=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad(), RoIAlignThreads() as owner, owner.active():
            parallel = pooler(features, boxes)  # RoIs in chunks on a pool of 2 threads
            assert _roi_align_threads() == 2
        torch.set_num_threads(1)
        with torch.no_grad():
            serial = pooler(features, boxes)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(parallel, serial)
    assert torch.equal(pooler(features, boxes).detach(), serial)  # with autograd: one call per level


def _roi_align_threads() -> int:
    return sum(t.name.startswith("roi_align") for t in threading.enumerate())


def test_no_pool_outlives_its_owner(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    features, boxes = _features_and_boxes()
    pooler = MultiLevelRoIPooler(7, sampling_ratio=2)
    before = _roi_align_threads()
    with torch.no_grad():
        alone = pooler(features, boxes)  # none active: the calling thread
        assert _roi_align_threads() == before
        owner = RoIAlignThreads()
        with owner.active():
            assert torch.equal(pooler(features, boxes), alone)
            assert _roi_align_threads() == before + 2
        pooler(features, boxes)  # no longer active: not lent
        owner.close()
    assert _roi_align_threads() == before


def test_no_pool_at_module_level():
    assert not [name for name, value in vars(poolers).items() if isinstance(value, ThreadPoolExecutor)]
    assert poolers._ACTIVE.get() is None
    code = ("import threading, torch, numpy as np\n"
            "from detector.predictor import Predictor\n"
            "torch.set_num_threads(2)\n"
            "names = lambda: sorted(t.name for t in threading.enumerate() if t.name.startswith('roi_align'))\n"
            "p = Predictor.from_preset('small_r18_fpn', speed='exact')\n"
            "assert names() == [], names()\n"
            "p.predict([np.zeros((256, 320, 3), np.uint8)])\n"
            "assert len(names()) == 2, names()\n"
            "p.close()\n"
            "assert names() == [], names()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
