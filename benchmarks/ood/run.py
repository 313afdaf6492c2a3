"""Out-of-distribution benchmark of the served model (issue 27): how it answers inputs nothing like its training data.

    python -m benchmarks.ood.run [--model models/default/NEWEST] [--seed 0] [--resamples 1000]

OpenOOD v1.5's protocol on the AV-digits model: in-distribution is the AV-digits test split (the
held-out speaker's digits paired with unseen handwritten ones); the OOD sets are
benchmarks/ood/sets.py's, near and far per modality, plus pairs: both modalities OOD, and one
OOD beside an in-distribution other. Every item is decoded by the service's own decode functions
under its default limits, run through the committed ONNX graphs (ONNX Runtime, CPU) and fused
request by request by the manifest's rule, so the answered/abstained figures are what a client
would get. Each detector in benchmarks/ood/detectors.py is scored by AUROC and FPR at 95% TPR
(in-distribution positive) with 95% bootstrap intervals, per group and per kind.

Nothing is chosen here: the detectors are fixed formulas and the thresholds the manifest's. The
tune sets are scored beside the report sets for the choices to come and are kept apart in the
results. Writes benchmarks/results/ood.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from benchmarks.avdigits import build as avdigits
from benchmarks.ood import metrics, sets
from benchmarks.ood.detectors import DETECTORS, Batch, serve, typicality_gate
from benchmarks.report import markdown_table, write
from common.fusion import subset_name
from common.manifest import Manifest, check_hashes, load_detectors, load_manifest, newest_version
from common.media import AudioSpec, MediaError, VideoSpec
from common.modalities.audio import AudioEntry
from common.modalities.video import VideoEntry

log = logging.getLogger("ood")
ROOT = Path(__file__).resolve().parents[2]
MODEL = newest_version(ROOT / "models" / "default")
BATCH = 64
GROUPS = (("report", "near"), ("report", "far"), ("tune", "near"), ("tune", "far"))
CONDITIONS = {
    "audio": "audio alone: OOD audio against the test split's audio",
    "video": "video alone: OOD video against the test split's video",
    "both OOD": "audio+video, both OOD (random pairs within a group) against the test split's pairs",
    "audio OOD, video ID": "audio+video: OOD audio beside a random test-split video, against the test split's pairs",
    "video OOD, audio ID": "audio+video: OOD video beside a random test-split audio, against the test split's pairs",
}


@dataclass
class Decoded:
    """One modality's items through decoder and graph: logits of those accepted, reasons for those refused."""

    logits: np.ndarray  # [n accepted, classes + feature dims]: the logits, then the features where the graph has them
    accepted: np.ndarray  # [n items] bool
    refused: dict[str, str]  # file -> why the service would refuse it


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"  # the kind's folder and the file: names repeat across kinds


