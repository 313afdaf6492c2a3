"""Leave one speaker out: whether each modality's temperature earns its place, decided on held-out speakers.

The evidence `mla export --crossfit` and `mla calibrate --crossfit` have: the model's validation predictions (one
group) pooled with the out-of-fold predictions of the training speakers (one group each, from `python -m
training.crossfit`). None of it comes from the test split. For each group in turn, the fusion is fitted on the others
twice: once as it would be served, and once without modality m's temperature (T_m = 1, everything else refitted by
training.calibrate.fit_fusion). Both then score the held-out group's clips. For each set of modalities that contains
m, the result is the mean change in NLL per clip (without minus with) and its 95% paired bootstrap interval over the
pooled clips. Issue 28's rule: a fitted value stays only where removing it loses, with the whole interval on the
losing side. So T_m is kept when, for some set, the whole interval lies above 0. Otherwise it is 1. The export
writes each choice and its intervals into the manifest (`fusion.calibration.temperature_choice`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.evaluation import Predictions, subset_name, subsets

if TYPE_CHECKING:
    from common.fusion import FusionParams

RESAMPLES = 1000  # bootstrap draws per interval
SEED = 0


def take(preds: Predictions, rows: np.ndarray) -> Predictions:
    """The predictions of the rows `rows` selects (a boolean mask or indices)."""
    return Predictions(
        {m: z[rows] for m, z in preds.logits.items()}, {m: p[rows] for m, p in preds.present.items()}, preds.labels[rows]
    )


def paired_interval(diff: np.ndarray, seed: int = SEED, resamples: int = RESAMPLES) -> list[float]:
    """[mean, low, high] of the mean of per-clip differences, 95% percentile bootstrap over clips."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), (resamples, len(diff)))
    means = diff[idx].mean(axis=1)
    return [float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


@dataclass(frozen=True)
class HeldOut:
    """One set of modalities sent, on one held-out group's clips that have all of it, with the fusion fitted without
    that group."""

    group: str
    train: Predictions  # every other group's predictions, which `params` was fitted on
    params: FusionParams
    subset: str  # the set sent ("audio+video")
    logits: dict[str, np.ndarray]  # per modality of the set: the held-out clips' logits
    labels: np.ndarray


def held_out(preds: Predictions, groups: np.ndarray, fit: Callable[[Predictions], FusionParams]) -> Iterator[HeldOut]:
    """Each group left out in turn (in the order of first appearance): `fit` fitted on the others once, then each set
    of modalities sent scored on the group's clips that have all of it."""
    for g in dict.fromkeys(groups.tolist()):
        train = take(preds, groups != g)
        params = fit(train)
        test = take(preds, groups == g)
        for sub in subsets(preds.modalities):
            have = np.all(np.stack([test.present[m] for m in sub]), axis=0)
            if have.any():
                logits = {m: test.logits[m][have] for m in sub}
                yield HeldOut(str(g), train, params, subset_name(sub), logits, test.labels[have])


def held_out_nll(preds: Predictions, groups: np.ndarray, fit: Callable[[Predictions], FusionParams]) -> dict[str, np.ndarray]:
    """Per set of modalities sent: the NLL of each clip that has all of the set, fused by `fit` fitted on every
    other group. Clips are pooled in the order of the groups' first appearance."""
    out: dict[str, list[np.ndarray]] = {}
    for h in held_out(preds, groups, fit):
        present = {m: np.ones(len(h.labels), bool) for m in h.logits}
        probs = h.params(h.logits, present).probs
        out.setdefault(h.subset, []).append(-np.log(np.clip(probs[np.arange(len(h.labels)), h.labels], 1e-300, None)))
    return {k: np.concatenate(v) for k, v in out.items()}


@dataclass(frozen=True)
class TemperatureChoice:
    """One modality's temperature: kept or not, and the evidence."""

    kept: bool
    nll_change: dict[str, list[float]]  # per set with the modality: [mean, low, high], without T_m minus with it
    groups: int  # groups left out in turn
    resamples: int  # bootstrap draws per interval


def choose_temperatures(
    preds: Predictions,
    groups: np.ndarray,
    fit: Callable[[Predictions, frozenset[str]], FusionParams],
    seed: int = SEED,
    resamples: int = RESAMPLES,
) -> dict[str, TemperatureChoice]:
    """Per modality: whether its temperature pays on held-out groups (module docstring). `fit(predictions,
    modalities)` fits the fusion with the temperatures of `modalities` only (training.calibrate.fit_fusion with
    Layers.temperatures), everything else as it would be served."""
    groups = np.asarray(groups)
    if len(groups) != len(preds.labels):
        raise ValueError(f"{len(groups)} group labels for {len(preds.labels)} predictions")
    if len(set(groups.tolist())) < 2:
        raise ValueError("leaving one group out needs at least two groups (speakers)")
    every = frozenset(preds.modalities)
    served = held_out_nll(preds, groups, lambda p: fit(p, every))
    out = {}
    for m in preds.modalities:
        without = every - {m}
        removed = held_out_nll(preds, groups, lambda p: fit(p, without))  # noqa: B023 (called before the loop moves on)
        change = {sub: paired_interval(removed[sub] - served[sub], seed, resamples) for sub in served if m in sub.split("+")}
        out[m] = TemperatureChoice(
            kept=any(low > 0 for _, low, _ in change.values()),
            nll_change=change,
            groups=len(set(groups.tolist())),
            resamples=resamples,
        )
    return out
