"""Test-time fusion of per-modality logits, per sample, in numpy: one code path for evaluation and the service.

A prediction is made in four steps, each set by the model's manifest:

1. Calibrate each modality: p_m = softmax(z_m / T_m), with T_m fitted on validation
   (T_m = 1 is the raw model).
2. Weight and combine the modalities present for that sample. Weights are per sample and
   sum to 1 over the modalities it has:
   - `entropy` (MLA, Eq. 7): w_m = softmax_m(-H(p_m)), the paper's rule;
   - `energy` (QMF-style): w_m = softmax_m(logsumexp(z_m / T_m)), the negative free energy;
   - `equal`, `fixed`: constant weights (fixed ones tuned on validation);
   - `loglinear`: constant weights, combined as a weighted product of experts;
   - `gated_loglinear`: `loglinear` whose each exponent w_m is multiplied, per sample, by a
     typicality gate g_m in (0, 1]: 1 while the modality's logits lie as near the class
     means as validation's did, shrinking as they leave that region (see `Typicality`);
     optionally blended geometrically with the equal-weight mixture (`mixture_share` below);
   - `batch_entropy`: the authors' code, entropy averaged over the batch (kept to compare);
   - `logit_sum`: joint training's own prediction, softmax(sum_m z_m).
   Every rule but `loglinear` and `logit_sum` mixes probabilities, sum_m w_m p_m: the
   modalities' logits live at their own scales, and a mixture stays a distribution
   whose weights mean what they say. `loglinear` mixes log-probabilities,
   log q = sum_m w_m log p_m (renormalised), which is sharper where modalities agree;
   `gated_loglinear` uses sum_m g_m w_m log p_m, so an atypical modality loses its say and
   the fused distribution flattens, instead of a confidently wrong expert vetoing the truth.
   A product rule with a `mixture_share` s in [0, 1) takes
   log q = (1 - s) log q_product + s log(sum_m u_m p_m), a geometric blend of the product with
   the mixture of the modalities present, each with the share u_m of its gate (equal shares
   without a gate; a modality the gate shuts out has no say in either term): a product lets
   an expert that puts almost no probability on a label veto it. The blend softens that veto
   but does not bound it: a label the product gives 1e-30 keeps (1 - s) x log 1e-30 nats
   (-41 at s = 0.4) before renormalising, against at most s x log 2 from the mixture, so a
   veto that strong still wins. s = 0 is the plain product.
3. Calibrate the fused distribution for the set of modalities present:
   q = softmax(log q / T_S), with T_S fitted on validation (a mixture of two calibrated
   distributions is under-confident when they disagree). A single modality needs no T_S,
   except under `logit_sum`, whose sum is calibrated only here.
4. Where validation asks for it, map the top label's probability for that set of
   modalities: c' = sigmoid(a * logit(c) + b) (Platt scaling of the top-label confidence;
   Gupta & Ramdas, "Top-label calibration", ICLR 2022), the other classes rescaled to keep
   their proportions. A temperature moves every confidence the same way; this also lets
   confident answers come down while unsure ones go up, which is the shape a weak
   modality's reliability curve has. Below the confidences it was fitted on it runs
   straight to the uniform answer (see `ConfidenceMap`). No map is the identity.

Each sample is weighted on its own: the authors' code averaged the entropy over the
batch, so one noisy clip changed everyone's weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Rules that mix probabilities with per-sample or constant weights, and those that mix logits.
MIXTURE_RULES = ("entropy", "energy", "equal", "fixed", "batch_entropy")
PRODUCT_RULES = ("loglinear", "gated_loglinear")  # weighted products of experts
RULES = (*MIXTURE_RULES, *PRODUCT_RULES, "logit_sum")
WEIGHTED_RULES = ("fixed", *PRODUCT_RULES)  # rules that need fitted constant weights
GATED_RULES = ("gated_loglinear",)  # rules that need a Typicality per modality
TIE_MARGIN = 1e-9  # how far above its runner-up a confidence map keeps the top label
# Temperatures are fitted within these bounds and refused outside them (training.calibrate.fit_temperature warns when a
# fit stops at one): below 0.05 any logit gap of 0.5 becomes a certainty (e^10 to 1), above 20 any gap under 20 nats
# becomes nearly a guess; a temperature there says the logits are broken, not that they need calibrating.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - np.max(logits, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def logsumexp(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    top = np.max(logits, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(logits - top), axis=axis))


def entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along `axis`."""
    p = np.clip(probs, 1e-12, 1.0)
    return -np.sum(p * np.log(p), axis=axis)


