"""Where data sets live and how a `csv:` manifest is written: shared by the specs that read them and the builders
that make them (training.data.demo, benchmarks.avdigits.build), so neither imports the other."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def write_manifest(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    """Write a `csv:` manifest; the columns are those of the first row (extra ones are kept, ignored on reading)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def cache_root() -> Path:
    """Where generated datasets and decoded arrays live (MLA_CACHE_DIR overrides)."""
    return Path(os.environ.get("MLA_CACHE_DIR") or Path.home() / ".cache" / "mla-serve")


def built_once(out: Path, listing: str, build: Callable[[Path], object], about: str) -> Path:
    """`out`/`listing`, with `build(folder)` run first when it is absent (logged as building `about`): into a
    temporary folder beside `out`, moved into place when complete, so an interrupted build is never mistaken
    for a finished one."""
    manifest = out / listing
    if not manifest.is_file():
        log.info("building %s into %s", about, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        try:
            build(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
