"""Calibration fitted on the validation split: what `mla export` writes into the manifest's fusion section.

- A temperature per modality, T_m = argmin_T NLL(softmax(z_m / T)) (Guo et al., 2017): one
  parameter, so it changes no modality's argmax and cannot overfit a few hundred clips. Where
  the predictions pool several speakers (`--crossfit`), only where it pays with one speaker left
  out at a time (training.loso); elsewhere T_m = 1.
- A temperature per set of present modalities S, applied to the fused log-probabilities:
  a mixture of calibrated distributions is under-confident where they disagree, and a
  product over-confident where they agree; one scalar per S corrects either.
- Constant weights where a rule has them: `fixed` by validation accuracy (a grid, as a user
  would tune late fusion), `loglinear` and `gated_loglinear` by validation NLL jointly with
  their temperature.
- A top-label confidence map per set of modalities (common.fusion.ConfidenceMap: Platt
  scaling of the top label's probability), kept only where it lowers the top label's
  log-loss out of sample (5-fold cross-validation on validation) by more than one standard
  error; elsewhere none. A temperature has one degree of freedom and spends it on the whole
  distribution's NLL; a weak modality's confident answers can still be too sure while its
  unsure ones are right more often than they say, which only a map of the confidence
  itself can straighten.
- For `gated_loglinear`, each modality's typicality (common.fusion.Typicality): its class
  means and shared covariance of the logits on validation, and a threshold at GATE_MARGIN
  times the 99th percentile of the validation distances, so that validation-like inputs
  keep their full weight; and its blend with the equal-weight mixture, MIXTURE_SHARE.
  GATE_MARGIN and GATE_DECAY were chosen by `make bench-robustness` on its corrupted
  validation sets (the best mean accuracy of a grid), MIXTURE_SHARE on the same sets as the
  share whose every validation condition is within 0.5 point of equal and fixed weights,
  the most accurate on average of those (the grids and the scores are in its results).
- The abstention thresholds, one per set of modalities sent: selection with guaranteed risk
  (SGR; Geifman & El-Yaniv, "Selective classification for deep neural networks", 2017). A
  binary search over the validation confidences tests k = ceil(log2(candidates + 1))
  thresholds, each by the Clopper-Pearson upper bound of its answers' error rate at
  confidence 1 - (1 - CONFIDENCE) / k, and keeps the lowest threshold whose bound is at most
  TARGET_RISK. The bound, not the bare rate, so that a threshold tuned on a few hundred clips
  still holds on new ones; the division by k (a union bound over the tests made), so that
  picking the best of many thresholds does not spend the confidence: with probability
  CONFIDENCE every bound tested holds at once, the kept one included. Without it (each test
  at CONFIDENCE, as before), the kept threshold's bound is the luckiest of hundreds and
  holds less often than it says (where every threshold is too risky, that search answered
  in 16% of simulated validation sets against the 10% promised; the test in
  tests/training/test_calibrate.py that this one passes).

Every figure here comes from validation predictions; the test split is never read.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import beta

from common import calibration
from common.evaluation import Predictions, fused_for, score, subsets
from common.fusion import (
    GATED_RULES,
    PRODUCT_RULES,
    RULES,
    TEMPERATURE_BOUNDS,
    WEIGHTED_RULES,
    ConfidenceMap,
    FusionParams,
    Typicality,
    log_softmax,
    subset_name,
)
from training.loso import TemperatureChoice, choose_temperatures

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegressionCV

log = logging.getLogger(__name__)
TARGET_RISK = 0.05  # default: at most 5% errors among the answers given
CONFIDENCE = 0.9  # the abstention threshold's risk bound holds with this probability (all of SGR's tests at once)
T_BOUNDS = TEMPERATURE_BOUNDS  # common.fusion says why; a fit that stops at a bound is logged
GRID_STEPS = 20
GATE_MARGIN = 2.0  # threshold = this x the 99th percentile of the validation distances
GATE_DECAY = 4.0  # beyond it, the weight falls by e every GATE_DECAY x threshold
GATE_QUANTILE = 0.99
MIXTURE_SHARE = 0.4  # gated_loglinear: log q = (1 - this) log product + this log(equal-weight mixture)
MAP_FOLDS = 5  # cross-validation folds that decide whether a confidence map is kept

# Every rule scored by `mla evaluate`: name -> (rule, calibrated). "_raw" is the rule as
# the model gives it (every temperature 1); the paper's rule is `entropy_raw`.
RULE_VARIANTS: dict[str, tuple[str, bool]] = {
    "entropy_raw": ("entropy", False),
    "entropy": ("entropy", True),
    "energy": ("energy", True),
    "loglinear": ("loglinear", True),
    "gated_loglinear": ("gated_loglinear", True),
    "equal": ("equal", True),
    "fixed": ("fixed", True),
    "batch_entropy": ("batch_entropy", False),
    "logit_sum_raw": ("logit_sum", False),
    "logit_sum": ("logit_sum", True),
}


def check_rule(rule: str) -> None:
    """Refuse a fusion rule common.fusion does not have, before any work is done for it."""
    if rule not in RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; choose from {', '.join(RULES)}")


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """argmin_T of the NLL of softmax(log_probs / T); 1.0 when there is nothing to fit on."""
    if len(labels) == 0:
        return 1.0
    x = np.asarray(log_probs, dtype=np.float64)
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        return float(-np.mean(log_softmax(x / math.exp(log_t))[rows, labels]))

    res = minimize_scalar(loss, bounds=(math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])), method="bounded", options={"xatol": 1e-4})
    t = float(min(max(math.exp(res.x), T_BOUNDS[0]), T_BOUNDS[1]))
    if not T_BOUNDS[0] * 1.01 < t < T_BOUNDS[1] / 1.01:
        log.warning("the temperature fit stopped at %.3g, at its bound %s: the logits may be broken", t, T_BOUNDS)
    return t


def _fused_log_probs(val: Predictions, subset: tuple[str, ...], params: FusionParams) -> tuple[np.ndarray, np.ndarray]:
    """Log of the fused distribution (before any fused temperature) on the rows whose present set is exactly `subset`."""
    probs, rows = fused_for(val, subset, params)
    present = np.stack([val.present[m][rows] for m in subset])
    exact = present.all(axis=0)
    return np.log(np.clip(probs[exact], 1e-300, None)), val.labels[rows][exact]


def fit_fused_temperatures(val: Predictions, params: FusionParams) -> dict[str, float]:
    """T_S for every set of two or more modalities (every set, singles too, under logit_sum)."""
    smallest = 1 if params.rule == "logit_sum" else 2
    out: dict[str, float] = {}
    for sub in subsets(val.modalities):
        if len(sub) < smallest:
            continue
        log_q, y = _fused_log_probs(val, sub, replace(params, fused_temperatures=None, confidence_maps=None))
        if len(y):
            out[subset_name(sub)] = fit_temperature(log_q, y)
    return out


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each top label's probability (kept off 0 and 1), and whether that label is right."""
    p = np.asarray(probs, dtype=np.float64)
    return np.clip(p.max(axis=1), 1e-12, 1 - 1e-12), (p.argmax(axis=1) == labels).astype(int)