class Model:
    """The committed model as the service runs it: its manifest, one CPU session per modality, the service's decoders."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        from service.model import ServedModel
        from service.settings import Settings

        self.manifest: Manifest = load_manifest(folder)
        if bad := check_hashes(folder, self.manifest):
            raise SystemExit(f"{folder}: " + "; ".join(bad))
        self.params = self.manifest.fusion.params()
        self.detectors = load_detectors(folder, self.manifest)
        self.classes = len(self.manifest.labels)
        self.standardise = {m: (e.val["mean"], e.val["std"]) for m, e in (self.manifest.ood or {}).items()}
        self.sessions = {
            m: ort.InferenceSession(str(folder / e.file), providers=["CPUExecutionProvider"])
            for m, e in self.manifest.modalities.items()
        }
        # The service's own limits (ServedModel.limits on its default settings), on a stand-in holding only what it reads.
        served = SimpleNamespace(
            settings=Settings(), runtimes={m: SimpleNamespace(entry=e) for m, e in self.manifest.modalities.items()}
        )
        self.limits = {m: ServedModel.limits(cast(Any, served), m) for m in self.manifest.modalities}

    def decode(self, modality: str, path: Path) -> np.ndarray:
        from service.decoding import decode_file

        entry = self.manifest.modalities[modality]
        if isinstance(entry, AudioEntry):
            return decode_file("audio", path, AudioSpec(entry.sample_rate, entry.clip_samples), self.limits[modality])
        assert isinstance(entry, VideoEntry)
        return decode_file("video", path, VideoSpec(entry.frames, entry.height, entry.width), self.limits[modality])

    def run(self, modality: str, paths: Sequence[Path]) -> Decoded:
        arrays, accepted, refused = [], np.zeros(len(paths), bool), {}
        for i, path in enumerate(paths):
            try:
                arrays.append(self.decode(modality, path))
                accepted[i] = True
            except MediaError as exc:
                refused[_name(path)] = str(exc)
        session = self.sessions[modality]
        name = session.get_inputs()[0].name
        entry = self.manifest.modalities[modality]
        outputs = [entry.output.name] + ([entry.features.name] if modality in self.detectors and entry.features else [])
        chunks = [
            np.concatenate(session.run(outputs, {name: np.stack(arrays[i : i + BATCH])}), axis=1)
            for i in range(0, len(arrays), BATCH)
        ]
        width = self.classes + (int(entry.features.shape[-1]) if len(outputs) > 1 and entry.features else 0)
        logits = np.concatenate(chunks) if chunks else np.zeros((0, int(width)), np.float32)
        finite = np.isfinite(logits).all(axis=1)  # the service refuses a non-finite output (service/model.py: predict)
        for j in np.flatnonzero(~finite):
            refused[_name(paths[np.flatnonzero(accepted)[j]])] = "the model's output is not finite"
        accepted[np.flatnonzero(accepted)[~finite]] = False
        return Decoded(logits[finite], accepted, refused)


@dataclass
class Requests:
    """Requests that send the same modalities, with what is known of each: set kind, group, distance."""

    logits: dict[str, np.ndarray]
    kind: np.ndarray
    group: np.ndarray
    distance: np.ndarray
    ood: tuple[str, ...] = ()  # the modalities whose inputs are out of distribution (the others are ID partners)


def id_split(manifest_csv: Path) -> tuple[list[Path], list[Path], np.ndarray]:
    """The AV-digits test split: audio files, video files, labels."""
    with manifest_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    base = manifest_csv.parent
    return [base / r["audio"] for r in rows], [base / r["video"] for r in rows], np.array([int(r["label"]) for r in rows])


def clean_speech(model: Model, speaker: str) -> dict[str, Any]:
    """`speaker`'s FSDD recordings as they are (8 kHz, no noise added: what a microphone gives), each sent alone.

    In distribution by what they say, but unlike every training clip, which is noised: the share flagged out of
    distribution is a false alarm a user meets on a clean recording. The held-out speaker's for the report; the
    validation speaker's for a choice (docs/decisions/2026-12-06-noised-outliers.md)."""
    recs = [r for r in avdigits.recordings(avdigits.SHARED) if r.speaker == speaker]
    if not recs:
        raise ValueError(f"FSDD has no recording of {speaker}")
    decoded = model.run("audio", [r.path for r in recs])
    if decoded.refused:
        raise SystemExit(f"the service refuses clean recordings: {decoded.refused}")
    batch = serve_rows(model, {"audio": decoded.logits})
    answered, label = served(model, batch)
    right = label == np.array([r.digit for r in recs])
    assert batch.answers is not None
    flagged = ~batch.answers.in_distribution["audio"]
    return {
        "speaker": speaker,
        "n": len(recs),
        "accuracy": float(right.mean()),
        "flagged": float(flagged.mean()),
        "answered": float(answered.mean()),
        "error_among_answered": float(1 - right[answered].mean()) if answered.any() else None,
        "per_clip": {"flagged": flagged.tolist(), "answered": answered.tolist()},
    }


