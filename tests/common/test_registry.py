"""A modality is its kind's module: a fifth kind trains, exports and decodes with nothing but its module and one
registry line, and no other code names a modality."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

from common.modalities import KIND_MODULES, kind, names
from tests.conftest import ROOT

# A kind no one ships: a short series of numbers (a sensor's pulse), comma-separated in a text file.
PULSE = """
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from common.media_types import DecodeError, Limits
from common.modalities.base import EntryBase, Kind
from common.modalities.text import read_text


class PulseEntry(EntryBase):
    kind: Literal["pulse"] = "pulse"
    length: int


@dataclass(frozen=True)
class PulseSpec:
    length: int


class Pulse(Kind):
    name = "pulse"
    entry = PulseEntry
    input_name = "values"
    accept = "text/csv"
    description = "numbers, comma-separated"
    formats = None
    encoder_class = "pulse_kind:pulse_encoder"  # called by training only: torch is imported inside it

    def defaults(self, encoder):
        return {"length": 16}

    def spec(self, settings):
        return PulseSpec(int(settings["length"]))

    def input(self, settings):
        return "float32", (int(settings["length"]),)

    def entry_fields(self, settings):
        return {"length": int(settings["length"])}

    def settings_from_entry(self, entry):
        return {"length": entry.length}

    def decode(self, source, spec, limits, formats=None):
        try:
            values = np.array([float(v) for v in read_text(source, limits).split(",")], np.float32)
        except ValueError as exc:
            raise DecodeError(f"not numbers: {exc}") from None
        out = np.zeros(spec.length, np.float32)
        out[: min(len(values), spec.length)] = values[: spec.length]
        return out

    def limits(self, server):
        return Limits(max_bytes=4096)


KIND = Pulse()


def pulse_encoder(encoder, settings):
    # the kind's torch encoder: torch is imported here, when training builds one, so registering the kind loads none
    import torch
    from torch import nn

    from training.models.encoders import feature_width

    class PulseEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dim = feature_width(encoder)
            self.trunk = nn.Sequential(nn.Linear(int(settings["length"]), self.dim), nn.ReLU())

        def preprocess(self, x: torch.Tensor) -> torch.Tensor:
            return x * 0.5

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return self.trunk(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.embed(self.preprocess(x))

    return PulseEncoder()
"""

# Trains a pulse + text model from a csv: manifest, exports it, reads the manifest back and decodes an upload the
# way a decode worker does: nothing outside pulse_kind.py knows the kind but the line that registers it.
SCRIPT = """
import csv, sys
from pathlib import Path
import numpy as np

sys.path.insert(0, sys.argv[1])
import common.modalities
common.modalities.register("pulse_kind")  # the one registry line
assert "torch" not in sys.modules  # registering a kind loads no torch: the service may hold it

from common.manifest import load_manifest
from common.modalities import spec_of
from model_export.repository import export_run
from service.decoding import decode_file
from service.settings import Settings
from training.config import TrainConfig
from training.train import train

work = Path(sys.argv[2])
rng = np.random.default_rng(0)
rows = []
for i in range(60):
    label = i % 3
    pulse = np.zeros(16)
    pulse[label * 5 : label * 5 + 3] = 1.0
    (work / f"{i}.csv").write_text(",".join(f"{v + rng.normal(0, 0.1):.3f}" for v in pulse))
    (work / f"{i}.txt").write_text(["zero", "one", "two"][label])
    split = "train" if i < 40 else "val" if i < 50 else "test"
    rows.append({"label": str(label), "split": split, "pulse": f"{i}.csv", "text": f"{i}.txt"})
with (work / "m.csv").open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
run = work / "run"
train(f"csv:{work / 'm.csv'}", run, TrainConfig(method="mla", epochs=3, batch_size=16, workers=0, owm_alpha=10.0))
repo = export_run(run, work / "models", name="pulse", version="1")
manifest = load_manifest(repo)
entry = manifest.modalities["pulse"]
x = decode_file("pulse", work / "0.csv", spec_of(entry), common.modalities.kind("pulse").limits(Settings()))
print("KINDS", list(manifest.modalities), type(entry).__name__, x.shape, float(manifest.export.parity["pulse"].top1_agreement))
"""


def test_a_fifth_kind_is_its_own_module_plus_one_registry_line(tmp_path: Path) -> None:
    (tmp_path / "pulse_kind.py").write_text(textwrap.dedent(PULSE))
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(work)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "KINDS ['pulse', 'text'] PulseEntry (16,) 1.0" in done.stdout


def test_the_registry_lists_each_kind_module_once() -> None:
    assert len(set(KIND_MODULES)) == len(KIND_MODULES) == len(names())
    for module in KIND_MODULES:
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file()


# Where a modality's name may stand as a string in the code: the kinds' modules and the registry, tests and
# benchmarks (the rule), and these, each for the reason given.
ALLOWED_VALUES = {("service/settings.py", "text"): "the log format called text"}
ALLOWED = {
    "training/data/demo.py": "the demo data set's own audio and video columns",
    "training/data/specs.py": "the CREMA-D reader: that data set's own folders, AudioWAV and VideoFlash",
}
PLACES = ("cli", "common", "model_export", "service", "training", "docker", "deploy")


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every plain string literal in a Python file (docstrings and f-strings' text too)."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):  # an f-string: its text parts only matter as prose
                continue
            if isinstance(value, str):
                out.append((tok.start[0], value))
    return out


def test_no_code_outside_the_kinds_names_a_modality() -> None:
    found = []
    for place in PLACES:
        for path in sorted((ROOT / place).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("common/modalities/") or rel in ALLOWED:
                continue
            found += [
                f"{rel}:{line}: {value!r}"
                for line, value in _string_literals(path)
                if value in names() and (rel, value) not in ALLOWED_VALUES
            ]
    assert not found, "a modality named outside its kind's module:\n" + "\n".join(found)


PAGE = ("service/static/app.js", "service/static/render.js", "service/static/recorder.js", "service/static/index.html")


def test_the_page_names_no_modality_outside_the_kinds_widgets() -> None:
    """The page's own code builds a widget per input from /v1/models; only service/static/kinds/ knows a kind."""
    quoted = re.compile(r"[\"'`](" + "|".join(names()) + r")[\"'`]")
    element = re.compile(r"[#\"'`(](" + "|".join(names()) + r")-[a-z]")  # an element id such as "audio-file"
    found = [
        f"{rel}:{n}: {line.strip()}"
        for rel in PAGE
        for n, line in enumerate((ROOT / rel).read_text().splitlines(), 1)
        if not line.lstrip().startswith(("//", "<!--")) and (quoted.search(line) or element.search(line))
    ]
    assert not found, "\n".join(found)
    widgets = {p.stem for p in (ROOT / "service" / "static" / "kinds").glob("*.js")}
    assert {kind(m).widget for m in names()} <= widgets  # every kind's widget exists
