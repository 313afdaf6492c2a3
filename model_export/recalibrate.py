"""`mla calibrate`: an exported version's fusion section fitted again from its own graphs, into a new version.

No torch and no checkpoint: the graphs run in ONNX Runtime on data decoded by the training's
decode cache (av and numpy), and the fit is training.calibrate's (numpy and scipy), so a
serve-only install (requirements/serve-cpu.txt) calibrates as well as a training one. Also the
version numbering `mla export` shares. model_export.repository re-exports all of it.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.evaluation import Predictions
from common.hashing import sha256_file
from common.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Fusion,
    Manifest,
    check_hashes,
    load_detectors,
    load_manifest,
    publish,
    published,
)
from common.modalities import kind
from model_export.errors import ExportError
from training.calibrate import (
    CONFIDENCE,
    TARGET_RISK,
    check_abstention,
    check_rule,
    fusion_section,
    out_of_fold_file,
    with_out_of_fold,
)
from training.config import ModelConfig
from training.data.cache import DecodeCache
from training.data.specs import parse_spec

log = logging.getLogger(__name__)
SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def next_version(root: Path) -> str:
    """The integer after every version there is or ever was published under `root`."""
    names = [p.name for p in root.glob("*") if p.is_dir()] + list(published(root))
    return str(max((int(n) for n in names if n.isdigit()), default=0) + 1)


def new_version_dir(root: Path, version: str | None) -> Path:
    """Where a new version goes: `version` (default: the next integer) under `root`, never used before."""
    version = version or next_version(root)
    if not SAFE.match(version):
        raise ExportError(f"version {version!r} must be letters, digits, '.', '_' or '-'")
    target = root / version
    if target.exists():
        raise ExportError(f"{target} already exists: versions are never overwritten; pass another --version")
    if version in published(root):
        raise ExportError(f"version {version} of {root.name} was published before (its folder is gone); pass another --version")
    return target


def config_from_manifest(manifest: Manifest) -> ModelConfig:
    """What decoding a data set for these graphs needs: the manifest's labels, modalities and input sizes."""
    inputs: dict[str, dict[str, Any]] = {}
    for m, entry in manifest.modalities.items():
        try:
            inputs[m] = kind(entry.kind).settings_from_entry(entry)
        except ValueError as exc:
            raise ExportError(f"{manifest.name}: {m}: {exc}") from None
    return ModelConfig(
        encoder=manifest.training.encoder, labels=list(manifest.labels), modalities=list(manifest.modalities), inputs=inputs
    )


def graph_predictions(version_dir: Path, manifest: Manifest, data: str, split: str = "val", batch_size: int = 128) -> Predictions:
    """Every modality's logits on a split of `data`, from the version's ONNX graphs (CPU), as `predict` gives torch's.

    The split is decoded by the training's decode cache (the same arrays training reads) and fed
    in batches of `batch_size`, a missing modality masked out: numpy and ONNX Runtime alone.
    """
    import onnxruntime as ort

    cfg = config_from_manifest(manifest)
    samples = parse_spec(data).split(split)
    if not samples:
        raise ExportError(f"the {split} split of {data} is empty: nothing to calibrate on")
    arrays = DecodeCache().prepare(samples, {m: cfg.spec(m) for m in cfg.modalities})
    sessions = {
        m: ort.InferenceSession(str(version_dir / e.file), providers=["CPUExecutionProvider"])
        for m, e in manifest.modalities.items()
    }
    k = len(manifest.labels)
    logits: dict[str, list[np.ndarray]] = {m: [] for m in sessions}
    present: dict[str, list[np.ndarray]] = {m: [] for m in sessions}
    for start in range(0, len(samples), batch_size):
        rows = arrays[start : start + batch_size]
        for m, session in sessions.items():
            paths = [row.get(m) for row in rows]
            mask = np.array([p is not None for p in paths])
            z = np.zeros((len(rows), k), np.float64)
            if mask.any():
                entry = manifest.modalities[m]
                x = np.stack([np.load(p) for p in paths if p is not None]).astype(entry.input.dtype)
                z[mask] = session.run([entry.output.name], {entry.input.name: x})[0]
            logits[m].append(z)
            present[m].append(mask)
    return Predictions(
        {m: np.concatenate(v) for m, v in logits.items()},
        {m: np.concatenate(v) for m, v in present.items()},
        np.array([s.label for s in samples], np.int64),
    )


