"""manifest.json: the only contract between training and the service.

Pure pydantic (no torch, no onnx), so the service reads it with the same model that wrote it.

Schema history: v6 (current) added an optional linear probe beside a modality's kNN detector (`ood.<m>.probe`,
detector `knn+probe`); a v5 manifest has none and loads as v6 unchanged. v5 added each modality's `features` output
(the encoder's penultimate features, a second output of its graph) and the `ood` section (per modality, the out-of-
distribution detector on those features: common.ood); a v2, v3 or v4 manifest has neither and loads as v5 with every
modality's `in_distribution` unknown (null), serving what it served. v4 added the calibration's `confidence_maps` (the
top-label map per set of modalities) and the fusion section's `mixture_share` (a product rule's blend with the equal-
weight mixture, 0 when absent); a v3 manifest has neither and loads as v4 unchanged, serving what it served. v3 added
the fusion section's `typicality` (the gate of the `gated_loglinear` rule); a v2 manifest has none and loads unchanged
too. v2 added the fusion section's calibration and abstention; a v1 manifest is migrated on load as an uncalibrated
model (every temperature 1, never abstains) with a warning, so older exports keep serving exactly as before.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from common.fusion import (
    GATED_RULES,
    PRODUCT_RULES,
    RULES,
    TEMPERATURE_BOUNDS,
    WEIGHTED_RULES,
    ConfidenceMap,
    FusionParams,
    Typicality,
    subset_name,
)
from common.hashing import sha256_file
from common.modalities import EntryBase, kind
from common.ood import Detector, LinearProbe, NearestNeighbours

log = logging.getLogger(__name__)
SCHEMA_VERSION = 7
MANIFEST_NAME = "manifest.json"


class ManifestError(Exception):
    """A manifest that is missing or fails its schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _modality_entry(raw: Any) -> Any:
    """A modality's entry validated by its kind's own model (common.modalities), whichever kinds are registered."""
    if isinstance(raw, EntryBase):
        return raw
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise ValueError("a modality entry is an object with a string `kind`")
    return kind(raw["kind"]).entry.model_validate(raw)


# Each kind's entry lives in its module; serialised as the kind's model, not as the base.
ModalityEntry = Annotated[SerializeAsAny[EntryBase], BeforeValidator(_modality_entry)]


Rule = Literal["entropy", "energy", "equal", "fixed", "batch_entropy", "loglinear", "gated_loglinear", "logit_sum"]
Positive = Annotated[float, Field(gt=0)]
# Temperatures are fitted within common.fusion.TEMPERATURE_BOUNDS and a manifest outside them is refused.
Temperature = Annotated[float, Field(ge=TEMPERATURE_BOUNDS[0], le=TEMPERATURE_BOUNDS[1])]
Probability = Annotated[float, Field(ge=0, le=1)]


class ConfidenceMapEntry(_Strict):
    """c' = sigmoid(slope * logit(c) + offset) on the top label's probability from `lowest` up (common.fusion.ConfidenceMap)."""

    slope: Positive
    offset: float = Field(allow_inf_nan=False)
    lowest: float = Field(ge=0, lt=1)  # the lowest top confidence it was fitted on; below it, straight to uniform

    def confidence_map(self) -> ConfidenceMap:
        return ConfidenceMap(self.slope, self.offset, self.lowest)


class TemperatureChoiceEntry(_Strict):
    """Whether a modality's temperature is fitted, decided leaving one speaker out (training.loso); absent before v7."""

    kept: bool  # false: T_m is 1
    nll_change: dict[str, tuple[float, float, float]]  # per set with the modality: mean, low, high of NLL without - with
    groups: int = Field(ge=2)  # speakers (or other groups) left out in turn
    resamples: int = Field(ge=1)  # bootstrap draws per interval


