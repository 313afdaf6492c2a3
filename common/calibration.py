"""How well a predicted probability means what it says: NLL, Brier, ECE, selective risk (numpy only).

`confidence` is the probability the model gives its own top label. A calibrated model's
confidence equals its accuracy, bin by bin: ECE is the gap, weighted by how many
predictions fall in each bin (15 equal-width bins, as in QMF's evaluation); adaptive ECE
uses bins of equal count instead, which the many confident predictions of a good model
would otherwise crowd into one bin. The service and evaluation both use these.
"""

from __future__ import annotations

import numpy as np

BINS = 15


def _top(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true label, in nats."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance to the one-hot label, summed over classes (0 is perfect, 2 the worst)."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(labels)), np.asarray(labels)] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _ece(conf: np.ndarray, correct: np.ndarray, bins: int) -> float:
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.sum() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total / len(conf))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error with `bins` equal-width confidence bins over (0, 1]."""
    conf, correct = _top(probs, labels)
    return _ece(conf, correct, bins)


def ece_floor(probs: np.ndarray, bins: int = BINS, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these confidences would still show on this many samples.

    Each draw makes every prediction right with probability equal to its confidence and
    measures ECE; the mean over draws is the sampling noise of the estimate. On a few hundred
    predictions spread over many bins it is several points: an ECE near it is as good as the
    data can show.
    """
    conf = np.asarray(probs, dtype=np.float64).max(axis=1)
    rng = np.random.default_rng(seed)
    return float(np.mean([_ece(conf, (rng.random(len(conf)) < conf).astype(np.float64), bins) for _ in range(draws)]))


def adaptive_ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE with `bins` bins holding equal numbers of predictions (sorted by confidence)."""
    conf, correct = _top(probs, labels)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for part in np.array_split(order, min(bins, len(order))):
        total += len(part) * abs(correct[part].mean() - conf[part].mean())
    return float(total / len(conf))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, list[float]]:
    """Per equal-width bin: mean confidence, accuracy and count (for a reliability diagram)."""
    conf, correct = _top(probs, labels)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": [], "lower": [], "upper": []}
    for b in range(bins):
        sel = idx == b
        out["lower"].append(b / bins)
        out["upper"].append((b + 1) / bins)
        out["count"].append(float(sel.sum()))
        out["confidence"].append(float(conf[sel].mean()) if sel.any() else float("nan"))
        out["accuracy"].append(float(correct[sel].mean()) if sel.any() else float("nan"))
    return out


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Answer the k most confident predictions, k = 1..n: coverage k/n, error rate among them, and the threshold."""
    conf, correct = _top(probs, labels)
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(1.0 - correct[order])
    k = np.arange(1, len(conf) + 1)
    return k / len(conf), errors / k, conf[order]


def summary(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every calibration figure of one set of predictions."""
    return {
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels),
        "ece_floor": ece_floor(probs),
        "adaptive_ece": adaptive_ece(probs, labels),
    }
