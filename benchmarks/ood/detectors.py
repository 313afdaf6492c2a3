"""OOD detectors: each one a score per request, higher = more in-distribution, from what the service computes.

A detector is a name, a line saying what it is, and a function of a `Batch` (n requests that sent
the same modalities: their logits and the manifest's fusion of them, computed per request as the
service does). Adding one is adding an entry to DETECTORS.

Feature detectors (Mahalanobis on penultimate features, Lee et al. 2018; kNN, Sun et al. 2022) are
compared in benchmarks/ood/features.py, with torch, on a retrain of the default recipe (the committed
graphs return logits only). Serving one needs the exported graphs to return the penultimate features
beside the logits, and a fit on the training split's features: it will read `Batch.features` and be
built by a fit step (a function of the training split's Batch that returns a Detector), then join DETECTORS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from common.answer import Answers, decide
from common.fusion import GATED_RULES, Fused, FusionParams, logsumexp
from common.ood import Detector as OODDetector


@dataclass(frozen=True)
class Batch:
    """n requests that sent the same modalities."""

    logits: Mapping[str, np.ndarray]  # modality -> [n, classes], the graphs' raw output
    fused: Fused  # the fusion, request by request, as served (over the modalities in distribution)
    params: FusionParams  # the manifest's fusion parameters
    features: Mapping[str, np.ndarray] | None = None  # modality -> [n, dims] penultimate features (where the graph has them)
    answers: Answers | None = None  # the served decision: OOD verdicts, fused sets, abstentions (common.answer)
    standardise: Mapping[str, tuple[float, float]] | None = None  # modality -> its validation OOD scores' mean and sd


def serve(
    params: FusionParams,
    logits: Mapping[str, np.ndarray],
    features: Mapping[str, np.ndarray] | None = None,
    detectors: Mapping[str, OODDetector] | None = None,
    thresholds: Mapping[str, float] | None = None,
    standardise: Mapping[str, tuple[float, float]] | None = None,
) -> Batch:
    """The served answer of each request on its own (common.answer.decide, as service/model.py's postprocess runs it:
    float64, one row at a time), with the manifest's detectors and abstention thresholds."""
    n = len(next(iter(logits.values())))
    rows = [
        decide(
            params,
            thresholds or {},
            detectors or {},
            {m: np.asarray(z[i : i + 1], np.float64) for m, z in logits.items()},
            None if features is None else {m: np.asarray(f[i : i + 1], np.float64) for m, f in features.items()},
        )
        for i in range(n)
    ]
    fs = [r.fused for r in rows]
    gates = None if fs[0].gates is None else {m: np.concatenate([r.gates[m] for r in fs]) for m in logits}  # type: ignore[index]
    fused = Fused(
        np.concatenate([r.probs for r in fs]),
        {m: np.concatenate([r.weights[m] for r in fs]) for m in logits},
        {m: np.concatenate([r.modality_probs[m] for r in fs]) for m in logits},
        gates,
    )

    def cat(field: str) -> dict[str, np.ndarray]:
        return {m: np.concatenate([getattr(r, field)[m] for r in rows]) for m in logits}

    answers = Answers(
        fused,
        cat("sent"),
        cat("used"),
        cat("scores"),
        cat("in_distribution"),
        np.concatenate([r.subsets for r in rows]),
        np.concatenate([r.thresholds for r in rows]),
        np.concatenate([r.reasons for r in rows]),
    )
    return Batch(logits, fused, params, features, answers, standardise)


@dataclass(frozen=True)
class Detector:
    name: str
    about: str
    score: Callable[[Batch], np.ndarray | None]  # [n], higher = more in-distribution; None where the model lacks what it needs
    # its statistics were fitted on the validation split (the typicality gate's class means and covariance): scored
    # against validation ID it is scored in sample, so no choice made against validation may pick it
    fitted_on_validation: bool = False


def confidence(batch: Batch) -> np.ndarray:
    return batch.fused.probs.max(axis=1)


def msp(batch: Batch) -> np.ndarray:
    """The top probability of the same calibrated fusion with the typicality gate taken out (Hendrycks & Gimpel 2017)."""
    params = batch.params
    if params.rule in GATED_RULES:
        params = replace(params, rule="loglinear", typicality=None)
    return params({m: np.asarray(z, np.float64) for m, z in batch.logits.items()}).probs.max(axis=1)


def energy(batch: Batch) -> np.ndarray:
    """Negative free energy, logsumexp of the temperature-scaled logits (Liu et al. 2020), summed over the modalities sent."""
    temps = batch.params.temperatures or {}
    return np.asarray(sum(logsumexp(np.asarray(z, np.float64) / float(temps.get(m, 1.0))) for m, z in batch.logits.items()))


def typicality_gate(batch: Batch) -> np.ndarray | None:
    """The manifest's typicality gate (1 up to its threshold, falling beyond), the least typical modality's."""
    gates = batch.fused.gates
    return None if gates is None else np.min(np.stack([gates[m] for m in batch.logits]), axis=0)


def typicality_distance(batch: Batch) -> np.ndarray | None:
    """The distance behind the gate, not cut off at its threshold: minus the largest of d_m / threshold_m."""
    typicality = batch.params.typicality
    if typicality is None:
        return None
    ratios = [typicality[m].distance(z) / typicality[m].threshold for m, z in batch.logits.items()]
    return -np.max(np.stack(ratios), axis=0)


def served_score(batch: Batch) -> np.ndarray | None:
    """The served detector's score (common.ood.Detector: minus the k-th nearest training feature's distance, or with a
    probe beside the kNN the lower of the two standardised scores); a pair's is the lower of its modalities' scores,
    each standardised by its validation mean and sd (the least typical decides)."""
    a = batch.answers
    if a is None or batch.standardise is None or any(np.isnan(a.scores[m]).all() for m in batch.logits):
        return None
    parts = [(a.scores[m] - batch.standardise[m][0]) / batch.standardise[m][1] for m in batch.logits]
    return np.min(np.stack(parts), axis=0)


DETECTORS: tuple[Detector, ...] = (
    Detector("confidence", "the served confidence: the fused top probability the abstention threshold is applied to", confidence),
    Detector("msp", "maximum softmax probability of the calibrated fusion without the typicality gate", msp),
    Detector("energy", "logsumexp of the temperature-scaled logits, summed over the modalities sent", energy),
    Detector("typicality", "today's logit typicality gate, the least typical modality's (1 = fully typical)", typicality_gate,
             fitted_on_validation=True),
    Detector("typicality_distance", "minus the logit distance behind the gate, over its threshold", typicality_distance,
             fitted_on_validation=True),
    Detector("served", "the served detector (kNN on features, with the manifest's probe where it has one), the least typical "
             "modality's", served_score),
)  # fmt: skip