class Calibration(_Strict):
    """Temperatures and confidence maps fitted on the validation split (common/fusion.py says where each one acts)."""

    temperatures: dict[str, Temperature]  # per modality: p_m = softmax(logits_m / T_m)
    fused_temperatures: dict[str, Temperature] = {}  # per set of present modalities ("audio+video"): q = softmax(log q / T_S)
    confidence_maps: dict[str, ConfidenceMapEntry] = {}  # per set of modalities sent ("audio"), where validation kept one
    temperature_choice: dict[str, TemperatureChoiceEntry] = {}  # per modality, where the export had held-out speakers
    fitted_on: str  # which data: "val split of csv:..., n=500"
    val: dict[str, dict[str, float]] = {}  # figures on validation per subset, e.g. {"audio+video": {"ece": .., "ece_raw": ..}}

    @model_validator(mode="after")
    def _dropped_means_one(self) -> Calibration:
        wrong = sorted(m for m, c in self.temperature_choice.items() if not c.kept and self.temperatures.get(m, 1.0) != 1.0)
        if wrong:
            raise ValueError(f"temperature_choice drops the temperature of {', '.join(wrong)}, yet temperatures gives it one")
        return self


class Abstention(_Strict):
    """Answer with abstained=false only when the calibrated confidence reaches the threshold of the set of modalities sent."""

    min_confidence: dict[str, Probability]  # per set of modalities sent ("audio", "audio+video"); absent: 0, never abstain
    target_risk: Probability  # the error rate allowed among answers
    confidence: Probability = 0.9  # how sure: every threshold tested (val[set]["tests"] of them) has its bound hold at once
    val: dict[str, dict[str, float]] = {}  # per set: n, coverage, risk, its bound (one test's level) and tests made

    def threshold(self, subset: str) -> float:
        return float(self.min_confidence.get(subset, 0.0))


class Conformal(_Strict):
    """Split conformal prediction sets per set of modalities (training.calibrate.conformal_quantile): an answer's set is
    the labels whose calibrated probability is at least 1 - qhat of the set it was fused from (its top label at least)."""

    alpha: Probability  # the set misses the true label at most this often, on inputs like those it was fitted on
    qhat: dict[str, Probability]  # per set of modalities fused ("audio", "audio+video")
    val: dict[str, dict[str, float]] = {}  # per set: n (answers fitted on), mean_set_size

    def prediction_set(self, subset: str, probs: np.ndarray) -> np.ndarray | None:
        """[classes] bool: the labels in the set for one answer's probabilities; None where the set has no quantile."""
        if subset not in self.qhat:
            return None
        inside = np.asarray(probs) >= 1.0 - self.qhat[subset]
        inside[int(np.argmax(probs))] = True  # never empty: the top label is the answer
        return inside


class TypicalityEntry(_Strict):
    """One modality's logit statistics on validation and its gate (common.fusion.Typicality says how they act)."""

    means: list[list[float]]  # [classes][classes]: the mean logit vector of each class
    precision: list[list[float]]  # [classes][classes]: the inverse of the classes' shared logit covariance
    threshold: Positive  # squared distances up to this keep the full weight
    decay: Positive  # beyond it the weight falls by e every decay * threshold
    val_quantiles: dict[str, float] = {}  # the distance's quantiles on validation ("0.5", "0.99"), for reference

    @model_validator(mode="after")
    def _square(self) -> TypicalityEntry:
        k = len(self.means)
        if k == 0 or any(len(r) != k for r in self.means) or len(self.precision) != k or any(len(r) != k for r in self.precision):
            raise ValueError(f"means and precision must both be [classes][classes], got {k} rows of means")
        if not (np.isfinite(self.means).all() and np.isfinite(self.precision).all()):
            raise ValueError("means and precision must be finite")
        return self

    def typicality(self) -> Typicality:
        return Typicality(np.asarray(self.means, np.float64), np.asarray(self.precision, np.float64), self.threshold, self.decay)


