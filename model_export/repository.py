"""`mla export`: a training run becomes MODEL_DIR/<name>/<version>/ with one graph per modality.

The repository holds audio.onnx and video.onnx (raw input -> logits, preprocessing inside),
a parity sample per modality, and manifest.json. Versions sit side by side; an existing
version is never overwritten.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from common.hashing import sha256_file
from common.manifest import (
    MANIFEST_NAME,
    AudioEntry,
    ExportInfo,
    Fusion,
    Manifest,
    Parity,
    TensorSpec,
    TrainingInfo,
    VideoEntry,
)
from common.parity import ParityError, compare
from common.validate import run_session
from model_export.onnx_graph import DEFAULT_OPSET, OUTPUT_NAME, ExportError, ExportSpec, export_graph, spec_for
from training.calibrate import calibrate_run
from training.checkpoint import checkpoint_path, load_checkpoint, model_from_checkpoint
from training.config import ModelConfig
from training.data.dataset import build_dataset
from training.data.specs import parse_spec
from training.models.classifier import SingleModality

log = logging.getLogger(__name__)
SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PARITY_ROWS = 64  # real inputs compared at export time
SAMPLE_ROWS = 8  # of which this many are stored for `mla validate`


def parity_inputs(cfg: ModelConfig, data: str, rows: int = PARITY_ROWS) -> dict[str, np.ndarray]:
    """Real decoded inputs from the validation split, per modality (samples that have it)."""
    dataset = build_dataset(parse_spec(data), "val", cfg)
    out: dict[str, list[np.ndarray]] = {m: [] for m in cfg.modalities}
    for i in range(len(dataset)):
        item = dataset[i]
        for m in cfg.modalities:
            if item[f"{m}_present"] and len(out[m]) < rows:
                out[m].append(np.asarray(item[m]))
        if all(len(v) >= rows for v in out.values()):
            break
    missing = [m for m, v in out.items() if not v]
    if missing:
        raise ExportError(f"{data}: the val split has no {', '.join(missing)} to check parity on")
    return {m: np.stack(v) for m, v in out.items()}


def next_version(root: Path) -> str:
    numbers = [int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit()]
    return str(max(numbers, default=0) + 1)


def _entry(spec: ExportSpec, cfg: ModelConfig, file: str, sample: str, out_dir: Path) -> AudioEntry | VideoEntry:
    common: dict[str, Any] = {
        "file": file,
        "sha256": sha256_file(out_dir / file),
        "input": TensorSpec(name=spec.input_name, dtype=spec.dtype, shape=list(spec.shape)),
        "output": TensorSpec(name=OUTPUT_NAME, dtype="float32", shape=["batch", cfg.n_classes]),
        "parity_sample": sample,
        "parity_sample_sha256": sha256_file(out_dir / sample),
    }
    if spec.modality == "audio":
        return AudioEntry(
            **common, sample_rate=cfg.sample_rate, clip_samples=cfg.clip_samples, clip_seconds=cfg.clip_samples / cfg.sample_rate
        )
    return VideoEntry(**common, frames=cfg.video_frames, height=cfg.video_size, width=cfg.video_size)


def export_run(
    run_dir: Path,
    out_root: Path,
    name: str | None = None,
    version: str | None = None,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    data: str | None = None,
    rule: str | None = None,
) -> Path:
    """Export every modality of a run, prove parity, calibrate on validation, write the manifest; return the version folder.

    `rule` is the fusion rule to serve (default: logit_sum for joint, training.evaluate.SERVED_RULE
    otherwise); its temperatures, weights and abstention thresholds are fitted here.
    """
    ckpt = load_checkpoint(run_dir)
    model = model_from_checkpoint(ckpt)
    cfg = model.cfg
    name = name or checkpoint_path(run_dir).parent.name
    if not SAFE.match(name):
        raise ExportError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    root = out_root / name
    version = version or next_version(root)
    if not SAFE.match(version):
        raise ExportError(f"version {version!r} must be letters, digits, '.', '_' or '-'")
    target = root / version
    if target.exists():
        raise ExportError(f"{target} already exists: versions are never overwritten; pass another --version")
    precision: Literal["fp32", "fp16"] = "fp16" if fp16 else "fp32"
    inputs = parity_inputs(cfg, data or ckpt["data"])
    fusion = Fusion.model_validate(calibrate_run(run_dir, data, rule))

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        (tmp / "parity").mkdir()
        failures: list[str] = []
        entries: dict[str, AudioEntry | VideoEntry] = {}
        parity: dict[str, Parity] = {}
        for m in cfg.modalities:
            # export, then run ONNX Runtime and torch on the same real inputs
            spec = spec_for(cfg, m, opset, precision)
            file = f"{m}.onnx"
            export_graph(model, spec, tmp / file)
            with torch.no_grad():
                expected = SingleModality(model, m)(torch.from_numpy(inputs[m])).numpy()
            try:
                got = run_session(tmp / file, {spec.input_name: inputs[m]})
            except Exception as exc:  # onnxruntime's own exception types
                raise ExportError(f"{m}: ONNX Runtime cannot run the exported graph: {exc}") from exc
            figures, errs = compare(f"{m} ({precision}, batch {len(expected)})", {OUTPUT_NAME: expected}, got, spec.tolerance)
            one = run_session(tmp / file, {spec.input_name: inputs[m][:1]})  # the batch axis really is dynamic
            _, errs_one = compare(f"{m} ({precision}, batch 1)", {OUTPUT_NAME: expected[:1]}, one, spec.tolerance)
            failures += errs + errs_one
            if errs or errs_one:
                continue
            sample = f"parity/{m}.npz"
            np.savez_compressed(tmp / sample, inputs=inputs[m][:SAMPLE_ROWS], logits=expected[:SAMPLE_ROWS])
            entries[m] = _entry(spec, cfg, file, sample, tmp)
            parity[m] = Parity(
                n=int(figures["n"]),
                max_abs_logit_diff=figures["max_abs_logit_diff"],
                max_rel_logit_diff=figures["max_rel_logit_diff"],
                max_prob_diff=figures["max_prob_diff"],
                top1_agreement=figures["top1_agreement"],
                tolerance=spec.tolerance.as_dict(),
            )
            log.info("%s: parity %s", m, figures)
        if failures:
            raise ParityError(failures)
        src = checkpoint_path(run_dir)
        manifest = Manifest(
            name=name,
            version=version,
            created=datetime.now(UTC),
            labels=cfg.labels,
            modalities=entries,
            fusion=fusion,
            training=TrainingInfo(
                method=ckpt["method"],
                encoder=cfg.encoder,
                data=str(ckpt["data"]),
                val_accuracy={k: float(v) for k, v in ckpt.get("val_accuracy", {}).items()},
                train_config={
                    **ckpt["train_config"],
                    **({"owm_alpha_search": ckpt["owm_alpha_search"]} if "owm_alpha_search" in ckpt else {}),
                },
                source_checkpoint=str(src.resolve()),
                source_checkpoint_sha256=sha256_file(src),
            ),
            export=ExportInfo(
                opset=opset, precision=precision, torch_version=torch.__version__, onnx_version=onnx.__version__, parity=parity
            ),
        )
        (tmp / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
        tmp.replace(target)  # atomic: a half-written version is never visible
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
