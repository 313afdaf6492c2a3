"""Where should the typicality gate look: at a modality's logits (served today) or at its encoder features?

    python -m benchmarks.avdigits.feature_gate      # after make bench-accuracy

The served gate (common.fusion.Typicality, fitted by training.calibrate) measures the squared
Mahalanobis distance of the 10 logits to the nearest class mean. `make bench-robustness`
shows what it misses: babble and mild white noise leave the audio logits near their class
means, and no video damage moves them. This study fits the same statistic on the encoders'
features (the 128 numbers the shared head reads; Lee et al., NeurIPS 2018, use features),
with the same threshold rule (GATE_MARGIN x the 99th percentile on validation) and decay,
and scores, on the corruption benchmark's test sets (models of `make bench-accuracy`, each
seed):

- how well each distance separates corrupted from clean test inputs (AUROC), and
- the fused accuracy of `gated_loglinear` with each gate space per modality (logits or
  features: four combinations), against equal and the best fixed weights; the combination
  with the best mean validation accuracy over every corruption and severity is named.

It changes nothing that is served: the ONNX graphs output logits only. Writes
benchmarks/results/feature_gate.{json,md}.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.avdigits.robustness import (
    CORRUPTIONS,
    Inputs,
    _clean_inputs,
    _val_predictions,
    model_outputs,
    setup,
    severity_label,
)
from benchmarks.report import markdown_table, write
from common.fusion import FusionParams, Typicality, fuse
from training.calibrate import GATE_DECAY, GATE_MARGIN, GATE_QUANTILE, fit_fusion, fit_typicality
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data.dataset import build_dataset
from training.data.specs import parse_spec
from training.models import MultimodalClassifier

log = logging.getLogger("feature_gate")
MODALITIES = ("audio", "video")
SPACES = ("logits", "features")
COMBOS = tuple(itertools.product(SPACES, repeat=len(MODALITIES)))  # (audio's space, video's space)


def _split(model: MultimodalClassifier, inputs: Inputs) -> dict[str, Any]:
    """{"clean": {modality: {space: array}}, corruption name: [per severity: the corrupted modalities' arrays]}."""
    out: dict[str, Any] = {"clean": {m: model_outputs(model, m, getattr(inputs, m)) for m in MODALITIES}}
    for c in CORRUPTIONS:
        out[c.name] = [
            {m: model_outputs(model, m, x) for m, x in inputs.corrupted(c, level).items()} for level in range(len(c.severities))
        ]
    return out


@dataclass(frozen=True)
class _GivenGate:
    """A gate computed beforehand (from another space than the logits), as common.fusion.Gate."""

    values: np.ndarray

    def gate(self, logits: np.ndarray) -> np.ndarray:
        return self.values


def _gated_accuracy(params: FusionParams, gates: dict[str, np.ndarray], logits: dict[str, np.ndarray], y: np.ndarray) -> float:
    """The served gated_loglinear (common.fusion.fuse, with its weights, temperatures and blend) with the given gates."""
    given = {m: _GivenGate(gates[m]) for m in MODALITIES}
    fused = fuse(
        logits,
        params.rule,
        None,
        params.weights,
        params.temperatures,
        params.fused_temperatures,
        given,
        params.confidence_maps,
        params.mixture_share,
    )
    return float((fused.probs.argmax(axis=1) == y).mean())


@dataclass(frozen=True)
class Fitted:
    """One model's fits on the ordinary validation split."""

    typicality: dict[str, dict[str, Typicality]]  # modality -> space -> its Typicality
    gated: FusionParams  # gated_loglinear, as served (its own logit gates are replaced per combination)
    references: dict[str, FusionParams]  # equal and fixed

    def cell(
        self,
        arrays: dict[str, dict[str, np.ndarray]],
        clean: dict[str, dict[str, np.ndarray]],
        y: np.ndarray,
        corrupted: str | None,
    ) -> dict[str, Any]:
        """One test (or validation) set: each combination's accuracy, the references', and the corrupted modality's AUROCs."""
        logits = {m: arrays[m]["logits"] for m in MODALITIES}
        row: dict[str, Any] = {}
        for combo in COMBOS:
            gates = {m: self.typicality[m][space].gate(arrays[m][space]) for m, space in zip(MODALITIES, combo, strict=True)}
            row["/".join(combo)] = _gated_accuracy(self.gated, gates, logits, y)
        for r, p in self.references.items():
            row[r] = float((p(logits).probs.argmax(axis=1) == y).mean())
        if corrupted:
            truth = np.r_[np.zeros(len(y)), np.ones(len(y))]
            row["auroc"] = {}
            for space in SPACES:
                t = self.typicality[corrupted][space]
                scores = np.r_[t.distance(clean[corrupted][space]), t.distance(arrays[corrupted][space])]
                row["auroc"][space] = float(roc_auc_score(truth, scores))
        return row


def evaluate_seed(run: Path, val_spec: str, clean_spec: str) -> dict[str, Any]:
    model = model_from_checkpoint(load_checkpoint(run))
    val_preds = _val_predictions(run, val_spec)  # the logits every served fit reads, as bench-robustness has them
    val_ds = build_dataset(parse_spec(val_spec), "val", model.cfg)
    items = [val_ds[i] for i in range(len(val_ds))]
    val_y = np.array([it["label"] for it in items])
    if not np.array_equal(val_y, val_preds.labels):
        raise RuntimeError("the validation split came back in another order")
    val_arrays = {
        m: {
            "features": model_outputs(model, m, np.stack([np.asarray(it[m]) for it in items]))["features"],
            "logits": val_preds.logits[m],
        }
        for m in MODALITIES
    }
    k = model.cfg.n_classes
    fits = {
        m: {space: fit_typicality(val_arrays[m][space], val_y, GATE_MARGIN, GATE_DECAY, classes=k) for space in SPACES}
        for m in MODALITIES
    }
    typicality = {m: {space: fit[0] for space, fit in by_space.items()} for m, by_space in fits.items()}
    fitted = Fitted(
        typicality, fit_fusion(val_preds, "gated_loglinear"), {r: fit_fusion(val_preds, r) for r in ("equal", "fixed")}
    )
    out: dict[str, Any] = {"splits": {}}
    for split in ("val", "test"):
        inputs = _clean_inputs(clean_spec, model, split)
        held = _split(model, inputs)
        clean = held["clean"]
        rows: dict[str, Any] = {"clean": fitted.cell(clean, clean, inputs.labels, None)}
        for c in CORRUPTIONS:
            corrupted = None if c.modality == "both" else c.modality
            rows[c.name] = [
                fitted.cell({**clean, **held[c.name][level]}, clean, inputs.labels, corrupted)
                for level in range(len(c.severities))
            ]
        out["splits"][split] = rows
    out["val_quantiles"] = {
        m: {space: fit[1][str(GATE_QUANTILE)] for space, fit in by_space.items()} for m, by_space in fits.items()
    }
    return out


def _cells(rows: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = [("none", "clean", rows["clean"])]
    for c in CORRUPTIONS:
        out += [(c.name, severity_label(c, i), rows[c.name][i]) for i in range(len(c.severities))]
    return out


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per split, per row: every figure's mean over seeds; per combination: its mean validation accuracy and bar count."""
    combos = ["/".join(c) for c in COMBOS]
    out: dict[str, Any] = {"rows": {}, "val_means": {}, "held": {}}
    for split in ("val", "test"):
        cells = [_cells(s["splits"][split]) for s in per_seed]
        rows: list[dict[str, Any]] = []
        for i, (name, sev, first) in enumerate(cells[0]):
            row: dict[str, Any] = {"corruption": name, "severity": sev}
            row.update({k: statistics.fmean(float(c[i][2][k]) for c in cells) for k in [*combos, "equal", "fixed"]})
            if "auroc" in first:
                row["auroc"] = {sp: statistics.fmean(float(c[i][2]["auroc"][sp]) for c in cells) for sp in SPACES}
            rows.append(row)
        out["rows"][split] = rows
        out["held"][split] = {k: sum(100 * (r[k] - max(r["equal"], r["fixed"])) >= -0.5 for r in rows) for k in combos}
        if split == "val":
            out["val_means"] = {k: statistics.fmean(r[k] for r in rows) for k in combos}
    val_means: dict[str, float] = out["val_means"]
    out["chosen"] = max(val_means, key=lambda k: val_means[k])
    return out


def markdown(results: dict[str, Any]) -> str:
    s = results["summary"]
    combos = ["/".join(c) for c in COMBOS]
    test = s["rows"]["test"]
    lines = [
        f"# Typicality gate on logits or on encoder features (AV-digits, MLA, seeds {results['seeds']})\n",
        "`gated_loglinear` with each modality's gate fitted on its logits (served) or on its encoder's features "
        "(`audio space/video space`), same margin and decay; audio+video test accuracy, mean over seeds, and the AUROC "
        "with which each distance tells the corrupted modality's test inputs from its clean ones. Nothing here is served.\n",
        "Mean validation accuracy over every corruption and severity: "
        + ", ".join(f"{k} {v:.4f}" for k, v in s["val_means"].items())
        + f"; best on validation: **{s['chosen']}**. Test rows within 0.5 point of, or above, both equal and the best "
        "fixed weights (of " + str(len(test)) + "): " + ", ".join(f"{k} {v}" for k, v in s["held"]["test"].items()) + ".\n",
    ]
    header = ["corruption", "severity", *combos, "equal", "fixed", "AUROC logits", "AUROC features"]
    body = [
        [
            r["corruption"],
            r["severity"],
            *(r[k] for k in combos),
            r["equal"],
            r["fixed"],
            *((r["auroc"]["logits"], r["auroc"]["features"]) if "auroc" in r else ("", "")),
        ]
        for r in test
    ]
    lines.append(markdown_table(header, body))
    return "\n".join(lines) + "\n"


def main() -> None:
    args, val_spec, clean_spec, runs = setup(__doc__)
    per_seed = []
    for seed, run in zip(args.seeds, runs, strict=True):
        log.info("seed %d", seed)
        per_seed.append(evaluate_seed(run, val_spec, clean_spec))
    results = {"seeds": args.seeds, "summary": summarise(per_seed), "per_seed": per_seed}
    md = markdown(results)
    write("feature_gate", results, md)
    print(md)


if __name__ == "__main__":
    main()
