"""`--data SPEC`: one parser for every command.

- `demo` or `demo:SEED`: the embedded dataset, generated on first use (see demo.py).
- `csv:PATH`: a manifest with columns label, split and one column per modality, named by its
  kind (audio, video, image, text: common.modalities), as `label,split,audio,image,text`; media
  paths relative to the CSV; an empty cell means that modality is missing for that sample. A
  text cell is a path to a UTF-8 text file, like the others. Other columns are ignored.
- `cremad:ROOT`: the CREMA-D release (AudioWAV/*.wav, VideoFlash/*.flv), split by speaker.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.modalities import KINDS

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("label", "split")
CREMAD_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}


class DataError(Exception):
    """Bad input data: the message names the file and, where there is one, the row."""


@dataclass(frozen=True)
class Sample:
    files: Mapping[str, Path]  # modality -> its file; a modality this sample lacks is absent
    label: int
    split: str
    origin: str  # where the sample came from, for error messages: "manifest.csv row 12"

    def path(self, modality: str) -> Path | None:
        return self.files.get(modality)


@dataclass
class DatasetManifest:
    spec: str
    labels: list[str]
    samples: list[Sample] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)  # the data set's, in the order of its columns

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        rows = [s for s in self.samples if s.split == name]
        if not rows:
            raise DataError(f"{self.spec}: the {name!r} split is empty")
        return rows


def parse_spec(spec: str) -> DatasetManifest:
    kind, _, arg = spec.partition(":")
    if kind == "demo":
        from training.data.demo import ensure_demo

        try:
            seed = int(arg) if arg else 0
        except ValueError:
            raise DataError(f"bad data spec {spec!r}: demo takes an integer seed, as in demo:7") from None
        return read_csv(ensure_demo(seed), spec=spec)
    if kind == "csv" and arg:
        return read_csv(Path(arg), spec=spec)
    if kind == "cremad" and arg:
        return read_cremad(Path(arg), spec=spec)
    raise DataError(f"bad data spec {spec!r}: use demo, demo:SEED, csv:PATH or cremad:ROOT")


def _media(base: Path, cell: str, origin: str, column: str) -> Path | None:
    cell = cell.strip()
    if not cell:
        return None
    path = (base / cell).resolve()
    if not path.is_file():
        raise DataError(f"{origin}: {column} file {cell!r} does not exist (looked for {path})")
    return path


def read_csv(path: Path, spec: str | None = None) -> DatasetManifest:
    spec = spec or f"csv:{path}"
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        modalities = [c for c in columns if c in KINDS]
        if missing or not modalities:
            need = ", ".join(REQUIRED_COLUMNS) + " and one column per modality (" + ", ".join(KINDS) + ")"
            raise DataError(f"{path}: missing column(s) {', '.join(missing) or 'naming a modality'}; a manifest needs {need}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path}: the manifest has no rows")
    base = path.parent
    # Classes come from the training split: a label seen only in val/test can't be learnt.
    labels = sorted({r["label"].strip() for r in rows if r["split"].strip() == "train"})
    index = {label: i for i, label in enumerate(labels)}
    samples = []
    for n, r in enumerate(rows, start=2):  # row 1 is the header
        origin = f"{path.name} row {n}"
        split, label = r["split"].strip(), r["label"].strip()
        if split not in SPLITS:
            raise DataError(f"{origin}: split {split!r} is not one of {', '.join(SPLITS)}")
        if label not in index:
            raise DataError(f"{origin}: label {label!r} does not occur in the train split (labels: {', '.join(labels)})")
        files = {m: p for m in modalities if (p := _media(base, r[m] or "", origin, m)) is not None}
        if not files:
            raise DataError(f"{origin}: no modality is given ({', '.join(modalities)} are all empty)")
        samples.append(Sample(files, index[label], split, origin))
    manifest = DatasetManifest(spec, labels, samples, modalities)
    for s in ("train", "val"):
        manifest.split(s)  # raises on an empty split
    return manifest


def read_outliers(spec: str) -> list[Sample]:
    """`csv:PATH` of auxiliary outliers for outlier exposure: one column per modality, named by its kind, a
    path relative to the CSV per cell (an empty cell: that modality is absent); no label, no split (other
    columns are ignored). Each becomes a training-split Sample with label -1."""
    kind, _, arg = spec.partition(":")
    if kind != "csv" or not arg:
        raise DataError(f"bad outliers spec {spec!r}: use csv:PATH")
    path = Path(arg)
    if not path.is_file():
        raise DataError(f"outliers {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        modalities = [c for c in reader.fieldnames or [] if c in KINDS]
        if not modalities:
            raise DataError(f"{path}: no column naming a modality ({', '.join(KINDS)})")
        rows = list(reader)
    samples = []
    for n, r in enumerate(rows, start=2):
        origin = f"{path.name} row {n}"
        files = {m: p for m in modalities if (p := _media(path.parent, r[m] or "", origin, m)) is not None}
        if not files:
            raise DataError(f"{origin}: no modality is given ({', '.join(modalities)} are all empty)")
        samples.append(Sample(files, -1, "train", origin))
    if not samples:
        raise DataError(f"{path}: no outliers listed")
    return samples


def outliers_for(spec: str, modalities: Sequence[str]) -> list[Sample]:
    """read_outliers, each sample keeping only the files of `modalities` (a sample with none of them dropped); a list
    that gives none of them is refused."""
    kept = [
        replace(s, files={m: p for m, p in s.files.items() if m in modalities})
        for s in read_outliers(spec)
        if set(s.files) & set(modalities)
    ]
    if not kept:
        raise DataError(f"{spec} gives none of this model's modalities ({', '.join(modalities)})")
    return kept


def read_cremad(
    root: Path, spec: str | None = None, seed: int = 0, fractions: tuple[float, float] = (0.8, 0.1)
) -> DatasetManifest:
    """CREMA-D: `1001_DFA_ANG_XX` = speaker, sentence, emotion, level; speakers split 80/10/10."""
    spec = spec or f"cremad:{root}"
    audio_dir, video_dir = root / "AudioWAV", root / "VideoFlash"
    if not audio_dir.is_dir() and not video_dir.is_dir():
        raise DataError(f"{root}: expected the CREMA-D folders AudioWAV/ and VideoFlash/")
    clips: dict[str, dict[str, Path]] = {}
    for folder, modality, ext in ((audio_dir, "audio", ".wav"), (video_dir, "video", ".flv")):
        for f in sorted(folder.glob(f"*{ext}")) if folder.is_dir() else []:
            clips.setdefault(f.stem, {})[modality] = f.resolve()
    if not clips:
        raise DataError(f"{root}: no .wav in AudioWAV/ and no .flv in VideoFlash/")
    labels = sorted(CREMAD_EMOTIONS)
    speakers = sorted({stem.split("_")[0] for stem in clips})
    if len(speakers) < 3:
        raise DataError(f"{root}: {len(speakers)} speaker(s); a speaker-disjoint train/val/test split needs 3 or more")
    random.Random(seed).shuffle(speakers)
    n_train = max(1, round(fractions[0] * len(speakers)))
    n_val = max(1, round(fractions[1] * len(speakers)))
    n_train = min(n_train, len(speakers) - 2)
    split_of = {s: "train" for s in speakers[:n_train]}
    split_of.update({s: "val" for s in speakers[n_train : n_train + n_val]})
    split_of.update({s: "test" for s in speakers[n_train + n_val :]})
    samples = []
    for stem, media in sorted(clips.items()):
        parts = stem.split("_")
        origin = str(media.get("audio") or media.get("video"))
        if len(parts) != 4 or not parts[0].isdigit():
            raise DataError(f"{origin}: name {stem!r} is not SPEAKER_SENTENCE_EMOTION_LEVEL, as in 1001_DFA_ANG_XX")
        if parts[2] not in CREMAD_EMOTIONS:
            raise DataError(f"{origin}: unknown emotion {parts[2]!r}; CREMA-D has {', '.join(labels)}")
        samples.append(Sample(media, labels.index(parts[2]), split_of[parts[0]], origin))
    return DatasetManifest(spec, labels, samples, ["audio", "video"])
