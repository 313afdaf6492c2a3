"""Which fitted layers of the served fusion earn their place, on held-out speakers (issue 28, deliverable 2).

    python -m benchmarks.avdigits.ablation [--crossfit runs/crossfit] [--model models/default/NEWEST] [--resamples 1000]

The evidence: the default model's validation predictions (speaker `jackson`) and the out-of-fold predictions of
`python -m training.crossfit` (each training speaker predicted by a model that never heard them nor saw their
drawings): five speakers, none of them the test speaker. Leave one speaker out: every layer is fitted on the other four
exactly as `mla export --crossfit` fits it (training.calibrate), then scored on the fifth; the five held-out speakers'
clips are pooled. The served rule fits the temperatures of the modalities the model's export kept
(`fusion.calibration.temperature_choice`; every modality's for a manifest without one). Each variant removes one fitted
value or layer of the served rule (a kept temperature, the per-subset temperatures), or adds one it does not fit (a
temperature it left at 1, version 2's maps and fitted weights, version 1's typicality gate with its mixture blend, the
blend alone).

Scored per clip, for audio alone, video alone and the pair: negative log-likelihood of the true label, and, at the
abstention threshold fitted with the layers (SGR at 5% risk), whether it was answered and right. The figure per layer
is the change in mean NLL when it is removed (removed minus served: above 0, removing it loses), with a 95% paired
bootstrap interval over clips (1000 draws, seed 0). The rule the issue sets: a layer stays only where removing it loses
with the whole interval on the losing side. The test split is never read.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import markdown_table, write
from common import calibration
from common.answer import decide
from common.fusion import FusionParams
from training.calibrate import (
    MIXTURE_SHARE,
    SERVED_LAYERS,
    Layers,
    fit_abstention,
    fit_fusion,
    load_out_of_fold,
    out_of_fold_speakers,
    pool,
)
from training.evaluate import Predictions
from training.loso import held_out, paired_interval

log = logging.getLogger("ablation")
ROOT = Path(__file__).resolve().parents[2]
SERVED = "loglinear"


def _layers(temperatures: frozenset[str]) -> Layers:
    return replace(SERVED_LAYERS, temperatures=temperatures)


def _fit(layers: Layers, rule: str = SERVED, mixture_share: float | None = None) -> Callable[[Predictions], FusionParams]:
    return lambda train: fit_fusion(train, rule, mixture_share=mixture_share, layers=layers)


def _served(temperatures: frozenset[str]) -> Callable[[Predictions], FusionParams]:
    """The rule `mla export` serves: the product with the layers SERVED_LAYERS keeps and the temperatures of
    `temperatures` (every other modality's T_m is 1)."""
    return _fit(_layers(temperatures))


def _no_fused_temperatures(temperatures: frozenset[str]) -> Callable[[Predictions], FusionParams]:
    return lambda train: replace(_served(temperatures)(train), fused_temperatures=None)


def variants(modalities: list[str], kept: frozenset[str]) -> dict[str, tuple[str, Callable[[Predictions], FusionParams]]]:
    """The served rule (the temperatures of `kept` fitted, the others 1) and one variant per fitted value or layer:
    each kept temperature removed, each other one added, and each layer the served rule does not fit added."""
    out = {
        "served": (
            f"product of the calibrated modalities, equal weights, T_S per set, T_m for {', '.join(sorted(kept)) or 'none'}",
            _served(kept),
        )
    }
    for m in modalities:
        if m in kept:
            out[f"- {m}'s temperature"] = (f"remove: T_{m} = 1 (T_S refitted)", _served(kept - {m}))
        else:
            out[f"+ {m}'s temperature"] = (f"add: T_{m} fitted (T_S refitted)", _served(kept | {m}))
    out["- per-subset temperatures"] = ("remove: T_S = 1", _no_fused_temperatures(kept))
    served = _layers(kept)
    out["+ fitted weights"] = ("add: weights fitted by NLL on a 0.05 grid", _fit(replace(served, weights=True)))
    maps = _fit(replace(served, confidence_maps=True))
    out["+ confidence maps"] = ("add: top-label Platt maps where cross-validation keeps one", maps)
    gate = _fit(served, rule="gated_loglinear")
    out["+ typicality gate and blend"] = ("add version 1's gate (margin 2, decay 4) and blend (0.4)", gate)
    mixture = _fit(served, mixture_share=MIXTURE_SHARE)
    out["+ mixture blend"] = ("add version 1's blend with the equal-weight mixture (0.4), no gate", mixture)
    return out


def held_out_scores(
    preds: Predictions, groups: np.ndarray, fit: Callable[[Predictions], FusionParams]
) -> dict[str, dict[str, np.ndarray]]:
    """Per subset sent: per clip (pooled over held-out speakers, in group order) NLL, answered, right, the
    probabilities returned, the label and its group."""
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    thresholds: dict[str, float] = {}
    fitted_without = None
    for h in held_out(preds, groups, fit):
        if h.group != fitted_without:  # a new group left out: its thresholds, fitted without it, once
            thresholds = {k: t.min_confidence for k, t in fit_abstention(h.train, h.params).items()}
            fitted_without = h.group
        a = decide(h.params, thresholds, {}, h.logits)
        p = np.clip(a.fused.probs[np.arange(len(h.labels)), h.labels], 1e-300, None)
        cell = out.setdefault(h.subset, {"nll": [], "answered": [], "right": [], "probs": [], "label": [], "group": []})
        cell["nll"].append(-np.log(p))
        cell["answered"].append(~a.abstained)
        cell["right"].append(a.fused.probs.argmax(axis=1) == h.labels)
        cell["probs"].append(a.fused.probs)
        cell["label"].append(h.labels)
        cell["group"].append(np.full(len(h.labels), h.group))
    return {k: {f: np.concatenate(v) for f, v in cell.items()} for k, cell in out.items()}


def run(preds: Predictions, groups: np.ndarray, seed: int, resamples: int, kept: frozenset[str] | None = None) -> dict[str, Any]:
    """Every variant scored on held-out groups; `kept`: the modalities whose temperature the served rule fits (None:
    every one)."""
    table = variants(preds.modalities, frozenset(preds.modalities) if kept is None else kept)
    scored = {name: held_out_scores(preds, groups, fit) for name, (_, fit) in table.items()}
    base = scored["served"]
    out: dict[str, Any] = {"variants": {}, "groups": {str(g): int((groups == g).sum()) for g in dict.fromkeys(groups.tolist())}}
    for name, cells in scored.items():
        row: dict[str, Any] = {"about": table[name][0], "subsets": {}}
        for sub, c in cells.items():
            given = c["answered"]
            row["subsets"][sub] = {
                "n": len(c["nll"]),
                "nll": float(c["nll"].mean()),
                "accuracy": float(c["right"].mean()),
                "coverage": float(given.mean()),
                "error_among_answered": float(1 - c["right"][given].mean()) if given.any() else None,
                "nll_change": None if name == "served" else paired_interval(c["nll"] - base[sub]["nll"], seed, resamples),
            }
        out["variants"][name] = row
    out["per_speaker"] = per_speaker(base)
    return out


def per_speaker(scored: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The served rule on each held-out speaker apart, per subset sent: what a new speaker can expect, and how much it
    varies from one speaker to the next (the pooled figures average it away). ECE over 15 bins, with the ECE a
    perfectly calibrated model would show on as many clips (common.calibration.ece_floor)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for sub, c in scored.items():
        for g in dict.fromkeys(c["group"].tolist()):
            rows = c["group"] == g
            probs, right, given = c["probs"][rows], c["right"][rows], c["answered"][rows]
            out.setdefault(str(g), {})[sub] = {
                "n": int(rows.sum()),
                "accuracy": float(right.mean()),
                "ece": calibration.ece(probs, c["label"][rows]),
                "ece_floor": calibration.ece_floor(probs),
                "coverage": float(given.mean()),
                "error_among_answered": float(1 - right[given].mean()) if given.any() else None,
            }
    return out


def verdict(change: list[float], adding: bool) -> str:
    """Removing: the layer stays only where removal loses for sure (interval above 0). Adding: it would pay only where
    adding wins for sure (interval below 0)."""
    _, low, high = change
    if low == high == 0.0:
        return "no effect here"  # the layer does not act on this set (a per-set temperature on one modality)
    if adding:
        return "would pay" if high < 0 else "does not pay"
    return "stays" if low > 0 else "goes"


def markdown(data: dict[str, Any]) -> str:
    variants = data["variants"]
    subs = list(variants["served"]["subsets"])
    lines = [
        "# Which fitted layers earn their place: held-out speakers (issue 28)",
        "",
        f"Leave one speaker out over five ({', '.join(f'{g} {n}' for g, n in data['groups'].items())} clips): every "
        "layer fitted on four speakers' predictions as `mla export --crossfit` fits it, scored on the fifth, pooled. "
        "`jackson` is the default model's validation split; the others are out-of-fold predictions of models that never "
        "heard that speaker nor saw their drawings (`python -m training.crossfit`). The test split is never read.",
        "",
        "Change in mean NLL per clip when the layer is removed (or added), removed minus served: above 0 the served rule "
        f"is better. 95% paired bootstrap over clips ({data['resamples']} draws). A layer stays only where its whole "
        "interval is above 0.",
        "",
    ]
    rows = []
    for name, v in variants.items():
        if name == "served":
            continue
        adding = name.startswith("+")
        cells = []
        for sub in subs:
            c = v["subsets"][sub]["nll_change"]
            cells.append(f"{c[0]:+.4f} ({c[1]:+.4f} to {c[2]:+.4f}): {verdict(c, adding)}")
        rows.append([name, *cells])
    lines += [markdown_table(["layer", *subs], rows), ""]
    lines += ["## The served rule on each held-out speaker", ""]
    lines += [
        "What a new speaker can expect, one speaker at a time (every value fitted on the other four). ECE over 15 bins, "
        "`floor` the ECE a perfectly calibrated model would show on as many clips.",
        "",
    ]
    rows = []
    for g, cells in data["per_speaker"].items():
        for sub in subs:
            c = cells[sub]
            err = "-" if c["error_among_answered"] is None else f"{100 * c['error_among_answered']:.1f}%"
            ece = f"{c['ece']:.3f} ({c['ece_floor']:.3f})"
            rows.append([g, sub, c["n"], f"{100 * c['accuracy']:.1f}%", ece, f"{100 * c['coverage']:.1f}%", err])
    lines += [markdown_table(["speaker", "sent", "n", "accuracy", "ECE (floor)", "answered", "error among answered"], rows), ""]
    lines += ["## Each variant on the held-out speakers", ""]
    rows = []
    for name, v in variants.items():
        for sub in subs:
            c = v["subsets"][sub]
            err = "-" if c["error_among_answered"] is None else f"{100 * c['error_among_answered']:.1f}%"
            rows.append([name, sub, c["n"], f"{c['nll']:.4f}", f"{100 * c['accuracy']:.1f}%", f"{100 * c['coverage']:.1f}%", err])
    lines += [markdown_table(["variant", "sent", "n", "NLL", "accuracy", "answered", "error among answered"], rows), ""]
    lines += ["## The variants", "", markdown_table(["variant", "what"], [[k, v["about"]] for k, v in variants.items()]), ""]
    lines += [f"Ran in {data['seconds']:.0f} s on {data['machine']['cpu_count']} CPUs.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.report import machine
    from common.manifest import load_manifest, newest_version
    from model_export.repository import graph_predictions

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crossfit", type=Path, default=ROOT / "runs" / "crossfit")
    parser.add_argument("--model", type=Path, default=newest_version(ROOT / "models" / "default"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    manifest = load_manifest(args.model)
    val = graph_predictions(args.model, manifest, manifest.training.data, "val")
    oof, _ = load_out_of_fold(args.crossfit, val.modalities)
    speakers = out_of_fold_speakers(args.crossfit)
    preds = pool(val, oof)
    groups = np.concatenate([np.array(["jackson (val)"] * len(val.labels)), speakers])
    choice = manifest.fusion.calibration.temperature_choice  # what its export kept (version 10 on); before: every one
    kept = frozenset(m for m, c in choice.items() if c.kept) if choice else None
    data = run(preds, groups, args.seed, args.resamples, kept)
    data.update(model=str(args.model), crossfit=str(args.crossfit), seed=args.seed, resamples=args.resamples)
    data.update(machine=machine(), seconds=time.perf_counter() - started)
    write("ablation", data, markdown(data))
    return data


if __name__ == "__main__":
    main()