def recalibrate(
    version_dir: Path,
    data: str | None = None,
    split: str = "val",
    rule: str | None = None,
    version: str | None = None,
    target_risk: float = TARGET_RISK,
    confidence: float = CONFIDENCE,
    crossfit: Path | None = None,
) -> Path:
    """Fit the fusion section of an exported version again from its graphs; return the version folder written.

    `data` defaults to the data the model was trained on (its validation split); `rule` to the
    one it serves. `crossfit`: a training.crossfit folder of the same recipe, whose out-of-fold predictions (its
    oof.npz: numpy alone) are pooled with the graphs' as `mla export --crossfit` pools them, each modality's
    temperature then kept only where it pays on held-out speakers (training.loso).
    The graphs' hashes are checked first: a changed graph is not calibrated.
    The graphs and parity samples are copied, unchanged, to `version` (default: the next one)
    with the new manifest, which is published; an existing version is never overwritten.
    """
    check_abstention(target_risk, confidence)
    manifest = load_manifest(version_dir)
    failures = check_hashes(version_dir, manifest)
    if failures:
        raise ExportError(f"{version_dir} does not match its manifest, so it is not calibrated: " + "; ".join(failures))
    data = data or manifest.training.data
    rule = rule or manifest.fusion.rule
    check_rule(rule)
    if crossfit is not None:  # refused before the graphs run
        try:
            out_of_fold_file(crossfit)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    preds = graph_predictions(version_dir, manifest, data, split)
    fitted_on = f"{split} split of {data}, n={len(preds.labels)}, through the exported graphs"
    preds, groups, fitted_on = with_out_of_fold(preds, crossfit, fitted_on)
    fusion = Fusion.model_validate(fusion_section(preds, rule, fitted_on, target_risk, confidence, groups))
    banks = [e.bank for e in (manifest.ood or {}).values()]
    files = [rel for entry in manifest.modalities.values() for rel in (entry.file, entry.parity_sample)]
    return write_version(version_dir, manifest, version, [*files, *banks], lambda _: {"fusion": fusion})


def write_version(
    version_dir: Path,
    manifest: Manifest,
    version: str | None,
    copy: list[str],
    write: Callable[[Path], dict[str, Any]],
) -> Path:
    """A new version beside `version_dir` (`version`, default the next integer; never an existing one): the files
    `copy` names copied from it, `write(folder)` writing any others and returning the manifest's changed sections,
    the manifest written last, the folder moved into place whole and published. Returns the new version's folder."""
    root = version_dir.parent
    target = new_version_dir(root, version)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        for rel in copy:
            (tmp_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(version_dir / rel, tmp_dir / rel)
        changed = write(tmp_dir)
        updated = manifest.model_copy(
            update={"schema_version": SCHEMA_VERSION, "version": target.name, "created": datetime.now(UTC), **changed}
        )
        (tmp_dir / MANIFEST_NAME).write_text(updated.model_dump_json(indent=2) + "\n")
        # read back as the service will read it (model_copy validates nothing): a version that would fail to load is
        # never published
        written = load_manifest(tmp_dir)
        load_detectors(tmp_dir, written)
        if failures := check_hashes(tmp_dir, written):
            raise ExportError("the version written does not match its own manifest: " + "; ".join(failures))
        tmp_dir.replace(target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    publish(target)
    return target


def save_banks(folder: Path, banks: Mapping[str, np.ndarray], section: dict[str, Any]) -> None:
    """Each modality's kNN bank into folder/ood/<m>.npy (float32, no pickle), its path and hash into the `ood`
    section's entry (training.detectors.ood_section leaves both to the caller)."""
    (folder / "ood").mkdir(exist_ok=True)
    for m, bank in banks.items():
        rel = f"ood/{m}.npy"
        np.save(folder / rel, bank.astype(np.float32), allow_pickle=False)
        section[m].update(bank=rel, bank_sha256=sha256_file(folder / rel))


def graph_features(version_dir: Path, manifest: Manifest, samples: list[Any], batch_size: int = 128) -> dict[str, np.ndarray]:
    """Each modality's penultimate features [n_present, dims] on `samples` (training.data.specs.Sample), in their
    order, from the version's ONNX graphs (its `features` output), decoded by the training's decode cache."""
    return features_of_graphs(version_dir, config_from_manifest(manifest), manifest.modalities, samples, batch_size)


def features_of_graphs(
    folder: Path, cfg: ModelConfig, entries: Mapping[str, Any], samples: list[Any], batch_size: int = 128
) -> dict[str, np.ndarray]:
    """graph_features for graphs not yet under a manifest: `entries` are the manifest's modality entries (file, input,
    features). A modality no sample has gives [0, dims]."""
    import onnxruntime as ort

    arrays = DecodeCache().prepare(samples, {m: cfg.spec(m) for m in cfg.modalities})
    out: dict[str, np.ndarray] = {}
    for m, entry in entries.items():
        if entry.features is None:
            raise ExportError(f"{folder}: the {m} graph has no features output")
        session = ort.InferenceSession(str(folder / entry.file), providers=["CPUExecutionProvider"])
        paths: list[Path] = [p for row in arrays if (p := row.get(m)) is not None]
        chunks = [
            session.run(
                [entry.features.name],
                {entry.input.name: np.stack([np.load(p) for p in paths[i : i + batch_size]]).astype(entry.input.dtype)},
            )[0]
            for i in range(0, len(paths), batch_size)
        ]
        dims = int(entry.features.shape[-1])
        out[m] = np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, dims))
    return out


