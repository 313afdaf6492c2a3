"""What a modality kind is: the one interface everything outside the kind modules goes through.

A kind (audio, video, image, text) owns everything that differs between modalities:

- its **settings** (sizes, rates) and their defaults per encoder size (`defaults`), and the frozen
  `spec` the decoders take, built from them;
- its **manifest entry** (`entry`: a pydantic model whose `kind` field names it), what an export
  writes into it (`entry_fields`) and the settings read back from it (`settings_from_entry`);
- its **input tensor** (`input`: name, dtype and shape after the batch axis) and the zeros that
  stand for a missing input in training (`blank`);
- how a **file or form value is decoded and checked** (`decode`: a path or in-memory bytes in, the
  array the graph takes out, or a `common.media_types.MediaError` for the client), and the bounds a
  server applies (`limits`);
- its **encoder** (`encoder_class`: a torch module with `preprocess`, which goes inside the exported
  graph in float32, and `embed`) and its training-time augmentation, named as "module:Class" and
  imported by training alone (training.models.classifier.resolve): the served packages never
  import torch, not even inside a function;
- how a client sends it (`field`, `accept`, `description`): the form field, the page's widget.

The registry (common/modalities/__init__.py) lists the kinds, one line each. A kind's name is
also the modality's name in a model, a manifest, a CSV column and a form field.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from common.media_types import Limits

Settings = dict[str, Any]  # a kind's settings: plain JSON values, stored in checkpoints
Source = str | Path | IO[bytes]  # a file, or an in-memory upload whose `name` is the client's file name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: Literal["float32", "uint8"]
    shape: list[int | str]  # a string names a dynamic axis ("batch")


class EntryBase(_Strict):
    """What every modality's manifest entry holds; a kind's entry adds its own sizes and narrows `kind` to its name."""

    kind: str
    file: str  # ONNX graph, relative to the manifest
    sha256: str
    input: TensorSpec
    output: TensorSpec  # the logits
    features: TensorSpec | None = None  # the encoder's penultimate features, the graph's second output (v5 on)
    parity_sample: str  # .npz with inputs and the torch model's logits on them
    parity_sample_sha256: str


class Kind(ABC):
    """One modality kind. Subclasses are stateless; each module exposes one instance as `KIND`."""

    name: ClassVar[str]
    entry: ClassVar[type[EntryBase]]
    input_name: ClassVar[str]  # the graph's input
    field: ClassVar[Literal["file", "value"]] = "file"  # "value": a form value, or a file holding it (UTF-8 text)
    # its widget on the page: service/static/kinds/<widget>.js ("file": a file chooser, a text box for a value)
    widget: ClassVar[str] = "file"
    accept: ClassVar[str]  # the page's file chooser `accept`, and what the API docs say is taken
    formats: ClassVar[frozenset[str] | None]  # the containers a server accepts (FFmpeg demuxer names); None: not media
    # k of the out-of-distribution detector's nearest-neighbour distance (training.ood): chosen for audio and
    # video on the tune sets and validation by benchmarks/ood/features.py; a kind it has not studied takes 20,
    # the larger of those two (a larger k is the smoother density estimate)
    ood_k: ClassVar[int] = 20
    # A kind that may be taken from another kind's file (the audio track of a video): (that kind, the form flag
    # that asks for it); None: only from its own field.
    borrow: ClassVar[tuple[str, str] | None] = None
    # The boolean a run's training options had for this kind's augmentation before `augment` listed kinds
    # (checkpoints keep it); None: none ever.
    older_augment_option: ClassVar[str | None] = None
    # "module:Class" of the torch encoder (or of a function that builds one), called as (encoder size, settings):
    # `preprocess` then `embed`, features [B, D] of the width every encoder of that size emits
    # (training.models.encoders.feature_width). Named, not imported: the served packages import no torch, even
    # inside a function; a kind outside them may keep its encoder in its own module, torch imported in the builder.
    encoder_class: ClassVar[str]
    # "module:Class" of a torch module applied in training only, between `preprocess` and `embed` (`mla train
    # --augment`); None: the kind has none
    augmentation_class: ClassVar[str | None] = None
    description: ClassVar[str]

    @abstractmethod
    def defaults(self, encoder: str) -> Settings:
        """The settings a model of this encoder size ("small", "resnet18") gets unless told otherwise."""

    def check(self, settings: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Raise ValueError for settings no model could use."""

    @abstractmethod
    def spec(self, settings: Mapping[str, Any]) -> Any:
        """The frozen dataclass the decoder takes (hashable; its fields key the training's decode cache)."""

    @abstractmethod
    def input(self, settings: Mapping[str, Any]) -> tuple[Literal["float32", "uint8"], tuple[int, ...]]:
        """The graph input's dtype and shape after the batch axis."""

    @abstractmethod
    def entry_fields(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The entry's own fields (beyond EntryBase's) for a model with these settings."""

    @abstractmethod
    def settings_from_entry(self, entry: Any) -> Settings:
        """The settings decoding needs, read back from an exported entry (the graph knows the rest)."""

    @abstractmethod
    def decode(self, source: Source, spec: Any, limits: Limits, formats: frozenset[str] | None = None) -> np.ndarray:
        """A file (or upload) to the array the graph takes; MediaError for what cannot be used.

        `formats`: the accepted containers (None: whatever FFmpeg opens, for training data)."""

    @abstractmethod
    def limits(self, server: Any) -> Limits:
        """The bounds a server applies to an upload of this kind (`server`: service.settings.Settings)."""

    def blank(self, spec: Any, settings: Mapping[str, Any]) -> np.ndarray:
        """What a missing input is in a training batch: zeros of the input's shape (masked out anyway)."""
        dtype, shape = self.input(settings)
        return np.zeros(shape, np.dtype(dtype))

    def legacy_settings(self, flat: Mapping[str, Any]) -> Settings | None:
        """Settings from a checkpoint saved before kinds had their own (flat ModelConfig fields); None: none there."""
        return None
