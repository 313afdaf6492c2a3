"""Can the audio branch learn a voice it never heard, and would its confidence then mean what it says?

    make bench-audio-voices      # = python -m benchmarks.avdigits.audio_voices

Issue 11 asks the audio-alone `confidence` for an ECE of at most 0.04 on AV-digits' test
split, one held-out speaker (`theo`, 500 clips). The default recipe's audio branch gets 51%
of his digits right; at that accuracy its confidences spread over the whole range, and even
a perfectly calibrated model would show an ECE near 0.05 on 500 clips (the `ECE floor`).
This study trains MLA (alpha 10, as the default model) with what could make the
branch generalise to a new voice, and scores each run as `mla export` would serve it
(`gated_loglinear`, every calibration and abstention threshold fitted on the validation
speaker, `jackson`):

- `default recipe`: AV-digits, 10 epochs (the default model's recipe);
- `30 epochs`: the same, three times longer;
- `augment, 30 epochs`: `mla train --audio-augment` (the log-mel's mel axis warped by up to
  10% per clip, two bands of mels and two of frames blanked; training.models.augment);
- `synthetic voices`: the training split gains 150 clips per digit spoken by espeak-ng in
  random voices (`build --synthetic-voices 150`; validation and test unchanged), 10 epochs;
- `synthetic voices, augment, 30 epochs`: both.

The first and the last row train three seeds each (a seed alone moves the audio accuracy by
several points), the rows between one seed each, to apportion the difference.

Per row: audio accuracy on validation and test, and on test per set of modalities sent:
accuracy, ECE (15 bins) beside its floor, NLL, and the abstention the validation threshold
gives (share answered, error rate among the answered). Changes nothing that is served.
Writes benchmarks/results/audio_voices.{json,md}; exits 0 with a reason without
../shared/data or espeak-ng.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.avdigits.build import SHARED, MissingSharedDataError, cached
from benchmarks.report import markdown_table, write
from training.calibrate import fit_abstention, fit_fusion
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.data.specs import parse_spec
from training.evaluate import Predictions, answered, predict_split, score, subset_name, subsets
from training.train import train

SYNTHETIC_PER_DIGIT = 150
ALPHA = 10.0  # the default model's
RULE = "gated_loglinear"
# row -> (synthetic clips per digit, epochs, audio_augment, seeds). The first and the last row, three
# seeds each: the spread a seed alone makes (several points of audio accuracy) beside the change that
# matters; the rows between, one seed each, only apportion it.
ROWS: dict[str, tuple[int, int, bool, tuple[int, ...]]] = {
    "default recipe": (0, 10, False, (0, 1, 2)),
    "30 epochs": (0, 30, False, (0,)),
    "augment, 30 epochs": (0, 30, True, (0,)),
    "synthetic voices": (SYNTHETIC_PER_DIGIT, 10, False, (0,)),
    "synthetic voices, augment, 30 epochs": (SYNTHETIC_PER_DIGIT, 30, True, (0, 1, 2)),
}
log = logging.getLogger("audio_voices")


def _predictions(run: Path, spec: str) -> dict[str, Predictions]:
    model = model_from_checkpoint(load_checkpoint(run))
    return {split: predict_split(model, parse_spec(spec), split, 256) for split in ("val", "test")}


def score_run(val: Predictions, test: Predictions) -> dict[str, Any]:
    """The served rule fitted on `val` (as `mla export` fits it), scored on `test` per set of modalities sent."""
    params = fit_fusion(val, RULE)
    scores = score(test, params)
    given = answered(test, params, fit_abstention(val, params))
    out: dict[str, Any] = {"val_audio_accuracy": float((val.logits["audio"].argmax(1) == val.labels).mean())}
    out["temperatures"] = dict(params.temperatures or {})
    for sub in subsets(test.modalities):
        name = subset_name(sub)
        out[name] = {k: scores[k][name] for k in ("n", "accuracy", "ece", "ece_floor", "nll")}
        out[name] |= {"answered": given[name]["coverage"], "error_among_answered": given[name]["risk"]}
    return out


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    base = rows["default recipe"]["mean"]
    table = []
    for name, row in rows.items():
        m = row["mean"]
        a = m["audio"]
        err = "none answered" if a["error_among_answered"] is None else f"{a['error_among_answered']:.3f}"
        std = m["audio_accuracy_std"]
        table.append(
            [
                name,
                len(row["seeds"]),
                m["val_audio_accuracy"],
                f"{a['accuracy']:.3f}" + ("" if std is None else f" ± {std:.3f}"),
                f"{a['accuracy'] - base['audio']['accuracy']:+.3f}",
                a["ece"],
                a["ece_floor"],
                a["nll"],
                a["answered"],
                err,
                m["audio+video"]["accuracy"],
                m["audio+video"]["ece"],
            ]
        )
    header = [
        "training",
        "seeds",
        "val audio acc",
        "test audio acc",
        "vs default",
        "audio ECE",
        "its floor",
        "audio NLL",
        "audio answered",
        "audio error among answered",
        "audio+video acc",
        "audio+video ECE",
    ]
    return (
        f"# Audio for a voice it never heard (AV-digits, MLA alpha {ALPHA:g})\n\n"
        f"Test split: the held-out speaker `theo`; every calibration, the `{RULE}` fusion and the abstention "
        "threshold fitted on the validation speaker `jackson`, as `mla export` fits them; audio alone unless "
        "the column says audio+video. `its floor`: the ECE a perfectly calibrated model with the same "
        "confidences would show on this many clips. Figures are means over the row's seeds (± the standard "
        "deviation of the audio accuracy where there are several). Synthetic voices: "
        f"{results['synthetic_per_digit']} espeak-ng clips per digit added to training only.\n\n"
        + markdown_table(header, table)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/audio_voices"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if shutil.which("espeak-ng") is None:
        print("skipped: espeak-ng is not installed (make system-deps installs it); the synthetic voices need it")
        sys.exit(0)
    try:
        specs = {n: f"csv:{cached(0, n)}" for n in sorted({row[0] for row in ROWS.values()})}
    except MissingSharedDataError as exc:
        print(f"skipped: {exc}; the study needs the shared data sets in {SHARED}")
        sys.exit(0)
    results: dict[str, Any] = {"synthetic_per_digit": SYNTHETIC_PER_DIGIT, "alpha": ALPHA, "rows": {}}
    for name, (synth, epochs, augment, seeds) in ROWS.items():
        per_seed = []
        for seed in seeds:
            out = args.runs / name.replace(", ", "_").replace(" ", "-") / f"seed{seed}"
            cfg = TrainConfig(
                method="mla", epochs=epochs, owm_alpha=ALPHA, augment=["audio"] if augment else [], seed=seed, workers=1
            )
            trained = train(specs[synth], out, cfg, resume=True)  # a finished run is kept
            preds = _predictions(out, specs[0])  # validation and test are the same in every data set
            scored = score_run(preds["val"], preds["test"])
            per_seed.append({"seed": seed, "train_seconds": float(trained["train_seconds"]), **scored})
            log.info("%s seed %d: audio %.3f", name, seed, per_seed[-1]["audio"]["accuracy"])
        keys = [k for k in per_seed[0] if isinstance(per_seed[0][k], dict) and "accuracy" in per_seed[0][k]]
        mean: dict[str, Any] = {"val_audio_accuracy": statistics.fmean(r["val_audio_accuracy"] for r in per_seed)}
        mean["audio_accuracy_std"] = statistics.stdev(r["audio"]["accuracy"] for r in per_seed) if len(seeds) > 1 else None
        for k in keys:
            mean[k] = {f: _mean([r[k][f] for r in per_seed]) for f in per_seed[0][k]}
        setup = {"synthetic_per_digit": synth, "epochs": epochs, "audio_augment": augment, "seeds": list(seeds)}
        results["rows"][name] = {**setup, "runs": per_seed, "mean": mean}
    md = markdown(results)
    write("audio_voices", results, md)
    print(md)


if __name__ == "__main__":
    main()