def refit_ood(
    version_dir: Path,
    outliers: str | None = None,
    crossfit: Path | None = None,
    data: str | None = None,
    version: str | None = None,
) -> Path:
    """Fit a version's out-of-distribution detectors again into a new version; return the folder written.

    The graphs, parity samples and fusion section are copied unchanged; the kNN banks (the training split's
    normalised features) are the version's own. The validation split of `data` (default: the data it was trained
    on) gives the scales and thresholds, through the graphs; `outliers` (`csv:PATH`) a probe beside the kNN of each
    modality they give; `crossfit` (a training.crossfit folder, whose fold checkpoints need the training install)
    thresholds that keep 95% of a new speaker's inputs. The graphs' hashes are checked first; an existing version
    is never overwritten."""
    from common.manifest import OODEntry
    from common.ood import TPR
    from training.data.specs import outliers_for
    from training.detectors import ood_section

    manifest = load_manifest(version_dir)
    failures = check_hashes(version_dir, manifest)
    if failures:
        raise ExportError(f"{version_dir} does not match its manifest, so its detectors are not refitted: " + "; ".join(failures))
    if not manifest.ood:
        raise ExportError(f"{version_dir} has no out-of-distribution detectors to refit: export its run again (mla export)")
    if crossfit is not None and not (crossfit / "oof.json").is_file():
        raise ExportError(f"{crossfit} is not a `python -m training.crossfit` folder: it has no oof.json")
    names = list(manifest.ood)
    samples = outliers_for(outliers, names) if outliers else []  # read before any graph runs: a bad list fails at once
    dropped = [m for m, e in manifest.ood.items() if e.probe is not None and not any(m in s.files for s in samples)]
    if dropped:
        log.warning("%s: no outliers given for %s, so its probe is not refitted: the new version's detector is kNN alone",
                    version_dir, ", ".join(dropped))  # fmt: skip
    data = data or manifest.training.data
    train = {m: d.knn.bank for m, d in load_detectors(version_dir, manifest).items()}
    val = graph_features(version_dir, manifest, parse_spec(data).split("val"))
    aux = {m: f for m, f in graph_features(version_dir, manifest, samples).items() if len(f)} if samples else {}
    if crossfit is not None:
        try:  # the folds are torch checkpoints: the training install
            from training.checkpoint import CheckpointError
            from training.ood import new_speaker_quantiles
        except ImportError as exc:
            raise ExportError(f"--crossfit needs the training install (torch): {exc}") from None
        try:
            flag, about = new_speaker_quantiles(crossfit, TPR, outliers)
        except (CheckpointError, KeyError) as exc:
            raise ExportError(f"{crossfit}: its folds cannot be read: {exc}") from None
    else:
        flag, about = {}, ""
    section, banks = ood_section(
        {m: train[m] for m in names},
        {m: val[m] for m in names},
        aux,
        {m: manifest.ood[m].k for m in names},
        f"bank: {manifest.name}/{manifest.version}'s, the train split of {data}",
        flag if crossfit else None,
        about,
        TPR,
        outliers or "",
    )

    def write_banks(folder: Path) -> dict[str, Any]:
        save_banks(folder, banks, section)
        return {"ood": {m: OODEntry.model_validate(e) for m, e in section.items()}}

    files = [rel for entry in manifest.modalities.values() for rel in (entry.file, entry.parity_sample)]
    return write_version(version_dir, manifest, version, files, write_banks)