class Fusion(_Strict):
    rule: Rule = "entropy"  # how the modalities present are weighted and combined (common/fusion.py)
    weights: dict[str, float] | None = None  # constant weights, for the rules that have them (fixed, the products)
    typicality: dict[str, TypicalityEntry] | None = None  # per modality, for the gated rules
    # a product rule's geometric blend with the equal-weight mixture: log q = (1 - s) log product + s log mixture
    mixture_share: float = Field(default=0.0, ge=0, lt=1)
    calibration: Calibration
    abstention: Abstention
    conformal: Conformal | None = None  # prediction sets (v5 on, where the export fitted them)

    @model_validator(mode="after")
    def _weights_where_needed(self) -> Fusion:
        if self.rule not in RULES:
            raise ValueError(f"unknown fusion rule {self.rule!r}")
        if self.rule in WEIGHTED_RULES and not self.weights:
            raise ValueError(f"the {self.rule} rule needs its weights")
        if self.rule in GATED_RULES and not self.typicality:
            raise ValueError(f"the {self.rule} rule needs a typicality per modality")
        if self.mixture_share and self.rule not in PRODUCT_RULES:
            raise ValueError(f"mixture_share blends a product rule with the mixture; the {self.rule} rule has none")
        return self

    def params(self) -> FusionParams:
        gates = {m: t.typicality() for m, t in self.typicality.items()} if self.typicality else None
        maps = {k: c.confidence_map() for k, c in self.calibration.confidence_maps.items()} or None
        cal = self.calibration
        return FusionParams(self.rule, self.weights, cal.temperatures, cal.fused_temperatures, gates, maps, self.mixture_share)


class ProbeEntry(_Strict):
    """The linear probe beside a modality's kNN (common.ood.LinearProbe), and the scales that join the two scores."""

    weights: list[float] = Field(min_length=1)  # [feature dims], on L2-normalised features
    bias: float
    knn_scale: tuple[float, float]  # the kNN score's mean and sd on the validation split
    probe_scale: tuple[float, float]  # the probe's log-odds' mean and sd on the validation split
    fitted_on: str  # which data: the inliers, the outliers, how C was chosen

    @model_validator(mode="after")
    def _finite(self) -> ProbeEntry:
        values = [*self.weights, self.bias, *self.knn_scale, *self.probe_scale]
        if not all(np.isfinite(values)):
            raise ValueError("the probe holds a value that is not finite")
        if min(self.knn_scale[1], self.probe_scale[1]) <= 0:
            raise ValueError("a scale's sd must be positive")
        return self


class OODEntry(_Strict):
    """One modality's out-of-distribution detector (common.ood): kNN on its graph's normalised features, and from
    schema v6 optionally a linear probe beside it (`knn+probe`: the lower of the two standardised scores)."""

    detector: Literal["knn", "knn+probe"] = "knn"
    bank: str  # .npy [n, feature dims] float32: the training split's L2-normalised features, relative to the manifest
    bank_sha256: str
    k: int = Field(ge=1)  # the kNN score is minus the distance to the k-th nearest bank row
    # In distribution: score >= this. A kNN score lies in [-2, 0] (distances of unit vectors); knn+probe's is in
    # validation standard deviations, any finite value.
    threshold: float
    tpr: Probability  # the share of inputs the threshold keeps: a new speaker's (with folds) or validation's
    fitted_on: str  # which data: the bank's split and the threshold's
    val: dict[str, float] = {}  # the validation scores: n, mean, std, quantiles
    probe: ProbeEntry | None = None  # knn+probe only

    @model_validator(mode="after")
    def _detector_matches(self) -> OODEntry:
        if (self.detector == "knn+probe") != (self.probe is not None):
            raise ValueError(f"detector {self.detector!r} {'needs' if self.probe is None else 'takes no'} probe")
        if not np.isfinite(self.threshold):
            raise ValueError("the threshold must be finite")
        if self.detector == "knn" and not -2.0 <= self.threshold <= 0.0:
            raise ValueError(f"a kNN threshold lies in [-2, 0] (minus a distance of unit vectors), got {self.threshold}")
        return self


