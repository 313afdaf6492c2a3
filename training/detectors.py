"""Fitting a modality's out-of-distribution detector from features, in numpy and scikit-learn (no torch), so that
`mla refit-ood` runs from an export's graphs on a serve install with scikit-learn beside it (training.ood gets the
features from a torch model and calls these).

- build_detector: the kNN on the training split's features and, with auxiliary outliers' features, a linear probe
  beside it (fit_probe), each score standardised on the validation split (common.ood.Detector);
- ood_section: the manifest's `ood` section from those features, each threshold keeping `tpr` of the validation
  split, or flagging the share of it that the cross-fitted folds say keeps `tpr` of a new speaker's inputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.ood import TPR, Detector, LinearProbe, NearestNeighbours, l2_normalise, threshold_at_tpr

PROBE_CS = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse L2 strengths tried; chosen by 5-fold cross-validated log-loss


def fit_probe(inliers: np.ndarray, outliers: np.ndarray, seed: int = 0) -> tuple[LinearProbe, str]:
    """A logistic regression, `inliers` (the training split's features) against `outliers` (auxiliary outliers'
    features through the same encoder), both L2-normalised; classes weighted to balance; C from PROBE_CS by
    stratified 5-fold cross-validation on these rows alone (log-loss). Returns the probe and a line saying so."""
    try:
        from sklearn.linear_model import LogisticRegressionCV
    except ImportError as exc:
        raise ValueError(f"a probe needs scikit-learn (the training install has it): {exc}") from None

    if len(inliers) < 5 or len(outliers) < 5:
        raise ValueError(f"a probe needs at least 5 rows of each class, got {len(inliers)} and {len(outliers)}")
    x = np.concatenate([l2_normalise(inliers), l2_normalise(outliers)])
    y = np.r_[np.ones(len(inliers)), np.zeros(len(outliers))]
    fit = LogisticRegressionCV(
        Cs=list(PROBE_CS),
        cv=5,
        scoring="neg_log_loss",
        class_weight="balanced",
        max_iter=5000,
        random_state=seed,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,  # plain L2, and scikit-learn 1.10's attributes (no warnings)
    ).fit(x, y)
    probe = LinearProbe(np.ravel(fit.coef_).astype(np.float64), float(np.ravel(fit.intercept_)[0]))
    c = float(np.ravel(fit.C_)[0])
    return probe, (
        f"logistic regression on L2-normalised features, {len(inliers)} training-split rows against {len(outliers)}"
        f" auxiliary outliers, classes balanced, C = {c:g} (of {', '.join(f'{v:g}' for v in PROBE_CS)}, by stratified"
        " 5-fold cross-validated log-loss on those rows)"
    )


def build_detector(
    train: np.ndarray, val: np.ndarray, outliers: np.ndarray | None, k: int, seed: int = 0
) -> tuple[Detector, str | None]:
    """One modality's detector with no threshold yet (-inf): kNN on `train`, and with `outliers` a probe beside it
    (fit_probe), each score standardised by its mean and sd on `val`. Returns it and the probe's description."""
    knn = NearestNeighbours.fit(train, k)
    if outliers is None or not len(outliers):
        return Detector(knn, -math.inf), None
    probe, about = fit_probe(train, outliers, seed)
    s_knn, s_probe = knn.score(val), probe.score(val)
    scales = ((float(s_knn.mean()), float(s_knn.std())), (float(s_probe.mean()), float(s_probe.std())))
    return Detector(knn, -math.inf, probe, scales), about


def ood_section(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    outliers: dict[str, np.ndarray],
    ks: dict[str, int],
    fitted_on: str,
    flag: dict[str, float] | None = None,
    about: str = "",
    tpr: float = TPR,
    outliers_name: str = "",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest's `ood` section (bank file names and hashes left to the caller) and each modality's bank, from
    the features: `train` (the bank's rows), `val` (scales and threshold), `outliers` (a probe where given).

    The threshold keeps `tpr` of `val`; with `flag` (new_speaker_quantiles), it flags that share of `val` instead."""
    section: dict[str, Any] = {}
    banks: dict[str, np.ndarray] = {}
    for m in train:
        if len(val[m]) == 0 or len(train[m]) == 0:
            raise ValueError(f"{m}: the train and val splits must both have it to fit its out-of-distribution detector")
        det, probe_about = build_detector(train[m], val[m], outliers.get(m), min(ks[m], len(train[m])))
        scores = det.score(val[m])
        threshold = threshold_at_tpr(scores, 1.0 - (flag or {}).get(m, 1.0 - tpr))
        banks[m] = det.knn.bank
        section[m] = {
            "detector": "knn" if det.probe is None else "knn+probe",
            "k": det.knn.k,
            "threshold": threshold,
            "tpr": tpr,
            "fitted_on": f"{fitted_on} (n={len(train[m])}); threshold: its val split (n={len(val[m])})"
            + (f", at the quantile that keeps {tpr:.0%} of a new speaker's inputs in {about}" if flag else ""),
            "val": {
                "n": float(len(scores)),
                "mean": float(scores.mean()),
                "std": float(scores.std()),
                "in_distribution": float((scores >= threshold).mean()),
                **{f"q{q:g}": float(np.quantile(scores, q)) for q in (0.01, 0.05, 0.5)},
            },
        }
        if det.probe is not None and det.scales is not None:
            section[m]["probe"] = {
                "weights": [float(w) for w in det.probe.weights],
                "bias": det.probe.bias,
                "knn_scale": list(det.scales[0]),
                "probe_scale": list(det.scales[1]),
                "fitted_on": f"{probe_about}; outliers: {outliers_name}; scales: the val split (n={len(val[m])})",
            }
    return section, banks
