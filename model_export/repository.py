"""`mla export`: a training run becomes MODEL_DIR/<name>/<version>/ with one graph per modality.

The repository holds audio.onnx and video.onnx (raw input -> logits, preprocessing inside),
a parity sample per modality, and manifest.json. Versions sit side by side; an existing
version is never overwritten.

`mla calibrate`: an exported version's fusion section (temperatures, weights, typicality,
confidence maps, abstention) fitted again on a labelled split, from its own graphs: no
checkpoint needed, so an older export gains what the current schema fits, and a deployment
can calibrate on its own held-out data. The result is always a new version (the same graphs
under a new manifest): a published version is never rewritten, and each one's manifest hash is
recorded in MODEL_DIR/<name>/published.json when it is written (common.manifest.publish).
"""

from __future__ import annotations

import logging
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
    ExportInfo,
    Fusion,
    Manifest,
    OODEntry,
    Parity,
    TrainingInfo,
    publish,
)
from common.modalities import EntryBase, TensorSpec, kind
from common.parity import ParityError, parity_check
from common.validate import run_session
from model_export.onnx_graph import DEFAULT_OPSET, FEATURES_NAME, OUTPUT_NAME, ExportError, ExportSpec, export_graph, spec_for
from model_export.recalibrate import (  # noqa: F401 (re-exported)
    SAFE,
    features_of_graphs,
    graph_predictions,
    new_version_dir,
    recalibrate,
    save_banks,
)
from training.calibrate import (
    CONFIDENCE,
    TARGET_RISK,
    check_abstention,
    check_rule,
    fusion_section,
    served_rule,
    with_out_of_fold,
)
from training.checkpoint import checkpoint_path, load_checkpoint, model_from_checkpoint
from training.config import ModelConfig
from training.data.dataset import build_dataset
from training.data.specs import parse_spec
from training.models.classifier import SingleModality
from training.ood import fit_ood

log = logging.getLogger(__name__)
PARITY_ROWS = 64  # real inputs compared at export time
SAMPLE_ROWS = 8  # of which this many are stored for `mla validate`


def calibrate_run(
    run_dir: Path,
    data: str | None = None,
    rule: str | None = None,
    target_risk: float = TARGET_RISK,
    confidence: float = CONFIDENCE,
    crossfit: Path | None = None,
) -> dict[str, Any]:
    """The manifest's fusion section for a run: its rule (default: training.calibrate.served_rule), fitted on
    validation by training.calibrate.fusion_section, pooled with the out-of-fold predictions in `crossfit`
    (training.crossfit) where given.

    Returns plain data (the schema lives in common.manifest): rule, weights, calibration
    (temperatures, fused temperatures, confidence maps, validation figures before and after)
    and abstention.
    """
    from training.evaluate import predict_split

    check_abstention(target_risk, confidence)
    ckpt = load_checkpoint(run_dir)
    model = model_from_checkpoint(ckpt)
    data = data or ckpt["data"]
    rule = rule or served_rule(ckpt["method"])
    check_rule(rule)
    val = predict_split(model, parse_spec(data), "val", 128, workers=1)
    fitted_on = f"val split of {data}, n={len(val.labels)}"
    val, groups, fitted_on = with_out_of_fold(val, crossfit, fitted_on)
    return fusion_section(val, rule, fitted_on, target_risk, confidence, groups)


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


def _entry(spec: ExportSpec, cfg: ModelConfig, file: str, sample: str, out_dir: Path, feature_dim: int) -> EntryBase:
    common: dict[str, Any] = {
        "file": file,
        "sha256": sha256_file(out_dir / file),
        "input": TensorSpec(name=spec.input_name, dtype=spec.dtype, shape=list(spec.shape)),
        "output": TensorSpec(name=OUTPUT_NAME, dtype="float32", shape=["batch", cfg.n_classes]),
        "features": TensorSpec(name=FEATURES_NAME, dtype="float32", shape=["batch", feature_dim]),
        "parity_sample": sample,
        "parity_sample_sha256": sha256_file(out_dir / sample),
    }
    k = kind(spec.modality)
    return k.entry(**common, **k.entry_fields(cfg.settings(spec.modality)))