def answers(confidence: np.ndarray | float, min_confidence: float) -> np.ndarray:
    """Whether an answer of this confidence is given (not abstained) under threshold `min_confidence`.

    A threshold of 1.0 or more means "never answer": calibration sets it where no threshold met its target risk,
    and a confidence that rounds to 1.0 in float64 must not slip through it."""
    c = np.asarray(confidence, dtype=np.float64)
    return np.logical_and(c >= min_confidence, min_confidence < 1.0)


def subset_name(modalities: Sequence[str]) -> str:
    """The key of a set of modalities, order-free: ("video", "audio") -> "audio+video"."""
    return "+".join(sorted(modalities))


class Gate(Protocol):
    """What the gated rules ask of a modality: its weight's factor in (0, 1] per row of its logits."""

    def gate(self, logits: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Typicality:
    """How far one modality's logits lie from those validation saw, and the weight gate that follows.

    The distance is the squared Mahalanobis distance of the logit vector to the nearest
    class mean, under the classes' shared covariance (Lee et al., "A simple unified
    framework for detecting out-of-distribution samples", NeurIPS 2018, on logits rather
    than features: the logits are what the service has). A softmax cannot tell a
    confidently wrong modality from a confidently right one; this distance can, when the
    input is unlike anything the model was fitted on (white noise drowning the speech puts
    the audio logits tens of times farther out than any validation clip's).

    gate = exp(-max(0, d / threshold - 1) / decay): 1 up to `threshold`, then falling by a
    factor e every `decay * threshold` beyond it.
    """

    means: np.ndarray  # [classes, classes]: the mean logit vector of each class
    precision: np.ndarray  # [classes, classes]: the inverse of the classes' shared covariance
    threshold: float  # distances up to this keep the full weight
    decay: float

    def distance(self, logits: np.ndarray) -> np.ndarray:
        """[n] squared Mahalanobis distance of each row of `logits` [n, classes] to its nearest class mean."""
        diff = np.asarray(logits, dtype=np.float64)[:, None, :] - self.means[None]
        return np.einsum("nkd,de,nke->nk", diff, self.precision, diff).min(axis=1)

    def gate(self, logits: np.ndarray) -> np.ndarray:
        """[n] in (0, 1]: the factor on this modality's weight."""
        excess = np.maximum(0.0, self.distance(logits) / self.threshold - 1.0)
        return np.exp(-excess / self.decay)


@dataclass(frozen=True)
class ConfidenceMap:
    """Platt scaling of the top label's probability: c' = sigmoid(slope * logit(c) + offset).

    Fitted on validation answers whose top confidence was at least `lowest`; below that the
    map is not extrapolated but drawn straight to (1/K, 1/K): a uniform answer carries no
    information and keeps confidence 1/K, whatever the fit would say about it. The other
    classes keep their proportions and share 1 - c'. With slope > 0 the map is increasing in
    c, and c' is never let below the runner-up after rescaling, p2 (1 - c') / (1 - c), so
    the label never changes (that floor is at most c, and acts only where the map would pull
    a top label under its runner-up). Where it would lower a lead narrower than TIE_MARGIN,
    ties included, the row is returned as given. slope 1, offset 0, lowest 0 is the identity.
    """

    slope: float
    offset: float
    lowest: float = 0.0  # the lowest top confidence among the answers it was fitted on

    def __post_init__(self) -> None:
        if not (np.isfinite(self.slope) and np.isfinite(self.offset) and self.slope > 0):
            raise ValueError(f"a confidence map needs a finite positive slope and a finite offset, got {self}")
        if not 0.0 <= self.lowest < 1.0:
            raise ValueError(f"a confidence map's lowest confidence must lie in [0, 1), got {self.lowest}")

    def _platt(self, c: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.slope * np.log(c / (1.0 - c)) + self.offset)))

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64)
        rows = np.arange(len(p))
        top = p.argmax(axis=1)
        c = np.clip(p[rows, top], 1e-12, 1 - 1e-12)
        mapped = self._platt(c)
        uniform = 1.0 / p.shape[1]
        if self.lowest > uniform:  # below what it was fitted on: the straight line from the uniform answer
            at_lowest = max(float(self._platt(np.array(self.lowest))), uniform)
            line = uniform + (c - uniform) * (at_lowest - uniform) / (self.lowest - uniform)
            mapped = np.where(c < self.lowest, line, mapped)
        others = p.copy()
        others[rows, top] = 0.0
        second = others.max(axis=1)
        rest = others.sum(axis=1)
        # c' above the largest other class after rescaling, p2 (1 - c') / rest, keeps the argmax, so c' must exceed
        # p2 / (rest + p2). rest, not 1 - c: c is clipped away from 1, and where the others hold 1e-300 between them
        # 1 - c would say 1e-12 and let the map pull the label under them. At equality the two would tie and argmax
        # could pick the other, so the floor sits a relative 1e-9 above it.
        needed = second / np.maximum(rest + second, 1e-300) * (1.0 + TIE_MARGIN)
        # where the map would lower a lead narrower than the margin (down to one ulp, or a tie), the rescaling's
        # rounding could undo the lead: such a row is returned as given
        kept = (needed >= c) & (mapped <= c)
        mapped = np.maximum(mapped, np.minimum(needed, c))
        # where the others held nothing (c was 1) they share 1 - c' evenly, so c' stays at least 1/K to keep the label
        mapped = np.where(rest > 0, mapped, np.maximum(mapped, min(uniform * (1.0 + TIE_MARGIN), 1.0)))
        # the other classes share 1 - c' in their proportions; where they held nothing, evenly
        spread = np.where(rest[:, None] > 0, others / np.where(rest > 0, rest, 1.0)[:, None], 1.0 / max(p.shape[1] - 1, 1))
        out = spread * (1.0 - mapped)[:, None]
        out[rows, top] = mapped
        out = out / out.sum(axis=1, keepdims=True)  # exactly a distribution, whatever the rounding
        out[kept] = p[kept]
        return out