def _log_losses(scores: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per answer, the binary cross-entropy of `right` under probability sigmoid(scores)."""
    return np.logaddexp(0.0, -scores) * right + np.logaddexp(0.0, scores) * (1 - right)


PLATT_CS = np.logspace(-3, 3, 13)  # the L2 strengths the map's inner cross-validation chooses among (C: inverse strength)


def _sklearn() -> tuple[Any, Any]:
    """scikit-learn's cross-validated logistic regression and its folds, imported when a confidence map is fitted: the
    rule `mla export` and `mla calibrate` serve by default fits none (SERVED_LAYERS), so a serve-only install, which
    has no scikit-learn, calibrates it; the other rules' maps need it (the train extra)."""
    try:
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold
    except ImportError as exc:
        raise ValueError(
            "this rule fits confidence maps, which need scikit-learn (the train extra): pip install scikit-learn, "
            f"or calibrate with --fusion {SERVED_RULE}"
        ) from exc
    return LogisticRegressionCV, StratifiedKFold


def _platt(x: np.ndarray, right: np.ndarray, folds: int) -> LogisticRegressionCV:
    """A logistic regression of "right" on the top label's logit, L2-regularised with the C among PLATT_CS whose
    `folds`-fold cross-validated log-loss on these answers (the validation split's, or a fold of them) is lowest: an
    unregularised fit runs its slope off to infinity where the answers separate."""
    logistic_cv, stratified_folds = _sklearn()
    inner = max(2, min(folds, int(min(right.sum(), len(right) - right.sum()))))
    cv = stratified_folds(inner, shuffle=True, random_state=1)
    lr = logistic_cv(Cs=PLATT_CS, cv=cv, scoring="neg_log_loss", l1_ratios=(0.0,), use_legacy_attributes=False)
    return lr.fit(x[:, None], right)


def fit_confidence_map(probs: np.ndarray, labels: np.ndarray, folds: int = MAP_FOLDS) -> ConfidenceMap | None:
    """Platt scaling of the top label's probability (a logistic regression of "right" on its logit), or None.

    Kept only if it earns its two parameters out of sample: fitted on all but one of `folds`
    stratified folds and scored on that fold, its top-label log-loss must beat the
    probabilities as they are by more than one standard error of the per-answer difference
    (the one-standard-error rule: the simpler model, no map, wins whatever the comparison
    cannot tell apart). None also where there is too little to fit on (fewer than 10 answers
    per fold, or fewer right or wrong ones than folds) or where the fit would reverse the
    order of confidences.
    """
    c, right = _top_label(probs, labels)
    x = np.log(c / (1 - c))
    if len(x) < 10 * folds or min(right.sum(), len(right) - right.sum()) < folds:
        return None
    _, stratified_folds = _sklearn()
    gain = np.empty(len(x))  # per answer: its log-loss as it is minus under the map fitted without its fold
    for fit, held in stratified_folds(folds, shuffle=True, random_state=0).split(x, right):
        lr = _platt(x[fit], right[fit], folds)
        gain[held] = _log_losses(x[held], right[held]) - _log_losses(lr.coef_[0, 0] * x[held] + lr.intercept_[0], right[held])
    lr = _platt(x, right, folds)
    slope, offset = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if gain.mean() <= gain.std(ddof=1) / math.sqrt(len(gain)) or slope <= 0:
        return None
    return ConfidenceMap(slope, offset, float(c.min()))


def fit_confidence_maps(val: Predictions, params: FusionParams) -> dict[str, ConfidenceMap]:
    """A map for every set of modalities whose validation answers (under `params`, without maps) it improves."""
    base = replace(params, confidence_maps=None)
    out: dict[str, ConfidenceMap] = {}
    for sub in subsets(val.modalities):
        log_q, y = _fused_log_probs(val, sub, base)
        if len(y):
            cmap = fit_confidence_map(np.exp(log_q), y)
            if cmap is not None:
                out[subset_name(sub)] = cmap
    return out


def _grid(names: list[str]) -> list[dict[str, float]]:
    points = np.linspace(0.0, 1.0, GRID_STEPS + 1)
    out = []
    for combo in itertools.product(points, repeat=len(names) - 1):
        if sum(combo) <= 1.0 + 1e-9:
            out.append(dict(zip(names, [*map(float, combo), 1.0 - float(sum(combo))], strict=True)))
    return out


def _tune_fixed(val: Predictions, temperatures: dict[str, float] | None) -> dict[str, float]:
    """The constant mixture weights with the best validation accuracy on all modalities (first best on a grid)."""
    names = val.modalities
    best, best_acc = {m: 1.0 / len(names) for m in names}, -1.0
    for w in _grid(names):
        probs, rows = fused_for(val, names, FusionParams("fixed", w, temperatures))
        acc = float((probs.argmax(axis=1) == val.labels[rows]).mean())
        if acc > best_acc + 1e-12:
            best, best_acc = w, acc
    return best


def fit_typicality(
    logits: np.ndarray,
    labels: np.ndarray,
    margin: float = GATE_MARGIN,
    decay: float = GATE_DECAY,
    classes: int | None = None,
) -> tuple[Typicality, dict[str, float]]:
    """A modality's Typicality from its validation logits [n, classes], and the distance's validation quantiles.

    Class means and the covariance of each logit vector around its own class's mean (shared by
    the classes, as in linear discriminant analysis), with a ridge of 1e-6 of its mean variance
    so that it inverts even where validation leaves a direction flat. A class missing from
    validation takes the mean over all of it. Any other per-sample vectors (an encoder's
    features, [n, dim]) fit the same way given the number of `classes`.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    dim = z.shape[1]
    k = dim if classes is None else classes
    if len(z) < 2:
        raise ValueError("a typicality needs at least two validation samples")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must lie in 0..{k - 1}, got {y.min()}..{y.max()}")
    overall = z.mean(axis=0)
    means = np.stack([z[y == c].mean(axis=0) if np.any(y == c) else overall for c in range(k)])
    resid = z - means[y]
    cov = resid.T @ resid / len(z)
    cov += np.eye(dim) * max(1e-6 * float(np.trace(cov)) / dim, 1e-12)
    base = Typicality(means, np.linalg.inv(cov), 1.0, decay)
    quantiles = distance_quantiles(base, z)
    return replace(base, threshold=margin * max(quantiles[str(GATE_QUANTILE)], 1e-12)), quantiles


def distance_quantiles(typicality: Typicality, logits: np.ndarray) -> dict[str, float]:
    """The median, 90th and GATE_QUANTILE-th percentiles of the distances of `logits` (validation's, in use)."""
    d = typicality.distance(logits)
    return {str(q): float(np.quantile(d, q)) for q in (0.5, 0.9, GATE_QUANTILE)}


def _typicality(val: Predictions, margin: float = GATE_MARGIN, decay: float = GATE_DECAY) -> dict[str, Typicality]:
    return {
        m: fit_typicality(val.logits[m][val.present[m]], val.labels[val.present[m]], margin, decay)[0] for m in val.modalities
    }


def _tune_loglinear(
    val: Predictions,
    temperatures: dict[str, float],
    rule: str = "loglinear",
    typicality: dict[str, Typicality] | None = None,
    mixture_share: float = 0.0,
) -> dict[str, float]:
    """The product-of-experts weights with the lowest validation NLL once their fused temperature is fitted."""
    names = val.modalities
    best, best_nll = {m: 1.0 / len(names) for m in names}, math.inf
    for w in _grid(names):
        params = FusionParams(rule, w, temperatures, None, typicality, mixture_share=mixture_share)
        params = replace(params, fused_temperatures=fit_fused_temperatures(val, params))
        probs, rows = fused_for(val, names, params)
        loss = calibration.nll(probs, val.labels[rows])
        if loss < best_nll - 1e-12:
            best, best_nll = w, loss
    return best


@dataclass(frozen=True)
class Layers:
    """Which of a rule's fitted layers a fusion fits (when calibrated, the temperatures of `temperatures`)."""

    weights: bool = True  # constant weights fitted for the rules that have them (else equal ones)
    # the modalities whose temperature is fitted (the rest keep T_m = 1); None: every one. `mla export --crossfit`
    # keeps those that pay on held-out speakers (training.loso.choose_temperatures)
    temperatures: frozenset[str] | None = None
    fused_temperatures: bool = True  # a temperature per set of modalities present
    confidence_maps: bool = True  # a top-label map per set, where cross-validation keeps one


ALL_LAYERS = Layers()
# What `mla export` fits for the product rule: the per-modality temperatures and the per-subset ones; equal weights
# and no top-label map. Chosen by `python -m benchmarks.avdigits.ablation` on held-out speakers (validation's and the
# out-of-fold ones, leave one out; never the test split): the maps lost out of sample, the fitted weights came out
# equal, and each layer kept loses when removed (docs/decisions/2026-12-06-fusion-layers-ablation.md).
SERVED_LAYERS = Layers(weights=False, fused_temperatures=True, confidence_maps=False)


def fit_fusion(
    val: Predictions,
    rule: str,
    calibrated: bool = True,
    gate: tuple[float, float] = (GATE_MARGIN, GATE_DECAY),
    mixture_share: float | None = None,
    layers: Layers = ALL_LAYERS,
) -> FusionParams:
    """The fusion of `rule` with everything it needs fitted on validation predictions.

    `gate`: the typicality's margin and decay; `mixture_share`: a product rule's blend with
    the mixture (default: MIXTURE_SHARE for gated_loglinear, 0 for the plain product);
    `layers`: which fitted layers to fit (the rest stay at their identity: equal weights, T_S = 1, no map).
    """
    temperatures = None
    if calibrated:
        fitted = val.modalities if layers.temperatures is None else [m for m in val.modalities if m in layers.temperatures]
        temperatures = {
            m: fit_temperature(val.logits[m][val.present[m]], val.labels[val.present[m]]) if m in fitted else 1.0
            for m in val.modalities
        }
    if mixture_share is None:
        mixture_share = MIXTURE_SHARE if rule in GATED_RULES else 0.0
    weights = None
    typicality = _typicality(val, *gate) if rule in GATED_RULES else None
    if rule in WEIGHTED_RULES and not layers.weights:
        weights = dict.fromkeys(val.modalities, 1.0 / len(val.modalities))
    elif rule == "fixed":
        weights = _tune_fixed(val, temperatures)
    elif rule in PRODUCT_RULES:
        weights = _tune_loglinear(val, temperatures or {}, rule, typicality, mixture_share)
    params = FusionParams(rule, weights, temperatures, None, typicality, mixture_share=mixture_share)
    if not calibrated:
        return params
    if layers.fused_temperatures or rule == "logit_sum":  # logit_sum is calibrated by T_S alone
        params = replace(params, fused_temperatures=fit_fused_temperatures(val, params))
    if layers.confidence_maps:
        params = replace(params, confidence_maps=fit_confidence_maps(val, params) or None)
    return params


@dataclass(frozen=True)
class Threshold:
    min_confidence: float  # answer when the calibrated confidence is at least this
    coverage: float  # share of the predictions answered
    risk: float  # error rate among those answered
    risk_bound: float  # its upper confidence bound, at the level of one test (1 - (1 - confidence) / tests)
    n: int  # predictions it was fitted on
    tests: int = 1  # thresholds the search tested (the union bound's count)


def risk_upper_bound(errors: int, answered: int, confidence: float = CONFIDENCE) -> float:
    """Clopper-Pearson upper bound on an error rate seen as `errors` in `answered`."""
    if answered == 0:
        return 1.0
    if errors >= answered:
        return 1.0
    return float(beta.ppf(confidence, errors + 1, answered - errors))


def check_abstention(target_risk: float, confidence: float) -> None:
    """Refuse an abstention target that cannot be met or means nothing, before any data is read."""
    if not 0 < target_risk < 1:
        raise ValueError(f"target risk must be in (0, 1), got {target_risk}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def selective_threshold(
    probs: np.ndarray, labels: np.ndarray, target_risk: float = TARGET_RISK, confidence: float = CONFIDENCE
) -> Threshold:
    """The lowest confidence threshold SGR's binary search finds whose answers' error rate is at most
    `target_risk`, with probability `confidence` over the validation draw (module docstring).

    Ties in confidence are answered together, so a threshold is a confidence that occurs and
    everything at or above it is answered. The search halves the candidates k times and makes
    k tests, each at confidence 1 - (1 - `confidence`) / k. When no test passes, the threshold
    is 1.0: no answer is given (common.fusion.answers).
    """
    check_abstention(target_risk, confidence)
    coverage, risk, conf = calibration.risk_coverage(probs, labels)
    answered = np.arange(1, len(conf) + 1)
    errors = np.rint(risk * answered).astype(int)
    cuts = np.flatnonzero(np.append(conf[1:] < conf[:-1], True))  # cut only between different confidences
    tests = max(1, len(cuts).bit_length())  # the most a binary search over len(cuts) candidates can make
    each = 1.0 - (1.0 - confidence) / tests
    best: Threshold | None = None
    lo, hi = 0, len(cuts) - 1  # candidates by answers given: a higher index answers more
    while lo <= hi:
        mid = (lo + hi) // 2
        i = int(cuts[mid])
        bound = risk_upper_bound(int(errors[i]), int(answered[i]), each)
        if bound <= target_risk:
            best = Threshold(float(conf[i]), float(coverage[i]), float(risk[i]), bound, len(conf), tests)
            lo = mid + 1
        else:
            hi = mid - 1
    if best is None:  # 1.0: never answer (common.fusion.answers)
        return Threshold(1.0, 0.0, 0.0, 1.0, len(conf), tests)
    return best


def fit_abstention(
    val: Predictions, params: FusionParams, target_risk: float = TARGET_RISK, confidence: float = CONFIDENCE
) -> dict[str, Threshold]:
    """One threshold per set of modalities sent, each on the validation samples that have all of that set."""
    out = {}
    for sub in subsets(val.modalities):
        have = np.all(np.stack([val.present[m] for m in sub]), axis=0)
        part = Predictions({m: val.logits[m][have] for m in sub}, {m: val.present[m][have] for m in sub}, val.labels[have])
        if len(part.labels):
            probs, rows = fused_for(part, sub, params)
            out[subset_name(sub)] = selective_threshold(probs, part.labels[rows], target_risk, confidence)
    return out


CONFORMAL_ALPHA = 0.05  # prediction sets hold the true label at least 95% of the time (split conformal)


def conformal_quantile(probs: np.ndarray, labels: np.ndarray, alpha: float = CONFORMAL_ALPHA) -> float:
    """Split conformal prediction (Vovk et al.; the LAC score of Sadinle et al. 2019): with score 1 - p(true label) on
    the calibration answers, the ceil((n + 1)(1 - alpha))-th smallest. A new answer's set {labels with p >= 1 - q}
    then holds its true label with probability at least 1 - alpha, for inputs exchangeable with the calibration ones.
    1.0 (every label) where there are too few answers to promise it."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    scores = np.sort(1.0 - np.asarray(probs, np.float64)[np.arange(len(labels)), labels])
    rank = math.ceil((len(scores) + 1) * (1 - alpha))
    return 1.0 if rank > len(scores) else float(scores[rank - 1])


def fit_conformal(val: Predictions, params: FusionParams, alpha: float = CONFORMAL_ALPHA) -> dict[str, dict[str, float]]:
    """Per set of modalities sent: the conformal quantile of its fused answers on `val`, the answers' count, and the
    mean size of the sets it gives them (a size near 1 says the set adds little to the label)."""
    out = {}
    for sub in subsets(val.modalities):
        have = np.all(np.stack([val.present[m] for m in sub]), axis=0)
        if not have.any():
            continue
        part = Predictions({m: val.logits[m][have] for m in sub}, {m: val.present[m][have] for m in sub}, val.labels[have])
        probs, rows = fused_for(part, sub, params)
        q = conformal_quantile(probs, part.labels[rows], alpha)
        size = float(np.maximum((probs >= 1.0 - q).sum(axis=1), 1).mean())
        out[subset_name(sub)] = {"qhat": q, "n": float(len(probs)), "mean_set_size": size}
    return out


def out_of_fold_file(folder: Path) -> Path:
    """A training.crossfit folder's oof.npz; ValueError, saying how to make one, where there is none."""
    path = folder / "oof.npz"
    if not path.is_file():
        raise ValueError(f"{folder} has no oof.npz: run python -m training.crossfit first")
    return path


def load_out_of_fold(folder: Path, modalities: list[str]) -> tuple[Predictions, str]:
    """A training.crossfit folder's out-of-fold predictions, and a line saying what they are."""
    path = out_of_fold_file(folder)
    with np.load(path, allow_pickle=False) as z:
        missing = [m for m in modalities if f"logits_{m}" not in z]
        if missing:
            raise ValueError(f"{path} has no predictions for {', '.join(missing)}")
        preds = Predictions(
            {m: z[f"logits_{m}"].astype(np.float64) for m in modalities}, {m: z[f"present_{m}"] for m in modalities}, z["labels"]
        )
        folds = sorted(set(z["speaker"].tolist()))
    return preds, f"out-of-fold predictions of {len(folds)} training speakers ({', '.join(folds)}), n={len(preds.labels)}"


def out_of_fold_speakers(folder: Path) -> np.ndarray:
    """The speaker of each of a training.crossfit folder's out-of-fold predictions, in load_out_of_fold's order."""
    with np.load(folder / "oof.npz", allow_pickle=False) as z:
        return z["speaker"]


def pool(a: Predictions, b: Predictions) -> Predictions:
    """Two sets of predictions as one (the same modalities and classes)."""
    if a.modalities != b.modalities or a.n_classes != b.n_classes:
        raise ValueError(f"cannot pool predictions of {a.modalities} and {b.modalities}")
    return Predictions(
        {m: np.concatenate([a.logits[m], b.logits[m]]) for m in a.modalities},
        {m: np.concatenate([a.present[m], b.present[m]]) for m in a.modalities},
        np.concatenate([a.labels, b.labels]),
    )


VALIDATION_GROUP = "(validation)"  # the validation split's group among the speakers left out in turn


def with_out_of_fold(val: Predictions, crossfit: Path | None, fitted_on: str) -> tuple[Predictions, np.ndarray | None, str]:
    """Validation predictions pooled with a training.crossfit folder's out-of-fold ones where one is given; each
    prediction's group for training.loso (the validation split one group, each training speaker one; None without
    folds); and `fitted_on` saying so."""
    if crossfit is None:
        return val, None, fitted_on
    oof, about = load_out_of_fold(crossfit, val.modalities)
    groups = np.concatenate([np.full(len(val.labels), VALIDATION_GROUP), out_of_fold_speakers(crossfit).astype(str)])
    return pool(val, oof), groups, f"{fitted_on}, pooled with {about}"


def fusion_section(
    val: Predictions,
    rule: str,
    fitted_on: str,
    target_risk: float = TARGET_RISK,
    confidence: float = CONFIDENCE,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """The manifest's fusion section fitted on `val` (a model's validation predictions, from torch or its graphs).

    `groups`: the speaker (or other unit) of each prediction, where `val` pools several (validation with the
    out-of-fold predictions of training.crossfit). Each modality's temperature is then fitted only where it pays on
    held-out groups (training.loso.choose_temperatures), and the evidence goes into the section."""
    check_rule(rule)
    layers = SERVED_LAYERS if rule == "loglinear" else ALL_LAYERS
    choice: dict[str, TemperatureChoice] = {}
    if groups is not None:
        base = layers

        def fit(preds: Predictions, fitted: frozenset[str]) -> FusionParams:
            return fit_fusion(preds, rule, layers=replace(base, temperatures=fitted))

        choice = choose_temperatures(val, groups, fit)
    if choice:
        layers = replace(layers, temperatures=frozenset(m for m, c in choice.items() if c.kept))
    params = fit_fusion(val, rule, calibrated=True, layers=layers)
    uncalibrated = replace(params, temperatures=None, fused_temperatures=None, confidence_maps=None)
    raw, fitted = score(val, uncalibrated), score(val, params)
    figures = {
        sub: {"ece_raw": raw["ece"][sub], "ece": fitted["ece"][sub], "nll_raw": raw["nll"][sub], "nll": fitted["nll"][sub]}
        for sub in fitted["ece"]
    }
    thresholds = fit_abstention(val, params, target_risk, confidence)  # selective_threshold checks the target
    conformal = fit_conformal(val, params)
    typicality = None
    if params.typicality:
        typicality = {}
        for m, t in params.typicality.items():
            quantiles = distance_quantiles(t, val.logits[m][val.present[m]])
            typicality[m] = {
                "means": t.means.tolist(),
                "precision": t.precision.tolist(),
                "threshold": t.threshold,
                "decay": t.decay,
                "val_quantiles": quantiles,
            }
    return {
        "rule": rule,
        "weights": dict(params.weights) if params.weights else None,
        "typicality": typicality,
        "mixture_share": params.mixture_share,
        "calibration": {
            "temperatures": dict(params.temperatures or {}),
            "fused_temperatures": dict(params.fused_temperatures or {}),
            "confidence_maps": {k: asdict(c) for k, c in (params.confidence_maps or {}).items()},
            "temperature_choice": {m: asdict(c) for m, c in choice.items()},
            "fitted_on": fitted_on,
            "val": figures,
        },
        "conformal": {
            "alpha": CONFORMAL_ALPHA,
            "qhat": {k: c["qhat"] for k, c in conformal.items()},
            "val": {k: {"n": c["n"], "mean_set_size": c["mean_set_size"]} for k, c in conformal.items()},
        },
        "abstention": {
            "min_confidence": {k: t.min_confidence for k, t in thresholds.items()},
            "target_risk": target_risk,
            "confidence": confidence,
            "val": {
                k: {"n": t.n, "coverage": t.coverage, "risk": t.risk, "risk_bound": t.risk_bound, "tests": t.tests}
                for k, t in thresholds.items()
            },
        },
    }


# The rule `mla export` serves for MLA and the unimodal ensemble unless told otherwise: a product of experts with
# weights fitted on validation. `make bench-robustness` had chosen its gated form (weights shrinking for atypical
# logits; the paper's entropy mixture lost), but the export now writes a detector per modality on the encoder's
# features (common.ood), which leaves an atypical modality out of the fusion altogether: the gate and the mixture
# blend that patched it are not stacked on top of it (issue 27). gated_loglinear stays selectable with --fusion.
SERVED_RULE = "loglinear"


def own_rule(method: str) -> str:
    """The rule each method is selected and reported by: joint predicts with its summed logits, MLA by the paper's rule."""
    return "logit_sum" if method == "joint" else "entropy"


def served_rule(method: str) -> str:
    """The rule a method's export serves by default: joint's own; for the others, the robustness benchmark's choice."""
    return "logit_sum" if method == "joint" else SERVED_RULE
