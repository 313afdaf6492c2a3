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

from common.fusion import GATED_RULES, Fused, FusionParams, logsumexp


@dataclass(frozen=True)
class Batch:
    """n requests that sent the same modalities."""

    logits: Mapping[str, np.ndarray]  # modality -> [n, classes], the graphs' raw output
    fused: Fused  # the manifest's fusion, request by request, as served
    params: FusionParams  # the manifest's fusion parameters
    features: Mapping[str, np.ndarray] | None = None  # modality -> [n, dims] penultimate features (feature detectors, later)


def serve(params: FusionParams, logits: Mapping[str, np.ndarray]) -> Batch:
    """The manifest's fusion of each request on its own, as service/model.py's postprocess runs it (float64, one row)."""
    n = len(next(iter(logits.values())))
    rows = [params({m: np.asarray(z[i : i + 1], np.float64) for m, z in logits.items()}) for i in range(n)]
    gates = None if rows[0].gates is None else {m: np.concatenate([r.gates[m] for r in rows]) for m in logits}  # type: ignore[index]
    fused = Fused(
        np.concatenate([r.probs for r in rows]),
        {m: np.concatenate([r.weights[m] for r in rows]) for m in logits},
        {m: np.concatenate([r.modality_probs[m] for r in rows]) for m in logits},
        gates,
    )
    return Batch(logits, fused, params)


@dataclass(frozen=True)
class Detector:
    name: str
    about: str
    score: Callable[[Batch], np.ndarray | None]  # [n], higher = more in-distribution; None where the model lacks what it needs


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


DETECTORS: tuple[Detector, ...] = (
    Detector("confidence", "the served confidence: the fused top probability the abstention threshold is applied to", confidence),
    Detector("msp", "maximum softmax probability of the calibrated fusion without the typicality gate", msp),
    Detector("energy", "logsumexp of the temperature-scaled logits, summed over the modalities sent", energy),
    Detector("typicality", "today's logit typicality gate, the least typical modality's (1 = fully typical)", typicality_gate),
    Detector("typicality_distance", "minus the logit distance behind the gate, over its threshold", typicality_distance),
)  # fmt: skip
