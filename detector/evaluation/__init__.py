"""COCO evaluation: AP/AR by pycocotools, VOC07 11-point AP, results files, PR curves.

``python -m detector.eval`` (``detector/eval.py``) is the command line on top of these modules; import
each from its own module (this package imports nothing, so that the command line answers ``--help``
without torch).
"""
