"""Decoded inputs on disk, keyed by file content and preprocessing settings.

Decoding happens once, in worker processes; later epochs and runs load the arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from common.hashing import sha256_file
from common.media_types import NO_LIMITS, MediaError
from common.modalities import decode
from training.data.files import cache_root
from training.data.specs import DataError, Sample

log = logging.getLogger(__name__)
CACHE_FORMAT = 1

Spec = Any  # a kind's spec (common.modalities): a frozen dataclass


def cache_key(path: Path, modality: str, spec: Spec) -> str:
    settings = json.dumps({"format": CACHE_FORMAT, "modality": modality, **asdict(spec)}, sort_keys=True)
    return hashlib.sha256(f"{sha256_file(path)}|{settings}".encode()).hexdigest()


def _decode_to(job: tuple[str, Path, Spec, Path, str]) -> str | None:
    """Worker: decode one file into the cache; return an error message or None."""
    modality, path, spec, target, origin = job
    try:
        array = decode(modality, path, spec, NO_LIMITS, strict=False)
    except MediaError as exc:
        return f"{origin}: cannot use {modality} file {path}: {exc}"
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, target)  # atomic: readers never see a half-written array
    return None


class DecodeCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root() / "decoded"

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def prepare(
        self,
        samples: Iterable[Sample],
        specs: dict[str, Spec],
        workers: int = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Path | None]]:
        """Make sure every sample's inputs are decoded; return their array paths per sample."""
        resolved: list[dict[str, Path | None]] = []
        jobs: list[tuple[str, Path, Spec, Path, str]] = []
        for s in samples:
            entry: dict[str, Path | None] = {}
            for modality, spec in specs.items():
                src = s.path(modality)
                if src is None:
                    entry[modality] = None
                    continue
                target = self.path_for(cache_key(src, modality, spec))
                entry[modality] = target
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    jobs.append((modality, src, spec, target, s.origin))
            resolved.append(entry)
        if jobs:
            log.info("decoding %d file(s) into %s", len(jobs), self.root)
            errors = self._run(jobs, workers, progress)
            if errors:
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise DataError(errors[0] + more)
        return resolved

    @staticmethod
    def _run(
        jobs: list[tuple[str, Path, Spec, Path, str]], workers: int, progress: Callable[[int, int], None] | None
    ) -> list[str]:
        errors: list[str] = []
        with ProcessPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
            results: Iterable[str | None] = pool.map(_decode_to, jobs, chunksize=16) if pool else map(_decode_to, jobs)
            for i, err in enumerate(results, 1):
                if err:
                    errors.append(err)
                if progress:
                    progress(i, len(jobs))
        return errors