def ood_requests(
    items: list[sets.Item], decoded: dict[str, Decoded], id_logits: dict[str, np.ndarray], seed: int
) -> dict[str, Requests]:
    """Every condition's OOD requests: each modality alone, each beside a random in-distribution other, and both OOD."""
    rng = np.random.default_rng([seed, 27])
    per: dict[str, dict[str, np.ndarray]] = {}
    for m in ("audio", "video"):
        kept = [it for it in items if it.modality == m]
        ok = decoded[m].accepted
        per[m] = {
            "logits": decoded[m].logits,
            "kind": np.array([it.kind for it in kept])[ok],
            "group": np.array([it.group for it in kept])[ok],
            "distance": np.array([it.distance for it in kept])[ok],
        }
    out = {
        m: Requests({m: per[m]["logits"]}, per[m]["kind"], per[m]["group"], per[m]["distance"], (m,)) for m in ("audio", "video")
    }
    for ood, other, name in (("audio", "video", "audio OOD, video ID"), ("video", "audio", "video OOD, audio ID")):
        partner = rng.integers(0, len(id_logits[other]), len(per[ood]["logits"]))
        logits = {ood: per[ood]["logits"], other: id_logits[other][partner]}
        out[name] = Requests(logits, per[ood]["kind"], per[ood]["group"], per[ood]["distance"], (ood,))
    a_rows, v_rows, kinds, groups, distances = [], [], [], [], []
    for group, distance in GROUPS:
        a = rng.permutation(np.flatnonzero((per["audio"]["group"] == group) & (per["audio"]["distance"] == distance)))
        v = rng.permutation(np.flatnonzero((per["video"]["group"] == group) & (per["video"]["distance"] == distance)))
        n = min(len(a), len(v))
        a_rows += list(a[:n])
        v_rows += list(v[:n])
        kinds += [f"{per['audio']['kind'][i]}+{per['video']['kind'][j]}" for i, j in zip(a[:n], v[:n], strict=True)]
        groups += [group] * n
        distances += [distance] * n
    both = {"audio": per["audio"]["logits"][a_rows], "video": per["video"]["logits"][v_rows]}
    out["both OOD"] = Requests(both, np.array(kinds), np.array(groups), np.array(distances), ("audio", "video"))
    return out


def serve_rows(model: Model, outputs: dict[str, np.ndarray]) -> Batch:
    """The served answers to requests given as each modality's graph outputs [n, classes (+ feature dims)]."""
    k = model.classes
    feats = {m: z[:, k:] for m, z in outputs.items() if m in model.detectors}
    logits = {m: z[:, :k] for m, z in outputs.items()}
    thresholds = model.manifest.fusion.abstention.min_confidence
    return serve(model.params, logits, feats or None, model.detectors, thresholds, model.standardise)