class Parity(_Strict):
    n: int
    max_abs_logit_diff: float
    max_rel_logit_diff: float | None = None  # relative to max(1, max |logit|); absent in exports before it
    max_rel_feature_diff: float | None = None  # the features output's, relative to max(1, max |feature|) (v5 on)
    max_prob_diff: float
    top1_agreement: float
    tolerance: dict[str, float]


class ExportInfo(_Strict):
    opset: int
    precision: Literal["fp32", "fp16"]
    torch_version: str
    onnx_version: str
    parity: dict[str, Parity]


class TrainingInfo(_Strict):
    method: str
    encoder: str
    data: str
    val_accuracy: dict[str, float]
    train_config: dict[str, Any] = {}  # the settings it was trained with (epochs, seed, lr, the alpha MLA kept, ...)
    source_checkpoint: str
    source_checkpoint_sha256: str


class Manifest(_Strict):
    schema_version: Literal[7] = 7  # SCHEMA_VERSION
    name: str
    version: str
    created: datetime
    labels: list[str]
    modalities: dict[str, ModalityEntry]
    fusion: Fusion
    ood: dict[str, OODEntry] | None = None  # per modality; absent: no detector, `in_distribution` unknown (v4 and before)
    training: TrainingInfo
    export: ExportInfo

    @model_validator(mode="after")
    def _keys_are_modalities(self) -> Manifest:
        """Every per-modality key names one of the modalities, and a rule with weights has one for each of them: a
        manifest that would load and then fail every request is refused here, with the key that is wrong."""
        names = set(self.modalities)
        fusion = self.fusion
        if fusion.rule in WEIGHTED_RULES and not names <= set(fusion.weights or {}):
            missing = sorted(names - set(fusion.weights or {}))
            raise ValueError(
                f"fusion.weights has no weight for {', '.join(missing)}: the {fusion.rule} rule needs one per modality"
            )
        for section, keys in (
            ("fusion.weights", fusion.weights or {}),
            ("fusion.calibration.temperatures", fusion.calibration.temperatures),
            ("fusion.calibration.temperature_choice", fusion.calibration.temperature_choice),
            ("ood", self.ood or {}),
        ):
            unknown = sorted(set(keys) - names)
            if unknown:
                raise ValueError(
                    f"{section} names {', '.join(unknown)}, not a modality of this model ({', '.join(sorted(names))})"
                )
        if self.ood is not None:
            missing = sorted(m for m in names if m not in self.ood or self.modalities[m].features is None)
            if missing:
                raise ValueError(f"ood needs a detector and a features output for every modality; {', '.join(missing)} lacks one")
            for m, entry in self.ood.items():
                features = self.modalities[m].features
                dims = features.shape[-1] if features is not None else None
                if entry.probe is not None and len(entry.probe.weights) != dims:
                    raise ValueError(f"ood.{m}.probe has {len(entry.probe.weights)} weights; the {m} features have {dims} dims")
        return self

    def public(self) -> dict[str, object]:
        """What a client may see: no hashes of source checkpoints, and no paths on the exporting machine's disk (the
        `fitted_on` notes name their data by its last two path parts: `csv:.../avdigits-v2-seed0/manifest.csv`)."""
        shown = self.model_dump(mode="json", include={"name", "version", "created", "labels", "modalities", "fusion", "ood"})
        return cast(dict[str, object], _without_paths(shown))


# An absolute path in a note, of two parts or more: a slash that no name character, dot, tilde or hyphen comes before
# (so `ood/audio.npy` and `3/4` are not), then parts that stop at a space, a quote, a bracket or a separator. A path
# with a space in a folder's name is cut at the space: the part after it is shown.
_PART = r"[^\s/,;:()\[\]{}'\"+|<>]+"
_ABSOLUTE_PATH = re.compile(rf"(?<![\w.~-])/(?:{_PART}/)+{_PART}")


