"""Test-time fusion of per-modality predictions, per sample, in numpy.

The rule (MLA, Eq. 7): each sample's modalities are weighted by their own certainty,
w_m = softmax over the present modalities of -H(p_m), and the fused prediction is the
weighted sum of the modalities' *probabilities*. Probabilities, not logits: the head is
shared but each encoder puts its features at its own scale, so logits of one modality can
be larger across the board and would dominate a logit sum whatever the weights say; a
mixture of probability vectors is bounded, stays a distribution, and the weights mean
what they say.

Each sample is weighted on its own. The authors' code averaged the entropy over the batch,
which gives every sample the same weights; `batch_entropy_weights` keeps that variant
only so benchmarks can compare against it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RULES = ("entropy", "equal", "fixed", "batch_entropy")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along `axis`."""
    p = np.clip(probs, 1e-12, 1.0)
    return -np.sum(p * np.log(p), axis=axis)


def _present_matrix(names: Sequence[str], n: int, present: Mapping[str, np.ndarray] | None) -> np.ndarray:
    if present is None:
        return np.ones((len(names), n), dtype=bool)
    return np.stack([np.asarray(present.get(m, np.ones(n, bool)), dtype=bool) for m in names])


def _masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 restricted to `mask`; columns with nothing present get zeros."""
    scores = np.where(mask, scores, -np.inf)
    top = np.max(scores, axis=0, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.where(mask, np.exp(scores - top), 0.0)
    total = e.sum(axis=0, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def entropy_weights(probs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per-sample weights w[m][i] = softmax_m(-H(p_m[i])) over the modalities present for i."""
    names = list(probs)
    n = next(iter(probs.values())).shape[0]
    h = np.stack([entropy(probs[m]) for m in names])
    w = _masked_softmax(-h, _present_matrix(names, n, present))
    return {m: w[i] for i, m in enumerate(names)}


def batch_entropy_weights(
    probs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """The authors' variant: entropy averaged over the batch, one weight for every sample."""
    names = list(probs)
    n = next(iter(probs.values())).shape[0]
    mask = _present_matrix(names, n, present)
    mean_h = np.array([entropy(probs[m])[mask[i]].mean() if mask[i].any() else np.inf for i, m in enumerate(names)])
    w = _masked_softmax(np.repeat(-mean_h[:, None], n, axis=1), mask)
    return {m: w[i] for i, m in enumerate(names)}


def fixed_weights(
    names: Sequence[str], n: int, weights: Mapping[str, float], present: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Constant weights, renormalised per sample over the modalities it has."""
    mask = _present_matrix(names, n, present)
    raw = np.stack([np.full(n, float(weights[m])) for m in names]) * mask
    total = raw.sum(axis=0, keepdims=True)
    w = np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)
    return {m: w[i] for i, m in enumerate(names)}


def fuse(
    probs: Mapping[str, np.ndarray],
    rule: str = "entropy",
    present: Mapping[str, np.ndarray] | None = None,
    weights: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fuse per-modality probabilities [n, classes] into one [n, classes]; return the weights too."""
    if not probs:
        raise ValueError("nothing to fuse: no modality given")
    names = list(probs)
    n = next(iter(probs.values())).shape[0]
    if rule == "entropy":
        w = entropy_weights(probs, present)
    elif rule == "batch_entropy":
        w = batch_entropy_weights(probs, present)
    elif rule == "equal":
        w = fixed_weights(names, n, {m: 1.0 for m in names}, present)
    elif rule == "fixed":
        if weights is None or set(weights) < set(names):
            raise ValueError(f"fixed fusion needs a weight for each of {names}")
        w = fixed_weights(names, n, weights, present)
    else:
        raise ValueError(f"unknown fusion rule {rule!r}; choose from {RULES}")
    fused = sum(w[m][:, None] * probs[m] for m in names)
    return np.asarray(fused), w
