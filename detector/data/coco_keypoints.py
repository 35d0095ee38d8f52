"""COCO's person keypoints: their names and skeleton, the one copy (no torch, no pycocotools).

Indices are 0-based positions in ``COCO_KEYPOINT_NAMES`` (0 nose ... 16 right ankle), as Python indexes
them; COCO's annotation files number them from 1, and ``skeleton_1_based`` converts for writing one.
"""

from __future__ import annotations

# In the order of COCO's annotation files.
COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# The limbs, as pairs of 0-based indices into COCO_KEYPOINT_NAMES, in the order of COCO's person category.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
    (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


def skeleton_1_based(skeleton: tuple[tuple[int, int], ...] = COCO_SKELETON) -> list[list[int]]:
    """The skeleton as a COCO category's ``"skeleton"`` field writes it: 1-based index pairs."""
    return [[a + 1, b + 1] for a, b in skeleton]
