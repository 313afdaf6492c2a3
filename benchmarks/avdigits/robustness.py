"""Fusion rules under corruption: which one to serve, chosen on validation, reported on test.

    make bench-robustness      # = python -m benchmarks.avdigits.robustness

Takes the models `make bench-accuracy` trained (runs/avdigits: MLA, joint and the unimodal
ensemble, every seed) and a clean build of AV-digits (no noise, no damaged digits), and
corrupts one modality at a time, then both, at rising severity:

- audio: white noise over the whole band, the same noise low-passed to the 0-4 kHz band
  FSDD's 8 kHz recordings occupy (what an 8 kHz microphone in a noisy room records), and
  babble (four other speakers' digits at once), each at 20 ... -10 dB SNR;
- video: an occluding grey square (15 ... 90% of the frame), Gaussian pixel noise, blur,
  and dropped (blank) frames;
- both: white noise and occlusion together, severity by severity.

Corruptions act on the decoded model inputs (the arrays the ONNX graphs take), seeded, the
same for every rule. Every rule is calibrated once, on the ordinary validation split (as
`mla export` does), and scored on the corrupted validation split (to choose) and the
corrupted test split (to report): accuracy and ECE of the fused prediction. The rule served
by default is the one with the best mean validation accuracy over every corruption and
severity. Writes benchmarks/results/robustness.{json,md,png}.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from benchmarks.avdigits.build import SHARED, MissingSharedDataError, build, gaussian_blur
from benchmarks.avdigits.build import cached as dataset
from benchmarks.avdigits.run import run_dir
from benchmarks.report import RESULTS, markdown_table, write
from common import calibration
from common.fusion import FusionParams
from common.hashing import sha256_file
from training.calibrate import GATE_DECAY, GATE_MARGIN, MIXTURE_SHARE, fit_fusion, own_rule
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data.dataset import build_dataset
from training.data.files import cache_root
from training.data.specs import parse_spec
from training.evaluate import Predictions, fused_for, predict_split
from training.models import MultimodalClassifier

log = logging.getLogger("robustness")
MLA_RULES = ("entropy_raw", "entropy", "energy", "loglinear", "gated_loglinear", "equal", "fixed")
# gated_loglinear's (margin, decay) settings scored on validation; training.calibrate's constants are the best of them.
GATE_GRID = tuple((margin, decay) for margin in (1.0, 1.5, 2.0, 3.0) for decay in (0.5, 1.0, 2.0, 4.0))
CACHE_VERSION = 2  # bump when the corruptions change
REFERENCES = {"joint": "joint", "unimodal ensemble": "unimodal ensemble"}  # row of bench-accuracy -> label here
SNRS = (20.0, 10.0, 5.0, 0.0, -5.0, -10.0)
BABBLE_TALKERS = 4
CI_LEVEL = 0.95  # of the paired intervals on the chosen rule's gains
BAR = -0.5  # points: the chosen rule is to be within this of equal and of fixed weights in every condition
# gated_loglinear's blends with the equal-weight mixture scored on validation (1 would be the mixture itself)
SHARE_GRID = tuple(round(0.1 * i, 1) for i in range(10))
BOOTSTRAP_RESAMPLES = 2000
SPEECH_BAND_HZ = 4000.0  # FSDD is recorded at 8 kHz: nothing it holds lies above this


@dataclass(frozen=True)
class Corruption:
    name: str  # "audio white noise"
    modality: str  # "audio", "video" or "both"
    unit: str  # what the severities are in
    severities: tuple[float, ...]  # the first is the mildest
    seed: int  # its random draws and its key in the logits cache; fixed, so adding a corruption changes no other


def _occlude(frames: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A grey square covering `share` of each frame, at one random place per clip."""
    if share <= 0:
        return frames
    _, h, w, _ = frames.shape
    side_h, side_w = round(h * np.sqrt(share)), round(w * np.sqrt(share))
    y, x = rng.integers(0, h - side_h + 1), rng.integers(0, w - side_w + 1)
    out = frames.copy()
    out[:, y : y + side_h, x : x + side_w] = 128
    return out


