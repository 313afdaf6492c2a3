"""`mla validate`: re-check a model repository without torch: schema, publication record, hashes, parity on the stored sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.manifest import ManifestError, check_hashes, check_published, load_detectors, load_manifest
from common.parity import FEATURES, Tolerance, parity_check


class InvalidRepositoryError(Exception):
    def __init__(self, model_dir: Path, failures: list[str]) -> None:
        self.failures = failures
        super().__init__(f"{model_dir} failed validation:\n" + "\n".join(f"  - {f}" for f in failures))


def run_session(path: Path, feeds: dict[str, np.ndarray], providers: list[str] | None = None) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def validate_repository(model_dir: Path) -> dict[str, Any]:
    """Every failure gathered, then one error listing them; returns the parity figures on success."""
    try:
        manifest = load_manifest(model_dir)
    except ManifestError as exc:
        raise InvalidRepositoryError(model_dir, [str(exc)]) from exc
    failures = check_published(model_dir) + check_hashes(model_dir, manifest)
    if not any(".npy" in f for f in failures):  # the detectors as the service builds them: banks, k, probes
        try:
            load_detectors(model_dir, manifest)
        except ManifestError as exc:
            failures.append(str(exc))
    figures: dict[str, Any] = {}
    for modality, entry in manifest.modalities.items():
        if any(entry.file in f or entry.parity_sample in f for f in failures):
            continue  # a changed file is not worth running
        with np.load(model_dir / entry.parity_sample) as sample:
            inputs, expected = sample["inputs"], {entry.output.name: sample["logits"]}
            if entry.features is not None:
                if FEATURES not in sample:
                    failures.append(f"{entry.parity_sample} ({modality}) holds no features to check the graph's against")
                    continue
                expected[FEATURES] = sample[FEATURES]
        try:
            got = run_session(model_dir / entry.file, {entry.input.name: inputs})
        except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
            failures.append(f"{entry.file} ({modality}) does not run in ONNX Runtime: {exc}")
            continue
        tol = Tolerance(**manifest.export.parity[modality].tolerance)
        if entry.features is None:
            got = {k: v for k, v in got.items() if k == entry.output.name}  # a v4 graph's outputs are its logits alone
        figures[modality], errs = parity_check(entry.file, expected, got, tol)
        failures += errs
    if failures:
        raise InvalidRepositoryError(model_dir, failures)
    return {"name": manifest.name, "version": manifest.version, "parity": figures}
