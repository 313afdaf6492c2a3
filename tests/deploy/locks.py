"""Reading requirements/*.txt, the hashed universal locks uv writes (`make locks`): one requirement per entry,
`name==version ; marker` and its `--hash=sha256:...` options on continuation lines."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

LOCKS = ("serve", "serve-cpu", "train", "dev", "build", "uv", "checkov", "clients", "peers")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self, environment: dict[str, str] | None = None) -> bool:
        """Whether pip installs this pin here (or in `environment`: marker variables over this interpreter's)."""
        return self.marker is None or self.marker.evaluate(environment)


def entries(path: Path) -> list[str]:
    """The lock's requirement entries, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pins(lock: str) -> list[Pin]:
    out = []
    for entry in entries(ROOT / "requirements" / f"{lock}.txt"):
        hashes = tuple(re.findall(r"--hash=(\S+)", entry))
        req = Requirement(re.sub(r"\s--hash=\S+", "", entry).strip())
        (spec,) = req.specifier
        assert spec.operator == "==", entry
        out.append(Pin(canonicalize_name(req.name), spec.version, req.marker, hashes))
    return out


def versions(lock: str, environment: dict[str, str] | None = None) -> dict[str, str]:
    """name -> version of the pins that apply here (or in `environment`)."""
    return {p.name: p.version for p in pins(lock) if p.applies(environment)}