def _pixel_noise(frames: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return frames
    out = np.empty_like(frames)
    for t in range(frames.shape[0]):
        for c in range(frames.shape[3]):
            out[t, :, :, c] = np.clip(gaussian_blur(frames[t, :, :, c], sigma), 0, 255).astype(np.uint8)
    return out


def _drop(frames: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Blank out round(share * T) of the T frames, chosen at random."""
    k = round(share * frames.shape[0])
    out = frames.copy()
    out[rng.choice(frames.shape[0], size=k, replace=False)] = 0
    return out


def _low_band(noise: np.ndarray, sample_rate: int, cutoff_hz: float = SPEECH_BAND_HZ) -> np.ndarray:
    """`noise` with every frequency above `cutoff_hz` removed (an ideal low-pass, by the real FFT)."""
    spectrum = np.fft.rfft(noise)
    spectrum[np.fft.rfftfreq(len(noise), 1.0 / sample_rate) > cutoff_hz] = 0
    return np.fft.irfft(spectrum, len(noise))


def _add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """wave + noise scaled to `snr_db` against the speech's power (measured where the clip is not padding)."""
    speech = wave[: max(1, int(np.flatnonzero(wave).max(initial=0)) + 1)]
    power = float(np.mean(speech.astype(np.float64) ** 2)) or 1e-10
    scale = np.sqrt(power / 10 ** (snr_db / 10) / max(float(np.mean(noise.astype(np.float64) ** 2)), 1e-20))
    return (wave + scale * noise).astype(np.float32)


WHITE = Corruption("audio white noise", "audio", "SNR dB", SNRS, 0)
OCCLUSION = Corruption("video occlusion", "video", "share of frame", (0.15, 0.3, 0.45, 0.6, 0.75, 0.9), 2)
CORRUPTIONS = (
    WHITE,
    Corruption("audio noise, 0-4 kHz", "audio", "SNR dB", SNRS, 7),
    Corruption("audio babble", "audio", "SNR dB", SNRS, 1),
    OCCLUSION,
    Corruption("video pixel noise", "video", "sigma (0-255)", (16.0, 32.0, 64.0, 96.0, 128.0, 192.0), 3),
    Corruption("video blur", "video", "sigma (px)", (0.5, 1.0, 1.5, 2.0, 3.0, 4.0), 4),
    Corruption("video dropped frames", "video", "share of frames", (0.25, 0.5, 0.75), 5),
    Corruption("both: white noise + occlusion", "both", "step", (1.0, 2.0, 3.0, 4.0, 5.0, 6.0), 6),
)


class Inputs:
    """One split's clean decoded inputs, and corrupted copies of them (seeded per corruption and severity)."""

    def __init__(
        self, audio: np.ndarray, video: np.ndarray, labels: np.ndarray, babble_pool: np.ndarray, sample_rate: int
    ) -> None:
        self.audio, self.video, self.labels, self.babble_pool = audio, video, labels, babble_pool
        self.sample_rate = sample_rate

    def corrupted(self, c: Corruption, level: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(1000 * c.seed + level)
        s = c.severities[level]
        if c.name == "audio white noise":
            return {"audio": np.stack([_add_noise(w, rng.standard_normal(w.shape), s) for w in self.audio])}
        if c.name == "audio noise, 0-4 kHz":
            noise = (_low_band(rng.standard_normal(w.shape), self.sample_rate) for w in self.audio)
            return {"audio": np.stack([_add_noise(w, n, s) for w, n in zip(self.audio, noise, strict=True)])}
        if c.name == "audio babble":
            out = []
            for w in self.audio:
                talkers = self.babble_pool[rng.choice(len(self.babble_pool), BABBLE_TALKERS, replace=False)]
                out.append(_add_noise(w, talkers.sum(axis=0), s))
            return {"audio": np.stack(out)}
        if c.name == "video occlusion":
            return {"video": np.stack([_occlude(f, s, rng) for f in self.video])}
        if c.name == "video pixel noise":
            return {"video": np.stack([_pixel_noise(f, s, rng) for f in self.video])}
        if c.name == "video blur":
            return {"video": np.stack([_blur(f, s) for f in self.video])}
        if c.name == "video dropped frames":
            return {"video": np.stack([_drop(f, s, rng) for f in self.video])}
        step = int(s) - 1  # both: the audio white-noise and occlusion severities of the same step
        return {**self.corrupted(WHITE, step), **self.corrupted(OCCLUSION, step)}


@torch.no_grad()
def model_outputs(model: MultimodalClassifier, modality: str, x: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """One modality's encoder features [n, dim] and logits [n, classes] for inputs `x`, in float64."""
    model.eval()
    feats, logits = [], []
    for i in range(0, len(x), batch):
        ((f, z),) = model({modality: torch.from_numpy(x[i : i + batch])}).values()
        feats.append(f.double().numpy())
        logits.append(z.double().numpy())
    return {"features": np.concatenate(feats), "logits": np.concatenate(logits)}


def _logits(model: MultimodalClassifier, modality: str, x: np.ndarray) -> np.ndarray:
    return model_outputs(model, modality, x)["logits"]


def _score(preds: Predictions, params: FusionParams) -> dict[str, float]:
    probs, rows = fused_for(preds, preds.modalities, params)
    y = preds.labels[rows]
    return {"accuracy": float((probs.argmax(1) == y).mean()), "ece": calibration.ece(probs, y)}


def _correct(preds: Predictions, params: FusionParams) -> np.ndarray:
    """[n] bool: which fused predictions are right."""
    probs, rows = fused_for(preds, preds.modalities, params)
    return probs.argmax(1) == preds.labels[rows]


def _clean_inputs(spec: str, model: MultimodalClassifier, split: str) -> Inputs:
    manifest = parse_spec(spec)
    ds = build_dataset(manifest, split, model.cfg)
    items = [ds[i] for i in range(len(ds))]
    audio = np.stack([np.asarray(it["audio"]) for it in items])
    video = np.stack([np.asarray(it["video"]) for it in items])
    labels = np.array([it["label"] for it in items])
    train = build_dataset(manifest, "train", model.cfg)  # babble: other speakers than val's and test's
    rng = np.random.default_rng(7)
    pool = np.stack([np.asarray(train[int(i)]["audio"]) for i in rng.choice(len(train), min(200, len(train)), replace=False)])
    return Inputs(audio, video, labels, pool, model.cfg.settings("audio")["sample_rate"])


def _key(c: Corruption, level: int) -> str:
    return f"{c.seed}/{level}"


def condition_logits(run: Path, clean_spec: str) -> dict[str, np.ndarray]:
    """Every logit the benchmark scores, for one trained model: "{split}/labels", "{split}/{condition}/{modality}".

    A condition is "clean" or "{corruption index}/{severity index}"; only the corrupted
    modality is stored under a corrupted condition. Computed once and kept beside the
    checkpoint (robustness-logits.npz, keyed by the checkpoint's and the data's hashes), so
    scoring another rule or gate costs no inference.
    """
    checkpoint = run / "checkpoint.pt"
    data = Path(clean_spec.removeprefix("csv:"))
    stamp = f"{sha256_file(checkpoint)}:{sha256_file(data)}:{CACHE_VERSION}"
    cache = run / "robustness-logits.npz"
    if cache.is_file():
        with np.load(cache) as held:
            if str(held["stamp"]) == stamp:
                return {k: held[k] for k in held.files if k != "stamp"}
    model = model_from_checkpoint(load_checkpoint(run))
    out: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        inputs = _clean_inputs(clean_spec, model, split)
        out[f"{split}/labels"] = inputs.labels
        for m in ("audio", "video"):
            out[f"{split}/clean/{m}"] = _logits(model, m, getattr(inputs, m))
        for c in CORRUPTIONS:
            for level in range(len(c.severities)):
                for m, x in inputs.corrupted(c, level).items():
                    out[f"{split}/{_key(c, level)}/{m}"] = _logits(model, m, x)
    payload: dict[str, Any] = {"stamp": np.array(stamp), **out}
    np.savez(cache, **payload)
    return out


def _condition(held: dict[str, np.ndarray], split: str, key: str) -> Predictions:
    logits = {m: held.get(f"{split}/{key}/{m}", held[f"{split}/clean/{m}"]) for m in ("audio", "video")}
    labels = held[f"{split}/labels"]
    return Predictions(logits, {m: np.ones(len(labels), bool) for m in logits}, labels)


def score_rules(
    held: dict[str, np.ndarray], rules: dict[str, FusionParams], splits: tuple[str, ...] = ("val", "test")
) -> dict[str, Any]:
    """{split: {"clean": {rule: scores}, corruption name: [by severity: {rule: scores}]}}."""
    out: dict[str, Any] = {}
    for split in splits:
        out[split] = {"clean": {r: _score(_condition(held, split, "clean"), p) for r, p in rules.items()}}
        for c in CORRUPTIONS:
            out[split][c.name] = [
                {r: _score(_condition(held, split, _key(c, level)), p) for r, p in rules.items()}
                for level in range(len(c.severities))
            ]
    return out


def _val_predictions(run: Path, val_spec: str) -> Predictions:
    """The ordinary validation split's predictions: what every rule is fitted on, as `mla export` does."""
    model = model_from_checkpoint(load_checkpoint(run))
    return predict_split(model, parse_spec(val_spec), "val", 256)


def evaluate_reference(run: Path, clean_spec: str, val_spec: str) -> dict[str, Any]:
    """A reference model: its own rule (fitted on the ordinary validation split) at every corruption and severity."""
    own = own_rule(load_checkpoint(run)["method"])
    return score_rules(condition_logits(run, clean_spec), {own: fit_fusion(_val_predictions(run, val_spec), own)})


def gate_grid(val: Predictions, held: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean validation accuracy over every corruption and severity of gated_loglinear at each (margin, decay)."""
    out = {}
    for margin, decay in GATE_GRID:
        scores = score_rules(held, {"g": fit_fusion(val, "gated_loglinear", gate=(margin, decay))}, ("val",))["val"]
        out[f"{margin:g}/{decay:g}"] = _mean(condition_accuracies(scores, "g"))
    return out


def condition_accuracies(scores: dict[str, Any], rule: str) -> list[float]:
    """A rule's accuracy in every condition, in the order of conditions(), from score_rules' or summarise's split."""
    return [(scores[name] if i is None else scores[name][i])[rule]["accuracy"] for name, i, _ in conditions()]


def share_grid(
    vals: list[Predictions], held_by_seed: list[dict[str, np.ndarray]], summary: dict[str, dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """gated_loglinear at each mixture share: mean accuracy and worst gap, in points, to the better of equal and
    fixed weights in any condition (accuracies are means over the seeds; the baselines' come from `summary`,
    summarise's output per split), on validation (what chooses) and on test (reported beside it, never used to
    choose)."""
    baseline = {
        split: np.maximum(condition_accuracies(summary[split], "equal"), condition_accuracies(summary[split], "fixed"))
        for split in ("val", "test")
    }
    out: dict[str, dict[str, float]] = {}
    for share in SHARE_GRID:
        fused = [fit_fusion(val, "gated_loglinear", mixture_share=share) for val in vals]
        per_seed = [score_rules(held, {"g": f}) for held, f in zip(held_by_seed, fused, strict=True)]
        row: dict[str, float] = {}
        for split in ("val", "test"):
            accs = np.array(condition_accuracies(summarise(per_seed, ["g"], split), "g"))
            row[f"{split}_mean"] = _mean(accs.tolist())
            row[f"{split}_worst"] = float((100 * (accs - baseline[split])).min())
        out[f"{share:g}"] = row
    return out


def pick_share(grid: dict[str, dict[str, float]]) -> str:
    """The most accurate share on validation among those within BAR of equal and fixed weights in every validation
    condition; where none is, the one whose worst condition is the least bad."""
    meets = [s for s, g in grid.items() if g["val_worst"] >= BAR - 1e-9]
    if meets:
        return max(meets, key=lambda s: grid[s]["val_mean"])
    return max(grid, key=lambda s: grid[s]["val_worst"])


def conditions() -> list[tuple[str, int | None, str]]:
    """(corruption name, severity index, cache key) of every scored condition, clean first (severity None)."""
    return [("clean", None, "clean")] + [(c.name, i, _key(c, i)) for c in CORRUPTIONS for i in range(len(c.severities))]


def paired_gaps(
    held_by_seed: list[dict[str, np.ndarray]],
    rules_by_seed: list[dict[str, FusionParams]],
    chosen: str,
    against: tuple[str, ...] = ("equal", "fixed"),
    split: str = "test",
    level: float = CI_LEVEL,
) -> dict[str, Any]:
    """The chosen rule's accuracy minus each of `against`'s, in points, with a bootstrap interval, per condition.

    The same clips are scored under every rule and seed, so the difference is paired: per clip,
    the difference of right answers averaged over the seeds, then a BCa bootstrap over the clips
    (scipy.stats.bootstrap). The interval is how far the gap could move on another draw of
    clips from the same speakers; the seeds are held fixed.
    Returns {"clean": {rule: {gain, low, high}}, corruption: [by severity: {rule: {...}}]}.
    """
    out: dict[str, Any] = {c.name: [None] * len(c.severities) for c in CORRUPTIONS}
    for name, i, key in conditions():
        preds = [_condition(held, split, key) for held in held_by_seed]
        chosen_right = [_correct(p, rules[chosen]) for p, rules in zip(preds, rules_by_seed, strict=True)]
        per_rule = {}
        for ref in against:
            diffs = np.mean(
                [
                    right.astype(float) - _correct(p, rules[ref])
                    for right, p, rules in zip(chosen_right, preds, rules_by_seed, strict=True)
                ],
                axis=0,
            )
            gain = 100 * float(diffs.mean())
            if np.all(diffs == diffs[0]):  # no clip differs: the interval is the point
                low = high = gain
            else:
                ci = stats.bootstrap(
                    (diffs,), np.mean, confidence_level=level, n_resamples=BOOTSTRAP_RESAMPLES, method="BCa", rng=0
                ).confidence_interval
                low, high = 100 * float(ci.low), 100 * float(ci.high)
            per_rule[ref] = {"gain": gain, "low": low, "high": high}
        if i is None:
            out[name] = per_rule
        else:
            out[name][i] = per_rule
    return out


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def summarise(per_seed: list[dict[str, Any]], rules: list[str], split: str) -> dict[str, Any]:
    """Mean over seeds: clean, then per corruption a list (by severity) of {rule: {accuracy, ece}}."""
    out: dict[str, Any] = {
        "clean": {r: {k: _mean([s[split]["clean"][r][k] for s in per_seed]) for k in ("accuracy", "ece")} for r in rules}
    }
    for c in CORRUPTIONS:
        out[c.name] = [
            {r: {k: _mean([s[split][c.name][i][r][k] for s in per_seed]) for k in ("accuracy", "ece")} for r in rules}
            for i in range(len(c.severities))
        ]
    return out


def choose(val: dict[str, Any], rules: list[str]) -> tuple[str, dict[str, float]]:
    """The rule with the best validation accuracy averaged over every corruption and severity (clean included)."""
    means = {r: _mean(condition_accuracies(val, r)) for r in rules}
    return max(means, key=lambda r: means[r]), means


def severity_label(c: Corruption, i: int) -> str:
    if c.modality == "both":
        return f"{WHITE.severities[i]:g} dB + {OCCLUSION.severities[i]:.0%}"
    return f"{c.severities[i]:g} {c.unit}"


def _corruption(name: str) -> Corruption:
    return next(c for c in CORRUPTIONS if c.name == name)


def _gap_cells(results: dict[str, Any]) -> list[dict[str, dict[str, float]]]:
    """The paired gaps of every test row, in the table's order."""
    gaps = results["gaps"]["by_condition"]
    return [gaps["clean"] if i is None else gaps[name][i] for name, i, _ in conditions()]


def markdown(results: dict[str, Any]) -> str:
    chosen, test = results["chosen"], results["mla"]["test"]
    refs = results["references"]
    gate, share = results["gate"], results["mixture_share"]
    grid = ", ".join(f"{g} {v:.4f}" for g, v in gate["grid"].items())
    gap_cells = _gap_cells(results)
    # the bar: within 0.5 point of, or above, the better of equal and fixed weights in that row
    binding = [min(cell.values(), key=lambda g: g["gain"]) for cell in gap_cells]
    below = [g for g in binding if g["gain"] < BAR]
    shown = [g for g in below if g["high"] < BAR]
    closest = min(range(len(binding)), key=lambda i: binding[i]["gain"])
    closest_name, closest_i, _ = conditions()[closest]
    closest_row = "clean" if closest_i is None else f"{closest_name}, {severity_label(_corruption(closest_name), closest_i)}"
    level = f"{results['gaps']['level']:.0%}"
    lines = [
        f"# Fusion rules under corruption (AV-digits test, MLA, seeds {results['seeds']})\n",
        f"Rule chosen on validation (best mean accuracy over every corruption and severity): **{chosen}** "
        f"(validation means: {', '.join(f'{r} {v:.3f}' for r, v in results['val_means'].items())}). "
        f"On test it is within 0.5 point of, or above, both equal and the best fixed weights in "
        f"{len(binding) - len(below)} of the {len(binding)} rows below (the closest: {closest_row}, "
        f"{binding[closest]['gain']:+.2f} point)."
        + (
            f" Of the {len(below)} rows under that bar, {len(shown)} fall short by more than the test set's noise "
            f"(the {level} interval of the gap lies wholly below {BAR:g} point)."
            if below
            else ""
        )
        + "\n",
        f"`gated_loglinear` used margin/decay {gate['used']} (training.calibrate's constants); the best on validation of "
        f"the grid was {gate['best']} (mean validation accuracy, margin/decay: {grid}).\n",
        f"`gated_loglinear` blended its product with the equal-weight mixture at share {share['used']} "
        "(training.calibrate.MIXTURE_SHARE); chosen on validation, as the most accurate share whose every condition is "
        f"within {-share['bar']:g} point of equal and of fixed weights, it is {share['best']} (share: validation mean "
        "accuracy / worst gap in points; test's, which chose nothing: "
        + ", ".join(
            f"{k} {g['val_mean']:.4f}/{g['val_worst']:+.2f}; {g['test_mean']:.4f}/{g['test_worst']:+.2f}"
            for k, g in share["grid"].items()
        )
        + ").\n",
        "Audio+video test accuracy, mean over seeds; `gain` is the chosen rule minus equal weights and minus the best fixed "
        f"weights (tuned on clean validation), in points, with its {level} interval (paired: the same clips under both "
        "rules; BCa bootstrap over the clips, seeds fixed); references are joint (its own rule) and the unimodal "
        "ensemble.\n",
    ]
    header = ["corruption", "severity", *MLA_RULES, "gain vs equal", "gain vs fixed", *refs]
    rows: list[list[Any]] = []

    def gain(g: dict[str, float]) -> str:
        return f"{g['gain']:+.1f} ({g['low']:+.1f} to {g['high']:+.1f})"

    def row(
        name: str, sev: str, accs: dict[str, dict[str, float]], gaps: dict[str, dict[str, float]], ref: list[Any]
    ) -> list[Any]:
        return [
            name,
            sev,
            *(accs[r]["accuracy"] for r in MLA_RULES),
            gain(gaps["equal"]),
            gain(gaps["fixed"]),
            *(next(iter(r.values()))["accuracy"] for r in ref),
        ]

    for (name, i, _), gaps in zip(conditions(), gap_cells, strict=True):
        if i is None:
            rows.append(row("none", "clean", test["clean"], gaps, [refs[k]["test"]["clean"] for k in refs]))
        else:
            rows.append(
                row(name, severity_label(_corruption(name), i), test[name][i], gaps, [refs[k]["test"][name][i] for k in refs])
            )
    lines.append(markdown_table(header, rows))
    lines.append("\nFused ECE (15 bins) on the same test sets:\n")
    ece_rows = [["none", "clean", *(test["clean"][r]["ece"] for r in MLA_RULES)]]
    for c in CORRUPTIONS:
        for i in range(len(c.severities)):
            ece_rows.append([c.name, severity_label(c, i), *(test[c.name][i][r]["ece"] for r in MLA_RULES)])
    lines.append(markdown_table(["corruption", "severity", *MLA_RULES], ece_rows))
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = results["mla"]["test"]
    fig, axes = plt.subplots(2, len(CORRUPTIONS), figsize=(3.0 * len(CORRUPTIONS), 6), sharey="row")
    for j, c in enumerate(CORRUPTIONS):
        x = list(range(len(c.severities) + 1))
        for r in MLA_RULES:
            for i, key in enumerate(("accuracy", "ece")):
                ys = [test["clean"][r][key]] + [lvl[r][key] for lvl in test[c.name]]
                axes[i][j].plot(x, ys, marker=".", label=r, linewidth=2.5 if r == results["chosen"] else 1.0)
        for name, ref in results["references"].items():
            ys = [next(iter(ref["test"]["clean"].values()))["accuracy"]]
            ys += [next(iter(lvl.values()))["accuracy"] for lvl in ref["test"][c.name]]
            axes[0][j].plot(x, ys, linestyle="--", color="grey" if name == "joint" else "black", label=name)
        axes[0][j].set_title(c.name, fontsize=9)
        axes[1][j].set_xlabel(c.unit, fontsize=8)
        for i in range(2):
            axes[i][j].set_xticks(x, ["clean", *(f"{s:g}" for s in c.severities)], fontsize=7, rotation=45)
            axes[i][j].grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (audio+video)")
    axes[1][0].set_ylabel("fused ECE")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"MLA fusion rules under corruption (chosen on validation: {results['chosen']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "robustness.png", dpi=110)
    plt.close(fig)


def setup(doc: str | None) -> tuple[argparse.Namespace, str, str, list[Path]]:
    """The command line shared by the studies on bench-accuracy's MLA runs: args, the ordinary and the clean
    AV-digits specs (the clean one built if missing), and each seed's run. Exits 0 where the shared data is absent."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/avdigits"), help="where make bench-accuracy trained")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        val_spec = f"csv:{dataset()}"
        clean_dir = cache_root() / "datasets" / "avdigits-clean-v1-seed0"
        if not (clean_dir / "manifest.csv").is_file():
            log.info("building clean AV-digits into %s", clean_dir)
            build(clean_dir, 0, clean=True)
    except MissingSharedDataError as exc:
        print(f"skipped: {exc}; the benchmark needs the shared data sets in {SHARED}")
        sys.exit(0)
    runs = [run_dir(args.runs, "mla", s) for s in args.seeds]
    missing = [r for r in runs if not (r / "checkpoint.pt").is_file()]
    if missing:
        raise SystemExit(f"no trained model in {', '.join(map(str, missing))}: run `make bench-accuracy` first")
    return args, val_spec, f"csv:{clean_dir / 'manifest.csv'}", runs


def main() -> None:
    args, val_spec, clean_spec, mla_runs = setup(__doc__)
    per_seed, refs_per_seed, grids = [], {k: [] for k in REFERENCES}, []  # type: ignore[var-annotated]
    held_by_seed, rules_by_seed, vals = [], [], []
    for seed, run in zip(args.seeds, mla_runs, strict=True):
        val = _val_predictions(run, val_spec)
        vals.append(val)
        rules = {r: fit_fusion(val, r.removesuffix("_raw"), not r.endswith("_raw")) for r in MLA_RULES}
        log.info("seed %d: MLA", seed)
        held = condition_logits(run, clean_spec)
        per_seed.append(score_rules(held, rules))
        held_by_seed.append(held)
        rules_by_seed.append(rules)
        grids.append(gate_grid(val, held))
        for row in REFERENCES:
            log.info("seed %d: %s", seed, row)
            refs_per_seed[row].append(evaluate_reference(run_dir(args.runs, row, seed), clean_spec, val_spec))
    mla = {split: summarise(per_seed, list(MLA_RULES), split) for split in ("val", "test")}
    chosen, val_means = choose(mla["val"], list(MLA_RULES))
    gate_means = {g: _mean([grid[g] for grid in grids]) for g in grids[0]}
    best_gate = max(gate_means, key=lambda g: gate_means[g])
    log.info("gated_loglinear's blend with the mixture, at %d shares", len(SHARE_GRID))
    shares = share_grid(vals, held_by_seed, mla)
    references = {}
    for row, runs in refs_per_seed.items():
        rule = next(iter(runs[0]["test"]["clean"]))
        references[row] = {split: summarise(runs, [rule], split) for split in ("val", "test")}
    results = {
        "seeds": args.seeds,
        "corruptions": [
            {"name": c.name, "modality": c.modality, "unit": c.unit, "severities": c.severities} for c in CORRUPTIONS
        ],
        "rules": list(MLA_RULES),
        "chosen": chosen,
        "val_means": val_means,
        "gate": {
            "grid": gate_means,  # "margin/decay" -> mean validation accuracy over seeds, corruptions and severities
            "best": best_gate,
            "used": f"{GATE_MARGIN:g}/{GATE_DECAY:g}",  # training.calibrate's constants, which gated_loglinear above used
        },
        "mixture_share": {
            # share -> {val_mean, val_worst, test_mean, test_worst}: accuracy, and the worst gap in points to equal/fixed
            "grid": shares,
            "best": pick_share(shares),
            "used": f"{MIXTURE_SHARE:g}",  # training.calibrate.MIXTURE_SHARE, which gated_loglinear above used
            "bar": BAR,
        },
        "mla": mla,
        # the chosen rule minus equal and minus fixed weights on test, in points, with paired bootstrap intervals
        "gaps": {"level": CI_LEVEL, "by_condition": paired_gaps(held_by_seed, rules_by_seed, chosen)},
        "references": references,
        "per_seed": per_seed,
    }
    md = markdown(results)
    write("robustness", results, md)
    plot(results, RESULTS)
    from benchmarks.readme import main as refresh_docs

    refresh_docs()
    print(md)


if __name__ == "__main__":
    main()
