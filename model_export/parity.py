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
    max_abs_logit_diff: float | None = None
    max_prob_diff: float | None = None
    min_top1_agreement: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# fp32: the conv front end and the trunk run the same arithmetic in both; 1e-4 on logits holds.
FP32 = Tolerance(max_abs_logit_diff=1e-4)
# fp16: ~3 significant digits in the trunk; judge by what a client sees, the top-1 and the probabilities.
FP16 = Tolerance(max_prob_diff=1e-2, min_top1_agreement=0.995)


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
        prob = float(np.max(np.abs(softmax(ref.astype(np.float64)) - softmax(out.astype(np.float64)))))
        top1 = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
        figures = {"n": float(ref.shape[0]), "max_abs_logit_diff": diff, "max_prob_diff": prob, "top1_agreement": top1}
        if tol.max_abs_logit_diff is not None and diff > tol.max_abs_logit_diff:
            failures.append(f"{label}: max |logit difference| {diff:.2e} > {tol.max_abs_logit_diff:.0e}")
        if tol.max_prob_diff is not None and prob > tol.max_prob_diff:
            failures.append(f"{label}: max |probability difference| {prob:.2e} > {tol.max_prob_diff:.0e}")
        if tol.min_top1_agreement is not None and top1 < tol.min_top1_agreement:
            failures.append(f"{label}: top-1 agreement {top1:.4f} < {tol.min_top1_agreement}")
    return figures, failures