def _shorten(match: re.Match[str]) -> str:
    parts = match.group(0).split("/")[1:]
    return ".../" + "/".join(parts[-2:] if len(parts) > 2 else parts[-1:])


def _without_paths(value: object) -> object:
    """`value` with every absolute path in its strings cut to `.../` and its last two parts (its last, where it has
    only two), at any depth."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(_shorten, value)
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def version_key(name: str) -> tuple[bool, int, str]:
    """How versions order: numbers by value (10 after 9), above any other name, which orders as text."""
    return (name.isdigit(), int(name) if name.isdigit() else 0, name)


def newest_version(model_root: Path) -> Path:
    """The highest version folder (one holding manifest.json) of a model folder, as `mla serve` picks it."""
    versions = [p for p in model_root.iterdir() if (p / "manifest.json").is_file()] if model_root.is_dir() else []
    if not versions:
        raise ManifestError(f"no model version (a folder with manifest.json) in {model_root}")
    return max(versions, key=lambda p: version_key(p.name))


def load_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {model_dir}")
    try:
        raw = json.loads(path.read_bytes())
    except ValueError as exc:
        raise ManifestError(f"{path} is not JSON: {exc}") from exc
    if isinstance(raw, dict) and raw.get("schema_version") == 1:
        raw = migrate_v1(raw)
        log.warning("%s: a schema v1 manifest, served uncalibrated (every temperature 1, never abstains)", path)
    if isinstance(raw, dict) and raw.get("schema_version") in (2, 3, 4, 5, 6):
        raw = {**raw, "schema_version": SCHEMA_VERSION}  # v3 to v7 each only added optional sections
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
        raise ManifestError(f"{path} fails the manifest schema (v{SCHEMA_VERSION}): {problems}") from exc
    for key, entry in manifest.modalities.items():
        if entry.kind != key:
            raise ManifestError(f"{path}: modality {key!r} holds a {entry.kind!r} entry")
    for key, gate in (manifest.fusion.typicality or {}).items():
        if key not in manifest.modalities:
            raise ManifestError(f"{path}: fusion.typicality names {key!r}, which is not one of its modalities")
        if len(gate.means) != len(manifest.labels):
            raise ManifestError(
                f"{path}: fusion.typicality.{key} is for {len(gate.means)} classes, the model has {len(manifest.labels)}"
            )
    names = set(manifest.modalities)
    for key in manifest.fusion.calibration.confidence_maps:
        if not key or not set(key.split("+")) <= names or key != subset_name(key.split("+")):
            raise ManifestError(
                f"{path}: fusion.calibration.confidence_maps names {key!r}, which is not a set of its modalities "
                f"({', '.join(sorted(names))}, joined by '+' in alphabetical order)"
            )
    return manifest


def migrate_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A v1 manifest as the current schema: its entropy rule uncalibrated, with no abstention threshold."""
    fusion = dict(raw.get("fusion") or {})
    fusion.pop("combine", None)
    modalities = list(raw.get("modalities") or {})
    fusion.setdefault("rule", "entropy")
    fusion["calibration"] = {"temperatures": dict.fromkeys(modalities, 1.0), "fitted_on": "none: migrated from schema v1"}
    fusion["abstention"] = {"min_confidence": {}, "target_risk": 1.0}
    return {**raw, "schema_version": SCHEMA_VERSION, "fusion": fusion}


def check_hashes(model_dir: Path, manifest: Manifest) -> list[str]:
    """Every file the manifest names that is missing or differs from its sha256 (empty: all intact)."""
    failures = []
    for modality, entry in manifest.modalities.items():
        files = [(entry.file, entry.sha256), (entry.parity_sample, entry.parity_sample_sha256)]
        if manifest.ood and modality in manifest.ood:
            files.append((manifest.ood[modality].bank, manifest.ood[modality].bank_sha256))
        for rel, expected in files:
            path = model_dir / rel
            if not path.is_file():
                failures.append(f"{rel} ({modality}) is missing")
            elif sha256_file(path) != expected:
                failures.append(
                    f"{rel} ({modality}) does not match its sha256 in the manifest: the file was changed or corrupted"
                )
    return failures


