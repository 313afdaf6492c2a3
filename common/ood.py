"""Out-of-distribution detection on each encoder's penultimate features, in numpy: one code path for export,
evaluation, the benchmarks and the service.

A modality's input is judged in distribution when its features lie near those the model was trained on:
k-nearest-neighbour distance on L2-normalised features (Sun et al., "Out-of-distribution detection with deep
nearest neighbors", ICML 2022). The score is minus the Euclidean distance from the input's normalised feature
vector to the k-th nearest normalised training feature (the bank), so higher means more typical; the input is in
distribution when its score is at least the threshold, the score that keeps `tpr` (95%) of the validation split's
inputs (never the training split's, whose rows are in the bank).

Why features and not logits: a network trained on one narrow domain maps inputs far from it (a blank frame, pink
noise) onto its class means in logit space, where the logit typicality gate (common.fusion.Typicality) saw them as
typical; the features keep the difference (benchmarks/results/ood_features.md: far-OOD AUROC 0.996/0.997 for
audio/video against the gate's 0.80/0.83 on the same model). kNN was chosen over Mahalanobis and the logit
detectors on the tune sets and validation only, by the rule written in benchmarks/ood/features.py.

Beside the kNN, a modality may carry a linear probe (LinearProbe): a logistic regression on the same normalised
features, trained against auxiliary outliers (for the voice, spoken words that are not digits). kNN measures distance
in every direction alike, and speech that is not a digit lies about as near the training features as a new speaker's
digits do (near-OOD AUROC 0.58 on the tune sets); the probe finds the directions that tell them apart (0.72 with it:
benchmarks/results/ood_probe.md). With a probe the detector's score is the lower of the two, each standardised by its
mean and sd on the validation split (Detector), so an input must look typical to both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TPR = 0.95  # the share of validation inputs a threshold keeps in distribution
CHUNK = 256  # queries scored at once (a CHUNK x bank distance matrix)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length (a zero row stays zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def threshold_at_tpr(id_scores: np.ndarray, tpr: float = TPR) -> float:
    """The highest threshold that keeps at least `tpr` of `id_scores` (kept: score >= threshold)."""
    scores = np.sort(np.asarray(id_scores, np.float64))
    if not len(scores):
        raise ValueError("a threshold needs in-distribution scores")
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    return float(scores[math.floor(len(scores) * (1 - tpr) + 1e-9)])


@dataclass(frozen=True)
class NearestNeighbours:
    """kNN distance to a bank of L2-normalised training features; score = minus the distance to the k-th nearest."""

    bank: np.ndarray  # [n, dims], rows of unit length (float32 is enough: distances of unit vectors)
    k: int
    # the bank transposed, [dims, n], C-contiguous float32, made once: a query's products with it are read row by row
    # (26 us a query against 45 us with the bank's rows, 3,500 x 128, on the 2-core machine of the benchmarks). BLAS
    # sums a single query's products in another order on this layout: they round apart by up to 6e-8, within the
    # float32 bound below
    _columns: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.bank.ndim != 2 or len(self.bank) == 0:
            raise ValueError(f"the bank must be [n, dims] with n >= 1, got shape {self.bank.shape}")
        if not 1 <= self.k <= len(self.bank):
            raise ValueError(f"k must lie in 1..{len(self.bank)} (the bank's rows), got {self.k}")
        if not np.isfinite(self.bank).all():
            raise ValueError("the bank holds a value that is not finite")
        object.__setattr__(self, "_columns", np.ascontiguousarray(self.bank.T, np.float32))

    @classmethod
    def fit(cls, features: np.ndarray, k: int) -> NearestNeighbours:
        return cls(l2_normalise(features).astype(np.float32), k)

    def kth_distances(self, features: np.ndarray, ks: tuple[int, ...] | None = None) -> dict[int, np.ndarray]:
        """{k: [n] distance of each row's normalised features to its k-th nearest bank row}, for each k in `ks`."""
        ks = ks or (self.k,)
        top = max(ks)
        if not 1 <= min(ks) <= top <= len(self.bank):
            raise ValueError(f"k must lie in 1..{len(self.bank)}, got {ks}")
        # The dot products in float32, the rest in float64: the bank is read at half the bytes (a served request's
        # kNN took 0.21 ms a modality in float64, 0.075 ms so). Rounding moves a product of unit vectors by at most
        # (dims + 1) x 2^-24 (the sum's bound, and the query's rounding to float32), so a squared distance by twice
        # that: near the served thresholds (distance 0.3, 128 dims) a score moves by at most 2.6e-5; 1.5e-6 was the
        # largest seen on version 5's banks. tests/common/test_ood.py checks the bound.
        # The k-th nearest row has the k-th largest product (|a - b|^2 = 2 - 2 a.b falls as a.b rises), so only the
        # `top` largest products become distances: from the same products, the same numbers as making every product a
        # distance first.
        z = l2_normalise(features).astype(np.float32)
        n = len(self.bank)
        out: list[np.ndarray] = []
        for i in range(0, len(z), CHUNK):
            dots = z[i : i + CHUNK] @ self._columns
            best = np.sort(np.partition(dots, n - top, axis=1)[:, n - top :], axis=1)[:, ::-1]  # largest first
            out.append(np.maximum(2.0 - 2.0 * best.astype(np.float64), 0.0))  # |a - b|^2 of unit vectors
        nearest = np.sqrt(np.concatenate(out)) if out else np.zeros((0, top))
        return {k: nearest[:, k - 1] for k in ks}

    def score(self, features: np.ndarray) -> np.ndarray:
        """[n] minus the distance to the k-th nearest bank row: in [-2, 0], higher is more typical."""
        return -self.kth_distances(features)[self.k]


@dataclass(frozen=True)
class LinearProbe:
    """A logistic regression on L2-normalised features, in distribution against auxiliary outliers: score = its
    log-odds of "in distribution" (training.ood.fit_probe fits it)."""

    weights: np.ndarray  # [dims]
    bias: float

    def __post_init__(self) -> None:
        if self.weights.ndim != 1 or not len(self.weights):
            raise ValueError(f"the probe's weights must be [dims], got shape {self.weights.shape}")
        if not (np.isfinite(self.weights).all() and math.isfinite(self.bias)):
            raise ValueError("the probe holds a value that is not finite")

    def score(self, features: np.ndarray) -> np.ndarray:
        """[n] log-odds that each row is in distribution."""
        return l2_normalise(features) @ np.asarray(self.weights, np.float64) + self.bias


@dataclass(frozen=True)
class Detector:
    """One modality's served detector: its kNN, optionally a linear probe beside it, and the threshold at which an
    input stops being in distribution.

    Alone, the kNN's score is the detector's. With a probe (trained against auxiliary outliers: training.ood), each
    of the two scores is standardised by its mean and standard deviation on the validation split (`scales`) and the
    detector's score is the lower of the two, in validation standard deviations: an input must look typical to both
    (docs/decisions/2026-12-07-outlier-probe.md)."""

    knn: NearestNeighbours
    threshold: float  # in distribution: score >= threshold (chosen on validation at TPR)
    probe: LinearProbe | None = None
    scales: tuple[tuple[float, float], tuple[float, float]] | None = None  # ((kNN mean, sd), (probe mean, sd)) on val

    def __post_init__(self) -> None:
        if (self.probe is None) != (self.scales is None):
            raise ValueError("a probe needs its scales (validation mean and sd of both scores), and scales a probe")
        if self.probe is not None and len(self.probe.weights) != self.knn.bank.shape[1]:
            raise ValueError(f"the probe has {len(self.probe.weights)} weights, the features {self.knn.bank.shape[1]} dims")
        for mean, sd in self.scales or ():
            if not (math.isfinite(mean) and math.isfinite(sd) and sd > 0):
                raise ValueError(f"a scale needs a finite mean and a positive sd, got ({mean}, {sd})")

    def score(self, features: np.ndarray) -> np.ndarray:
        """[n] the detector's score for rows of features [n, dims]: higher is more typical."""
        s = self.knn.score(features)
        if self.probe is None or self.scales is None:
            return s
        (km, ks), (pm, ps) = self.scales
        return np.minimum((s - km) / ks, (self.probe.score(features) - pm) / ps)

    def __call__(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([n] scores, [n] in distribution) for rows of features [n, dims]."""
        s = self.score(features)
        return s, s >= self.threshold
