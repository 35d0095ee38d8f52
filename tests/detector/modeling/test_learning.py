"""The small preset learns: it overfits a couple of generated images (loss falls several-fold and the
objects are found). About a minute on 2 CPU cores."""

from dataclasses import replace

import torch
from torchvision.ops import box_iou

from detector.data.coco import CocoDataset
from detector.data.synthetic import write_synthetic
from detector.modeling.presets import small_r18_fpn
from detector.modeling.rcnn import RCNN
from detector.modeling.transform import InputConfig

ITERATIONS = 120


def test_small_preset_overfits_generated_images(tmp_path):
    torch.manual_seed(0)
    paths = write_synthetic(tmp_path, train=2, val=0, size=128, seed=3)
    dataset = CocoDataset(paths.train_images, paths.train_annotations, with_masks=True)
    images, targets = [], []
    for image, target, _ in (dataset[i] for i in range(len(dataset))):
        images.append(image)
        targets.append(target)
    assert sum(len(t) for t in targets) >= 4 and any(t.keypoints[..., 2].sum() > 0 for t in targets)

    model = RCNN(replace(small_r18_fpn(), input=InputConfig(min_size=128, max_size=128))).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    history = []
    for it in range(ITERATIONS):
        for group in optimizer.param_groups:
            group["lr"] = 0.01 * min(1.0, (it + 1) / 10)  # linear warm-up
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        history.append(loss.item())
    start, end = sum(history[:3]) / 3, sum(history[-5:]) / 5
    assert end < start / 4, f"loss went from {start:.2f} to {end:.2f}"

    found = total = 0
    for det, target in zip(model.eval().predict(images), targets):
        confident = det[det.scores > 0.5]
        iou = box_iou(target.boxes, confident.boxes)  # (G, K)
        same_label = target.labels[:, None] == confident.labels[None, :]
        found += int(((iou > 0.5) & same_label).any(dim=1).sum())
        total += len(target)
    assert found >= 0.8 * total, f"found {found} of {total} objects"
