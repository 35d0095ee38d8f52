"""Writing an ``RCNN`` to an ONNX file: ``export_onnx(model, path)``.

The graph is ``detector.export.graph.ExportGraph``, captured by ``torch.export`` with the batch size and
the padded height and width dynamic, and translated by torch's ONNX exporter (onnxscript) at opset
``OPSET`` (``detector/export/__init__.py``, at least ``MIN_OPSET``). ``torch.export`` bounds the
data-dependent sizes (NMS and NonZero outputs) by comparisons the exporter drops with their asserts but
still translates; some bounds lie beyond int64 (a NonZero over a product of such sizes), so those
comparisons are translated with the bound clamped to int64 (``_at_most``): they compute nothing the
graph's outputs read.

The file carries what a client needs beside the tensors as JSON under the metadata key ``METADATA_KEY``:
the preset name, the class names (index == label), the keypoint names and classes, and the input sizes
and normalisation (``InputConfig``) that the caller applies before the graph.
"""

from __future__ import annotations

import copy
import json
import operator
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from detector.export import MIN_OPSET, OPSET
from detector.export.graph import ExportGraph
from detector.modeling.rcnn import RCNN
from detector.modeling.speeds import InferenceOptions

log = logging.getLogger(__name__)

METADATA_KEY = "detector"
INPUT_NAMES = ("images", "image_sizes")


def check_exportable(model: RCNN) -> None:
    """ValueError naming what of ``model`` cannot be exported."""
    if model.inference_options != InferenceOptions() or model.inference_only:
        raise ValueError(
            f"this model is an optimised copy ({model.inference_options}): export the original model "
            "(onnxruntime fuses the graph itself)"
        )
    if model.roi_heads.box_cfg.pooler != "align":
        raise ValueError(f"box pooler {model.roi_heads.box_cfg.pooler!r} cannot be exported: only 'align' (RoIAlign)")


def export_onnx(model: RCNN, path: str | Path, *, name: str = "custom", opset: int = OPSET) -> Path:
    """Write ``model`` (float32; exported from a copy on the CPU in eval mode where it is not) to ``path``;
    the same ``path``.

    The graph is traced on one small example batch of two images; it runs at any batch size and image
    size (tests/detector/export/). ValueError for a model it cannot export (``check_exportable``)."""
    import onnx  # only the export needs it (the "onnx" extra)

    check_exportable(model)
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET} (RoiAlign with coordinate_transformation_mode), got {opset}")
    if model.training or model.device.type != "cpu":  # the caller's model stays as it is
        model = copy.deepcopy(model).to("cpu").eval()
    graph = ExportGraph(model).eval()
    images, sizes = example_inputs(model)
    dims = torch.export.Dim.DYNAMIC
    with torch.no_grad():
        onnx_program = torch.onnx.export(
            graph, (images, sizes), input_names=list(INPUT_NAMES), output_names=list(graph.output_names()),
            dynamic_shapes={"images": {0: dims, 2: dims, 3: dims}, "image_sizes": {0: dims}},
            opset_version=opset, dynamo=True, verbose=False,
            custom_translation_table={operator.le: _at_most, operator.lt: _less},
        )
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata(model, name))})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


def metadata(model: RCNN, name: str) -> dict:
    cfg = model.cfg
    return {
        "preset": name,
        "class_names": list(cfg.class_names),
        "keypoint_names": list(cfg.keypoint_names) if cfg.keypoint is not None else [],
        "keypoint_classes": list(cfg.keypoint_classes) if cfg.keypoint is not None else [],
        "keypoint_labels": list(cfg.keypoint_labels) if cfg.keypoint is not None else [],
        "input": asdict(cfg.input),
    }


def example_inputs(model: RCNN) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images of different sizes in one padded batch, with weights' dtype: the trace's example. Its
    sizes are other than 1 and 2 apart from each other, so that ``torch.export`` specialises none."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 160, 224, generator=g)  # (N, 3, Hp, Wp), padded to multiples of 32
    sizes = torch.tensor([[160, 213], [147, 224]], dtype=torch.int64)
    images[0, :, :, 213:] = 0
    images[1, :, 147:] = 0
    return images, sizes



_INT64_MAX = 2**63 - 1


def _at_most(size, bound):
    """``operator.le`` on a size, for the exporter: a Python bound beyond int64 is clamped to it."""
    from onnxscript import opset18 as op

    return op.LessOrEqual(size, min(bound, _INT64_MAX) if isinstance(bound, int) else bound)


def _less(size, bound):
    """``operator.lt`` on a size, as ``_at_most``."""
    from onnxscript import opset18 as op

    return op.Less(size, min(bound, _INT64_MAX) if isinstance(bound, int) else bound)
