"""manifest.json: the only contract between training and the service.

Pure pydantic (no torch, no onnx), so the service reads it with the same model that wrote it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.hashing import sha256_file

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ManifestError(Exception):
    """A manifest that is missing or fails its schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: Literal["float32", "uint8"]
    shape: list[int | str]  # a string names a dynamic axis ("batch")


class _ModalityBase(_Strict):
    file: str  # ONNX graph, relative to the manifest
    sha256: str
    input: TensorSpec
    output: TensorSpec
    parity_sample: str  # .npz with inputs and the torch model's logits on them
    parity_sample_sha256: str


class AudioEntry(_ModalityBase):
    kind: Literal["audio"] = "audio"
    sample_rate: int  # Hz the waveform must be resampled to
    clip_samples: int  # waveform length: pad with zeros at the end or crop from the start
    clip_seconds: float
    channels: Literal["mono"] = "mono"


class VideoEntry(_ModalityBase):
    kind: Literal["video"] = "video"
    frames: int
    height: int
    width: int
    pixel_format: Literal["rgb24"] = "rgb24"
    sampling: Literal["uniform-centre"] = "uniform-centre"  # frame i of N: the centre of the i-th of N equal segments


ModalityEntry = Annotated[AudioEntry | VideoEntry, Field(discriminator="kind")]


class Fusion(_Strict):
    rule: Literal["entropy"] = "entropy"  # w_m = softmax over present modalities of -H(p_m), per sample
    combine: Literal["probabilities"] = "probabilities"  # fused p = sum_m w_m * softmax(logits_m)


class Parity(_Strict):
    n: int
    max_abs_logit_diff: float
    max_rel_logit_diff: float | None = None  # relative to max(1, max |logit|); absent in exports before it
    max_prob_diff: float
    top1_agreement: float
    tolerance: dict[str, float]


class ExportInfo(_Strict):
    opset: int
    precision: Literal["fp32", "fp16"]
    torch_version: str
    onnx_version: str
    parity: dict[str, Parity]


class TrainingInfo(_Strict):
    method: str
    encoder: str
    data: str
    val_accuracy: dict[str, float]
    source_checkpoint: str
    source_checkpoint_sha256: str


class Manifest(_Strict):
    schema_version: Literal[1] = 1  # SCHEMA_VERSION
    name: str
    version: str
    created: datetime
    labels: list[str]
    modalities: dict[str, ModalityEntry]
    fusion: Fusion = Fusion()
    training: TrainingInfo
    export: ExportInfo

    def public(self) -> dict[str, object]:
        """What a client may see: no hashes of source checkpoints or file paths on disk."""
        return self.model_dump(mode="json", include={"name", "version", "created", "labels", "modalities", "fusion"})


def load_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {model_dir}")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
        raise ManifestError(f"{path} fails the manifest schema (v{SCHEMA_VERSION}): {problems}") from exc
    for key, entry in manifest.modalities.items():
        if entry.kind != key:
            raise ManifestError(f"{path}: modality {key!r} holds a {entry.kind!r} entry")
    return manifest


def check_hashes(model_dir: Path, manifest: Manifest) -> list[str]:
    """Every file the manifest names that is missing or differs from its sha256 (empty: all intact)."""
    failures = []
    for modality, entry in manifest.modalities.items():
        for rel, expected in ((entry.file, entry.sha256), (entry.parity_sample, entry.parity_sample_sha256)):
            path = model_dir / rel
            if not path.is_file():
                failures.append(f"{rel} ({modality}) is missing")
            elif sha256_file(path) != expected:
                failures.append(
                    f"{rel} ({modality}) does not match its sha256 in the manifest: the file was changed or corrupted"
                )
    return failures
