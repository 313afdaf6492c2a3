"""From per-modality graph outputs to the served answer, for a batch of requests: one code path for the service
(a batch of one), the benchmarks and evaluation.

1. Each modality sent that has a detector (common.ood) is scored on its features; below its threshold it is out
   of distribution.
2. The fusion (common.fusion, the manifest's rule) runs over the modalities sent that are in distribution; where
   none is, over all of them (the answer is then abstained, reason `out_of_distribution`).
3. The answer is given when its confidence reaches the threshold of the set of modalities it was fused from
   (common.fusion.answers: 1.0 never answers); otherwise it is abstained, reason `low_confidence`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from common.fusion import Fused, FusionParams, answers, entropy, subset_name
from common.ood import Detector

if TYPE_CHECKING:
    from common.manifest import Manifest

OUT_OF_DISTRIBUTION = "out_of_distribution"
LOW_CONFIDENCE = "low_confidence"


@dataclass
class Answers:
    fused: Fused  # the fusion over each row's fused set (fused.probs: [n, classes])
    sent: dict[str, np.ndarray]  # modality -> [n] bool: sent in that request
    used: dict[str, np.ndarray]  # modality -> [n] bool: in that row's fusion
    scores: dict[str, np.ndarray]  # modality -> [n] OOD score (NaN where not sent or no detector)
    in_distribution: dict[str, np.ndarray]  # modality -> [n] bool (True where not sent or no detector)
    subsets: np.ndarray  # [n] the fused set's name ("audio+video")
    thresholds: np.ndarray  # [n] the confidence threshold applied
    reasons: np.ndarray  # [n] object: None (answered), OUT_OF_DISTRIBUTION or LOW_CONFIDENCE

    @property
    def abstained(self) -> np.ndarray:
        return np.array([r is not None for r in self.reasons], dtype=bool)

    @property
    def confidence(self) -> np.ndarray:
        return np.asarray(self.fused.probs.max(axis=1))


def decide(
    params: FusionParams,
    thresholds: Mapping[str, float],
    detectors: Mapping[str, Detector],
    logits: Mapping[str, np.ndarray],
    features: Mapping[str, np.ndarray] | None = None,
    sent: Mapping[str, np.ndarray] | None = None,
    min_confidence: float | None = None,
) -> Answers:
    """The answers to n requests: `logits[m]` [n, classes] and `features[m]` [n, dims] per modality, `sent[m]` [n]
    which requests carry m (default: all); `thresholds` per fused set (absent: 0), or `min_confidence` for every row."""
    names = list(logits)
    n = next(iter(logits.values())).shape[0]
    sent_m = {m: np.ones(n, bool) if sent is None else np.asarray(sent[m], bool) for m in names}
    scores = {m: np.full(n, np.nan) for m in names}
    ok = {m: np.ones(n, bool) for m in names}
    for m in names:
        if m in detectors and features is not None and m in features and sent_m[m].any():
            rows = np.flatnonzero(sent_m[m])
            s, good = detectors[m](np.asarray(features[m])[rows])
            scores[m][rows], ok[m][rows] = s, good
    kept = {m: sent_m[m] & ok[m] for m in names}
    any_kept = np.any(np.stack(list(kept.values())), axis=0)
    used = {m: np.where(any_kept, kept[m], sent_m[m]) for m in names}
    fused = params({m: np.asarray(logits[m], np.float64) for m in names}, used)
    subsets = np.array([subset_name([m for m in names if used[m][i]]) for i in range(n)])
    limits = np.array([min_confidence if min_confidence is not None else float(thresholds.get(s, 0.0)) for s in subsets])
    conf = fused.probs.max(axis=1)
    given = np.array([bool(answers(conf[i], limits[i])) for i in range(n)], dtype=bool)
    reasons = np.array([None if g else LOW_CONFIDENCE for g in given], dtype=object)
    reasons[~any_kept] = OUT_OF_DISTRIBUTION
    return Answers(fused, sent_m, used, scores, ok, subsets, limits, reasons)


def answer_body(
    manifest: Manifest, manifest_sha256: str, params: FusionParams, detectors: Mapping[str, Detector], a: Answers
) -> dict[str, Any]:
    """The JSON answer to one request (row 0 of `a`): the shape of service/schemas.py's PredictResponse, built in one
    place for the service and for the servers it is compared with (benchmarks/peers/)."""
    labels, fusion = manifest.labels, manifest.fusion
    subset = str(a.subsets[0])
    sent = [m for m in a.sent if a.sent[m][0]]
    detail = {}
    for m in sent:
        p = a.fused.modality_probs[m]
        used = bool(a.used[m][0])
        checked = m in detectors and not np.isnan(a.scores[m][0])
        detail[m] = {
            "label": labels[int(p[0].argmax())],
            "probabilities": dict(zip(labels, map(float, p[0]), strict=True)),
            "entropy": float(entropy(p)[0]),
            "weight": float(a.fused.weights[m][0]),
            "temperature": float((params.temperatures or {}).get(m, 1.0)),
            "typicality": None if a.fused.gates is None or not used else float(a.fused.gates[m][0]),
            "ood_score": float(a.scores[m][0]) if checked else None,
            "ood_threshold": detectors[m].threshold if checked else None,
            "in_distribution": bool(a.in_distribution[m][0]) if checked else None,
            "fused": used,
        }
    best = int(a.fused.probs[0].argmax())
    reason = a.reasons[0]
    cmap = (params.confidence_maps or {}).get(subset)
    conformal = fusion.conformal
    inside = None if conformal is None or reason == OUT_OF_DISTRIBUTION else conformal.prediction_set(subset, a.fused.probs[0])
    return {
        "model": {"name": manifest.name, "version": manifest.version, "manifest_sha256": manifest_sha256},
        "label": labels[best],
        "confidence": float(a.fused.probs[0, best]),
        "abstained": reason is not None,
        "abstain_reason": reason,
        "min_confidence": float(a.thresholds[0]),
        "fused_modalities": sorted(m for m in sent if a.used[m][0]),
        "probabilities": dict(zip(labels, map(float, a.fused.probs[0]), strict=True)),
        "prediction_set": None if inside is None else [lab for lab, keep in zip(labels, inside, strict=True) if keep],
        "modalities": detail,
        "fusion": fusion.rule,
        "mixture_share": params.mixture_share,
        "fused_temperature": float((params.fused_temperatures or {}).get(subset, 1.0)),
        "confidence_map": None if cmap is None else asdict(cmap),
    }
