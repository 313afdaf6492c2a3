"""The modality kinds, one module each (common.modalities.base says what a kind owns).

A new kind is its module plus one line in KIND_MODULES; nothing else names a modality.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.media_types import Limits
from common.modalities.base import EntryBase, Kind, Settings, Source, TensorSpec

KIND_MODULES = (
    "common.modalities.audio",
    "common.modalities.video",
    "common.modalities.image",
    "common.modalities.text",
)

KINDS: dict[str, Kind] = {}


def register(module: str) -> Kind:
    """Add the kind that `module` defines (as `KIND`). Only before common.manifest is imported: a manifest's
    entries are checked against the kinds registered when its schema was built."""
    new: Kind = importlib.import_module(module).KIND
    if new.name in KINDS:
        raise ValueError(f"two modality kinds are called {new.name!r}")
    KINDS[new.name] = new
    return new


for _module in KIND_MODULES:
    register(_module)

__all__ = [
    "KINDS",
    "EntryBase",
    "Kind",
    "Settings",
    "Source",
    "TensorSpec",
    "borrow",
    "borrowing",
    "decode",
    "kind",
    "names",
    "register",
    "spec_of",
]


def names() -> tuple[str, ...]:
    """Every kind's name, in registry order."""
    return tuple(KINDS)


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; the kinds are {', '.join(KINDS)}") from None


def borrowing() -> dict[str, tuple[str, str]]:
    """The request flags that take one kind from another kind's file: {flag: (kind taken, kind whose file gives it)}."""
    return {k.borrow[1]: (k.name, k.borrow[0]) for k in KINDS.values() if k.borrow is not None}


def _a(name: str) -> str:
    return ("an " if name[:1] in "aeiou" else "a ") + name


def borrow(files: dict[str, Any], asked: Mapping[str, bool], others: Collection[str] = ()) -> None:
    """Fill `files` (modality -> its upload) with what the flags in `asked` take from another kind's file, in place.

    `others`: modalities sent some other way (decoded tensors), which a borrowed one may not duplicate either.
    Raises ValueError, with a message for the client, for a flag whose source is missing or whose target was sent."""
    for flag, (target, source) in borrowing().items():
        if not asked.get(flag):
            continue
        if source not in files:
            raise ValueError(f"{flag} needs {_a(source)} file")
        if target in files or target in others:
            raise ValueError(f"send {_a(target)} file or {flag}=true, not both")
        files[target] = files[source]


def spec_of(entry: EntryBase) -> Any:
    """What the decoder takes for an exported modality: its kind's spec, from the settings its manifest entry holds."""
    k = kind(entry.kind)
    return k.spec(k.settings_from_entry(entry))


def decode(name: str, source: Source | Path, spec: Any, limits: Limits, strict: bool = True) -> np.ndarray:
    """Decode `source` as modality `name`: what a decode worker runs (a top-level function, so it pickles by name).

    `strict`: only the containers the kind accepts from clients (its `formats`); training data passes False."""
    k = kind(name)
    return k.decode(source, spec, limits, k.formats if strict else None)
