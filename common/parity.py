"""Compare ONNX Runtime outputs with the torch model's: every output, every failure gathered."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.fusion import softmax


class ParityError(Exception):
    """One or more outputs disagree beyond tolerance; the message lists every failure."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = failures
        super().__init__("parity failed:\n" + "\n".join(f"  - {f}" for f in failures))


@dataclass(frozen=True)
class Tolerance:
    """Bounds a graph's outputs must meet against the torch model's; None leaves a figure unchecked.

    Logit differences are judged relative to the logits' own scale, max(1, max |logit|):
    round-off is relative, so a bound in absolute units would hold for one model's scale
    and not another's.
    """

    max_rel_logit_diff: float | None = None  # max |logit difference| / max(1, max |reference logit|)
    max_prob_diff: float | None = None
    min_top1_agreement: float | None = None
    max_abs_logit_diff: float | None = None  # absolute; written by exports before the relative bound

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# fp32: ONNX Runtime and torch compute the same float32 sums in other orders (ORT folds
# BatchNorm into the conv weights and picks its own kernels). A dot product of length K
# then differs by about sqrt(K) * u (u = 2^-24, round-off of random sign), and a network
# of depth L by about L * sqrt(K) * u of its output's scale: 5 * sqrt(576) * u = 7e-6 for
# the small encoder, 20 * sqrt(4608) * u = 8e-5 for ResNet-18. 1e-4 covers both on any
# CPU; a real mismatch (a wrong constant, a missing op) is off by percent.
FP32 = Tolerance(max_rel_logit_diff=1e-4)
# fp16 (u = 2^-11) in the trunk: the same estimate gives percent of the logits' scale, so
# judge what a client sees: every probability within one point of torch's. Top-1 agreement
# is reported, not required: it follows from that bound wherever the two most probable
# classes are more than two points apart, and a near-tie may go either way.
FP16 = Tolerance(max_prob_diff=1e-2)


def compare(
    label: str, expected: dict[str, np.ndarray], got: dict[str, np.ndarray], tol: Tolerance
) -> tuple[dict[str, float], list[str]]:
    """Figures for the logits output and a list of failures (empty when it passes)."""
    failures: list[str] = []
    if set(expected) != set(got):
        failures.append(f"{label}: outputs {sorted(got)} where {sorted(expected)} were expected")
    figures: dict[str, float] = {}
    for name in sorted(set(expected) & set(got)):
        ref, out = expected[name], got[name]
        if ref.shape != out.shape:
            failures.append(f"{label}: output {name!r} has shape {out.shape}, expected {ref.shape}")
            continue
        if not np.all(np.isfinite(out)):
            failures.append(f"{label}: output {name!r} holds NaN or infinity")
            continue
        diff = float(np.max(np.abs(ref.astype(np.float64) - out)))
        scale = max(1.0, float(np.max(np.abs(ref))))
        prob = float(np.max(np.abs(softmax(ref.astype(np.float64)) - softmax(out.astype(np.float64)))))
        top1 = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
        figures = {
            "n": float(ref.shape[0]),
            "max_abs_logit_diff": diff,
            "max_rel_logit_diff": diff / scale,
            "max_prob_diff": prob,
            "top1_agreement": top1,
        }
        if tol.max_rel_logit_diff is not None and diff / scale > tol.max_rel_logit_diff:
            failures.append(
                f"{label}: max |logit difference| {diff:.2e} is {diff / scale:.2e} of the logits' scale {scale:.3g}"
                f" > {tol.max_rel_logit_diff:.0e}"
            )
        if tol.max_abs_logit_diff is not None and diff > tol.max_abs_logit_diff:
            failures.append(f"{label}: max |logit difference| {diff:.2e} > {tol.max_abs_logit_diff:.0e}")
        if tol.max_prob_diff is not None and prob > tol.max_prob_diff:
            failures.append(f"{label}: max |probability difference| {prob:.2e} > {tol.max_prob_diff:.0e}")
        if tol.min_top1_agreement is not None and top1 < tol.min_top1_agreement:
            failures.append(f"{label}: top-1 agreement {top1:.4f} < {tol.min_top1_agreement}")
    return figures, failures


FEATURES = "features"  # a graph's second output (the encoder's penultimate features), where it has one


def parity_check(
    label: str, expected: dict[str, np.ndarray], got: dict[str, np.ndarray], tol: Tolerance
) -> tuple[dict[str, float], list[str]]:
    """`compare` for a graph's outputs: the logits against every bound of `tol`, the features (where expected)
    against its relative bound alone (the same round-off argument; probabilities and argmax mean nothing there).
    Returns the logits' figures, with the features' relative difference beside them, and every failure."""
    logits = {k: v for k, v in expected.items() if k != FEATURES}
    figures, failures = compare(label, logits, {k: v for k, v in got.items() if k != FEATURES}, tol)
    if FEATURES in expected:
        if FEATURES not in got:
            return figures, [*failures, f"{label}: the graph has no {FEATURES!r} output"]
        feats, errs = compare(
            f"{label} features",
            {FEATURES: expected[FEATURES]},
            {FEATURES: got[FEATURES]},
            Tolerance(max_rel_logit_diff=tol.max_rel_logit_diff),
        )
        failures += errs
        if feats:
            figures = {**figures, "max_rel_feature_diff": feats["max_rel_logit_diff"]}
    return figures, failures