def load_detectors(model_dir: Path, manifest: Manifest) -> dict[str, Detector]:
    """Each modality's out-of-distribution detector with its bank read from disk ({} where the manifest has none).

    The bank must be a float32 [n, dims] array (no pickle) whose dims are the graph's features' and whose rows
    number at least k; anything else raises ManifestError naming the file."""
    out: dict[str, Detector] = {}
    for m, entry in (manifest.ood or {}).items():
        path = model_dir / entry.bank
        try:
            bank = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{path}: not a readable .npy array: {exc}") from exc
        features = manifest.modalities[m].features
        dims = features.shape[-1] if features is not None else None
        if bank.dtype != np.float32 or bank.ndim != 2 or bank.shape[1] != dims:
            raise ManifestError(f"{path}: a {m} bank must be float32 [n, {dims}], got {bank.dtype} {list(bank.shape)}")
        probe = entry.probe
        try:
            out[m] = Detector(
                NearestNeighbours(bank, entry.k),
                entry.threshold,
                LinearProbe(np.asarray(probe.weights, np.float64), probe.bias) if probe else None,
                (probe.knn_scale, probe.probe_scale) if probe else None,
            )
        except ValueError as exc:
            raise ManifestError(f"{path}: {exc}") from exc
    return out


# --- publication: a version never changes under the same number -----------------------------------
PUBLISHED_NAME = "published.json"  # MODEL_DIR/<name>/published.json: version -> sha256 of its manifest.json


class PublishedError(Exception):
    """A version that changed after it was published, or one published twice with different files."""


def manifest_sha256(version_dir: Path) -> str:
    """The sha256 of a version's manifest.json. The manifest holds every other file's sha256, so this one
    hash names the whole version: the graphs, the parity samples and the fusion section."""
    return sha256_file(version_dir / MANIFEST_NAME)


def published(model_root: Path) -> dict[str, str]:
    """version -> manifest sha256, as each was published under `model_root` (MODEL_DIR/<name>); {} if none."""
    path = model_root / PUBLISHED_NAME
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        return {str(v): str(h) for v, h in record["versions"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PublishedError(f"{path} is not a publication record: {exc}") from exc


def publish(version_dir: Path) -> str:
    """Record `version_dir`'s manifest hash in its model's publication record; return the hash.

    Refuses a version already published with other files: a changed model is a new version."""
    root, version, digest = version_dir.parent, version_dir.name, manifest_sha256(version_dir)
    record = published(root)
    if record.get(version, digest) != digest:
        raise PublishedError(f"version {version} of {root.name} was published with other files; write a new version")
    record[version] = digest
    ordered = dict(sorted(record.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0])))
    tmp = root / f".{PUBLISHED_NAME}.tmp"
    tmp.write_text(json.dumps({"versions": ordered}, indent=2) + "\n")
    tmp.replace(root / PUBLISHED_NAME)  # atomic: a reader never sees half a record
    return digest


def check_published(version_dir: Path) -> list[str]:
    """Where `version_dir` differs from what its model's publication record says (empty: as published, or never
    published, as a version built elsewhere and served from its own folder)."""
    try:
        expected = published(version_dir.parent).get(version_dir.name)
    except PublishedError as exc:
        return [str(exc)]
    if expected is None or not (version_dir / MANIFEST_NAME).is_file():
        return []
    if manifest_sha256(version_dir) != expected:
        return [
            f"{MANIFEST_NAME} changed after version {version_dir.name} was published "
            f"(sha256 {expected[:12]}... then): a changed model is a new version"
        ]
    return []
