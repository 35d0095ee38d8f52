"""Data pipeline: COCO-format datasets, paired transforms, batching and a synthetic data set."""
