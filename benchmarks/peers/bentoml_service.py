"""The model served by BentoML, configured as its documentation recommends for throughput on CPU.

    PEERS_MODEL_DIR=models/default/3 .venv/peers/bin/bentoml serve benchmarks.peers.bentoml_service:Front --port PORT

BentoML (docs.bentoml.com, guides "Adaptive batching", "Workers", "Concurrency", "Model composition"): adaptive batching
belongs on a `batchable` API, and a service that prepares inputs calls the service that runs the model through
`bentoml.depends`, whose dispatcher gathers the callers' rows into batches (the docs' "intermediary service" pattern).
Here:
- `Front` (the public /v1/predict, multipart `audio` and/or `video` as files): decodes with common.media
  (benchmarks/peers/pipeline.py), sends each modality's row to `Model`, answers with common.answer.decide. CPU-bound
  Python, so it scales by processes: `workers` = 2, one per core (PEERS_FRONT_WORKERS).
- `Model`: one batchable API per modality (`max_batch_size` 8, `max_latency_ms` 10 s so that nothing is refused under
  the benchmark's queueing; the dispatcher picks the wait itself), one worker whose ORT sessions use one thread each
  (PEERS_MODEL_WORKERS).
What was tried is in benchmarks/peers/README.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from benchmarks.peers.pipeline import Pipeline
from common.media import MediaError

MODEL_DIR = Path(os.environ.get("PEERS_MODEL_DIR", "models/default/3"))
BATCH = int(os.environ.get("PEERS_MAX_BATCH", "8"))
LATENCY_MS = int(os.environ.get("PEERS_MAX_LATENCY_MS", "10000"))


def _joined(logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
    """[n, classes + dims]: one array per call is what a batchable API takes and gives."""
    return logits if features is None else np.concatenate([logits, features], axis=1)


# BentoML's concurrency guide: with adaptive batching, set the service's concurrency to the batch size
# (PEERS_MODEL_CONCURRENCY; unset, BentoML imposes no limit).
MODEL_TRAFFIC: dict[str, Any] = {"timeout": 60}
if os.environ.get("PEERS_MODEL_CONCURRENCY"):
    MODEL_TRAFFIC["concurrency"] = int(os.environ["PEERS_MODEL_CONCURRENCY"])


@bentoml.service(workers=int(os.environ.get("PEERS_MODEL_WORKERS", "1")), traffic=MODEL_TRAFFIC)
class Model:
    def __init__(self) -> None:
        self.pipeline = Pipeline(MODEL_DIR, threads=1)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=BATCH, max_latency_ms=LATENCY_MS)
    def audio(self, rows: np.ndarray) -> np.ndarray:
        return _joined(*self.pipeline.infer("audio", rows))

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=BATCH, max_latency_ms=LATENCY_MS)
    def video(self, rows: np.ndarray) -> np.ndarray:
        return _joined(*self.pipeline.infer("video", rows))


@bentoml.service(workers=int(os.environ.get("PEERS_FRONT_WORKERS", "2")), traffic={"timeout": 60})
class Front:
    model = bentoml.depends(Model)

    def __init__(self) -> None:
        self.pipeline = Pipeline(MODEL_DIR, threads=1)
        self.classes = len(self.pipeline.manifest.labels)

    @bentoml.api(route="/v1/predict")
    def predict(self, audio: Path = None, video: Path = None) -> dict[str, Any]:  # type: ignore[assignment]  # noqa: RUF013
        # `Path | None` would be the honest type, but BentoML 1.4 then validates the upload as a plain path and
        # refuses it (400 "Input is not a valid path"); a Path field with a None default takes the file or nothing.
        files = {m: p for m, p in (("audio", audio), ("video", video)) if p is not None and m in self.pipeline.modalities}
        if not files:
            raise bentoml.exceptions.InvalidArgument("send a file as `audio` and/or `video`")
        outputs: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for m, path in files.items():
            try:
                row = self.pipeline.decode(m, path.name, path.read_bytes())
            except MediaError as exc:
                raise bentoml.exceptions.InvalidArgument(f"{m}: {exc}") from exc
            out = np.asarray(getattr(self.model, m)(row[None]))[0]
            k = self.classes
            outputs[m] = (out[:k], out[k:] if out.shape[0] > k else None)
        return self.pipeline.answer(outputs)
