"""Typed configs. A checkpoint carries both as plain dicts, so it rebuilds itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from common.modalities import KINDS, kind

# alpha over unit-norm directions: after N folds of one direction its gain is alpha / (alpha + N), and a
# run folds ~10^3 batch means, so this spans a hard projection (1) to a mild one (1000).
OWM_ALPHA_GRID = (1.0, 10.0, 100.0, 1000.0)
METHODS = ("mla", "joint", "unimodal")
KEEPS = ("best", "last")  # TrainConfig.keep: which epoch a run's checkpoint.pt holds
ENCODERS = ("small", "resnet18")


@dataclass
class ModelConfig:
    encoder: str = "small"  # "small" (minutes on 2 CPU cores) or "resnet18" (the paper's CREMA-D setting)
    labels: list[str] = field(default_factory=list)  # class names; the head has len(labels) outputs
    modalities: list[str] = field(default_factory=list)  # encoders to build: kinds' names (common.modalities)
    shared_head: bool = True  # one linear head for every modality (mla, joint); False: one per modality
    # per modality, its kind's settings (common.modalities: sizes, rates, normalisation); a key not given
    # takes the kind's default for the encoder size
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from {', '.join(ENCODERS)}")
        if len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ValueError(f"modalities must be distinct and at least one, got {self.modalities}")
        extra = set(self.inputs) - set(self.modalities)
        if extra:
            raise ValueError(f"settings for {sorted(extra)}, which the model does not have ({', '.join(self.modalities)})")
        merged = {}
        for m in self.modalities:
            k = kind(m)
            settings = {**k.defaults(self.encoder), **self.inputs.get(m, {})}
            unknown = set(settings) - set(k.defaults(self.encoder))
            if unknown:
                raise ValueError(f"{m}: unknown setting(s) {sorted(unknown)}; it has {', '.join(k.defaults(self.encoder))}")
            k.check(settings)
            merged[m] = settings
        self.inputs = merged

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def settings(self, modality: str) -> dict[str, Any]:
        return self.inputs[modality]

    def spec(self, modality: str) -> Any:
        """What the decoder takes for `modality` (its kind's spec for these settings)."""
        return kind(modality).spec(self.inputs[modality])

    @classmethod
    def for_encoder(
        cls, encoder: str, labels: list[str], inputs: dict[str, dict[str, Any]] | None = None, **overrides: Any
    ) -> ModelConfig:
        """Defaults per encoder size; explicit overrides win (`inputs`: per modality, settings that are not None)."""
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
        base: dict[str, Any] = {"encoder": encoder, "labels": list(labels)}
        base.update({k: v for k, v in overrides.items() if v is not None})
        given = {m: {k: v for k, v in s.items() if v is not None} for m, s in (inputs or {}).items()}
        return cls(**base, inputs={m: s for m, s in given.items() if s})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """From a checkpoint's dict, also one saved before each kind held its own settings (flat fields)."""
        d = dict(d)
        if "inputs" not in d:
            modalities = d["modalities"]
            found = {m: kind(m).legacy_settings(d) for m in modalities}
            d = {k: d[k] for k in ("encoder", "labels", "modalities", "shared_head") if k in d}
            d["inputs"] = {m: s for m, s in found.items() if s is not None}
        return cls(**d)


@dataclass
class TrainConfig:
    method: str = "mla"  # mla | joint | unimodal
    epochs: int = 12  # passes over the training split
    batch_size: int = 64  # per process
    lr: float = 0.05  # peak SGD learning rate, cosine-decayed to lr/50
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # MLA: the projection's alpha in P <- P - kk^T / (alpha + r^T P r) over unit-norm mean features r;
    # None ("auto"): one run per value of OWM_ALPHA_GRID, the best by validation accuracy kept
    owm_alpha: float | None = None
    owm_project: bool = True  # MLA: project the shared head's gradient (off only for ablations)
    # modalities whose kind's training-time augmentation is on (common.modalities: audio's warps and masks its
    # log-mel, training.models.augment); the others have none
    augment: list[str] = field(default_factory=list)
    # keyword arguments of an augmentation named in `augment`, per modality, as {"audio": {"stretch": 0.1}}
    # (`mla train --augment-set audio.stretch=0.1`); what is not named keeps the class's default
    augment_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # outlier exposure (Hendrycks et al. 2019): a `csv:` list of inputs that are none of the labels (a column per
    # modality, no label or split; benchmarks.avdigits.outliers writes one), each step's model output on a batch
    # of them trained towards the uniform distribution with this weight beside the usual loss. 0.5 is the
    # paper's own value, not fitted here.
    outliers: str | None = None
    outlier_weight: float = 0.5
    # which epoch checkpoint.pt keeps: "best", the best validation accuracy by the method's own rule (MLA: the
    # entropy-weighted pair), or "last", the last epoch (no selection: the cosine schedule's end;
    # docs/decisions/2026-12-07-last-epoch.md)
    keep: str = "best"
    seed: int = 0
    workers: int = 1  # DataLoader worker processes
    max_batches: int | None = None  # cap batches per epoch (tests, quick looks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From a run's saved dict, also one saved when each kind's augmentation had a boolean of its own."""
        d = dict(d)
        for k in KINDS.values():
            if k.older_augment_option is not None and k.older_augment_option in d:
                on = d.pop(k.older_augment_option)
                d["augment"] = [*d.get("augment", []), *([k.name] if on else [])]
        return cls(**d)