@dataclass
class Fused:
    probs: np.ndarray  # [n, classes]: the calibrated fused distribution
    weights: dict[str, np.ndarray]  # modality -> [n]: its share of the fusion, 0 where absent; sums to 1 over the present
    modality_probs: dict[str, np.ndarray]  # modality -> [n, classes]: calibrated per modality
    gates: dict[str, np.ndarray] | None = None  # modality -> [n]: the typicality gate (gated rules only)


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


def _constant(mask: np.ndarray, values: Sequence[float]) -> np.ndarray:
    raw = np.asarray(values, dtype=np.float64)[:, None] * mask
    total = raw.sum(axis=0, keepdims=True)
    return np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)


def _weights(
    rule: str,
    names: list[str],
    probs: dict[str, np.ndarray],
    scaled: dict[str, np.ndarray],
    mask: np.ndarray,
    weights: Mapping[str, float] | None,
) -> np.ndarray:
    """[modalities, n] weights, zero where absent, summing to 1 over the present ones."""
    if rule == "entropy":
        return _masked_softmax(-np.stack([entropy(probs[m]) for m in names]), mask)
    if rule == "energy":
        return _masked_softmax(np.stack([logsumexp(scaled[m]) for m in names]), mask)
    if rule == "batch_entropy":
        h = np.stack([entropy(probs[m]) for m in names])
        mean_h = np.array([h[i][mask[i]].mean() if mask[i].any() else np.inf for i in range(len(names))])
        return _masked_softmax(np.repeat(-mean_h[:, None], mask.shape[1], axis=1), mask)
    if rule in ("equal", "logit_sum"):
        return _constant(mask, [1.0] * len(names))
    if rule in WEIGHTED_RULES:
        if weights is None or not set(names) <= set(weights):
            raise ValueError(f"{rule} fusion needs a weight for each of {names}")
        return _constant(mask, [float(weights[m]) for m in names])
    raise ValueError(f"unknown fusion rule {rule!r}; choose from {', '.join(RULES)}")