def export_run(
    run_dir: Path,
    out_root: Path,
    name: str | None = None,
    version: str | None = None,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    data: str | None = None,
    rule: str | None = None,
    target_risk: float = TARGET_RISK,
    confidence: float = CONFIDENCE,
    crossfit: Path | None = None,
    outliers: str | None = None,
) -> Path:
    """Export every modality of a run, prove parity, calibrate on validation, write the manifest; return the version folder.

    `crossfit`: a training.crossfit folder whose out-of-fold predictions are pooled with validation's for the
    calibration and abstention (calibrate_run). `outliers`: `csv:PATH` of auxiliary outliers; each modality they
    give gets a linear probe beside its kNN detector (training.ood.fit_ood).

    `rule` is the fusion rule to serve (default: logit_sum for joint, training.calibrate.SERVED_RULE
    otherwise); its temperatures, weights and abstention thresholds (error rate at most `target_risk`
    among the answers, with `confidence`) are fitted here.
    """
    check_abstention(target_risk, confidence)
    ckpt = load_checkpoint(run_dir)
    model = model_from_checkpoint(ckpt)
    cfg = model.cfg
    name = name or checkpoint_path(run_dir).parent.name
    if not SAFE.match(name):
        raise ExportError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    root = out_root / name
    target = new_version_dir(root, version)
    version = target.name
    precision: Literal["fp32", "fp16"] = "fp16" if fp16 else "fp32"
    inputs = parity_inputs(cfg, data or ckpt["data"])
    fusion = Fusion.model_validate(calibrate_run(run_dir, data, rule, target_risk, confidence, crossfit))
    data = data or str(ckpt["data"])

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        (tmp / "parity").mkdir()
        failures: list[str] = []
        entries: dict[str, EntryBase] = {}
        parity: dict[str, Parity] = {}
        for m in cfg.modalities:
            # export, then run ONNX Runtime and torch on the same real inputs
            spec = spec_for(cfg, m, opset, precision)
            file = f"{m}.onnx"
            export_graph(model, spec, tmp / file)
            with torch.no_grad():
                logits, feats = SingleModality(model, m, features=True)(torch.from_numpy(inputs[m]))
            expected = {OUTPUT_NAME: logits.numpy(), FEATURES_NAME: feats.numpy()}
            try:
                got = run_session(tmp / file, {spec.input_name: inputs[m]})
                one = run_session(tmp / file, {spec.input_name: inputs[m][:1]})  # the batch axis really is dynamic
            except Exception as exc:  # onnxruntime's own exception types
                raise ExportError(f"{m}: ONNX Runtime cannot run the exported graph: {exc}") from exc
            figures, errs = parity_check(f"{m} ({precision}, batch {len(inputs[m])})", expected, got, spec.tolerance)
            _, errs_one = parity_check(
                f"{m} ({precision}, batch 1)", {k: v[:1] for k, v in expected.items()}, one, spec.tolerance
            )
            failures += errs + errs_one
            if errs or errs_one:
                continue
            sample = f"parity/{m}.npz"
            np.savez_compressed(tmp / sample, inputs=inputs[m][:SAMPLE_ROWS], **{k: v[:SAMPLE_ROWS] for k, v in expected.items()})
            entries[m] = _entry(spec, cfg, file, sample, tmp, model.feature_dim)
            parity[m] = Parity(
                n=int(figures["n"]),
                max_abs_logit_diff=figures["max_abs_logit_diff"],
                max_rel_logit_diff=figures["max_rel_logit_diff"],
                max_rel_feature_diff=figures.get("max_rel_feature_diff"),
                max_prob_diff=figures["max_prob_diff"],
                top1_agreement=figures["top1_agreement"],
                tolerance=spec.tolerance.as_dict(),
            )
            log.info("%s: parity %s", m, figures)
        if failures:
            raise ParityError(failures)
        # The detectors are fitted on the features the service will score: torch's for fp32 (the graphs give them to
        # within parity, 1e-4 of their scale), the written graphs' own for fp16, whose features differ by up to 1e-2
        # and whose probe (weights of norm ~100) would turn that into a shifted threshold.
        graphs = (lambda samples: features_of_graphs(tmp, cfg, entries, samples)) if fp16 else None
        ood, banks = fit_ood(model, parse_spec(data), data, crossfit=crossfit, outliers=outliers, features=graphs)
        save_banks(tmp, banks, ood)
        src = checkpoint_path(run_dir)
        manifest = Manifest(
            name=name,
            version=version,
            created=datetime.now(UTC),
            labels=cfg.labels,
            modalities=entries,
            fusion=fusion,
            ood={m: OODEntry.model_validate(e) for m, e in ood.items()},
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
    publish(target)
    return target
