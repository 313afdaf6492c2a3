"""One modality's path (raw input -> encoder -> shared head -> logits, and the encoder's features) as an ONNX graph."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import torch

from common.modalities import kind
from common.parity import FP16, FP32, Tolerance
from model_export.errors import ExportError  # re-exported: its home before model_export.errors
from training.config import ModelConfig
from training.models import MultimodalClassifier
from training.models.classifier import SingleModality

log = logging.getLogger(__name__)

OUTPUT_NAME = "logits"
FEATURES_NAME = "features"  # the second output: the encoder's penultimate features (common.ood reads them)
DEFAULT_OPSET = 18

# Op types the graphs may hold: each has a CUDA kernel in ONNX Runtime (shape arithmetic
# such as Shape/Gather/Range runs on the host on purpose). Anything else, STFT and DFT
# first, would bounce tensors between host and device; export refuses it. Abs, Clip, Reciprocal and
# ReduceMax (opset 18, float) are the audio level's (RaiseLevel); each is registered in ONNX Runtime's
# onnxruntime/core/providers/cuda/cuda_execution_provider.cc.
CUDA_OPS = frozenset(
    {
        "Abs",
        "Add",
        "BatchNormalization",
        "Cast",
        "Clip",
        "Concat",
        "Constant",
        "Conv",
        "Div",
        "Expand",
        "Flatten",
        "Gather",
        "Gemm",
        "GlobalAveragePool",
        "Identity",
        "Log",
        "MatMul",
        "MaxPool",
        "Mul",
        "Pad",
        "Pow",
        "Range",
        "Reciprocal",
        "ReduceMax",
        "ReduceMean",
        "Relu",
        "Reshape",
        "Shape",
        "Slice",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Transpose",
        "Unsqueeze",
    }
)


@dataclass(frozen=True)
class ExportSpec:
    """How one modality is exported: its input, its dynamic axis, its opset and tolerance."""

    modality: str
    input_name: str
    dtype: Literal["float32", "uint8"]
    shape: tuple[int | str, ...]  # "batch" is dynamic
    opset: int
    precision: Literal["fp32", "fp16"]

    @property
    def tolerance(self) -> Tolerance:
        return FP16 if self.precision == "fp16" else FP32

    def example(self, batch: int = 2) -> torch.Tensor:
        shape = [batch if d == "batch" else int(d) for d in self.shape]
        if self.dtype == "uint8":
            return torch.randint(0, 256, shape, dtype=torch.uint8)
        return 0.1 * torch.randn(shape)


def spec_for(
    cfg: ModelConfig, modality: str, opset: int = DEFAULT_OPSET, precision: Literal["fp32", "fp16"] = "fp32"
) -> ExportSpec:
    if modality not in cfg.modalities:
        raise ExportError(f"the model has no modality {modality!r} ({', '.join(cfg.modalities)})")
    k = kind(modality)
    dtype, shape = k.input(cfg.settings(modality))
    return ExportSpec(modality, k.input_name, dtype, ("batch", *shape), opset, precision)


def export_graph(model: MultimodalClassifier, spec: ExportSpec, path: Path) -> onnx.ModelProto:
    """Export (fp16 trunk and head if asked), check, refuse host-only ops; write `path`."""
    if spec.precision == "fp16":
        model = copy.deepcopy(model)  # converted in place below; the caller's stays fp32
    module = SingleModality(model, spec.modality, half=spec.precision == "fp16", features=True).eval()
    batch = torch.export.Dim("batch", min=1, max=65_536)
    try:
        torch.onnx.export(
            module,
            (spec.example(2),),
            str(path),
            dynamo=True,
            input_names=[spec.input_name],
            output_names=[OUTPUT_NAME, FEATURES_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=spec.opset,
            optimize=True,
            verbose=False,
        )
    except Exception as exc:  # the exporter raises many types; name the modality and the cause
        raise ExportError(f"{spec.modality}: torch.onnx.export failed: {exc}") from exc
    # One self-contained file per modality (the exporter may spill weights beside it).
    graph = onnx.load(str(path), load_external_data=True)
    for extra in path.parent.glob(f"{path.name}.data"):
        extra.unlink()
    graph.doc_string = (
        f"mla-serve {spec.modality} graph: raw {spec.dtype} input {list(spec.shape)} -> logits, features ({spec.precision})"
    )
    onnx.save(graph, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    host_only = sorted({n.op_type for n in graph.graph.node} - CUDA_OPS)
    if host_only:
        raise ExportError(f"{spec.modality}: the graph holds op(s) without a CUDA kernel in ONNX Runtime: {', '.join(host_only)}")
    return graph