def fuse(
    logits: Mapping[str, np.ndarray],
    rule: str = "entropy",
    present: Mapping[str, np.ndarray] | None = None,
    weights: Mapping[str, float] | None = None,
    temperatures: Mapping[str, float] | None = None,
    fused_temperatures: Mapping[str, float] | None = None,
    typicality: Mapping[str, Gate] | None = None,
    confidence_maps: Mapping[str, ConfidenceMap] | None = None,
    mixture_share: float = 0.0,
) -> Fused:
    """Fuse per-modality logits [n, classes] into one calibrated distribution per sample.

    `present[m]` ([n] bool) says which samples have modality m (default: all);
    `temperatures[m]` calibrates modality m (default 1); `fused_temperatures[S]`
    calibrates the fused distribution of samples whose present set is S ("audio+video");
    `typicality[m]` gates modality m under the gated rules (a `Typicality`, or any `Gate`); `confidence_maps[S]` maps the
    top label's probability of the samples whose present set is S, singles included;
    `mixture_share` blends a product rule with the equal-weight mixture (0: the product alone).
    """
    if not logits:
        raise ValueError("nothing to fuse: no modality given")
    names = list(logits)
    n = next(iter(logits.values())).shape[0]
    mask = _present_matrix(names, n, present)
    temps = temperatures or {}
    if not 0.0 <= mixture_share < 1.0:
        raise ValueError(f"mixture_share must be in [0, 1), got {mixture_share}")
    if mixture_share and rule not in PRODUCT_RULES:
        raise ValueError(f"mixture_share blends a product rule ({', '.join(PRODUCT_RULES)}) with the mixture, not {rule}")
    lo, hi = TEMPERATURE_BOUNDS
    if any(not lo <= float(temps.get(m, 1.0)) <= hi for m in names):
        raise ValueError(f"temperatures must lie in [{lo}, {hi}]: {dict(temps)}")
    scaled = {m: np.asarray(logits[m], dtype=np.float64) / float(temps.get(m, 1.0)) for m in names}
    probs = {m: softmax(scaled[m]) for m in names}
    w = _weights(rule, names, probs, scaled, mask, weights)
    gates = None
    if rule in GATED_RULES:
        if typicality is None or not set(names) <= set(typicality):
            raise ValueError(f"{rule} fusion needs a typicality for each of {names}")
        gates = {m: typicality[m].gate(logits[m]) for m in names}

    if rule == "logit_sum":
        # Joint's own prediction: the raw logits summed over what is present (per-modality
        # temperatures would change its argmax); it is calibrated by T_S alone, singles included.
        summed = sum(np.where(mask[i][:, None], np.asarray(logits[m], np.float64), 0.0) for i, m in enumerate(names))
        log_q = log_softmax(np.asarray(summed))
    elif rule in PRODUCT_RULES:
        # Under a gate the exponents are not renormalised: an atypical modality's share goes
        # nowhere, so the product flattens (it is less sure) rather than trusting the other more.
        exponents = w if gates is None else np.stack([w[i] * gates[m] for i, m in enumerate(names)])
        log_q = log_softmax(sum(exponents[i][:, None] * log_softmax(scaled[m]) for i, m in enumerate(names)))
        if gates is not None:
            # What each modality contributed, as shares that sum to 1 (the constant weights where every gate is ~0).
            total = exponents.sum(axis=0, keepdims=True)
            w = np.where(total > 1e-300, exponents / np.where(total > 1e-300, total, 1.0), w)
        if mixture_share:
            # the mixture's shares: equal over the modalities present, times each one's gate (renormalised), so a
            # modality the gate shuts out has no say here either; where every gate is ~0 the mixture is uniform
            shares = mask.astype(np.float64) if gates is None else np.stack([mask[i] * gates[m] for i, m in enumerate(names)])
            total = shares.sum(axis=0, keepdims=True)
            shares = np.divide(shares, total, out=np.zeros_like(shares), where=total > 1e-300)
            k = next(iter(probs.values())).shape[1]
            mixture = sum(shares[i][:, None] * probs[m] for i, m in enumerate(names)) + (total.T <= 1e-300) / k
            log_q = (1.0 - mixture_share) * log_q + mixture_share * np.log(np.clip(mixture, 1e-300, None))
            w = (1.0 - mixture_share) * w + mixture_share * shares  # each part's shares, in the blend's proportions
    else:
        mixed = sum(w[i][:, None] * probs[m] for i, m in enumerate(names))
        log_q = np.log(np.clip(np.asarray(mixed), 1e-300, None))

    # Calibrate the fused distribution per set of modalities present.
    t_fused = np.ones(n)
    keys = np.array([subset_name([m for i, m in enumerate(names) if mask[i, j]]) for j in range(n)])
    for key, t in (fused_temperatures or {}).items():
        if not lo <= t <= hi:
            raise ValueError(f"fused temperature for {key} must lie in [{lo}, {hi}], got {t}")
        t_fused[keys == key] = t
    fused = softmax(log_q / t_fused[:, None])
    for key, cmap in (confidence_maps or {}).items():
        rows = keys == key
        if rows.any():
            fused[rows] = cmap(fused[rows])
    return Fused(fused, {m: w[i] for i, m in enumerate(names)}, probs, gates)


@dataclass(frozen=True)
class FusionParams:
    """Everything a fusion needs besides the logits: what a manifest's `fusion` section holds."""

    rule: str = "entropy"
    weights: Mapping[str, float] | None = None
    temperatures: Mapping[str, float] | None = None
    fused_temperatures: Mapping[str, float] | None = None
    typicality: Mapping[str, Typicality] | None = None
    confidence_maps: Mapping[str, ConfidenceMap] | None = None
    mixture_share: float = 0.0

    def __call__(self, logits: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray] | None = None) -> Fused:
        return fuse(
            logits,
            self.rule,
            present,
            self.weights,
            self.temperatures,
            self.fused_temperatures,
            self.typicality,
            self.confidence_maps,
            self.mixture_share,
        )
