"""OpenOOD v1.5's metrics: AUROC and FPR at 95% TPR, in-distribution as the positive class, with bootstrap intervals.

Scores are "higher = more in-distribution". The point estimates are scikit-learn's; the
bootstrap needs the same statistics on a thousand resamples at once, so it uses their rank
forms (Mann-Whitney U for AUROC, the 5% quantile of the in-distribution scores for FPR@95),
vectorised over resamples; tests check that the two agree.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

TPR = 0.95
RESAMPLES = 1000


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve, in-distribution positive: the chance that a random ID input outscores a random OOD one
    (ties count half)."""
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    return float(roc_auc_score(y, np.r_[id_scores, ood_scores]))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = TPR) -> float:
    """Share of OOD inputs kept at the highest threshold that keeps at least `tpr` of the in-distribution ones."""
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    fpr, tprs, _ = roc_curve(y, np.r_[id_scores, ood_scores], drop_intermediate=False)
    return float(fpr[np.searchsorted(tprs, tpr - 1e-12, side="left")])


def _auroc_rank(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUROC of ID scores x against OOD scores y along `axis` (any leading shape): U / (n_x n_y)."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    ranks = stats.rankdata(np.concatenate([x, y], axis=-1), axis=-1)
    nx, ny = x.shape[-1], y.shape[-1]
    return np.asarray((ranks[..., :nx].sum(axis=-1) - nx * (nx + 1) / 2) / (nx * ny))


def _fpr_quantile(x: np.ndarray, y: np.ndarray, axis: int = -1, tpr: float = TPR) -> np.ndarray:
    """FPR at `tpr` along `axis`: the threshold is the k-th smallest ID score, k = floor(n (1 - tpr)),
    the highest that keeps >= tpr of ID (ties only keep more)."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    k = math.floor(x.shape[-1] * (1 - tpr) + 1e-9)
    threshold = np.sort(x, axis=-1)[..., k]
    return np.asarray((y >= threshold[..., None]).mean(axis=-1))


def interval(
    id_scores: np.ndarray, ood_scores: np.ndarray, metric: str, seed: int = 0, resamples: int = RESAMPLES
) -> tuple[float, float]:
    """95% percentile bootstrap interval of `metric` ("auroc" or "fpr95"): ID and OOD items resampled
    separately (each group keeps its size), `resamples` draws from a fixed seed."""
    statistic = {"auroc": _auroc_rank, "fpr95": _fpr_quantile}[metric]
    if len(id_scores) < 2 or len(ood_scores) < 2:
        value = float(statistic(np.asarray(id_scores), np.asarray(ood_scores)))
        return value, value
    result = stats.bootstrap(
        (np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)),
        statistic,
        n_resamples=resamples,
        vectorized=True,
        paired=False,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return float(low), float(high)


def summary(id_scores: np.ndarray, ood_scores: np.ndarray, seed: int = 0, resamples: int = RESAMPLES) -> dict[str, list[float]]:
    """{"auroc": [value, low, high], "fpr95": [value, low, high]}."""
    return {
        "auroc": [auroc(id_scores, ood_scores), *interval(id_scores, ood_scores, "auroc", seed, resamples)],
        "fpr95": [fpr_at_tpr(id_scores, ood_scores), *interval(id_scores, ood_scores, "fpr95", seed, resamples)],
    }
