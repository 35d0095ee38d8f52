"""Moved to ``detector.mask_paste`` (below the model, beside ``detector.structures``). This name stays
only for tests/detector/modeling/test_parity.py until its import points there; nothing else uses it."""

from detector.mask_paste import masks_to_rle, paste_mask_probs, paste_masks  # noqa: F401