def served(model: Model, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(answered, label) per request, as the service decides them (common.answer.decide)."""
    assert batch.answers is not None
    return ~batch.answers.abstained, batch.fused.probs.argmax(axis=1)


def dropped(batch: Batch, ood: Sequence[str]) -> np.ndarray:
    """[n] whether every modality in `ood` was judged out of distribution (so left out of the fusion)."""
    if batch.answers is None or not ood or any(m not in batch.answers.in_distribution for m in ood):
        return np.zeros(len(batch.fused.probs), bool)
    return np.all(np.stack([~batch.answers.in_distribution[m] for m in ood]), axis=0)


def scores(batch: Batch) -> dict[str, np.ndarray]:
    out = {}
    for detector in DETECTORS:
        s = detector.score(batch)
        if s is not None:
            out[detector.name] = np.asarray(s, np.float64)
    return out


def evaluate(model: Model, id_batch: Batch, labels: np.ndarray, requests: Requests, seed: int, resamples: int) -> dict[str, Any]:
    """One condition: the in-distribution figures, then per group and per kind the share answered and each detector's
    AUROC and FPR@95."""
    id_answered, id_label = served(model, id_batch)
    id_scores = scores(id_batch)
    ood_batch = serve_rows(model, requests.logits)
    ood_answered, _ = served(model, ood_batch)
    ood_names = [m for m in requests.logits if m in requests.ood]
    ood_dropped = dropped(ood_batch, ood_names)
    id_dropped = dropped(id_batch, ood_names)
    ood_scores = scores(ood_batch)
    right = id_label == labels

    def gated(batch: Batch) -> np.ndarray:
        gate = typicality_gate(batch)
        return np.zeros(len(batch.fused.probs), bool) if gate is None else gate < 1.0

    ood_gated = gated(ood_batch)

    def block(mask: np.ndarray) -> dict[str, Any]:
        return {
            "n": int(mask.sum()),
            "answered": float(ood_answered[mask].mean()),
            "gated": float(ood_gated[mask].mean()),
            "flagged": float(ood_dropped[mask].mean()),
            "detectors": {d: metrics.summary(id_scores[d], s[mask], seed, resamples) for d, s in ood_scores.items()},
        }

    groups = {}
    for group, distance in GROUPS:
        mask = (requests.group == group) & (requests.distance == distance)
        if mask.any():
            groups[f"{group}/{distance}"] = block(mask)
    kinds = {}
    if "+" not in str(requests.kind[0]):  # pairs of two OOD kinds are reported per group only
        for kind in dict.fromkeys(requests.kind):
            kinds[str(kind)] = block(requests.kind == kind)
    return {
        "subset": subset_name(list(requests.logits)),
        "threshold": model.manifest.fusion.abstention.threshold(subset_name(list(requests.logits))),
        "id": {
            "n": len(labels),
            "accuracy": float(right.mean()),
            "coverage": float(id_answered.mean()),
            "gated": float(gated(id_batch).mean()),
            "flagged": float(id_dropped.mean()),
            "error_among_answered": float(1 - right[id_answered].mean()) if id_answered.any() else None,
        },
        "groups": groups,
        "kinds": kinds,
    }


# --- the report -----------------------------------------------------------------------------
def _ci(value: list[float]) -> str:
    return f"{value[0]:.3f} ({value[1]:.2f}-{value[2]:.2f})"


def _pct(x: float | None) -> str:
    return "none answered" if x is None else f"{100 * x:.1f}%"


def _group_rows(conditions: dict[str, Any], group: str, cells: Callable[[dict[str, Any]], list[Any]]) -> list[list[Any]]:
    """One row per request and near/far OOD of `group` ("tune" or "report"): its name, near or far, then `cells`."""
    return [
        [name, key.split("/")[1], *cells(c["groups"][key])]
        for name, c in conditions.items()
        for key in (f"{group}/near", f"{group}/far")
        if key in c["groups"]
    ]


SERVED = "served"  # the detector the service acts on (common.ood), where the model has one
TARGETS = {"near": 0.85, "far": 0.95}  # issue 27's acceptance: AUROC of the served detector on the report sets
MAX_FAR_ANSWERED = 0.10  # ... at most this share of far-OOD requests answered
MIN_COVERAGE = {"audio+video": 0.95, "video": 0.85}  # ... while in-distribution requests keep this coverage


def markdown(data: dict[str, Any]) -> str:
    conditions: dict[str, Any] = data["conditions"]
    first = next(iter(next(iter(conditions.values()))["groups"].values()))
    detectors = [d["name"] for d in data["detectors"] if d["name"] in first["detectors"]]
    lines = [
        f"# Out-of-distribution inputs to the `{data['model']['name']}` model v{data['model']['version']} (issue 27)",
        "",
        f"OpenOOD v1.5's protocol. In-distribution: the AV-digits test split ({data['id']['n']} pairs: the held-out speaker "
        "`theo`'s spoken digits with unseen MNIST digits). OOD: the sets below, built by `benchmarks/ood/sets.py` from what this "
        "machine has, near and far per modality, and pairs (both modalities OOD; one OOD beside an in-distribution other). Each "
        "file is decoded by the service's own decode functions under its default limits, run through the model's ONNX graphs "
        "(ONNX Runtime, CPU) and answered request by request as the service answers it (common.answer.decide: a modality "
        "judged out of distribution is left out of the fusion, the rest fused by the manifest's rule "
        f"`{data['model']['fusion']}`), so `answered` is what a client would get back with `abstained: false`.",
        "",
        "**Nothing was chosen on the report sets**: the detectors' thresholds and the abstention thresholds are the "
        "manifest's, fitted on the validation split at export; the served detector and its k were chosen on the tune sets "
        "and validation (benchmarks/results/ood_features.md). The tune sets share no kind with the report sets; their "
        "figures are listed last, apart.",
        "",
        f"AUROC and FPR at 95% TPR treat in-distribution as positive; intervals are 95% percentile bootstraps "
        f"({data['resamples']} draws, in-distribution and OOD items resampled separately, seed {data['seed']}).",
        "",
    ]
    if SERVED in detectors:
        lines += ["## Against issue 27's acceptance (report sets)", ""]
        rows: list[list[Any]] = []
        for name, c in conditions.items():
            for distance in ("near", "far"):
                b = c["groups"].get(f"report/{distance}")
                if b is None:
                    continue
                auroc = b["detectors"][SERVED]["auroc"][0]
                answered = b["answered"]
                ok = "meets" if auroc >= TARGETS[distance] else "**misses**"
                cap = (
                    ""
                    if distance == "near" or len(name.split(",")) > 1
                    else ("meets" if answered <= MAX_FAR_ANSWERED else "**misses**")
                )
                rows.append([name, distance, f"{auroc:.3f} (target {TARGETS[distance]:.2f}): {ok}", _pct(answered), cap])
        lines += [
            markdown_table(
                ["request", "OOD", f"AUROC of `{SERVED}`", "answered", f"far answered <= {MAX_FAR_ANSWERED:.0%}"], rows
            ),
            "",
        ]
        cover = []
        for name, key in (("video", "video"), ("audio OOD, video ID", "audio+video"), ("audio", "audio")):
            c = conditions[name]["id"]
            target = MIN_COVERAGE.get(key)
            verdict = "" if target is None else ("meets" if c["coverage"] >= target else "**misses**")
            cover.append(
                [key, _pct(c["coverage"]), _pct(c["error_among_answered"]), "-" if target is None else f"{target:.0%}", verdict]
            )
        lines += [
            "In distribution (the test split), at the same thresholds:",
            "",
            markdown_table(["sent", "answered", "error among answered", "target", ""], cover),
            "",
            "A one-OOD pair is answered from its in-distribution modality when the OOD one is flagged: that answer is "
            "right to give, so those rows have no cap; `flagged` below says how often the OOD modality was left out.",
            "",
        ]
    c = data["clean_speech"]
    lines += [
        "## Clean recordings of the held-out speaker",
        "",
        f"`{c['speaker']}`'s {c['n']} FSDD recordings as they are (no noise added, unlike every training and test clip), "
        "each sent alone. In distribution by what they say: every flag is a false alarm.",
        "",
        markdown_table(
            ["sent", "n", "accuracy", "flagged OOD", "answered", "error among answered"],
            [
                [
                    "audio, clean",
                    c["n"],
                    f"{c['accuracy']:.3f}",
                    _pct(c["flagged"]),
                    _pct(c["answered"]),
                    _pct(c["error_among_answered"]),
                ]
            ],
        ),
        "",
    ]
    lines += ["## At the served thresholds: share of OOD requests answered", ""]
    rows = []
    for name, c in conditions.items():
        g = c["groups"]
        near, far = g.get("report/near"), g.get("report/far")
        rows.append(
            [
                name,
                f"{c['threshold']:.3f}",
                _pct(c["id"]["coverage"]),
                _pct(c["id"]["error_among_answered"]),
                _pct(c["id"]["flagged"]),
                *(x for b in (near, far) for x in ((b["n"], _pct(b["answered"]), _pct(b["flagged"])) if b else (0, "-", "-"))),
            ]
        )
    header = ["request", "threshold", "ID answered", "ID error among answered", "ID flagged", "near n", "near answered"]
    lines += [markdown_table([*header, "near flagged", "far n", "far answered", "far flagged"], rows), ""]
    lines += [
        "`answered`: the share the service answers with `abstained: false`. `flagged`: the share whose OOD modality (both, "
        "for a both-OOD pair; the one named otherwise) the detector judged out of distribution, so left out of the fusion; "
        "for in-distribution requests, the false alarms. `threshold`: the confidence threshold of the full set sent (a pair "
        "whose one modality is flagged is held to the other's own). A threshold of 1.000 never answers: the manifest sets "
        "it where no threshold met its target risk on validation.",
        "",
    ]
    for metric, title in (("auroc", "AUROC (higher is better)"), ("fpr95", "FPR at 95% TPR (lower is better)")):
        lines += [f"## {title}, report sets", ""]

        def cells(b: dict[str, Any], metric: str = metric) -> list[Any]:
            return [b["n"], *(_ci(b["detectors"][d][metric]) for d in detectors if d in b["detectors"])]

        rows = _group_rows(conditions, "report", cells)
        lines += [markdown_table(["request", "OOD", "n", *detectors], rows), ""]
    lines += ["## Per kind, report sets: AUROC and share answered", ""]
    kinds = {s["kind"]: s for s in data["sets"]}
    rows = []
    for name, c in conditions.items():
        for kind, b in c["kinds"].items():
            if kinds[kind]["group"] == "report":
                rows.append(
                    [
                        name,
                        kind,
                        kinds[kind]["distance"],
                        b["n"],
                        _pct(b["answered"]),
                        *(f"{b['detectors'][d]['auroc'][0]:.3f}" for d in detectors),
                    ]
                )
    lines += [markdown_table(["request", "kind", "OOD", "n", "answered", *detectors], rows), ""]
    lines += ["## Tune sets (for later choices; not a result): AUROC", ""]
    rows = _group_rows(
        conditions, "tune", lambda b: [b["n"], _pct(b["answered"]), *(f"{b['detectors'][d]['auroc'][0]:.3f}" for d in detectors)]
    )
    lines += [markdown_table(["request", "OOD", "n", "answered", *detectors], rows), ""]
    lines += ["## The sets", ""]
    rows = [[s["kind"], s["modality"], s["group"], s["distance"], s["n"], s["about"]] for s in data["sets"]]
    lines += [markdown_table(["kind", "modality", "group", "OOD", "n", "what"], rows), ""]
    lines += [
        "Audio is written as 16-bit wav at 16 kHz, video as MPEG-4 mp4 (8 frames at 8 fps, 64x64, unless the row says "
        "otherwise); glyph-like video is drawn the way AV-digits draws its digits (MNIST's 28x28 frame, 2x, drifting on "
        "black). espeak-ng speaks in voices drawn as the training split's synthetic voices are, so only the words differ from "
        "what the model heard. Pairs: each OOD item beside a random test-split item of the other modality; both-OOD pairs "
        "join items of the same group and distance at random.",
        "",
        "## The detectors",
        "",
        markdown_table(
            ["detector", "score (higher = more in-distribution)"], [[d["name"], d["about"]] for d in data["detectors"]]
        ),
        "",
        "Feature detectors (Mahalanobis and kNN on penultimate features) need the graphs to export those features: later.",
        "",
    ]
    refused = {m: r for m, r in data["refused"].items() if r}
    lines.append(
        "Every item was accepted by the decoders."
        if not refused
        else "Refused by the service (left out of the figures): "
        + "; ".join(f"{m}: {len(r)} ({', '.join(sorted(r)[:5])})" for m, r in refused.items())
    )
    secs = data["seconds"]
    lines += [
        "",
        f"Ran in {secs['total']:.0f} s ({secs['sets']:.0f} s building or finding the sets, {secs['decode_and_run']:.0f} s "
        f"decoding and running, {secs['metrics']:.0f} s for the metrics) on {data['machine_cpus']} CPUs.",
    ]
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None, results: Path | None = None, write_results: Callable[..., Any] = write
) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL, help="a version folder (default: the newest of models/default)")
    parser.add_argument("--seed", type=int, default=0, help="of the sets, the pairing and the bootstrap")
    parser.add_argument("--resamples", type=int, default=metrics.RESAMPLES, help="bootstrap draws per interval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        items = sets.read_items(sets.cached(args.seed))
        id_csv = avdigits.cached(0)
    except (sets.MissingToolError, avdigits.MissingSharedDataError) as exc:
        raise SystemExit(f"cannot build the benchmark's data: {exc}") from exc
    built = time.perf_counter()
    model = Model(args.model)
    audio_paths, video_paths, labels = id_split(id_csv)
    id_decoded = {"audio": model.run("audio", audio_paths), "video": model.run("video", video_paths)}
    if any(d.refused for d in id_decoded.values()):
        raise SystemExit(f"the service refuses in-distribution items: {[d.refused for d in id_decoded.values()]}")
    id_logits = {m: d.logits for m, d in id_decoded.items()}
    decoded = {m: model.run(m, [it.path for it in items if it.modality == m]) for m in ("audio", "video")}
    ran = time.perf_counter()
    log.info("decoded and ran %d in-distribution pairs and %d OOD items in %.0f s", len(labels), len(items), ran - built)

    requests = ood_requests(items, decoded, id_logits, args.seed)
    id_batches = {
        "audio": serve_rows(model, {"audio": id_logits["audio"]}),
        "video": serve_rows(model, {"video": id_logits["video"]}),
    }
    id_batches["pair"] = serve_rows(model, id_logits)
    conditions = {}
    for name, req in requests.items():
        log.info("scoring %s", name)
        id_batch = id_batches[name] if name in ("audio", "video") else id_batches["pair"]
        conditions[name] = {"about": CONDITIONS[name], **evaluate(model, id_batch, labels, req, args.seed, args.resamples)}
    clean = clean_speech(model, avdigits.SPEAKER_TEST)
    counts = {k: sum(1 for it in items if it.kind == k) for k in dict.fromkeys(it.kind for it in items)}
    by_name = {k.name: k for k in sets.KINDS}
    done = time.perf_counter()
    data: dict[str, Any] = {
        "model": {
            "dir": str(args.model),
            "name": model.manifest.name,
            "version": model.manifest.version,
            "fusion": model.manifest.fusion.rule,
        },
        "seed": args.seed,
        "resamples": args.resamples,
        "id": {"source": "AV-digits test split", "manifest": str(id_csv), "n": len(labels)},
        "sets": [
            {
                "kind": k,
                "modality": by_name[k].modality,
                "group": by_name[k].group,
                "distance": by_name[k].distance,
                "n": n,
                "about": by_name[k].about,
            }
            for k, n in counts.items()
        ],
        "detectors": [{"name": d.name, "about": d.about} for d in DETECTORS],
        "refused": {m: d.refused for m, d in decoded.items()},
        "conditions": conditions,
        "clean_speech": {k: v for k, v in clean.items() if k != "per_clip"},
        "machine_cpus": os.cpu_count(),
        "seconds": {"total": done - started, "sets": built - started, "decode_and_run": ran - built, "metrics": done - ran},
    }
    paths = write_results("ood", data, markdown(data), *([results] if results else []))
    log.info("wrote %s", ", ".join(map(str, paths)))
    return data


if __name__ == "__main__":
    main()
